"""Exact resume: `orca-jax train` killed (SIGKILL), preempted (SIGTERM) or stopped by a NaN, then rerun.

Every run is a real subprocess on one CPU device, training a tiny model through two short stages on
the demo data, with the real pipeline and real orbax checkpoints.
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from orca_jax import parallel
from orca_jax.config import load_config
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.model import ModelConfig
from orca_jax.train import loop
from orca_jax.train import step as train_step
from orca_jax.train.checkpoint import Checkpointer
from orca_jax.train.config import TrainConfig
from orca_jax.train.demo import prepare_demo

STAGE1_STEPS, STAGE2_STEPS = 8, 6
RUN_TIMEOUT_S = 300

CONFIG_TEMPLATE = '''
from orca_jax.config import load_config


def get_config():
    config = load_config({demo_config!r})
    del config["demo"]  # the data is prepared once by the test; no report at the end
    config.eval.suite = ""  # resume is about the train state; benchmark decoding only costs time here
    config.workdir = {workdir!r}
    config.data.tokenizer = {data_dir!r} + "/tokenizer.model"
    config.data.seq_len = {seq_len}
    config.data.batch_size = 4
    config.data.pack_window = 32
    config.data.validation_batches = 1
    config.model.update(vocab_size=401, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=2,
                        num_kv_heads=1, head_dim=16, max_seq_len=128)
    for name, steps in (("stage1", {stage1_steps}), ("stage2", {stage2_steps})):
        stage = config.stages[name]
        stage.dataset_dir = {data_dir!r} + "/" + name + "_shards"
        stage.epochs, stage.num_steps = 0, steps
        stage.optimizer.warmup_steps = 2
    config.checkpoint.every_steps = 3
    config.checkpoint.keep = 2
    config.log_every_steps = 1
    return config
'''


# The demo block that prepares the data (tests/test_gcs.py prepares the same data in a bucket).
DEMO_DATA = {"stage1_rows": 300, "stage2_rows": 300, "eval_rows": 10, "tokenizer_pieces": 400,
             "validation_fraction": 0.1}
DEMO_SEQ_LEN = 128


def once_per_session(tmp_path_factory, name: str, make) -> pathlib.Path:
    """`make(path)` once per test session, whichever module asks first (the modules that import these
    fixtures would each run them again otherwise); a marker says it finished."""
    path = tmp_path_factory.getbasetemp() / name
    done = path.with_name(f"{name}.done")
    if not done.is_file():
        make(path)
        done.touch()
    return path


def _prepare_demo_data(repo_root: pathlib.Path, data_dir: pathlib.Path) -> None:
    config = load_config(str(repo_root / "configs" / "demo.py"))
    config.workdir = str(data_dir.parent / "unused")
    config.demo.data_dir = str(data_dir)
    config.data.tokenizer = str(data_dir / "tokenizer.model")
    config.data.seq_len = DEMO_SEQ_LEN
    for name in config.stage_order:
        config.stages[name].dataset_dir = str(data_dir / f"{name}_shards")
    config.demo.update(**DEMO_DATA)
    prepare_demo(TrainConfig.from_config(config))


@pytest.fixture(scope="module")
def demo_data(repo_root, tmp_path_factory) -> pathlib.Path:
    return once_per_session(tmp_path_factory, "resume_demo_data", lambda path: _prepare_demo_data(repo_root, path))


def write_config(repo_root, demo_data, workdir: pathlib.Path) -> pathlib.Path:
    path = workdir.with_suffix(".py")
    path.write_text(CONFIG_TEMPLATE.format(
        demo_config=str(repo_root / "configs" / "demo.py"), workdir=str(workdir), data_dir=str(demo_data),
        stage1_steps=STAGE1_STEPS, stage2_steps=STAGE2_STEPS, seq_len=DEMO_SEQ_LEN))
    return path


def logged_steps(workdir: pathlib.Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [record["step"] for record in map(json.loads, path.read_text().splitlines()) if "loss" in record]


def train(config_path: pathlib.Path, *overrides: str, signal_at: tuple[int, int] | None = None):
    """Run `orca-jax train`; with signal_at=(step, sig), send sig once the metrics show that step."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    command = [sys.executable, "-m", "orca_jax.cli", "train", "--config", str(config_path), *overrides]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if signal_at is not None:
        step, sig = signal_at
        workdir = pathlib.Path(load_config(str(config_path)).workdir)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while process.poll() is None and step not in logged_steps(workdir) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    return process.returncode, stdout + stderr


