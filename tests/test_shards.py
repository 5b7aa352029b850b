"""The TFDS ArrayRecord builder: round trip, split choice, shard count, determinism, atomic builds."""

import json
import pathlib

import grain
import pytest

from orca_jax.data import shards
from orca_jax.data.records import DataError


def _records(count: int, start: int = 0) -> list[dict]:
    return [{"id": f"t0.{i}", "system_prompt": "" if i % 2 else "You are an AI assistant.",
             "question": f"What is {i} + {i}? \u00e9\u4e2d", "response": f"{i} + {i} = {2 * i}.\nAnswer: {2 * i}"}
            for i in range(start, start + count)]


def _split_records(dataset_dir, split) -> list[dict]:
    return list(shards.open_split(dataset_dir, split))


def _by_id(records) -> dict:
    return {record["id"]: record for record in records}


def test_every_record_lands_in_exactly_one_split_and_shard_count_is_honoured(tmp_path):
    records = _records(300)
    written = []
    counts = shards.build_dataset(records, tmp_path / "ds", num_shards=3, validation=0.1, seed=0,
                                  on_write=lambda split, record: written.append((split, record["id"])))
    train, validation = _split_records(tmp_path / "ds", "train"), _split_records(tmp_path / "ds", "validation")
    assert sorted(train + validation, key=lambda r: r["id"]) == sorted(records, key=lambda r: r["id"])
    assert counts == {"train": len(train), "validation": len(validation)}
    assert 10 <= len(validation) <= 50  # 10% of 300, give or take the hash
    expected = [("train", r["id"]) for r in train] + [("validation", r["id"]) for r in validation]
    assert sorted(written) == sorted(expected)
    info = json.loads((tmp_path / "ds" / "dataset_info.json").read_text())
    for split_info in info["splits"]:
        assert len(split_info["shardLengths"]) == 3
        assert len(list((tmp_path / "ds").glob(f"*-{split_info['name']}.array_record-*-of-00003"))) == 3


def test_validation_membership_is_stable_under_more_data_and_new_order(tmp_path):
    records = _records(200)
    shards.build_dataset(records, tmp_path / "a", num_shards=1, validation=0.2, seed=5)
    shards.build_dataset(list(reversed(_records(400))), tmp_path / "b", num_shards=1, validation=0.2, seed=5)
    shards.build_dataset(records, tmp_path / "c", num_shards=1, validation=0.2, seed=6)
    held_out = {name: set(_by_id(_split_records(tmp_path / name, "validation"))) for name in "abc"}
    shared_ids = set(_by_id(records))
    assert held_out["a"] == held_out["b"] & shared_ids
    assert held_out["a"] != held_out["c"]


def test_same_records_and_seed_give_identical_shards(tmp_path):
    for name in ("one", "two"):
        shards.build_dataset(_records(120), tmp_path / name, num_shards=2, validation=0.1, seed=3)
    files = sorted(p.name for p in (tmp_path / "one").glob("*.array_record-*"))
    assert len(files) == 4
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert _split_records(tmp_path / "one", "train") == _split_records(tmp_path / "two", "train")


def test_validation_count_holds_out_exactly_that_many(tmp_path):
    counts = shards.build_dataset(_records(150), tmp_path / "ds", num_shards=2, validation=25, seed=0)
    assert counts == {"train": 125, "validation": 25}
    assert len(shards.open_split(tmp_path / "ds", "validation")) == 25


def test_no_validation_writes_only_train(tmp_path):
    shards.build_dataset(_records(20), tmp_path / "ds", num_shards=2, validation=0, seed=0)
    assert len(shards.open_split(tmp_path / "ds", "train")) == 20
    with pytest.raises(DataError, match="no split 'validation'"):
        shards.open_split(tmp_path / "ds", "validation")


def _leftovers(parent: pathlib.Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


@pytest.mark.parametrize("failure", [RuntimeError("reader broke"), KeyboardInterrupt()])
def test_a_build_that_stops_midway_leaves_nothing(tmp_path, failure):
    def records_then_failure():
        yield from _records(50)
        raise failure

    with pytest.raises(type(failure)):
        shards.build_dataset(records_then_failure(), tmp_path / "ds", num_shards=1, validation=0.1)
    assert _leftovers(tmp_path) == []
    with pytest.raises(DataError, match="not a finished dataset"):
        shards.open_split(tmp_path / "ds", "train")


def test_added_files_appear_with_the_dataset_or_not_at_all(tmp_path):
    def add_note(dataset_dir):
        assert (dataset_dir / "dataset_info.json").is_file() and not (tmp_path / "ds").exists()
        (dataset_dir / "note.txt").write_text("built")

    shards.build_dataset(_records(10), tmp_path / "ds", num_shards=1, validation=0, add_files=add_note)
    assert (tmp_path / "ds" / "note.txt").read_text() == "built"

    def fail(dataset_dir):
        raise OSError("disk full")

    with pytest.raises(OSError):
        shards.build_dataset(_records(10), tmp_path / "other", num_shards=1, validation=0, add_files=fail)
    assert _leftovers(tmp_path) == ["ds"]


def test_too_few_records_for_the_shards_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="validation split has 2 records, fewer than the 4 shards"):
        shards.build_dataset(_records(40), tmp_path / "ds", num_shards=4, validation=2)
    assert _leftovers(tmp_path) == []


def test_existing_output_is_not_overwritten(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(DataError, match="already exists"):
        shards.build_dataset(_records(5), tmp_path / "ds", num_shards=1)


@pytest.mark.parametrize("validation", [1.0, -1, "0.1", True])
def test_bad_validation_sizes_are_rejected(tmp_path, validation):
    with pytest.raises(DataError):
        shards.build_dataset(_records(5), tmp_path / "ds", num_shards=1, validation=validation)


def test_split_is_a_grain_source(tmp_path):
    shards.build_dataset(_records(30), tmp_path / "ds", num_shards=1, validation=0)
    source = shards.open_split(tmp_path / "ds", "train")
    dataset = grain.MapDataset.source(source)
    assert sorted(record["id"] for record in dataset) == sorted(_by_id(_records(30)))
    assert source.__getitems__([3, 1]) == [source[3], source[1]]
    with pytest.raises(IndexError):
        source[30]
