"""Training checkpoints: one orbax CheckpointManager, one checkpoint per saved step.

A checkpoint holds four items:
    params     the parameters           (StandardSave; restored onto any mesh via target shardings)
    opt_state  the optimizer state      (StandardSave; a new stage does not read it)
    data       the data iterator state  (JSON from the pipeline's get_state())
    meta       where training stands    (JSON: stage index and name, step in the stage, RNG seed,
                                         the whole config)
Step numbers are global (they keep counting across stages), so "the latest checkpoint" alone says
which stage and step to resume from. Saves are asynchronous: `save` returns once the arrays are
copied off the accelerator and the files are written in the background.

What a committed step holds on disk (orbax-checkpoint 0.12.8; `<step>` is the global step number).
Orbax writes a step into `.orbax-checkpoint-tmp-*` and renames it to `<step>` only once every item
is written (on GCS, where there is no rename, the commit is `commit_success.txt` instead), so a step
directory that exists was complete when it was committed:

    <step>/_CHECKPOINT_METADATA        JSON: item handlers, commit time
    <step>/commit_success.txt          written last (locally as well as on GCS in this orbax version)
    <step>/params/, <step>/opt_state/  a StandardSave pytree each:
        _METADATA                      JSON: the tree structure, each leaf's type and dtype
        _sharding                      JSON: each leaf's sharding when saved
        array_metadatas/process_<i>    JSON: each leaf's shape and chunk shape
        manifest.ocdbt, d/<hash>       the OCDBT database: the array bytes and their index
        ocdbt.process_<i>/             each process's own part, merged into the above on commit
        commit_success.txt
    <step>/data/metadata               JSON: the data iterator state        (+ commit_success.txt)
    <step>/meta/metadata               JSON: the Position and the config    (+ commit_success.txt)

A step can still become unreadable afterwards (a disk or bucket losing or truncating a file, a copy
cut short). `unreadable(step)` checks the JSON files and commit markers without reading any arrays;
a failing array read shows up at restore time as an error `unreadable_error` recognises. Either way
the loop moves the step aside (`move_aside`: renamed `<step>.corrupt-<time>`, never deleted; orbax
ignores such names; in a bucket, where there is no rename, copied object by object and then deleted)
and resumes from the newest readable step. The directory may be gs://... (orbax writes buckets itself).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from orca_jax import paths
from orca_jax.train.step import TrainState

ITEMS = ("params", "opt_state", "data", "meta")
PYTREE_ITEMS = ("params", "opt_state")
JSON_ITEMS = ("data", "meta")
COMMIT_MARKER = "commit_success.txt"
# Status codes of tensorstore's read errors that mean a file is missing, short or garbled, as opposed to
# a restore that does not fit (a changed model: shapes or tree differ), which must not move anything.
_UNREADABLE_CODES = ("DATA_LOSS", "NOT_FOUND", "OUT_OF_RANGE", "Error reading", "Error decoding")
_QUOTED_PATH = re.compile(r'"(/[^"]+|gs://[^"]+)"')
_GCS_URL = re.compile(r'gs://[^\s"\'\[\]]+')  # tensorstore names a bucket's files unquoted


_MARKER_TEXT = "Checkpoint commit was successful to "


def _complete_marker(text: str, name: str) -> bool:
    """orbax writes "Checkpoint commit was successful to <path>", the path ending in the step or item
    name; a cut-short copy of that is not complete. Other texts (other orbax versions) pass if non-empty."""
    text = text.strip()
    if text.startswith(_MARKER_TEXT):
        return text.endswith("/" + name)
    return bool(text) and not _MARKER_TEXT.startswith(text)


def _quiet_failed_read() -> None:
    """After orbax failed to read a damaged step: keep its other, abandoned reads from printing.

    A failed restore leaves orbax's concurrent array reads behind; when they finish they log "Task
    exception was never retrieved" with a traceback each (asyncio) and tensorstore's callbacks print
    "Event loop is closed" (an unraisable exception) for every one. The step is reported in one line
    instead, so exactly those two kinds of message are dropped (installed at the first restore); nothing
    else is.
    """
    if getattr(_quiet_failed_read, "installed", False):
        return
    _quiet_failed_read.installed = True

    def unretrieved_read_error(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (str(record.msg).startswith("Task exception was never retrieved")
                    and (error is None or any(code in str(error) for code in _UNREADABLE_CODES)))

    logging.getLogger("asyncio").addFilter(unretrieved_read_error)
    previous_hook = sys.unraisablehook

    def unraisable(info) -> None:
        if isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed":
            return
        previous_hook(info)

    sys.unraisablehook = unraisable


class UnreadableCheckpoint(Exception):
    """A checkpoint step that cannot be read back: `step`, the `file` (relative to the step) and why."""

    def __init__(self, step: int, file: str, reason: str):
        super().__init__(f"checkpoint step {step} is unreadable: {file}: {reason}")
        self.step, self.file, self.reason = step, file, reason


def unreadable_error(step: int, step_dir: paths.AnyPath, error: BaseException) -> UnreadableCheckpoint | None:
    """`error` (raised while restoring `step`) as an UnreadableCheckpoint naming the file, or None when it
    is not a missing or damaged file (a restore that does not fit the target must not move anything)."""
    message = str(error)
    if isinstance(error, json.JSONDecodeError):
        return UnreadableCheckpoint(step, "a JSON file", f"not valid JSON ({error})")
    code = next((code for code in _UNREADABLE_CODES if code in message), None)
    if not isinstance(error, FileNotFoundError) and not (isinstance(error, ValueError) and code):
        return None
    # The most specific path inside the step that the message names (the data file rather than its
    # database directory); orbax's own FileNotFoundError says "File <path> not found."
    named = [paths.path(match) for match in _QUOTED_PATH.findall(message)]
    named += [paths.path(match) for match in re.findall(r"File (\S+) not found", message)]
    named += [paths.path(match) for match in _GCS_URL.findall(message)]
    inside = [path for path in named if str(path).startswith(str(step_dir) + "/")]
    files = [path for path in inside if not path.is_dir()] or inside
    file = str(max(files, key=lambda path: len(str(path))).relative_to(step_dir)) if files else "an array file"
    reason = "missing" if isinstance(error, FileNotFoundError) or code == "NOT_FOUND" else f"{code}, truncated?"
    return UnreadableCheckpoint(step, file, reason)


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training stands, as recorded in a checkpoint's `meta` item."""

    stage_index: int
    stage_name: str
    stage_step: int
    """Optimizer steps already taken in this stage."""
    rng_seed: int
    """The seed that random parameter initialisation of every stage derives from."""


