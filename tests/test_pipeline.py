"""The input pipeline: exactly-once reading per epoch across processes, rows that are really the records
they claim to be, exact resumption, global sharded batches, the validation pass, no TensorFlow."""

import collections
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from orca_jax import parallel
from orca_jax.data import shards
from orca_jax.data.config import DataConfig
from orca_jax.data.packing import ROW_FIELDS
from orca_jax.data.pipeline import ProcessBatches, TrainBatches, validation_batches
from orca_jax.data.templates import encode_example, encode_prompt
from orca_jax.data.tokenizer import Tokenizer

from distributed_job import Job
from synthetic_text import records, trained_tokenizer

SEQ_LEN = 128
NUM_RECORDS = 150
SAVE_AFTER = 5  # batches before the two-process test saves its data state


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return trained_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def source():
    return records(NUM_RECORDS, seed=11, max_response_words=60)


def data(batch_size=8, pack_window=16, template="orca", overflow="truncate_response"):
    return DataConfig(template=template, seq_len=SEQ_LEN, batch_size=batch_size, pack_window=pack_window,
                      overflow=overflow)


def process_stream(source, tokenizer, process_index=0, process_count=1, pack_window=16,
                   overflow="truncate_response", **overrides):
    options = dict(local_batch_size=3, seed=7, num_epochs=2, process_index=process_index,
                   process_count=process_count)
    return ProcessBatches(source, tokenizer, data(pack_window=pack_window, overflow=overflow),
                          **{**options, **overrides})


def packable(tokenizer, record):
    """Whether truncate_response keeps the record: its prompt leaves room for a response target."""
    return len(encode_prompt(tokenizer, "orca", record["system_prompt"], record["question"])) <= SEQ_LEN


def assert_same_stream(batches, expected):
    assert len(batches) == len(expected)
    for got, want in zip(batches, expected):
        assert got.row_examples == want.row_examples
        for name in ROW_FIELDS:
            np.testing.assert_array_equal(got.arrays[name], want.arrays[name])


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_every_example_exactly_once_per_epoch(source, tokenizer, process_count):
    readings = collections.Counter()
    dropped = 0
    for process_index in range(process_count):
        for batch in process_stream(source, tokenizer, process_index, process_count, overflow="drop"):
            readings.update(key for row in batch.row_examples for key in row)
            dropped += batch.stats.num_dropped
    assert max(readings.values()) == 1
    fits = [r for r in source if len(encode_example(tokenizer, "orca", r["system_prompt"], r["question"],
                                                    r["response"])[0]) - 1 <= SEQ_LEN]
    assert set(readings) == {(epoch, record["id"]) for epoch in (0, 1) for record in fits}
    assert dropped == 2 * (len(source) - len(fits)) > 0


def test_rows_hold_the_records_they_name(source, tokenizer):
    """The example keys are checked against the tokens: each segment re-encodes to its record."""
    by_id = {record["id"]: record for record in source}
    for process_index in range(2):
        for batch in process_stream(source, tokenizer, process_index, 2):
            for r, keys in enumerate(batch.row_examples):
                segments = batch.arrays["segment_ids"][r]
                for segment, (_, record_id) in enumerate(keys, start=1):
                    record = by_id[record_id]
                    tokens, mask = encode_example(tokenizer, "orca", record["system_prompt"],
                                                  record["question"], record["response"])
                    keep = min(len(tokens) - 1, SEQ_LEN)  # truncate_response cuts to one row
                    here = segments == segment
                    np.testing.assert_array_equal(batch.arrays["inputs"][r][here], tokens[:keep])
                    np.testing.assert_array_equal(batch.arrays["targets"][r][here], tokens[1:keep + 1])
                    np.testing.assert_array_equal(batch.arrays["loss_weights"][r][here], mask[1:keep + 1])


def test_each_epoch_and_seed_has_its_own_order(source, tokenizer):
    def reading_order(seed):
        keys = [key for batch in process_stream(source, tokenizer, seed=seed, pack_window=1)
                for row in batch.row_examples for key in row]
        return [[i for e, i in keys if e == epoch] for epoch in (0, 1)]

    first, second = reading_order(seed=7)
    assert sorted(first) == sorted(second) and first != second
    assert reading_order(seed=8)[0] != first
    assert first != [record["id"] for record in source]


