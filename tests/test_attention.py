"""Attention kernels: XLA against float64 NumPy, packed rows against examples alone, and the other
kernels (splash in Pallas interpret mode on CPU, cuDNN on a GPU) against XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orca_jax import parallel
from orca_jax.model.attention import dot_product_attention

BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM = 2, 128, 4, 2, 16

# Row 0: three packed examples then padding; row 1: one example filling the row.
EXAMPLE_LENGTHS = ((40, 25, 50), (LENGTH,))


def packed_segment_ids(example_lengths=EXAMPLE_LENGTHS, length=LENGTH) -> np.ndarray:
    rows = []
    for lengths in example_lengths:
        ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])
        rows.append(np.pad(ids, (0, length - len(ids))))
    return np.stack(rows).astype(np.int32)


def numpy_attention(query, key, value, segment_ids) -> np.ndarray:
    """Float64 reference: repeat kv heads, mask causally within segments, softmax, weight values."""
    query, key, value = (np.asarray(a, np.float64) for a in (query, key, value))
    groups = query.shape[2] // key.shape[2]
    key, value = np.repeat(key, groups, axis=2), np.repeat(value, groups, axis=2)
    scores = np.einsum("bqhd,bkhd->bhqk", query, key) / np.sqrt(query.shape[-1])
    length = query.shape[1]
    allowed = np.tril(np.ones((length, length), bool))[None]
    if segment_ids is not None:
        segment_ids = np.asarray(segment_ids)
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
    scores = np.where(allowed[:, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, value)


def random_qkv(seed=0, dtype=jnp.float32, batch=BATCH, length=LENGTH):
    rng = np.random.default_rng(seed)
    shapes = ((batch, length, HEADS, HEAD_DIM), (batch, length, KV_HEADS, HEAD_DIM),
              (batch, length, KV_HEADS, HEAD_DIM))
    return tuple(jnp.asarray(rng.normal(size=shape), dtype) for shape in shapes)


@pytest.mark.parametrize("packed", [True, False], ids=["segments", "causal"])
def test_xla_matches_float64_numpy(packed):
    query, key, value = random_qkv()
    segment_ids = jnp.asarray(packed_segment_ids()) if packed else None
    out = dot_product_attention(query, key, value, segment_ids, "xla")
    np.testing.assert_allclose(out, numpy_attention(query, key, value, segment_ids), atol=2e-5, rtol=1e-5)


def test_packed_row_equals_each_example_alone():
    query, key, value = random_qkv(seed=1)
    packed = dot_product_attention(query, key, value, jnp.asarray(packed_segment_ids()), "xla")
    # Each example moved to the start of its own row: plain causal attention cannot see what follows.
    starts = np.cumsum((0,) + EXAMPLE_LENGTHS[0][:-1])
    alone_rows = lambda x: jnp.stack([jnp.roll(x[0], -start, axis=0) for start in starts])  # noqa: E731
    alone = dot_product_attention(alone_rows(query), alone_rows(key), alone_rows(value), None, "xla")
    for row, (start, length) in enumerate(zip(starts, EXAMPLE_LENGTHS[0])):
        np.testing.assert_allclose(packed[0, start:start + length], alone[row, :length], atol=1e-6, rtol=1e-6)


def test_splash_matches_xla_forward_and_gradient_on_a_mesh():
    query, key, value = random_qkv(seed=2, batch=4)
    segment_ids = jnp.asarray(packed_segment_ids(EXAMPLE_LENGTHS * 2))

    def loss(implementation):
        def fn(query, key, value):
            out = dot_product_attention(query, key, value, segment_ids, implementation)
            return jnp.sum(out * jnp.cos(out))
        return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))

    # batch over data+fsdp, heads over tensor: splash runs per shard under shard_map.
    with parallel.activate(parallel.make_mesh(2, 1, 2, devices=jax.devices()[:4])):
        splash_loss, splash_grads = loss("splash")(query, key, value)
    xla_loss, xla_grads = loss("xla")(query, key, value)
    np.testing.assert_allclose(splash_loss, xla_loss, rtol=1e-5)
    for splash_grad, xla_grad in zip(splash_grads, xla_grads):
        np.testing.assert_allclose(splash_grad, xla_grad, atol=1e-4, rtol=1e-4)


def test_bad_shapes_are_named():
    query, key, value = random_qkv()
    with pytest.raises(ValueError, match="not a multiple"):
        dot_product_attention(query[:, :, :3], key, value, None, "xla")
    with pytest.raises(ValueError, match="segment_ids"):
        dot_product_attention(query, key, value, jnp.ones((BATCH, LENGTH - 1), jnp.int32), "xla")
    with pytest.raises(ValueError, match="choose one of"):
        dot_product_attention(query, key, value, None, "flash")


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@pytest.mark.skipif(not _has_gpu(), reason="cuDNN attention needs an NVIDIA GPU")
@pytest.mark.parametrize("packed", [True, False], ids=["segments", "causal"])
def test_cudnn_matches_xla_on_gpu(packed):
    gpu = jax.devices("gpu")[0]
    query, key, value = jax.device_put(random_qkv(seed=3, dtype=jnp.bfloat16), gpu)
    segment_ids = jax.device_put(jnp.asarray(packed_segment_ids()), gpu) if packed else None

    def loss(implementation):
        def fn(query, key, value):
            out = dot_product_attention(query, key, value, segment_ids, implementation)
            return jnp.sum(out.astype(jnp.float32) ** 2)
        return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))

    cudnn_loss, cudnn_grads = loss("cudnn")(query, key, value)
    xla_loss, xla_grads = loss("xla")(query, key, value)
    np.testing.assert_allclose(cudnn_loss, xla_loss, rtol=2e-2)
    reference = numpy_attention(query, key, value, segment_ids)
    cudnn_out = dot_product_attention(query, key, value, segment_ids, "cudnn").astype(jnp.float32)
    np.testing.assert_allclose(cudnn_out, reference, atol=3e-2, rtol=3e-2)
    for cudnn_grad, xla_grad in zip(cudnn_grads, xla_grads):
        scale = float(jnp.abs(xla_grad.astype(jnp.float32)).max())
        np.testing.assert_allclose(cudnn_grad.astype(jnp.float32), xla_grad.astype(jnp.float32),
                                   atol=3e-2 * scale)
