"""Local paths and gs:// URLs through one layer: etils.epath, the path layer orbax itself uses.

`path(p)` is a pathlib.Path for a local path (so local behaviour is exactly pathlib's) and an
epath.Path for a URL such as gs://bucket/run (etils reaches GCS through fsspec's gcsfs when TensorFlow
is absent). Both have the methods the code uses (`/`, read_text/bytes, write_text/bytes, open, exists,
is_file, is_dir, glob, iterdir, mkdir, unlink), so a module that builds its paths with `path()` reads
and writes either. pathlib.Path must never see a URL: it folds "gs://b/x" into "gs:/b/x".

What reads and writes gs:// directly (give it the URL):
  orbax: training checkpoints and params directories (array bytes through tensorstore's GCS driver);
  tfds.builder_from_directory(...).as_data_source(): the shards, through the ArrayRecord reader;
  JAX's persistent compilation cache (jax_compilation_cache_dir, through epath);
  tensorboardX's SummaryWriter (google-cloud-storage; it re-uploads the events file at each flush);
  the JSON, JSONL and text files of training, the demo, prepare-data and evaluate, through `path()`
  (convert-weights, weight-diff, construct, chat and generate still take local paths only).
What needs bytes: sentencepiece cannot open a URL (data/tokenizer.py reads the model's bytes and
  loads them); matplotlib figures are rendered to memory, then written.
What is built locally and copied up: the TFDS ArrayRecord writer (shards, `copy_tree` with
  dataset_info.json last) and sentencepiece training (the model file) write local files only.
GCS has no append: `AppendedText` keeps the object's text and rewrites it whole at each write
  (metrics.jsonl, evaluation journals). GCS has no rename: `move_tree` copies each object, then deletes.
GCS has no directories either: a prefix exists once an object under it does, and mkdir is a no-op.
"""

from __future__ import annotations

import os
import pathlib
import re
import uuid
from typing import Union

from etils import epath

from orca_jax.errors import UserError

AnyPath = Union[pathlib.Path, epath.Path]
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class PathError(UserError):
    """A directory or file that cannot be used (missing bucket, no permission); the message names it."""


def is_url(p: str | os.PathLike) -> bool:
    """True for gs://... (any scheme://), False for a local path."""
    return bool(_URL.match(os.fspath(p)))


def path(p: str | os.PathLike) -> AnyPath:
    """pathlib.Path for a local path, epath.Path for a URL (an epath.Path passes through unchanged)."""
    if is_url(p):
        return p if isinstance(p, epath.Path) else epath.Path(os.fspath(p))
    return pathlib.Path(p)


def absolute(p: str | os.PathLike) -> AnyPath:
    """`path(p)`, made absolute when local (a URL always is)."""
    resolved = path(p)
    return resolved if is_url(resolved) else resolved.absolute()


def size(p: str | os.PathLike) -> int:
    """Bytes in the file at `p`."""
    stat = path(p).stat()
    return stat.st_size if hasattr(stat, "st_size") else stat.length


def write_atomic(p: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` so that a reader sees the old content or the new, never a part: locally through a
    `.partial` file renamed over `p`; in a bucket an object appears only once its upload completed."""
    target = path(p)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_url(target):
        partial = target
    else:
        partial = target.with_name(target.name + ".partial")
    if isinstance(data, str):
        partial.write_text(data, encoding="utf-8")
    else:
        partial.write_bytes(data)
    if partial != target:
        partial.replace(target)


class AppendedText:
    """A text file that only grows. Locally an ordinary append-mode file; in a bucket the whole text
    is kept here (read back once when opened, so a resumed run keeps the history) and each `write`
    uploads it again, so what was written is in the bucket as soon as `write` returns."""

    def __init__(self, p: str | os.PathLike):
        self.path = path(p)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if is_url(self.path):
            self._text = self.path.read_text(encoding="utf-8") if self.path.is_file() else ""
            self._file = None
        else:
            self._file = open(self.path, "a", encoding="utf-8")

    def write(self, text: str, sync: bool = False) -> None:
        if self._file is None:
            self._text += text
            self.path.write_text(self._text, encoding="utf-8")
            return
        self._file.write(text)
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def append_text(p: str | os.PathLike, text: str) -> None:
    """Append `text` to the file at `p`, synced to disk (in a bucket: the object rewritten whole)."""
    appended = AppendedText(p)
    try:
        appended.write(text, sync=True)
    finally:
        appended.close()


def _files(directory: AnyPath) -> list[AnyPath]:
    """Every file under `directory`, depth first (epath refuses `**` on GCS, and its walk drops the scheme)."""
    found = []
    for child in sorted(directory.iterdir()):
        found += _files(child) if child.is_dir() else [child]
    return found


def copy_tree(source: str | os.PathLike, target: str | os.PathLike, last: tuple[str, ...] = ()) -> None:
    """Copy every file under the local directory `source` to `target` (local or a bucket), the files
    named in `last` after all others: a reader that waits for those never sees a part."""
    source, target = pathlib.Path(source), path(target)
    files = _files(source)
    for file in sorted(files, key=lambda f: f.name in last):
        destination = target / str(file.relative_to(source))
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(file.read_bytes())


def move_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move directory `source` to `target`: a rename locally; in a bucket (no rename) every object is
    copied, then the source deleted, so an interruption leaves a complete source and part of a copy."""
    source, target = path(source), path(target)
    if not is_url(source):
        os.rename(source, target)
        return
    for file in _files(source):
        destination = target / str(file.relative_to(source))
        file.copy(destination)
    source.rmtree()


def check_writable(directory: str | os.PathLike, what: str) -> None:
    """Write and delete a probe object under `directory`; PathError in one line if either fails (a
    bucket that does not exist, no permission, a read-only disk), before a job does any work."""
    target = path(directory)
    probe = target / f".orca-jax-probe-{uuid.uuid4().hex}"
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe.write_text("orca-jax checks it can write here\n")
        probe.unlink()
    except Exception as error:  # any failure means the job could not save anything there
        raise PathError(f"{what} {directory} is not writable: {_reason(target, error)}") from None


def _reason(target: AnyPath, error: Exception) -> str:
    text = str(target)
    if text.startswith("gs://"):
        bucket = "gs://" + text[len("gs://"):].split("/")[0]
        try:
            found = path(bucket).exists()
        except Exception:  # noqa: BLE001 - the write's own error below says more
            found = True
        if not found:
            return f"bucket {bucket} does not exist (or these credentials cannot see it)"
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0] if message else ''}".rstrip(": ")

