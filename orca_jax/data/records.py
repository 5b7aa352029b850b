"""OpenOrca-style records from parquet or JSONL(.gz) files: streaming readers and validation.

A record is a dict of four strings: id, system_prompt, question, response (docs/contracts.md). Files
are read a batch or a line at a time, never whole (OpenOrca's GPT-3.5 file is 3 GB).

Readers yield `SourceRow`s: raw values under our field names plus where they came from. Nothing is
judged there; `validate_rows` decides what is a bad row and applies the policy: 'error' stops at the
first bad row with a `BadRowError` naming file, row and field, 'skip' drops it and counts the reason.
Text is carried as raw bytes (parquet) or as str with undecodable bytes escaped (JSONL) until
validation, so invalid UTF-8 is reported as such instead of failing deep inside a reader.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import itertools
import json
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from orca_jax import paths
from orca_jax.errors import UserError

Record = dict[str, str]

FIELDS: tuple[str, ...] = ("id", "system_prompt", "question", "response")
# system_prompt may be empty (Orca's first system message is the empty one); these may not.
NON_EMPTY_FIELDS: tuple[str, ...] = ("id", "response")
# FLAN-v2 sub-collections as OpenOrca names them in the id prefix ("niv.242684").
SUBCOLLECTIONS: tuple[str, ...] = ("cot", "flan", "niv", "t0")

# Reasons a row is bad, as counted in the report.
INVALID_JSON = "invalid_json"
MISSING_FIELD = "missing_field"
NULL_FIELD = "null_field"
NOT_STRING = "not_string"
INVALID_UTF8 = "invalid_utf8"
EMPTY_FIELD = "empty_field"
DUPLICATE_ID = "duplicate_id"
TOO_LONG = "too_long"
BAD_ROW_REASONS: tuple[str, ...] = (INVALID_JSON, MISSING_FIELD, NULL_FIELD, NOT_STRING, INVALID_UTF8,
                                    EMPTY_FIELD, DUPLICATE_ID, TOO_LONG)

BAD_ROW_POLICIES: tuple[str, ...] = ("error", "skip")

# Rows per parquet batch and per token-length measurement: a few MB of OpenOrca text.
BATCH_ROWS = 1024
# Locations kept per skip reason so a report can point at examples of each.
LOCATIONS_KEPT_PER_REASON = 5


class DataError(UserError):
    """Input data or settings that cannot be used. The message says where and why; command-line tools
    print it without a traceback."""


class BadRowError(DataError):
    """A bad row under the 'error' policy."""

    def __init__(self, location: str, field: str | None, reason: str, detail: str):
        self.location, self.field, self.reason, self.detail = location, field, reason, detail
        where = location if field is None else f"{location}, field {field!r}"
        super().__init__(f"{where}: {detail} [{reason}]")


@dataclasses.dataclass(frozen=True)
class SourceRow:
    """One input row before validation.

    `values` maps our field names to raw values: bytes for parquet text columns, str for JSON strings
    (invalid UTF-8 kept as surrogate escapes), or whatever else the file holds. A field whose column is
    absent is absent. `json_error` is set when a JSONL line is not a JSON object.
    """

    source: str  # the file
    row: int  # JSONL: the 1-based line number; parquet: the 0-based row index, as pandas shows it
    unit: str  # 'line' or 'row', how `row` counts
    values: Mapping[str, Any]
    json_error: str | None = None

    @property
    def location(self) -> str:
        return f"{self.source}, {self.unit} {self.row}"


def _source_columns(column_map: Mapping[str, str] | None) -> dict[str, str]:
    """Our field -> the file's column name; unmapped fields keep their own name."""
    column_map = dict(column_map or {})
    unknown = sorted(set(column_map) - set(FIELDS))
    if unknown:
        raise DataError(f"column map names unknown fields {unknown}; fields are {list(FIELDS)}")
    return {field: column_map.get(field, field) for field in FIELDS}