@pytest.mark.parametrize("resume_after, epoch_at_resume", [(1, 0), (5, 0), (27, 1)])
def test_resume_gives_the_identical_remaining_stream(source, tokenizer, resume_after, epoch_at_resume):
    uninterrupted = list(process_stream(source, tokenizer, 1, 2))
    interrupted = process_stream(source, tokenizer, 1, 2)
    for _ in range(resume_after):
        next(interrupted)
    assert interrupted.epoch == epoch_at_resume
    saved = json.loads(json.dumps(interrupted.get_state()))
    resumed = process_stream(source, tokenizer, 1, 2)
    resumed.set_state(saved)
    assert_same_stream(list(resumed), uninterrupted[resume_after:])
    assert resumed.epoch == 1


def test_resume_crosses_an_epoch_boundary(source, tokenizer):
    uninterrupted = list(process_stream(source, tokenizer))
    boundary = next(i for i, batch in enumerate(uninterrupted) if batch.stats.epoch == 1)
    interrupted = process_stream(source, tokenizer)
    for _ in range(boundary):
        next(interrupted)
    assert interrupted.epoch == 0
    resumed = process_stream(source, tokenizer)
    resumed.set_state(interrupted.get_state())
    assert_same_stream(list(resumed), uninterrupted[boundary:])


def test_state_from_another_stream_is_refused(source, tokenizer):
    state = process_stream(source, tokenizer, 0, 2).get_state()
    with pytest.raises(ValueError, match="process_index"):
        process_stream(source, tokenizer, 1, 2).set_state(state)


def test_infinite_stream_keeps_counting_epochs(source, tokenizer):
    batches = process_stream(source, tokenizer, num_epochs=None, local_batch_size=16)
    epochs = [next(batches).stats.epoch for _ in range(30)]
    assert epochs == sorted(epochs) and epochs[-1] >= 2


def test_train_batches_are_sharded_global_arrays(source, tokenizer):
    mesh = parallel.make_mesh(data=4, fsdp=2)
    batches = TrainBatches(source, tokenizer, data(template="chatml"), seed=3, num_epochs=1, mesh=mesh)
    reference = ProcessBatches(source, tokenizer, data(template="chatml"), local_batch_size=8, seed=3,
                               num_epochs=1, process_index=0, process_count=1)
    count = 0
    for batch, expected in zip(batches, reference, strict=True):
        count += 1
        assert set(batch) == set(ROW_FIELDS)
        for name, array in batch.items():
            assert isinstance(array, jax.Array) and array.shape == (8, SEQ_LEN)
            assert array.sharding.is_equivalent_to(parallel.batch_sharding(mesh), 2)
            np.testing.assert_array_equal(np.asarray(array), expected.arrays[name])
        assert batches.stats == expected.stats
    assert count > 1 and batches.epoch == 0


def test_read_shares_make_one_process_read_as_two(source, tokenizer):
    """data.read_shares=2 in one process: rows [0, 4) are share 0's stream and [4, 8) share 1's, exactly
    what process 0 and 1 of a two-process run feed; the share that runs out first feeds padding."""
    shared = dataclasses.replace(data(), read_shares=2)
    batches = TrainBatches(source, tokenizer, shared, seed=3, num_epochs=1, mesh=parallel.make_mesh())
    got = [{name: np.asarray(array) for name, array in batch.items()} for batch in batches]
    streams = [[batch.arrays for batch in ProcessBatches(source, tokenizer, shared, local_batch_size=4, seed=3,
                                                         num_epochs=1, process_index=share, process_count=2)]
               for share in range(2)]
    assert len(got) == max(map(len, streams)) and len(streams[0]) != len(streams[1])
    padding = ProcessBatches(source, tokenizer, shared, local_batch_size=4, seed=3, num_epochs=1, process_index=0,
                             process_count=2).padding_rows(4)
    for share, stream in enumerate(streams):
        for step, batch in enumerate(got):
            want = stream[step] if step < len(stream) else padding
            for name in ROW_FIELDS:
                np.testing.assert_array_equal(batch[name][4 * share:4 * share + 4], want[name])
    state = batches.get_state()
    assert [s["process_index"] for s in state["shares"]] == [0, 1] and state["batches_taken"] == len(got)
    with pytest.raises(ValueError, match="data.read_shares=3 must be a multiple of the 1 processes and divide"):
        TrainBatches(source, tokenizer, dataclasses.replace(data(), read_shares=3), seed=3, num_epochs=1,
                     mesh=parallel.make_mesh())


