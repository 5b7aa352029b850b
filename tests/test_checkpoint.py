"""Training checkpoints with real orbax: what they hold, what is kept, restoring onto other meshes."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_resume import demo_data, train, write_config  # noqa: F401  (demo_data: a fixture)

from orca_jax import parallel
from orca_jax.config import load_config
from orca_jax.model import ModelConfig
from orca_jax.train import step as train_step
from orca_jax.train.checkpoint import Checkpointer, Position
from orca_jax.train.optimizer import OptimizerConfig, make_optimizer


@pytest.fixture(scope="module")
def model_config(repo_root) -> ModelConfig:
    return ModelConfig.from_config(load_config(str(repo_root / "configs" / "tiny.py")).model)


def abstract_state(model_config, mesh):
    optimizer = make_optimizer(OptimizerConfig(weight_decay=0.1), total_steps=10)
    params_abstract = parallel.abstract_params(model_config, mesh)
    return optimizer, train_step.abstract_state(params_abstract, optimizer, mesh)


def random_state(model_config, mesh, seed: int):
    """A state whose every leaf (moments and count included) is distinct and non-trivial."""
    optimizer, state_abstract = abstract_state(model_config, mesh)
    params = train_step.init_sharded_params(model_config, jax.random.key(seed), state_abstract.params)
    state = train_step.init_state(params, optimizer, state_abstract)
    keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(state))))

    def scramble(leaf):
        noise = jax.random.randint(next(keys), leaf.shape, 1, 100).astype(leaf.dtype)
        return jax.device_put(leaf + noise, leaf.sharding)
    return jax.tree.map(scramble, state)


def test_restores_everything_onto_a_different_mesh(tmp_path, model_config):
    saved_mesh = parallel.make_mesh(2, 2, 2)
    state = random_state(model_config, saved_mesh, seed=3)
    data_state = {"window_state": {"next_index": 7}, "rows_taken": 2, "epoch": 1}
    position = Position(stage_index=1, stage_name="gpt4", stage_step=5, rng_seed=42)
    checkpointer = Checkpointer(tmp_path, keep=3, keep_steps=[])
    checkpointer.save(12, state, data_state, position, config_json='{"seed": 42}')
    checkpointer.wait()
    checkpointer.close()

    for mesh in (parallel.make_mesh(devices=jax.devices()[:1]), parallel.make_mesh(1, 4, 2)):
        _, target = abstract_state(model_config, mesh)
        reader = Checkpointer(tmp_path, keep=3, keep_steps=[])
        assert reader.latest_step() == 12
        assert reader.position(12) == position
        restored, restored_data = reader.restore(12, target)
        reader.close()
        assert restored_data == data_state
        wanted_shardings = jax.tree.leaves(train_step.shardings_of(target))
        for (path, got), want, wanted_sharding in zip(jax.tree_util.tree_leaves_with_path(restored),
                                                      jax.tree.leaves(state), wanted_shardings):
            assert got.sharding == wanted_sharding, jax.tree_util.keystr(path)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))


def test_keeps_the_latest_and_each_stages_final_step(tmp_path, model_config):
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    states = {step: random_state(model_config, mesh, seed=step) for step in (4, 8)}
    checkpointer = Checkpointer(tmp_path, keep=2, keep_steps=[4])
    for step in range(1, 10):
        state = states[4] if step <= 4 else states[8]
        checkpointer.save(step, state, {}, Position(int(step > 4), "s", step, 0), "{}")
    checkpointer.wait()
    assert checkpointer.all_steps() == [4, 8, 9]
    _, target = abstract_state(model_config, mesh)
    params = checkpointer.restore_params(4, target.params)
    checkpointer.close()
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(states[4].params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_rejects_keeping_nothing(tmp_path):
    with pytest.raises(ValueError, match="keep must be at least 1"):
        Checkpointer(tmp_path, keep=0, keep_steps=[])


# The persistent compilation cache (train/loop.py enable_compilation_cache): what makes a restart fast.

CACHE_PROBE = '''
import sys
import jax, jax.numpy as jnp
from orca_jax.config import load_config
from orca_jax.train import loop
from orca_jax.train.config import TrainConfig
config = load_config(sys.argv[1])
config.workdir = sys.argv[2]
config.compilation_cache = sys.argv[3] == "on"
print(loop.enable_compilation_cache(TrainConfig.from_config(config)))
print(jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.arange(8.0)).sum())
'''


def cache_entries(directory) -> set[str]:
    if not directory.is_dir():
        return set()
    return {path.name for path in directory.iterdir() if not path.name.endswith("-atime")}


# JAX logs every persistent-cache hit (with jax_log_compiles) and miss (with jax_explain_cache_misses).
CACHE_LOGGING = {"JAX_LOG_COMPILES": "1", "JAX_EXPLAIN_CACHE_MISSES": "1"}


def hits_and_misses(output: str) -> tuple[int, int]:
    return (output.count("Persistent compilation cache hit for"),
            output.count("PERSISTENT COMPILATION CACHE MISS for"))


@pytest.mark.parametrize("switch", ["on", "off"])
def test_even_a_small_cpu_program_is_cached_under_the_workdir(repo_root, tmp_path, switch):
    probe = [sys.executable, "-c", CACHE_PROBE, str(repo_root / "configs" / "tiny.py"), str(tmp_path), switch]
    env = {**os.environ, **CACHE_LOGGING}
    first = subprocess.run(probe, capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    entries = cache_entries(tmp_path / "compilation_cache")
    if switch == "off":
        assert first.stdout.splitlines()[0] == "None" and not (tmp_path / "compilation_cache").exists()
        return
    assert first.stdout.splitlines()[0] == str(tmp_path / "compilation_cache")
    assert entries, "a program compiled in milliseconds must be cached too"
    assert hits_and_misses(first.stderr)[1] >= 1, first.stderr
    second = subprocess.run(probe, capture_output=True, text=True, timeout=120, env=env)
    assert second.returncode == 0, second.stderr
    hits, misses = hits_and_misses(second.stderr)
    assert hits >= 1 and misses == 0, second.stderr
    assert cache_entries(tmp_path / "compilation_cache") == entries


@pytest.mark.slow
def test_a_second_training_run_compiles_nothing_new(repo_root, demo_data, tmp_path, monkeypatch):  # noqa: F811
    """Two `orca-jax train` runs of one tiny two-stage config in two workdirs sharing one cache: the
    first fills it, the second compiles nothing (every program it runs is a cache hit, none a miss)."""
    cache = tmp_path / "cache"
    for name, value in CACHE_LOGGING.items():
        monkeypatch.setenv(name, value)
    seen = []
    for name in ("first", "second"):
        base = write_config(repo_root, demo_data, tmp_path / name)
        config_path = base.with_name(f"{name}_cached.py")  # an override cannot add the cache fields
        config_path.write_text(f"from orca_jax.config import load_config\n\n\ndef get_config():\n"
                               f"    config = load_config({str(base)!r})\n"
                               f"    config.compilation_cache_dir = {str(cache)!r}\n    return config\n")
        returncode, output = train(config_path, "--config.stages.stage1.num_steps=3",
                                   "--config.stages.stage2.num_steps=3")
        assert returncode == 0, output
        seen.append((cache_entries(cache), *hits_and_misses(output)))
    (first_entries, _, first_misses), (second_entries, second_hits, second_misses) = seen
    assert len(first_entries) >= 3 and first_misses >= 3, f"train, eval and init steps should be cached: {seen[0]}"
    assert second_misses == 0 and second_hits >= first_misses, seen
    assert second_entries == first_entries
