"""The input pipeline: records -> shuffled per-process stream -> packed rows -> global jax.Array batches.

Layers, each deterministic given (seed, process_index, process_count):
  1. grain MapDataset over the random-access source, shuffled with a fresh permutation every epoch
     (grain derives it from seed and epoch) and repeated `num_epochs` times (None: forever).
  2. Process p of P reads stream positions p, p+P, p+2P, ...: one global order split round-robin, so
     every example is read exactly once per epoch by exactly one process.
  3. Consecutive `pack_window` records of the process's stream form a window, tokenized and packed by
     best-fit decreasing (packing.py). Windows are a grain MapDataset too, prefetched in threads
     (sentencepiece and NumPy work outside the GIL). A window may span the end of one epoch and the
     start of the next, so no epoch ends in a half-empty window; each example keeps its own epoch.
  4. ProcessBatches cuts the rows into local batches; TrainBatches turns them into global arrays with
     `jax.make_array_from_process_local_data(parallel.batch_sharding(mesh), ...)`.

Shares: the global order is split round-robin into `data.read_shares` shares (default one per
process), and share s always fills rows [s*b, (s+1)*b) of the global batch (b = batch / shares). A
process reads its consecutive block of shares. So the batches depend on the number of shares, not of
processes: a one-process run with read_shares=2 trains on exactly the batches of a two-process run.

Resuming: a window is a pure function of its index, so a share's position is just "which window,
how many of its rows are consumed" (a small JSON dict). TrainBatches gathers every share's position
into one state, identical on all processes, so a checkpoint written by the primary host alone (as
orbax's JsonSave does) restores every process.

With finite epochs, shares may run out at different steps because packing is data dependent. A share
that ran out feeds all-padding rows, whose loss weights are zero, until the longest share is done, so
no example is lost or repeated. With several processes, that length is agreed once, up front
(`stream_length`: each process counts its shares, one all-gather takes the longest), not per step:
a per-step all-gather would make the host wait for every step to finish before the next is queued.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, Protocol

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from orca_jax import parallel
from orca_jax.data.config import DataConfig
from orca_jax.data.packing import ROW_FIELDS, OverflowPolicy, PackedWindow, pack_examples
from orca_jax.data.templates import Template, encode_examples, get_template
from orca_jax.data.tokenizer import Tokenizer


class RecordSource(Protocol):
    """What `shards.open_split` returns, or any list of records: random access by index."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, str]: ...


ExampleKey = tuple[int, str]  # (epoch, record id): identifies one reading of one example.


@dataclasses.dataclass(frozen=True)
class BatchStats:
    """What this process put into one local batch."""

    epoch: int              # epoch of the latest example in the batch
    num_examples: int       # examples (segments) in the batch
    num_tokens: int         # non-padding slots
    efficiency: float       # num_tokens / all slots, all-padding rows included
    num_dropped: int        # over-long examples dropped in the windows first opened for this batch
    num_truncated: int      # over-long examples truncated in those windows


@dataclasses.dataclass(frozen=True)
class LocalBatch:
    """[local_batch, seq_len] arrays (packing.ROW_FIELDS), plus which examples each row holds."""

    arrays: dict[str, np.ndarray]
    row_examples: list[list[ExampleKey]]
    stats: BatchStats


@dataclasses.dataclass(frozen=True)
class _Window:
    packed: PackedWindow
    example_keys: list[ExampleKey]  # per window index


