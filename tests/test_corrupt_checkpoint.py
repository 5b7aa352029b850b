"""A damaged latest checkpoint does not strand a run: it is named, moved aside, and training resumes from
the newest readable one, ending bit-identical to an uninterrupted run.

Real orbax, real files: the fast tests damage checkpoints of a tiny state saved here; the slow ones
damage the latest checkpoint of a real two-stage `orca-jax train` run (tests/test_resume.py's) and rerun it.
"""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from test_resume import STAGE1_STEPS, STAGE2_STEPS, demo_data, final_params, reference_run, train, write_config  # noqa: F401  (fixtures)

from orca_jax.train.checkpoint import Checkpointer, Position, UnreadableCheckpoint
from orca_jax.train.step import TrainState


def truncate(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def remove(path: pathlib.Path) -> None:
    path.unlink()


def largest_file(directory: pathlib.Path) -> pathlib.Path:
    return max((path for path in directory.iterdir() if path.is_file()), key=lambda path: path.stat().st_size)


# (what to damage, relative to the step directory; None for "the largest array data file of the item")
DAMAGES = [
    ("params", None, truncate),
    ("opt_state", None, remove),
    ("params", "manifest.ocdbt", truncate),
    ("params", "_METADATA", truncate),
    ("opt_state", "_METADATA", remove),
    ("", "_CHECKPOINT_METADATA", truncate),
    ("meta", "metadata", truncate),
    ("data", "metadata", remove),
    ("", "commit_success.txt", truncate),
    ("params", "commit_success.txt", remove),
]
DAMAGE_IDS = [f"{item or 'step'}/{name or 'd/<data>'}-{how.__name__}" for item, name, how in DAMAGES]
# End to end, one damage per way of noticing it (an array read failing in the restore, a JSON item,
# a commit marker): the fast test above covers every kind on a real save; each run here costs ~25 s.
END_TO_END = [0, 7, 8]


def damage(step_dir: pathlib.Path, item: str, name: str | None, how) -> str:
    """Damage one file of the step; returns its path relative to the step directory."""
    path = largest_file(step_dir / item / "d") if name is None else step_dir / item / name
    how(path)
    return str(path.relative_to(step_dir))


@pytest.fixture(scope="module")
def saved_steps(tmp_path_factory):
    """Steps 1 and 2 of a small train state on one device, committed (copied by each test that damages one)."""
    directory = tmp_path_factory.mktemp("saved") / "checkpoints"
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    rng = np.random.default_rng(0)
    state = TrainState(params={"w": rng.normal(size=(64, 32)).astype(np.float32), "b": np.arange(32.0)},
                       opt_state={"mu": rng.normal(size=(64, 32)).astype(np.float32), "count": np.int32(7)})
    state = jax.device_put(state, device)
    checkpointer = Checkpointer(directory, keep=3, keep_steps=[])
    for step in (1, 2):
        checkpointer.save(step, state, {"rows_taken": step}, Position(0, "s", step, 0), "{}")
    checkpointer.wait()
    checkpointer.close()
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), state)
    return directory, target, state


@pytest.fixture
def two_steps(saved_steps, tmp_path):
    directory, target, state = saved_steps
    shutil.copytree(directory, tmp_path / "checkpoints")
    return tmp_path / "checkpoints", target, state


def read_all(checkpointer: Checkpointer, step: int, target):
    """What the loop reads of a step it resumes from: the file check, the position, the state."""
    unreadable = checkpointer.unreadable(step)
    if unreadable is not None:
        raise unreadable
    checkpointer.position(step)
    return checkpointer.restore(step, target)