def final_params(workdir: pathlib.Path):
    config = load_config(str(workdir.with_suffix(".py")))
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    abstract = parallel.abstract_params(ModelConfig.from_config(config.model), mesh)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep, keep_steps=[])
    try:
        return jax.device_get(checkpointer.restore_params(STAGE1_STEPS + STAGE2_STEPS, abstract))
    finally:
        checkpointer.close()


def _train_reference(repo_root, demo_data, workdir: pathlib.Path) -> None:
    returncode, output = train(write_config(repo_root, demo_data, workdir))
    assert returncode == 0, output


@pytest.fixture(scope="module")
def reference_run(repo_root, demo_data, tmp_path_factory) -> pathlib.Path:
    """The uninterrupted run the interrupted ones must end identical to (read only: tests copy it)."""
    return once_per_session(tmp_path_factory, "resume_reference",
                            lambda path: _train_reference(repo_root, demo_data, path))


@pytest.mark.slow
def test_killed_and_preempted_run_ends_identical_to_an_uninterrupted_one(repo_root, demo_data, reference_run,
                                                                        tmp_path):
    workdir = tmp_path / "interrupted"
    config_path = write_config(repo_root, demo_data, workdir)
    kill_step = random.randint(2, STAGE1_STEPS - 2)
    returncode, output = train(config_path, signal_at=(kill_step, signal.SIGKILL))
    assert returncode == -signal.SIGKILL, f"killed at step {kill_step}?\n{output}"
    assert max(logged_steps(workdir)) < STAGE1_STEPS + STAGE2_STEPS

    preempt_step = STAGE1_STEPS + random.randint(1, STAGE2_STEPS - 2)
    returncode, output = train(config_path, signal_at=(preempt_step, signal.SIGTERM))
    assert returncode == loop.PREEMPTED_EXIT_CODE, f"SIGTERM at step {preempt_step}?\n{output}"
    assert "rerun the same command to resume" in output
    stopped_at = max(logged_steps(workdir))
    checkpointer = Checkpointer(workdir / "checkpoints", keep=2, keep_steps=[])
    assert checkpointer.latest_step() == stopped_at, "no checkpoint at the step SIGTERM stopped"
    checkpointer.close()
    assert stopped_at < STAGE1_STEPS + STAGE2_STEPS, "the run ended before SIGTERM could stop it"

    returncode, output = train(config_path)
    assert returncode == 0, output
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(final_params(workdir)),
                                 jax.tree.leaves(final_params(reference_run))):
        np.testing.assert_array_equal(got, want, err_msg=f"killed at {kill_step}, preempted at {stopped_at}: "
                                                         f"{jax.tree_util.keystr(path)}")


@pytest.mark.slow
def test_stage2_starts_from_stage1_weights_with_a_fresh_optimizer(reference_run):
    """Replays stage 2's first steps from stage 1's final checkpoint with a new optimizer state and
    compares with the run's own checkpoint after those steps."""
    config = TrainConfig.from_config(load_config(str(reference_run.with_suffix(".py"))))
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    tokenizer = Tokenizer.load(config.data.tokenizer)
    stage1, stage2 = loop.plan_stages(config, tokenizer)
    stage = loop.Stage(config, stage2, tokenizer, mesh)
    checkpointer = Checkpointer(reference_run / "checkpoints", keep=2, keep_steps=[stage1.last_step])
    replay_steps = config.checkpoint.every_steps
    try:
        start = checkpointer.restore_params(stage1.last_step, stage.params_abstract)
        recorded = jax.device_get(checkpointer.restore_params(stage2.first_step + replay_steps,
                                                              stage.params_abstract))
    finally:
        checkpointer.close()
    state = train_step.init_state(start, stage.optimizer, stage.state_abstract)
    for _ in range(replay_steps):
        state, _ = stage.steps.train(state, next(stage.batches))
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(state.params)),
                                 jax.tree.leaves(recorded)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_nan_loss_stops_clearly_and_keeps_the_last_good_checkpoint(repo_root, demo_data, tmp_path):
    """The poisoned step is one a checkpoint is due at (every 3 steps): the loop reads a step's loss only
    after dispatching the next, so it must read this one before saving, or step 6 would hold the NaN."""
    workdir = tmp_path / "nan"
    returncode, output = train(write_config(repo_root, demo_data, workdir), "--config.debug.nan_at_step=6")
    assert returncode == 1, output
    assert "step 6 (global step 6): loss is nan" in output and "last good checkpoint is step 3" in output, output
    assert "Traceback" not in output
    checkpointer = Checkpointer(workdir / "checkpoints", keep=2, keep_steps=[])
    assert checkpointer.all_steps() == [3]
    checkpointer.close()
    assert logged_steps(workdir) == [1, 2, 3, 4, 5]
