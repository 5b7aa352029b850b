"""Streaming readers of FLAN-v2 sub-collection exports (parquet or JSON Lines, optionally gzipped).

An export row carries a query, its target, the task it came from and the template type
("zs_opt", "zs_noopt", "fs_opt", ...); the column names differ between exports, so they are mapped
by config. Rows are read in file order, a batch at a time, never the whole file at once.
"""

from __future__ import annotations

import dataclasses
import glob
import pathlib
from collections.abc import Iterator, Sequence

from orca_jax.data.construct.jsonl import RecordFormatError, read_objects


@dataclasses.dataclass(frozen=True)
class FlanColumns:
    """Which column of an export holds each field."""

    query: str = "inputs"
    target: str = "targets"
    task: str = "task_name"
    template_type: str = "template_type"


@dataclasses.dataclass(frozen=True)
class FlanQuery:
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


def _parquet_rows(path: pathlib.Path, columns: FlanColumns) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    wanted = list(dataclasses.asdict(columns).values())
    parquet = pq.ParquetFile(path)
    missing = [name for name in wanted if name not in parquet.schema_arrow.names]
    if missing:
        raise RecordFormatError(f"{path}: no column {missing[0]!r} (columns: {parquet.schema_arrow.names})")
    rows = (row for batch in parquet.iter_batches(batch_size=4096, columns=wanted) for row in batch.to_pylist())
    yield from enumerate(rows, start=1)


def read_export(path: pathlib.Path, columns: FlanColumns) -> Iterator[FlanQuery]:
    """Every row of one export file (all template types), validated."""
    rows = _parquet_rows(path, columns) if path.name.endswith(".parquet") else read_objects(path)
    fields = dataclasses.asdict(columns)
    for row_number, row in rows:
        for field, column in fields.items():
            if not isinstance(row.get(column), str):
                found = "missing" if row.get(column) is None else f"a {type(row.get(column)).__name__}"
                raise RecordFormatError(
                    f"{path}: row {row_number}: field {field!r} (column {column!r}) is {found}, not a string"
                )
        yield FlanQuery(**{field: row[column] for field, column in fields.items()})


def read_zero_shot(
    paths: Sequence[pathlib.Path], columns: FlanColumns, zero_shot_template_types: Sequence[str]
) -> Iterator[FlanQuery]:
    """The zero-shot queries of several exports, in file order."""
    allowed = frozenset(zero_shot_template_types)
    for path in paths:
        yield from (query for query in read_export(path, columns) if query.template_type in allowed)
