"""JSON Lines (optionally gzipped), read one object at a time with errors that name file and line: the one
JSONL reader every layer uses (teacher data, benchmark files, metrics, the demo)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from collections.abc import Iterator

from orca_jax import paths
from orca_jax.errors import UserError


class RecordFormatError(UserError):
    """Input that cannot be used; the message names the file, the row and the field."""


def _lines(path: paths.AnyPath, stack: contextlib.ExitStack):
    if path.suffix != ".gz":
        return stack.enter_context(path.open("r", encoding="utf-8"))
    return stack.enter_context(gzip.open(stack.enter_context(path.open("rb")), "rt", encoding="utf-8"))


def read_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a local or gs:// file."""
    path = paths.path(path)
    with contextlib.ExitStack() as stack:
        lines = _lines(path, stack)
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordFormatError(f"{path}: line {line_number}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise RecordFormatError(f"{path}: line {line_number}: a JSON object was expected")
            yield line_number, row


def require_strings(path: paths.AnyPath, line_number: int, row: dict, fields) -> None:
    for field in fields:
        value = row.get(field)
        if not isinstance(value, str):
            found = "missing" if value is None else f"a {type(value).__name__}"
            raise RecordFormatError(f"{path}: line {line_number}: field {field!r} is {found}, not a string")
