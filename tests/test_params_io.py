"""params_io: a checkpoint written from host arrays restores sharded onto any mesh, casting dtype."""

from __future__ import annotations

import json

import jax
import ml_dtypes
import numpy as np
import pytest

from orca_jax import parallel
from orca_jax.model import params_io
from orca_jax.model.config import ModelConfig

CONFIG = ModelConfig(vocab_size=96, embed_dim=32, mlp_dim=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_seq_len=32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Random bf16 host arrays in the model's tree, saved once; returns (directory, arrays)."""
    mesh = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda leaf: rng.standard_normal(leaf.shape).astype(ml_dtypes.bfloat16),
                          parallel.abstract_params(CONFIG, mesh))
    directory = tmp_path_factory.mktemp("params")
    params_io.save_params(directory, params, CONFIG)
    return directory, params


def test_restore_onto_2x2x2_mesh_shards_and_casts(saved):
    directory, params = saved
    mesh = parallel.make_mesh(2, 2, 2)
    abstract = parallel.abstract_params(CONFIG, mesh, dtype="float32")
    restored = params_io.restore_params(directory, abstract)
    for (path, array), want, original in zip(jax.tree_util.tree_leaves_with_path(restored),
                                             jax.tree.leaves(abstract), jax.tree.leaves(params)):
        assert array.dtype == np.float32, path
        assert array.sharding == want.sharding, path
        np.testing.assert_array_equal(np.asarray(array), original.astype(np.float32))
    # The rules must actually split something, or this test would pass with everything replicated.
    query = restored["layers"]["attention"]["query"]
    assert query.addressable_shards[0].data.shape == (2, 32 // 2, 4 // 2, 8)


def test_restore_without_target_gives_saved_host_arrays(saved):
    directory, params = saved
    restored = params_io.restore_params(directory)
    for original, array in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
        assert isinstance(array, np.ndarray) and array.dtype == original.dtype
        assert np.array_equal(array.view(np.uint16), original.view(np.uint16))


def test_model_config_round_trips_as_json(saved):
    directory, _ = saved
    assert params_io.load_model_config(directory) == CONFIG
    assert json.loads((directory / params_io.CONFIG_FILE).read_text())["num_kv_heads"] == CONFIG.num_kv_heads


def test_errors_name_the_directory_and_parameter(saved, tmp_path):
    directory, params = saved
    with pytest.raises(params_io.ParamsIOError, match="already exists"):
        params_io.save_params(directory, params)
    with pytest.raises(params_io.ParamsIOError, match=str(tmp_path)):
        params_io.restore_params(tmp_path)
    with pytest.raises(params_io.ParamsIOError, match=str(tmp_path)):
        params_io.load_model_config(tmp_path)

    mesh = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    wider = parallel.abstract_params(CONFIG.replace(mlp_dim=64), mesh)
    with pytest.raises(params_io.ParamsIOError,
                       match=r"\['layers'\]\['mlp'\]\['down'\] has shape \(2, 48, 32\)"):
        params_io.restore_params(directory, wider)


def test_sharded_jax_arrays_save_and_restore_onto_another_mesh(saved, tmp_path):
    """Training saves device arrays, not host arrays: they go through orbax's jax.Array handler."""
    directory, params = saved
    fsdp_only = parallel.abstract_params(CONFIG, parallel.make_mesh(1, 8, 1), dtype="bfloat16")
    on_devices = params_io.restore_params(directory, fsdp_only)
    params_io.save_params(tmp_path / "resaved", on_devices)
    mixed = parallel.abstract_params(CONFIG, parallel.make_mesh(2, 2, 2), dtype="bfloat16")
    restored = params_io.restore_params(tmp_path / "resaved", mixed)
    leaves = zip(jax.tree.leaves(params), jax.tree.leaves(restored), jax.tree.leaves(mixed))
    for original, array, want in leaves:
        assert array.sharding == want.sharding
        assert np.array_equal(np.asarray(array).view(np.uint16), original.view(np.uint16))