class Checkpointer:
    """Saves and restores training checkpoints under `directory`.

    Keeps the latest `keep` checkpoints plus those at `keep_steps` (each stage's final step, which the
    next stage starts from and which stays for evaluation).
    """

    def __init__(self, directory: str | paths.AnyPath, keep: int, keep_steps: Sequence[int]):
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be at least 1, got {keep}")
        self.directory = paths.absolute(directory)
        preservation = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(keep),
            checkpoint_managers.CustomSteps(list(keep_steps)),
        ])
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=ITEMS,
            options=ocp.CheckpointManagerOptions(preservation_policy=preservation,
                                                 enable_async_checkpointing=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_dir(self, step: int) -> paths.AnyPath:
        return self.directory / str(step)

    def unreadable(self, step: int) -> UnreadableCheckpoint | None:
        """What is wrong with `step`'s files, short of reading the arrays: every JSON file orbax reads or
        writes parses, and where commit markers are present there is one, non-empty, in the step and in
        every item. None when nothing is."""
        step_dir = self.step_dir(step)

        def problem(relative: str, reason: str) -> UnreadableCheckpoint:
            return UnreadableCheckpoint(step, relative, reason)

        json_files = ["_CHECKPOINT_METADATA"]
        for item in PYTREE_ITEMS:
            json_files.append(f"{item}/_METADATA")
            if (step_dir / item / "_sharding").is_file():  # written for jax.Arrays only
                json_files.append(f"{item}/_sharding")
            json_files += sorted(str(path.relative_to(step_dir))
                                 for path in (step_dir / item / "array_metadatas").glob("process_*"))
        json_files += [f"{item}/metadata" for item in JSON_ITEMS]
        for relative in json_files:
            path = step_dir / relative
            if not path.is_file():
                return problem(relative, "missing")
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as error:
                return problem(relative, f"truncated or not JSON ({error})")
        markers = [COMMIT_MARKER] + [f"{item}/{COMMIT_MARKER}" for item in ITEMS]
        if any((step_dir / marker).is_file() for marker in markers):
            for marker in markers:
                path = step_dir / marker
                if not path.is_file():
                    return problem(marker, "missing (the other commit markers are there)")
                name = str(step) if marker == COMMIT_MARKER else marker.split("/")[0]
                if not _complete_marker(path.read_text(), name):
                    return problem(marker, "truncated")
        for item in PYTREE_ITEMS:
            if not (step_dir / item / "manifest.ocdbt").is_file():
                return problem(f"{item}/manifest.ocdbt", "missing")
        return None

    def move_aside(self, step: int) -> paths.AnyPath:
        """Rename `step` to `<step>.corrupt-<UTC time>` beside it (kept for inspection, ignored by orbax)
        and forget it; returns the new path. Only process 0 renames (paths.move_tree: copy and delete in
        a bucket); every process then rereads."""
        self._manager.wait_until_finished()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.directory / f"{step}.corrupt-{stamp}"
        suffix = 1
        while target.exists():
            target, suffix = self.directory / f"{step}.corrupt-{stamp}-{suffix}", suffix + 1
        if jax.process_index() == 0:
            paths.move_tree(self.step_dir(step), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"orca_jax checkpoint {step} moved aside")
        self._manager.reload()
        return target

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: TrainState, data_state: dict[str, Any], position: Position,
             config_json: str) -> None:
        meta = {**dataclasses.asdict(position), "config": config_json}
        self._manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)), force=True)

    def _restore(self, step: int, **items):
        """orbax's restore, with a missing or damaged file raised as UnreadableCheckpoint."""
        _quiet_failed_read()  # before: the abandoned reads may print while the failure still propagates
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:
            unreadable = unreadable_error(step, self.step_dir(step), error)
            if unreadable is None:
                raise
            raise unreadable from error

    def position(self, step: int) -> Position:
        meta = self._restore(step, meta=ocp.args.JsonRestore()).meta
        return Position(**{field.name: meta[field.name] for field in dataclasses.fields(Position)})

    def restore_params(self, step: int, abstract_params):
        """Parameters only, laid out as `abstract_params` (ShapeDtypeStructs with shardings) says."""
        return self._restore(step, params=ocp.args.StandardRestore(abstract_params)).params

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The train state (onto the shardings in `abstract_state`) and the data iterator state."""
        restored = self._restore(step, params=ocp.args.StandardRestore(abstract_state.params),
                                 opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
                                 data=ocp.args.JsonRestore())
        return TrainState(params=restored.params, opt_state=restored.opt_state), restored.data

    def wait(self) -> None:
        """Block until every asynchronous save has been committed to disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

