"""Validated records -> a TFDS dataset of ArrayRecord shards (train + held-out validation), and back.

Writing goes through a TFDS `GeneratorBasedBuilder` with `file_format='array_record'`, so the result is
an ordinary TFDS directory: `tfds.builder_from_directory(dir).as_data_source(split)` reads it with random
access and without TensorFlow. Choices made here:

- Held-out records are chosen by a keyed hash of their id, not by position: a record stays in the same
  split when other records are added or the files are reordered, and the same seed gives the same
  split. TFDS itself orders records by a hash of the key (the id), so two builds from the same records
  and seed are identical.
- Both splits have exactly `num_shards` shards. Pick a multiple of the number of hosts that will read
  the data, so every host reads whole shards.
- The input is streamed once: train records go to the writer as they arrive; held-out records wait in
  memory (a small fraction) until the train split is done.
- The build happens in a hidden temporary directory next to the output and is renamed into place only
  when complete, so an interrupted build leaves nothing that looks like a dataset. An output in a
  bucket (gs://) is built in a local temporary directory (the ArrayRecord writer writes local files
  only) and copied up with dataset_info.json last: a dataset is finished once that file is there.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence

import tensorflow_datasets as tfds

from orca_jax import paths
from orca_jax.data.records import FIELDS, DataError, Record

TRAIN = "train"
VALIDATION = "validation"
INFO_FILE = "dataset_info.json"  # a directory without it is not a finished dataset

_HASH_RANGE = 1 << 64


def split_hash(record_id: str, seed: int) -> int:
    """A 64-bit hash of the id keyed by the seed; held-out records are those with the smallest values."""
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8, key=str(seed).encode("utf-8")).digest()
    return int.from_bytes(digest, "big")


def check_validation_size(validation: float | int) -> None:
    """`validation` is a fraction in [0, 1) of the records (float) or a record count (int)."""
    if isinstance(validation, bool) or not isinstance(validation, (int, float)):
        raise DataError(f"validation size {validation!r} must be a fraction (float) or a count (int)")
    if isinstance(validation, float) and not 0.0 <= validation < 1.0:
        raise DataError(f"validation fraction {validation} must be in [0, 1)")
    if isinstance(validation, int) and validation < 0:
        raise DataError(f"validation count {validation} must be >= 0")


class _SplitRouter:
    """Sends each record to train or validation in one pass over the input.

    A fraction holds out every record whose hash falls below fraction * 2**64. A count keeps the
    `count` smallest hashes seen so far in a heap and passes any record pushed out of it to train.
    TFDS generates the splits in the order `_split_generators` lists them, train first, which is what
    lets the validation generator hand out what the train pass held back.
    """

    def __init__(self, records: Iterable[Record], validation: float | int, seed: int, num_shards: int,
                 on_write: Callable[[str, Record], None] | None):
        self._records = records
        self._validation = validation
        self._seed = seed
        self._num_shards = num_shards
        self._on_write = on_write or (lambda split, record: None)
        # (-hash, id, record): heapq is a min-heap, so the largest held-out hash sits on top.
        self._held_out: list[tuple[int, str, Record]] = []
        self._train_done = False
        self.counts = {TRAIN: 0, VALIDATION: 0}

    @property
    def splits(self) -> tuple[str, ...]:
        return (TRAIN, VALIDATION) if self._validation else (TRAIN,)

    def train(self) -> Iterator[Record]:
        fraction_bound = int(self._validation * _HASH_RANGE) if isinstance(self._validation, float) else None
        for record in self._records:
            record_hash = split_hash(record["id"], self._seed)
            if fraction_bound is not None:
                if record_hash < fraction_bound:
                    self._held_out.append((-record_hash, record["id"], record))
                    continue
            elif self._validation:
                entry = (-record_hash, record["id"], record)
                if len(self._held_out) < self._validation:
                    heapq.heappush(self._held_out, entry)
                    continue
                _, _, record = heapq.heappushpop(self._held_out, entry)
            yield self._written(TRAIN, record)
        self._train_done = True
        for split, count in ((TRAIN, self.counts[TRAIN]), (VALIDATION, len(self._held_out))):
            if split in self.splits and count < self._num_shards:
                raise DataError(f"the {split} split has {count} records, fewer than the {self._num_shards} "
                                f"shards asked for: lower the shard count or change the validation size")

    def validation(self) -> Iterator[Record]:
        if not self._train_done:
            raise RuntimeError("the validation split can only be generated after the train split")
        for _, _, record in self._held_out:
            yield self._written(VALIDATION, record)
        self._held_out = []

    def _written(self, split: str, record: Record) -> Record:
        self.counts[split] += 1
        self._on_write(split, record)
        return record


class OrcaRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The imitation-learning records (id, system prompt, question, teacher response) as text."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "OpenOrca-style records with a hash-chosen held-out validation split."}
    # The builder ships no checksums or metadata files. Without this, TFDS looks for them beside the
    # module and, for an editable install, needs the `importlib_resources` backport to do so.
    code_path = None

    def __init__(self, *, router: _SplitRouter, **kwargs):
        self._router = router
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({field: tfds.features.Text() for field in FIELDS}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything comes from the records given to the router.
        records_by_split = {TRAIN: self._router.train, VALIDATION: self._router.validation}
        return {split: self._generate_examples(records_by_split[split]()) for split in self._router.splits}

    def _generate_examples(self, records: Iterator[Record]):
        for record in records:
            yield record["id"], record

    # TFDS prints these to stdout; they speak of downloads and name the temporary build directory.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass


def build_dataset(records: Iterable[Record], output_dir: str | os.PathLike, *, num_shards: int,
                  validation: float | int = 0.01, seed: int = 0,
                  on_write: Callable[[str, Record], None] | None = None,
                  add_files: Callable[[pathlib.Path], None] | None = None) -> dict[str, int]:
    """Write `records` (ids unique) as a TFDS ArrayRecord dataset in `output_dir`, which must not exist.

    `on_write(split, record)` is called as each record is handed to its split's writer. `add_files(dir)`
    may write files (a report) into the finished dataset just before it moves into place, so they
    appear with it or not at all. Returns the number of records per split. On any failure,
    KeyboardInterrupt included, `output_dir` is not created.
    """
    check_validation_size(validation)
    if num_shards < 1:
        raise DataError(f"num_shards {num_shards} must be >= 1")
    output = paths.path(output_dir)
    if output.exists():
        unfinished = "" if (output / INFO_FILE).is_file() else " (unfinished: no dataset_info.json)"
        raise DataError(f"output {output} already exists{unfinished}; remove it or choose another directory")
    remote = paths.is_url(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    work_dir = pathlib.Path(tempfile.mkdtemp(prefix=f".{output.name}.incomplete-",
                                             dir=None if remote else output.parent))
    try:
        router = _SplitRouter(records, validation, seed, num_shards, on_write)
        builder = OrcaRecords(router=router, data_dir=work_dir, file_format="array_record")
        builder.download_and_prepare(
            download_dir=work_dir / "downloads",
            download_config=tfds.download.DownloadConfig(num_shards=num_shards, try_download_gcs=False))
        if add_files is not None:
            add_files(pathlib.Path(builder.data_dir))
        if remote:
            paths.copy_tree(builder.data_dir, output, last=(INFO_FILE,))
        else:
            os.rename(builder.data_dir, output)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return dict(router.counts)


class SplitSource:
    """Random access to one split: `len()` and `[i]` -> record dict of str (TFDS gives bytes).

    Usable as a grain `MapDataset.source`. Index i is not the i-th record written: TFDS stores records
    ordered by a hash of their id.
    """

    def __init__(self, data_source: Sequence, dataset_dir: paths.AnyPath, split: str):
        self._data_source = data_source
        self.dataset_dir = dataset_dir
        self.split = split

    def __len__(self) -> int:
        return len(self._data_source)

    def __getitem__(self, index: int) -> Record:
        # ArrayRecord raises ValueError out of range; IndexError is what makes iteration and grain stop.
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {self!r}")
        return _decoded(self._data_source[index])

    def __iter__(self) -> Iterator[Record]:
        return (self[index] for index in range(len(self)))

    def __getitems__(self, indices: Sequence[int]) -> list[Record]:
        return [_decoded(example) for example in self._data_source.__getitems__(indices)]

    def __repr__(self) -> str:
        return f"SplitSource({str(self.dataset_dir)!r}, split={self.split!r}, records={len(self)})"


def _decoded(example: dict[str, bytes]) -> Record:
    return {field: example[field].decode("utf-8") for field in FIELDS}


def open_split(dataset_dir: str | os.PathLike, split: str) -> SplitSource:
    """The records of `split` ('train' or 'validation') of a dataset written by `build_dataset`, local
    or gs:// (TFDS and the ArrayRecord reader under it read a bucket directly)."""
    dataset_dir = paths.path(dataset_dir)
    if not (dataset_dir / INFO_FILE).is_file():
        raise DataError(f"{dataset_dir} is not a finished dataset (no dataset_info.json)")
    builder = tfds.builder_from_directory(dataset_dir)
    if split not in builder.info.splits:
        raise DataError(f"{dataset_dir} has no split {split!r}; it has {sorted(builder.info.splits.keys())}")
    return SplitSource(builder.as_data_source(split), dataset_dir, split)