class ProcessBatches:
    """One process's share of the data as NumPy local batches, resumable via get_state/set_state.

    data               template, seq_len, pack_window and overflow (its batch_size is the global one,
                       which this class does not use)
    local_batch_size   rows per batch from this process (global batch / process count)
    seed               shuffling seed; each epoch gets its own permutation derived from it
    num_epochs         passes over the source; None repeats forever (the loop counts steps)
    process_index/count  which round-robin share to read; explicit so tests can simulate processes
    shuffle            False reads in source order (validation)
    read_threads       grain threads that tokenize and pack windows ahead (0: in the caller's thread)
    prefetch_windows   packed windows kept ready ahead of the consumer
    """

    def __init__(self, source: RecordSource, tokenizer: Tokenizer, data: DataConfig, *,
                 local_batch_size: int, seed: int, num_epochs: int | None,
                 process_index: int, process_count: int, shuffle: bool = True,
                 read_threads: int = 2, prefetch_windows: int = 4):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        if len(source) == 0:
            raise ValueError("the record source is empty")
        seq_len, pack_window, overflow = data.seq_len, data.pack_window, data.overflow
        self.seq_len = seq_len
        self.local_batch_size = local_batch_size
        self.pad_id = tokenizer.pad_id
        # Everything that changes the stream; a saved state only applies to the same stream.
        self._stream_id = {"seed": seed, "shuffle": shuffle, "num_epochs": num_epochs,
                           "process_index": process_index, "process_count": process_count,
                           "seq_len": seq_len, "pack_window": pack_window, "overflow": overflow,
                           "num_records": len(source)}
        windows = _window_dataset(source, tokenizer, get_template(data.template), seq_len=seq_len, seed=seed,
                                  num_epochs=num_epochs, shuffle=shuffle, process_index=process_index,
                                  process_count=process_count, overflow=overflow, pack_window=pack_window)
        read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_windows)
        self._windows = iter(windows.to_iter_dataset(read_options))
        self._window: _Window | None = None
        self._window_start_state: dict[str, Any] = self._windows.get_state()
        self._next_row = 0
        self._exhausted = False
        self.epoch = 0

    def __iter__(self) -> ProcessBatches:
        return self

    def __next__(self) -> LocalBatch:
        parts, row_examples, num_dropped, num_truncated = self._take_rows(self.local_batch_size)
        if not row_examples:
            raise StopIteration
        num_padding_rows = self.local_batch_size - len(row_examples)
        parts.append(self.padding_rows(num_padding_rows))
        row_examples += [[] for _ in range(num_padding_rows)]
        arrays = {name: np.concatenate([part[name] for part in parts]) for name in ROW_FIELDS}
        self.epoch = max(epoch for keys in row_examples for epoch, _ in keys)
        num_tokens = int(np.count_nonzero(arrays["segment_ids"]))
        stats = BatchStats(epoch=self.epoch, num_examples=sum(map(len, row_examples)),
                           num_tokens=num_tokens, efficiency=num_tokens / arrays["segment_ids"].size,
                           num_dropped=num_dropped, num_truncated=num_truncated)
        return LocalBatch(arrays=arrays, row_examples=row_examples, stats=stats)

    def _take_rows(self, count: int) -> tuple[list[dict[str, np.ndarray]], list[list[ExampleKey]], int, int]:
        """Up to `count` rows (fewer only at the end of a finite stream): row array slices, the examples
        of each row, and the dropped/truncated counts of the windows opened on the way."""
        parts, row_examples = [], []
        num_dropped = num_truncated = 0
        while len(row_examples) < count and not self._exhausted:
            if self._window is None:
                self._window_start_state = self._windows.get_state()
                try:
                    self._window = next(self._windows)
                except StopIteration:
                    self._exhausted = True
                    break
                num_dropped += self._window.packed.num_dropped
                num_truncated += self._window.packed.num_truncated
            packed = self._window.packed
            end = min(packed.num_rows, self._next_row + count - len(row_examples))
            parts.append({name: packed.rows[name][self._next_row:end] for name in ROW_FIELDS})
            row_examples += [[self._window.example_keys[i] for i in packed.row_examples[r]]
                             for r in range(self._next_row, end)]
            self._next_row = end
            if end == packed.num_rows:
                self._window, self._next_row = None, 0
        return parts, row_examples, num_dropped, num_truncated

    def padding_rows(self, num_rows: int) -> dict[str, np.ndarray]:
        """`num_rows` rows of padding: no tokens, zero loss weight."""
        shape = (num_rows, self.seq_len)
        rows = {name: np.zeros(shape, np.float32 if name == "loss_weights" else np.int32)
                for name in ROW_FIELDS}
        rows["inputs"] = np.full(shape, self.pad_id, np.int32)
        return rows

    def get_state(self) -> dict[str, Any]:
        """A JSON-serializable position in this process's stream (save it with the checkpoint)."""
        window_state = self._windows.get_state() if self._window is None else self._window_start_state
        return {**self._stream_id, "window_state": window_state, "rows_taken": self._next_row,
                "epoch": self.epoch, "exhausted": self._exhausted}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where the process that produced `state` stopped."""
        mismatched = {k: (state.get(k), v) for k, v in self._stream_id.items() if state.get(k) != v}
        if mismatched:
            raise ValueError(f"data state is from a different stream (saved, current): {mismatched}")
        self._windows.set_state(state["window_state"])
        self._window, self._next_row = None, 0
        self._exhausted = state["exhausted"]
        self.epoch = state["epoch"]
        if state["rows_taken"]:
            self._window_start_state = state["window_state"]
            self._window = next(self._windows)
            self._next_row = state["rows_taken"]


def _window_dataset(source: RecordSource, tokenizer: Tokenizer, template: Template, *, seq_len: int,
                    seed: int, num_epochs: int | None, shuffle: bool, process_index: int,
                    process_count: int, overflow: OverflowPolicy, pack_window: int) -> grain.MapDataset:
    """grain MapDataset whose element w is the packed window w of this process's stream."""
    num_records = len(source)
    records = grain.MapDataset.source(source)
    if shuffle:
        records = records.shuffle(seed=seed)
    records = records.repeat(num_epochs)[process_index::process_count]

    def pack_window_at(window_index: int, window: Sequence[dict[str, str]]) -> _Window:
        examples = encode_examples(tokenizer, template, window)
        packed = pack_examples(examples, seq_len, tokenizer.pad_id, overflow)
        # Position k of this process's stream is position process_index + k * process_count of the
        # global one, which tells the epoch.
        local_positions = window_index * pack_window + np.arange(len(window))
        epochs = (process_index + local_positions * process_count) // num_records
        return _Window(packed, [(int(epoch), record["id"]) for epoch, record in zip(epochs, window)])

    return records.batch(pack_window, batch_fn=list).map_with_index(pack_window_at)