def test_train_batches_resume_from_their_state(source, tokenizer):
    mesh = parallel.make_mesh()

    def global_batches():
        return TrainBatches(source, tokenizer, data(), seed=3, num_epochs=2, mesh=mesh)

    uninterrupted = [{k: np.asarray(v) for k, v in batch.items()} for batch in global_batches()]
    interrupted = global_batches()
    for _ in range(SAVE_AFTER):
        next(interrupted)
    state = json.loads(json.dumps(interrupted.get_state()))
    resumed = global_batches()
    resumed.set_state(state)
    remaining = [{k: np.asarray(v) for k, v in batch.items()} for batch in resumed]
    assert len(remaining) == len(uninterrupted) - SAVE_AFTER
    for got, want in zip(remaining, uninterrupted[SAVE_AFTER:]):
        for name in ROW_FIELDS:
            np.testing.assert_array_equal(got[name], want[name])
    with pytest.raises(ValueError, match="saved by 2 read shares; this run reads 1"):
        global_batches().set_state({"shares": state["shares"] * 2})


def test_validation_is_one_deterministic_padded_pass(source, tokenizer):
    rows_in_pass = len(list(process_stream(source, tokenizer, shuffle=False, num_epochs=1,
                                               local_batch_size=1, pack_window=32)))
    batch_size = next(size for size in (3, 4, 5, 7) if rows_in_pass % size)
    mesh = parallel.make_mesh(devices=jax.devices()[:1])

    def one_pass():
        batches = validation_batches(source, tokenizer, data(batch_size=batch_size, pack_window=32), mesh)
        arrays, seen, dropped = [], 0, 0
        for batch in batches:
            arrays.append({name: np.asarray(array) for name, array in batch.items()})
            seen += batches.stats.num_examples
            dropped += batches.stats.num_dropped
        return arrays, seen, dropped

    first, seen, dropped = one_pass()
    second, _, _ = one_pass()
    # truncate_response drops exactly the records whose prompt alone overfills a row.
    assert dropped == NUM_RECORDS - sum(packable(tokenizer, r) for r in source)
    assert seen == NUM_RECORDS - dropped
    for a, b in zip(first, second, strict=True):
        for name in ROW_FIELDS:
            np.testing.assert_array_equal(a[name], b[name])
    assert len(first) == -(-rows_in_pass // batch_size)
    last = first[-1]
    padding_rows = ~last["segment_ids"].any(axis=1)
    assert padding_rows.sum() == len(first) * batch_size - rows_in_pass
    assert not last["loss_weights"][padding_rows].any()


def test_validation_reads_in_source_order(source, tokenizer):
    stream = process_stream(source, tokenizer, shuffle=False, num_epochs=1, pack_window=1)
    keys = [key for batch in stream for row in batch.row_examples for key in row]
    assert keys == [(0, record["id"]) for record in source if packable(tokenizer, record)]


def test_pipeline_does_not_import_tensorflow():
    code = ("import sys, orca_jax.data.pipeline, orca_jax.data.tokenizer; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_reads_tfds_array_record_shards(tmp_path, source, tokenizer):
    """The real source: shards written by shards.build_dataset, read by two simulated processes, resumed."""
    shards.build_dataset(source, tmp_path / "ds", num_shards=2, validation=0, seed=0)
    split = shards.open_split(tmp_path / "ds", "train")
    streams = [list(process_stream(split, tokenizer, p, 2, num_epochs=1)) for p in range(2)]
    readings = collections.Counter(key for stream in streams for batch in stream
                                   for row in batch.row_examples for key in row)
    assert max(readings.values()) == 1
    assert set(readings) == {(0, record["id"]) for record in source if packable(tokenizer, record)}

    interrupted = process_stream(split, tokenizer, 1, 2, num_epochs=1)
    for _ in range(4):
        next(interrupted)
    resumed = process_stream(shards.open_split(tmp_path / "ds", "train"), tokenizer, 1, 2, num_epochs=1)
    resumed.set_state(json.loads(json.dumps(interrupted.get_state())))
    assert_same_stream(list(resumed), streams[1][4:])


def two_process_worker(process_id: int, tokenizer_path: str, out_path: str) -> None:
    """One of two real JAX processes (4 CPU devices each) reading TrainBatches over a global mesh,
    saving the data state after SAVE_AFTER batches and resuming from it in a fresh iterator."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], num_processes=2, process_id=process_id)
    tokenizer = Tokenizer.load(tokenizer_path)
    source = records(NUM_RECORDS, seed=11, max_response_words=60)
    options = dict(seed=7, num_epochs=1)

    def global_batches():
        return TrainBatches(source, tokenizer, data(), mesh=parallel.make_mesh(), **options)

    def local_part(batch):
        parts = {}
        for name, array in batch.items():
            shards_in_order = sorted(array.addressable_shards, key=lambda shard: shard.index[0].start)
            parts[name] = np.concatenate([np.asarray(shard.data) for shard in shards_in_order])
        return parts

    alone = [batch.arrays for batch in ProcessBatches(
        source, tokenizer, data(), local_batch_size=4, process_index=process_id, process_count=2, **options)]
    # Once this process has run out: padding rows, pad ids as inputs, zeros elsewhere.
    padding = {name: np.full((4, SEQ_LEN), tokenizer.pad_id if name == "inputs" else 0)
               for name in ROW_FIELDS}
    batches, seen, state = global_batches(), [], None
    for step, batch in enumerate(batches):
        seen.append(local_part(batch))
        if step + 1 == SAVE_AFTER:
            state = batches.get_state()
    resumed = global_batches()
    resumed.set_state(json.loads(json.dumps(state)))
    seen_after_resume = [local_part(batch) for batch in resumed]

    def same(got, want):
        return len(got) == len(want) and all(np.array_equal(g[name], w[name])
                                             for g, w in zip(got, want) for name in ROW_FIELDS)

    expected = alone + [padding] * (len(seen) - len(alone))
    pathlib.Path(out_path).write_text(json.dumps({
        "steps": len(seen), "local_batches": len(alone), "all_match": same(seen, expected),
        "resume_matches": same(seen_after_resume, seen[SAVE_AFTER:]), "state": state}))


@pytest.mark.slow
def test_two_real_processes_stay_in_lockstep_and_resume(tmp_path, tokenizer):
    """jax.distributed on CPU: each process's part of the global arrays is its own stream, the process
    that runs out first feeds padding until the other is done (the length agreed once, up front), and
    one saved state (the same on both processes) resumes both."""
    calls = [f"two_process_worker({i}, {str(tokenizer.path)!r}, {str(tmp_path / str(i))!r})" for i in range(2)]
    job = Job([[sys.executable, "-c", f"from test_pipeline import *; {call}"] for call in calls],
              devices_per_process=4, log_dir=tmp_path / "logs")
    assert job.wait(timeout_s=240) == [0, 0], job.outputs()
    results = [json.loads((tmp_path / str(process_id)).read_text()) for process_id in range(2)]
    assert results[0]["steps"] == results[1]["steps"] == max(r["local_batches"] for r in results)
    assert results[0]["local_batches"] != results[1]["local_batches"], "no process ran out early"
    assert all(r["all_match"] and r["resume_matches"] for r in results)
    assert results[0]["state"] == results[1]["state"]
    assert [p["process_index"] for p in results[0]["state"]["shares"]] == [0, 1]
    assert results[0]["state"]["batches_taken"] == SAVE_AFTER
