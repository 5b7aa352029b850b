"""Readers (JSONL, gzip'd JSONL, parquet with column mapping) and every bad-row reason under both policies."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orca_jax.data import records as records_lib


def _record(i: int) -> dict:
    return {"id": f"niv.{i}", "system_prompt": "" if i % 3 == 0 else f"system {i}",
            "question": f"question {i} \u00e9\u4e2d", "response": f"response {i}\nAnswer: {i}"}


def _jsonl_bytes(rows) -> bytes:
    return b"".join(row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n" for row in rows)


def _valid(rows, **kwargs):
    return list(records_lib.validate_rows(rows, **kwargs))


def test_jsonl_plain_and_gzipped_give_the_records_in_order(tmp_path):
    expected = [_record(i) for i in range(7)]
    plain, zipped = tmp_path / "part.jsonl", tmp_path / "part.jsonl.gz"
    # A blank line is not a row, but it still counts for the line numbers of the rows after it.
    content = _jsonl_bytes(expected[:3]) + b"\n" + _jsonl_bytes(expected[3:])
    plain.write_bytes(content)
    zipped.write_bytes(gzip.compress(content))
    for path in (plain, zipped):
        valid = _valid(records_lib.read_files([path]))
        assert [v.record for v in valid] == expected
        assert valid[3].location == f"{path}, line 5"


def test_parquet_streams_batches_and_maps_columns(tmp_path):
    expected = [_record(i) for i in range(2 * records_lib.BATCH_ROWS + 5)]
    renamed = {"id": "uid", "system_prompt": "system", "question": "prompt", "response": "completion"}
    table = pa.table({renamed[field]: [r[field] for r in expected] for field in records_lib.FIELDS}
                     | {"unused": list(range(len(expected)))})
    path = tmp_path / "part.parquet"
    pq.write_table(table, path, row_group_size=700)
    valid = _valid(records_lib.read_files([path], column_map=renamed))
    assert [v.record for v in valid] == expected
    assert valid[1500].location == f"{path}, row 1500"


def test_parquet_without_a_mapped_column_names_file_and_column(tmp_path):
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"id": ["a"], "system_prompt": [""], "question": ["q"]}), path)
    with pytest.raises(records_lib.DataError, match=r"part\.parquet.*response \(column 'answer'\)"):
        list(records_lib.read_files([path], column_map={"response": "answer"}))


def test_unknown_field_in_column_map_and_missing_file_are_errors(tmp_path):
    with pytest.raises(records_lib.DataError, match="unknown fields"):
        list(records_lib.read_files([tmp_path / "x.jsonl"], column_map={"prompt": "q"}))
    with pytest.raises(records_lib.DataError, match="does not exist"):
        list(records_lib.read_files([tmp_path / "missing.jsonl"]))


def test_corrupt_files_are_data_errors_naming_the_file(tmp_path):
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(_jsonl_bytes([_record(i) for i in range(200)]))[:-40])
    with pytest.raises(records_lib.DataError, match=rf"{truncated}: unreadable after line \d+"):
        list(records_lib.read_files([truncated]))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(records_lib.DataError, match=rf"{garbage}: not a readable parquet file"):
        list(records_lib.read_files([garbage]))


def _without(record: dict, field: str) -> dict:
    return {k: v for k, v in record.items() if k != field}


# reason -> (the bad JSONL line placed as line 3 after two good rows, the field the error names)
BAD_JSONL_LINES = {
    records_lib.INVALID_JSON: (b'{"id": "x", "question": \n', None),
    records_lib.MISSING_FIELD: (_without(_record(9), "response"), "response"),
    records_lib.NULL_FIELD: (_record(9) | {"question": None}, "question"),
    records_lib.NOT_STRING: (_record(9) | {"id": 9}, "id"),
    records_lib.INVALID_UTF8: (json.dumps(_record(9)).encode().replace(b"response 9", b"resp\xffnse") + b"\n",
                               "response"),
    records_lib.EMPTY_FIELD: (_record(9) | {"response": " \n"}, "response"),
    records_lib.DUPLICATE_ID: (_record(1), "id"),
}


@pytest.mark.parametrize("reason", sorted(BAD_JSONL_LINES))
def test_each_bad_jsonl_row_is_an_error_or_a_counted_skip(tmp_path, reason):
    bad_line, field = BAD_JSONL_LINES[reason]
    good = [_record(0), _record(1), _record(3), _record(4)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(_jsonl_bytes([good[0], good[1], bad_line, good[2], good[3]]))

    with pytest.raises(records_lib.BadRowError) as caught:
        _valid(records_lib.read_files([path]))
    assert caught.value.reason == reason
    assert str(caught.value).startswith(f"{path}, line 3")
    assert (f"field {field!r}" in str(caught.value)) == (field is not None)

    stats = records_lib.ValidationStats()
    valid = _valid(records_lib.read_files([path]), policy="skip", stats=stats)
    assert [v.record for v in valid] == good
    assert (stats.rows_in, stats.rows_valid, dict(stats.skipped)) == (5, 4, {reason: 1})
    assert stats.skipped_locations[reason][0].startswith(f"{path}, line 3")


def test_bad_parquet_values_name_row_and_field(tmp_path):
    path = tmp_path / "in.parquet"
    table = pa.table({
        "id": pa.array([b"a", b"b", b"c"], pa.binary()),
        "system_prompt": pa.array([b"", b"", b""], pa.binary()),
        "question": pa.array([b"q", b"q \xe9", b"q"], pa.binary()),  # Latin-1, not UTF-8
        "response": pa.array([b"r", b"r", None], pa.binary()),
    })
    pq.write_table(table, path)
    with pytest.raises(records_lib.BadRowError, match=rf"{path}, row 1, field 'question': not valid UTF-8"):
        _valid(records_lib.read_files([path]))
    stats = records_lib.ValidationStats()
    valid = _valid(records_lib.read_files([path]), policy="skip", stats=stats)
    assert [v.record["id"] for v in valid] == ["a"]
    assert dict(stats.skipped) == {records_lib.INVALID_UTF8: 1, records_lib.NULL_FIELD: 1}

    numeric_ids = tmp_path / "numeric.parquet"
    pq.write_table(table.set_column(0, "id", pa.array([1, 2, 3])), numeric_ids)
    with pytest.raises(records_lib.BadRowError, match=r"row 0, field 'id': int value 1, not a string"):
        _valid(records_lib.read_files([numeric_ids]))


def _character_counts(batch):
    # The validator's contract with its token counter: (prompt tokens, response tokens incl. EOS).
    # Counting characters makes the boundary easy to compute by hand.
    return [(len(r["question"]), len(r["response"]) + 1) for r in batch]


def test_too_long_means_the_example_does_not_fit_one_packed_row():
    # question 4 + response 5 + EOS = 10 tokens, which occupy 9 positions once shifted.
    row = records_lib.SourceRow("mem", 1, "line", {"id": "a", "system_prompt": "", "question": "abcd",
                                                   "response": "efghi"})
    kept = _valid([row], count_tokens=_character_counts, seq_len=9)
    assert (kept[0].prompt_tokens, kept[0].response_tokens) == (4, 6)
    with pytest.raises(records_lib.BadRowError, match="4 prompt \\+ 6 response tokens do not fit a sequence of 8"):
        _valid([row], count_tokens=_character_counts, seq_len=8)
    stats = records_lib.ValidationStats()
    assert _valid([row], policy="skip", stats=stats, count_tokens=_character_counts, seq_len=8) == []
    assert dict(stats.skipped) == {records_lib.TOO_LONG: 1}


def test_a_skipped_duplicate_keeps_the_first_occurrence_across_files(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_bytes(_jsonl_bytes([_record(1)]))
    second.write_bytes(_jsonl_bytes([_record(1) | {"response": "other"}]))
    with pytest.raises(records_lib.BadRowError, match=rf"already used at {first}, line 1"):
        _valid(records_lib.read_files([first, second]))
    valid = _valid(records_lib.read_files([first, second]), policy="skip")
    assert [v.record for v in valid] == [_record(1)]


def test_error_names_the_first_bad_row_whatever_its_kind(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(_jsonl_bytes([_record(1), _record(2), _record(1), _record(3) | {"question": None}]))
    with pytest.raises(records_lib.BadRowError, match=rf"^{path}, line 3, field 'id'") as caught:
        _valid(records_lib.read_files([path]))
    assert caught.value.reason == records_lib.DUPLICATE_ID


def test_unknown_policy_is_rejected():
    with pytest.raises(records_lib.DataError, match="policy"):
        _valid([], policy="ignore")


@pytest.mark.parametrize("record_id, expected", [
    ("niv.242684", "niv"), ("t0.1", "t0"), ("cot.add.stage1.3", "cot"), ("flan.77", "flan"),
    ("nivx.1", "other"), ("12345", "other"),
])
def test_subcollection_comes_from_the_id_prefix(record_id, expected):
    assert records_lib.subcollection(record_id) == expected