def read_parquet(path: str | pathlib.Path, column_map: Mapping[str, str] | None = None) -> Iterator[SourceRow]:
    """Rows of a parquet file, one record batch at a time. A mapped column missing from the file is an
    error for the whole file, whatever the policy: every row would be bad for the same reason."""
    columns = _source_columns(column_map)
    try:
        # A bucket's file is read through orca_jax.paths (pyarrow's own GCS client would need its own setup).
        parquet_file = pq.ParquetFile(paths.path(path).open("rb") if paths.is_url(path) else path)
        present = set(parquet_file.schema_arrow.names)
        missing = [f"{field} (column {column!r})" for field, column in columns.items() if column not in present]
        if missing:
            raise DataError(f"{path}: no column for {', '.join(missing)}; the file has columns {sorted(present)}")
        row_index = 0
        for batch in parquet_file.iter_batches(batch_size=BATCH_ROWS, columns=sorted(set(columns.values()))):
            values_by_field = {field: _as_python(batch.column(column)) for field, column in columns.items()}
            for offset in range(batch.num_rows):
                values = {field: values[offset] for field, values in values_by_field.items()}
                yield SourceRow(str(path), row_index, "row", values)
                row_index += 1
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from None


def _as_python(column: pa.Array) -> list[Any]:
    # Text columns come back as bytes so that validation, not pyarrow, reports invalid UTF-8.
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = column.cast(pa.large_binary())
    return column.to_pylist()


def read_jsonl(path: str | pathlib.Path, column_map: Mapping[str, str] | None = None) -> Iterator[SourceRow]:
    """Rows of a JSON-lines file, gzip'd or not (told apart by content, not name). Blank lines are
    not rows."""
    columns = _source_columns(column_map)
    source = paths.path(path)
    with source.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    line_number = 0
    try:
        with source.open("rb") as raw, (gzip.open(raw, "rb") if gzipped else contextlib.nullcontext(raw)) as lines:
            for line_number, line in enumerate(lines, start=1):
                if line.strip():
                    yield _jsonl_row(str(path), line_number, line, columns)
    except (OSError, EOFError) as err:  # a truncated or corrupt .gz
        raise DataError(f"{path}: unreadable after line {line_number} ({err})") from None


