"""The model on 8 fake CPU devices: data-parallel, FSDP and mixed meshes give one device's loss and
gradients, and the placed parameters are split the way LOGICAL_AXIS_RULES says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from orca_jax import parallel
from orca_jax.config import load_config
from orca_jax.model import Llama, ModelConfig

TINY = ModelConfig.from_config(load_config("configs/tiny.py").model)
BATCH, LENGTH = 8, 32


def make_batch(seed=0):
    """Rows packing two examples each (lengths vary by row), weighted on the second half."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, TINY.vocab_size, size=(BATCH, LENGTH + 1)).astype(np.int32)
    split = rng.integers(4, LENGTH - 4, size=(BATCH, 1))
    index = np.arange(LENGTH)[None]
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "segment_ids": np.where(index < split, 1, 2).astype(np.int32),
        "positions": np.where(index < split, index, index - split).astype(np.int32),
        "loss_weights": (index >= LENGTH // 2).astype(np.float32) * np.ones((BATCH, 1), np.float32),
    }


def loss_fn(params, batch):
    logits = Llama(TINY).apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
    log_probs = jax.nn.log_softmax(logits)
    xent = -jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    return jnp.sum(xent * batch["loss_weights"]) / jnp.sum(batch["loss_weights"])


def loss_and_grads_on(mesh, host_params, batch, boxed_shapes):
    """Place params and batch on `mesh` by the rules, then run the jitted loss/gradient there."""
    shardings = parallel.param_shardings(mesh, boxed_shapes)
    with parallel.activate(mesh):
        params = jax.device_put(host_params, shardings)
        batch = jax.device_put(batch, parallel.batch_sharding(mesh))
        step = jax.jit(jax.value_and_grad(loss_fn), out_shardings=(NamedSharding(mesh, P()), shardings))
        loss, grads = step(params, batch)
    return params, loss, grads


@pytest.fixture(scope="module")
def reference():
    """Params, boxed shapes and the single-device loss/gradients every mesh must reproduce."""
    batch = make_batch()
    init = lambda rng: Llama(TINY).init(rng, batch["inputs"], batch["positions"], batch["segment_ids"])  # noqa: E731
    boxed_shapes = jax.eval_shape(init, jax.random.key(0))["params"]
    host_params = jax.device_get(jax.jit(lambda rng: nn.unbox(init(rng))["params"])(jax.random.key(0)))
    single = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    _, loss, grads = loss_and_grads_on(single, host_params, batch, boxed_shapes)
    return host_params, boxed_shapes, batch, float(loss), jax.device_get(grads)


# Expected placements written out by hand from the rules table, for the mixed mesh.
EXPECTED_2x2x2 = {
    ("embedder", "embedding"): (P("tensor", "fsdp"), (256, 32)),
    ("layers", "attention", "query"): (P(None, "fsdp", "tensor", None), (2, 32, 2, 16)),
    ("layers", "attention", "key"): (P(None, "fsdp", "tensor", None), (2, 32, 1, 16)),
    ("layers", "attention", "out"): (P(None, "tensor", None, "fsdp"), (2, 2, 16, 32)),
    ("layers", "mlp", "down"): (P(None, "tensor", "fsdp"), (2, 80, 32)),
    ("layers", "mlp_norm", "scale"): (P(None, None), (2, 64)),
    ("lm_head", "kernel"): (P("fsdp", "tensor"), (32, 256)),
}


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)], ids=["data", "fsdp", "mixed"])
def test_mesh_reproduces_single_device_and_shards_as_the_rules_say(reference, mesh_shape):
    host_params, boxed_shapes, batch, single_loss, single_grads = reference
    mesh = parallel.make_mesh(*mesh_shape)
    params, loss, grads = loss_and_grads_on(mesh, host_params, batch, boxed_shapes)

    np.testing.assert_allclose(float(loss), single_loss, rtol=1e-5)
    jax.tree.map(lambda g, ref: np.testing.assert_allclose(g, ref, atol=1e-6, rtol=1e-4), grads, single_grads)

    # Every placed parameter and gradient carries the spec its logical names map to.
    names = nn.get_partition_spec(boxed_shapes)
    for tree in (params, grads):
        placed = jax.tree.map(lambda a: a.sharding.spec, tree)
        expected = jax.tree.map(parallel.logical_to_spec, names, is_leaf=lambda x: isinstance(x, P))
        assert placed == expected
    if mesh_shape == (2, 2, 2):
        for path, (spec, shard_shape) in EXPECTED_2x2x2.items():
            array = params
            for key in path:
                array = array[key]
            assert array.sharding.spec == spec, path
            assert array.addressable_shards[0].data.shape == shard_shape, path
    if mesh_shape == (1, 8, 1):
        assert params["layers"]["mlp"]["gate"].addressable_shards[0].data.shape == (2, 8, TINY.mlp_dim)