def _shares_of_this_process(data: DataConfig) -> tuple[int, range]:
    """(number of shares, the shares this process reads)."""
    process_count = jax.process_count()
    shares = data.read_shares or process_count
    if shares % process_count or data.batch_size % shares:
        raise ValueError(f"data.read_shares={shares} must be a multiple of the {process_count} processes and "
                         f"divide data.batch_size={data.batch_size}")
    per_process = shares // process_count
    return shares, range(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)


def _share_readers(source: RecordSource, tokenizer: Tokenizer, data: DataConfig, **options) -> list[ProcessBatches]:
    shares, mine = _shares_of_this_process(data)
    return [ProcessBatches(source, tokenizer, data, local_batch_size=data.batch_size // shares,
                           process_index=share, process_count=shares, **options) for share in mine]


def stream_length(source: RecordSource, tokenizer: Tokenizer, data: DataConfig, *, seed: int, num_epochs: int,
                  shuffle: bool = True, limit: int = 0) -> int:
    """Global batches in a finite stream: the longest share's count of local batches (at most `limit`
    when it is positive). Every process packs its own shares once; with several processes one
    all-gather (every process must call this at the same point) takes the maximum."""
    counts = []
    for reader in _share_readers(source, tokenizer, data, seed=seed, num_epochs=num_epochs, shuffle=shuffle):
        count = 0
        for _ in reader:
            count += 1
            if count == limit:
                break
        counts.append(count)
    longest = max(counts)
    if jax.process_count() > 1:
        longest = int(multihost_utils.process_allgather(np.int32(longest)).max())
    return longest