def _jsonl_row(source: str, line_number: int, line: bytes, columns: Mapping[str, str]) -> SourceRow:
    try:
        row = json.loads(line.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as err:
        return SourceRow(source, line_number, "line", {}, json_error=f"not valid JSON ({err})")
    if not isinstance(row, dict):
        return SourceRow(source, line_number, "line", {}, json_error=f"a JSON {type(row).__name__}, not an object")
    return SourceRow(source, line_number, "line", {field: row[column] for field, column in columns.items()
                                                   if column in row})


def read_files(files: Sequence[str | pathlib.Path],
               column_map: Mapping[str, str] | None = None) -> Iterator[SourceRow]:
    """Rows of each file (local or gs://) in turn; `.parquet` files by pyarrow, anything else as
    JSONL(.gz). A bad column map or a missing file fails before any row is read."""
    _source_columns(column_map)
    for path in files:
        if not paths.path(path).is_file():
            raise DataError(f"input file {path} does not exist")
    for path in files:
        reader = read_parquet if str(path).endswith(".parquet") else read_jsonl
        yield from reader(path, column_map)


def subcollection(record_id: str) -> str:
    """The FLAN-v2 sub-collection an OpenOrca id names ('niv.242684' -> 'niv'), else 'other'."""
    prefix = record_id.split(".", 1)[0]
    return prefix if prefix in SUBCOLLECTIONS else "other"


@dataclasses.dataclass(frozen=True)
class ValidRecord:
    """A record that passed validation, with its token counts when a tokenizer measured it."""

    record: Record
    location: str
    prompt_tokens: int = 0
    response_tokens: int = 0


@dataclasses.dataclass
class ValidationStats:
    """What validation saw: rows read, rows kept, rows skipped per reason (with a few locations)."""

    rows_in: int = 0
    rows_valid: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped_locations: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def count_skip(self, error: BadRowError) -> None:
        self.skipped[error.reason] += 1
        locations = self.skipped_locations.setdefault(error.reason, [])
        if len(locations) < LOCATIONS_KEPT_PER_REASON:
            locations.append(str(error))


# Given records, their (prompt tokens, response tokens) with the response count including EOS, as
# templates.encode_example splits them.
TokenCounter = Callable[[Sequence[Record]], Sequence[tuple[int, int]]]


def validate_rows(rows: Iterable[SourceRow], *, policy: str = "error", stats: ValidationStats | None = None,
                  count_tokens: TokenCounter | None = None, seq_len: int | None = None) -> Iterator[ValidRecord]:
    """The valid records among `rows`, in order.

    With `count_tokens` and `seq_len`, a record whose example is longer than one packed row is bad:
    an n-token example occupies n - 1 positions (inputs drop the last token, docs/contracts.md).
    Rows are measured a batch at a time because the tokenizer encodes batches in parallel.
    """
    if policy not in BAD_ROW_POLICIES:
        raise DataError(f"bad-row policy {policy!r} is not one of {list(BAD_ROW_POLICIES)}")
    if (count_tokens is None) != (seq_len is None):
        raise ValueError("count_tokens and seq_len go together")
    stats = ValidationStats() if stats is None else stats
    first_seen: dict[str, str] = {}

    def reject(error: BadRowError) -> None:
        if policy == "error":
            raise error
        stats.count_skip(error)

    rows = iter(rows)
    while batch := list(itertools.islice(rows, BATCH_ROWS)):
        stats.rows_in += len(batch)
        # Problems are acted on in row order below, so 'error' always reports the first bad row.
        outcomes = [_record_or_error(row) for row in batch]
        records = [outcome for outcome in outcomes if not isinstance(outcome, BadRowError)]
        token_counts = iter(count_tokens(records) if count_tokens and records else [(0, 0)] * len(records))
        for row, outcome in zip(batch, outcomes):
            if isinstance(outcome, BadRowError):
                reject(outcome)
                continue
            record, (prompt_tokens, response_tokens) = outcome, next(token_counts)
            record_id = record["id"]
            if record_id in first_seen:
                reject(BadRowError(row.location, "id", DUPLICATE_ID,
                                   f"id {record_id!r} already used at {first_seen[record_id]}"))
                continue
            first_seen[record_id] = row.location
            if seq_len is not None and prompt_tokens + response_tokens - 1 > seq_len:
                reject(BadRowError(row.location, None, TOO_LONG,
                                   f"{prompt_tokens} prompt + {response_tokens} response tokens do not fit "
                                   f"a sequence of {seq_len}"))
                continue
            stats.rows_valid += 1
            yield ValidRecord(record, row.location, prompt_tokens, response_tokens)


def _record_or_error(row: SourceRow) -> Record | BadRowError:
    try:
        return _record_of(row)
    except BadRowError as error:
        return error


def _record_of(row: SourceRow) -> Record:
    """The record of one row; raises the BadRowError of its first problem."""
    if row.json_error is not None:
        raise BadRowError(row.location, None, INVALID_JSON, row.json_error)
    record = {}
    for field in FIELDS:
        if field not in row.values:
            raise BadRowError(row.location, field, MISSING_FIELD, "missing")
        value = row.values[field]
        if value is None:
            raise BadRowError(row.location, field, NULL_FIELD, "null")
        record[field] = _text_of(row.location, field, value)
    for field in NON_EMPTY_FIELDS:
        if not record[field].strip():
            raise BadRowError(row.location, field, EMPTY_FIELD, "empty")
    return record


def _text_of(location: str, field: str, value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadRowError(location, field, INVALID_UTF8,
                              f"not valid UTF-8 ({err.reason} at byte {err.start})") from None
    if not isinstance(value, str):
        raise BadRowError(location, field, NOT_STRING, f"{type(value).__name__} value {value!r:.40}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        # Undecodable JSONL bytes (surrogate escapes) or a JSON escape of a lone surrogate (e.g. "\udc80").
        raise BadRowError(location, field, INVALID_UTF8, f"not valid UTF-8 (at character {err.start})") from None
    return value
