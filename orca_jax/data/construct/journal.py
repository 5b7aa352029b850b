"""Append-only JSON Lines files that survive `kill -9`: the teacher's answers and its failures.

Every record is one `write()` of a complete line on an O_APPEND descriptor, then fsync, so a
record is either wholly on disk or absent. Only a power cut in mid-write can leave a line without
its newline; opening the journal cuts such a tail off before anything is appended or read, so no
reader ever sees a half record spliced to a whole one.
"""

from __future__ import annotations

import json
import os
import pathlib

from orca_jax.data.jsonl import read_objects, require_strings

_TAIL_CHUNK = 1 << 16


def cut_partial_tail(path: pathlib.Path) -> int:
    """Truncate bytes after the last newline; return how many were cut."""
    with open(path, "rb+") as journal:
        size = journal.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            journal.seek(start)
            newline = journal.read(end - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        journal.truncate(keep)
        return size - keep


class Journal:
    """One JSONL file of records keyed by `id`, opened for appending."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        self.repaired_bytes = cut_partial_tail(path)
        self._descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)

    def ids(self) -> set[str]:
        ids = set()
        for line_number, record in read_objects(self.path):
            require_strings(self.path, line_number, record, ("id",))
            ids.add(record["id"])
        return ids

    def append(self, record: dict) -> None:
        line = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        while line:
            written = os.write(self._descriptor, line)
            line = line[written:]
        os.fsync(self._descriptor)

    def clear(self) -> None:
        os.ftruncate(self._descriptor, 0)
        os.fsync(self._descriptor)

    def close(self) -> None:
        os.close(self._descriptor)

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
