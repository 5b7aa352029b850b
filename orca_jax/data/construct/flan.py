"""Streaming readers of FLAN-v2 sub-collection exports (parquet or JSON Lines, optionally gzipped).

An export row carries a query, its target, the task it came from and the template type
("zs_opt", "zs_noopt", "fs_opt", ...); the column names differ between exports, so they are mapped
by config. Rows are read in file order, a batch at a time, and only the columns a pass needs: the
counting pass of sampling never touches the (large) query text of a parquet export.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import pathlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from orca_jax.data.jsonl import RecordFormatError, read_objects

_PARQUET_BATCH_ROWS = 8192


@dataclasses.dataclass(frozen=True)
class FlanColumns:
    """Which column of an export holds each field."""

    query: str = "inputs"
    target: str = "targets"
    task: str = "task_name"
    template_type: str = "template_type"


class FlanQuery(NamedTuple):
    task: str
    template_type: str
    query: str
    target: str


def expand_paths(patterns: Sequence[str]) -> list[pathlib.Path]:
    """Glob each pattern in order; a pattern that matches nothing is an error, not an empty collection."""
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"no FLAN export matches {pattern!r}")
        paths += [pathlib.Path(match) for match in matches]
    return paths


def _parquet_rows(path: pathlib.Path, column_names: Sequence[str]) -> Iterator[tuple[int, tuple]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    missing = [name for name in column_names if name not in parquet.schema_arrow.names]
    if missing:
        raise RecordFormatError(f"{path}: no column {missing[0]!r} (columns: {parquet.schema_arrow.names})")
    row_number = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=list(column_names)):
        for values in zip(*(batch.column(name).to_pylist() for name in column_names)):
            row_number += 1
            yield row_number, values


def _jsonl_rows(path: pathlib.Path, column_names: Sequence[str]) -> Iterator[tuple[int, tuple]]:
    for line_number, row in read_objects(path):
        yield line_number, tuple(row.get(name) for name in column_names)


def _string_rows(path: pathlib.Path, fields: dict[str, str]) -> Iterator[tuple]:
    """The values of `fields` (field -> column) in each row, checked to be strings."""
    reader = _parquet_rows if path.name.endswith(".parquet") else _jsonl_rows
    for row_number, values in reader(path, list(fields.values())):
        if all(type(value) is str for value in values):
            yield values
            continue
        for value, (field, column) in zip(values, fields.items()):
            if type(value) is not str:
                found = "missing" if value is None else f"a {type(value).__name__}"
                raise RecordFormatError(
                    f"{path}: row {row_number}: field {field!r} (column {column!r}) is {found}, not a string"
                )


def read_export(path: pathlib.Path, columns: FlanColumns) -> Iterator[FlanQuery]:
    """Every row of one export file (all template types), validated."""
    fields = {field: getattr(columns, field) for field in FlanQuery._fields}
    return (FlanQuery(*values) for values in _string_rows(path, fields))


def read_zero_shot(
    paths: Sequence[pathlib.Path], columns: FlanColumns, zero_shot_template_types: Sequence[str]
) -> Iterator[FlanQuery]:
    """The zero-shot queries of several exports, in file order."""
    allowed = frozenset(zero_shot_template_types)
    for path in paths:
        yield from (query for query in read_export(path, columns) if query.template_type in allowed)


def count_zero_shot_per_task(
    paths: Sequence[pathlib.Path], columns: FlanColumns, zero_shot_template_types: Sequence[str]
) -> collections.Counter:
    """Zero-shot queries per task, reading only the task and template-type columns."""
    allowed = frozenset(zero_shot_template_types)
    counts = collections.Counter()
    fields = {"task": columns.task, "template_type": columns.template_type}
    for path in paths:
        counts.update(task for task, template_type in _string_rows(path, fields) if template_type in allowed)
    return counts