class TrainBatches:
    """Global batches for the train loop: dicts of [data.batch_size, data.seq_len] jax.Arrays sharded by
    `parallel.batch_sharding(mesh)` (docs/contracts.md), each process supplying its shares' rows.

    Arguments as for ProcessBatches, with the batch counted globally (data.batch_size) and the shares
    from data.read_shares. A finite stream ends with its longest share; `num_batches` is that length
    when the caller knows it (the loop counted the stage's steps), otherwise with several processes it
    is counted here, once (`stream_length`; `limit` > 0 caps it). `stats` describes this process's part
    of the latest batch; `epoch` is the epoch of its latest example.
    """

    def __init__(self, source: RecordSource, tokenizer: Tokenizer, data: DataConfig, *, seed: int,
                 num_epochs: int | None, mesh: Mesh, shuffle: bool = True, read_threads: int = 2,
                 prefetch_windows: int = 4, num_batches: int | None = None, limit: int = 0):
        global_batch_size = data.batch_size
        self._sharding = parallel.batch_sharding(mesh)
        parallel.check_divisible("global_batch_size", global_batch_size, mesh, self._sharding.spec[0])
        self._shares, self._mine = _shares_of_this_process(data)
        self._global_shape = (global_batch_size, data.seq_len)
        options = dict(seed=seed, num_epochs=num_epochs, shuffle=shuffle)
        self._readers = _share_readers(source, tokenizer, data, read_threads=read_threads,
                                       prefetch_windows=prefetch_windows, **options)
        # Only a finite stream ends, and only another process can have data when all of ours are done.
        if num_batches is None and num_epochs is not None and jax.process_count() > 1:
            num_batches = stream_length(source, tokenizer, data, limit=limit, **options)
        self._num_batches = None if num_epochs is None else num_batches
        self._limit = limit
        self._taken = 0
        self.stats: BatchStats | None = None

    @property
    def epoch(self) -> int:
        return max(reader.epoch for reader in self._readers)

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if (self._num_batches is not None and self._taken >= self._num_batches) or 0 < self._limit <= self._taken:
            raise StopIteration
        batches = [next(reader, None) for reader in self._readers]
        if self._num_batches is None and all(batch is None for batch in batches):
            raise StopIteration
        self._taken += 1
        rows = self._readers[0].local_batch_size
        parts = [reader.padding_rows(rows) if batch is None else batch.arrays
                 for reader, batch in zip(self._readers, batches)]
        stats = [batch.stats for batch in batches if batch is not None]
        num_tokens = sum(stat.num_tokens for stat in stats)
        slots = rows * len(parts) * self._global_shape[1]
        self.stats = BatchStats(epoch=self.epoch, num_examples=sum(stat.num_examples for stat in stats),
                                num_tokens=num_tokens, efficiency=num_tokens / slots,
                                num_dropped=sum(stat.num_dropped for stat in stats),
                                num_truncated=sum(stat.num_truncated for stat in stats))
        return {name: jax.make_array_from_process_local_data(
                    self._sharding, np.concatenate([part[name] for part in parts]), self._global_shape)
                for name in ROW_FIELDS}

    def get_state(self) -> dict[str, Any]:
        """Every share's position, the same JSON dict on all processes. With several processes this is
        a collective: all must call it at the same step, as they do when saving a checkpoint."""
        gathered = _gather_json([reader.get_state() for reader in self._readers])
        return {"shares": [state for states in gathered for state in states], "batches_taken": self._taken}

    def set_state(self, state: dict[str, Any]) -> None:
        positions = state.get("shares", state.get("processes"))  # 'processes': before read shares existed
        if len(positions) != self._shares:
            raise ValueError(f"data state was saved by {len(positions)} read shares; this run reads "
                             f"{self._shares} (data.read_shares, or one per process)")
        for reader, share in zip(self._readers, self._mine):
            reader.set_state(positions[share])
        self._taken = state.get("batches_taken", 0)


def _gather_json(value: Any) -> list[Any]:
    """Every process's JSON-serializable `value`, in process order, on every process."""
    if jax.process_count() == 1:
        return [value]
    encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.int32(len(encoded)))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(encoded)] = encoded
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:length])) for row, length in zip(gathered, lengths)]


def validation_batches(source: RecordSource, tokenizer: Tokenizer, data: DataConfig, mesh: Mesh) -> TrainBatches:
    """One deterministic pass in source order (no shuffle), at most data.validation_batches batches
    (0: all); the last batch is padded with zero-weight rows, so summing weighted losses over the pass
    counts every example once."""
    return TrainBatches(source, tokenizer, data, seed=0, num_epochs=1, mesh=mesh, shuffle=False,
                        limit=data.validation_batches)