@pytest.mark.parametrize("item, name, how", DAMAGES, ids=DAMAGE_IDS)
def test_each_damaged_file_is_named_and_moved_aside(two_steps, item, name, how):
    directory, target, state = two_steps
    damaged = damage(directory / "2", item, name, how)
    checkpointer = Checkpointer(directory, keep=3, keep_steps=[])
    try:
        with pytest.raises(UnreadableCheckpoint) as raised:
            read_all(checkpointer, 2, target)
        assert raised.value.step == 2
        if name is not None:
            assert raised.value.file == damaged, str(raised.value)
        else:  # the array file itself when the message names it, else the item's database
            assert raised.value.file in (damaged, f"{item}/manifest.ocdbt") or raised.value.file.startswith(item), \
                str(raised.value)
        assert "\n" not in str(raised.value)
        moved = checkpointer.move_aside(2)
        assert moved.parent == directory and moved.name.startswith("2.corrupt-")
        assert (moved / damaged).exists() or how is remove, "moved aside, not deleted"
        assert not (directory / "2").exists()
        assert checkpointer.latest_step() == 1 and checkpointer.all_steps() == [1]
        restored, data_state = read_all(checkpointer, 1, target)
    finally:
        checkpointer.close()
    assert data_state == {"rows_taken": 1}
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    reopened = Checkpointer(directory, keep=3, keep_steps=[])
    assert reopened.all_steps() == [1], "orbax must ignore the moved-aside directory"
    reopened.close()


def test_an_intact_step_passes_and_a_mismatched_restore_is_not_called_unreadable(two_steps):
    directory, target, _ = two_steps
    checkpointer = Checkpointer(directory, keep=3, keep_steps=[])
    try:
        assert checkpointer.unreadable(2) is None
        wrong = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct((leaf.shape[0] + 1, *leaf.shape[1:]), leaf.dtype,
                                                               sharding=leaf.sharding) if leaf.shape else leaf,
                             target)
        with pytest.raises(Exception) as raised:
            checkpointer.restore(2, wrong)
        assert not isinstance(raised.value, UnreadableCheckpoint), "a config mismatch must not move checkpoints"
    finally:
        checkpointer.close()


@pytest.fixture(scope="module")
def reference_steps(reference_run):  # noqa: F811
    steps = sorted(int(path.name) for path in (reference_run / "checkpoints").iterdir() if path.name.isdigit())
    assert steps[-1] == STAGE1_STEPS + STAGE2_STEPS and len(steps) >= 3, steps
    return steps


@pytest.mark.slow
@pytest.mark.parametrize("item, name, how", [DAMAGES[i] for i in END_TO_END], ids=[DAMAGE_IDS[i] for i in END_TO_END])
def test_run_resumes_from_the_previous_checkpoint_and_ends_identical(repo_root, demo_data, reference_run,  # noqa: F811
                                                                    reference_steps, tmp_path, item, name, how):
    workdir = tmp_path / "damaged"
    config_path = write_config(repo_root, demo_data, workdir)
    shutil.copytree(reference_run, workdir, ignore=shutil.ignore_patterns("tensorboard"))
    # A run stopped before its end (a finished run reads no checkpoint again): without the final step,
    # the latest is in stage 2 and the one before it is stage 1's final step.
    shutil.rmtree(workdir / "checkpoints" / str(reference_steps[-1]))
    latest, previous = reference_steps[-2], reference_steps[-3]
    damaged = damage(workdir / "checkpoints" / str(latest), item, name, how)

    returncode, output = train(config_path)
    assert returncode == 0, output
    assert "Traceback" not in output, output
    warnings = [line for line in output.splitlines() if line.startswith("warning: checkpoint step")]
    assert len(warnings) == 1, output
    assert f"checkpoint step {latest} is unreadable" in warnings[0] and f"resuming from step {previous}" in warnings[0]
    if name is not None:
        assert damaged in warnings[0], warnings[0]
    moved = list((workdir / "checkpoints").glob(f"{latest}.corrupt-*"))
    assert len(moved) == 1 and str(moved[0]) in warnings[0]
    assert (moved[0] / damaged).exists() or how is remove
    resumed = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
               if "loss" in json.loads(line)]
    final = STAGE1_STEPS + STAGE2_STEPS
    assert resumed[-(final - previous):] == list(range(previous + 1, final + 1)), "did not retrain from previous"
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(final_params(workdir)),
                                 jax.tree.leaves(final_params(reference_run))):
        np.testing.assert_array_equal(got, want, err_msg=f"{damaged}: {jax.tree_util.keystr(path)}")
