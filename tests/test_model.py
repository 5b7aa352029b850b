"""The Flax LLaMA: parameter tree per docs/contracts.md, pieces and the whole forward pass against
float64 NumPy, packed rows against examples alone, and config variants that must not change results."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from test_attention import numpy_attention

from orca_jax.config import load_config
from orca_jax.model import Llama, ModelConfig, ModelConfigError, flops
from orca_jax.model.llama import KVCache, RMSNorm, apply_rotary, cache_logical_axes, init_cache

TINY = ModelConfig.from_config(load_config("configs/tiny.py").model)
LENGTH = 48
EXAMPLE_LENGTHS = (20, 7, 15)  # packed into one row of LENGTH, then padding


def numpy_rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * scale


def numpy_rotary(x, positions, theta):
    """Hugging Face's formulation: x * cos + rotate_half(x) * sin with duplicated frequencies."""
    head_dim = x.shape[-1]
    inverse_frequency = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    angles = positions[..., None] * inverse_frequency
    angles = np.concatenate([angles, angles], axis=-1)[:, :, None, :]
    first, second = np.split(x, 2, axis=-1)
    return x * np.cos(angles) + np.concatenate([-second, first], axis=-1) * np.sin(angles)


def numpy_llama(params, config: ModelConfig, tokens, positions, segment_ids):
    """Float64 forward pass written from the LLaMA paper's description, layer by layer."""
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    layers = params["layers"]
    x = params["embedder"]["embedding"][tokens]
    for i in range(config.num_layers):
        layer = jax.tree.map(lambda a, i=i: a[i], layers)
        h = numpy_rms_norm(x, layer["attention_norm"]["scale"], config.norm_eps)
        q, k, v = (np.einsum("ble,ehd->blhd", h, layer["attention"][name]) for name in ("query", "key", "value"))
        q, k = numpy_rotary(q, positions, config.rope_theta), numpy_rotary(k, positions, config.rope_theta)
        x = x + np.einsum("blhd,hde->ble", numpy_attention(q, k, v, segment_ids), layer["attention"]["out"])
        h = numpy_rms_norm(x, layer["mlp_norm"]["scale"], config.norm_eps)
        gate = h @ layer["mlp"]["gate"]
        x = x + (gate / (1 + np.exp(-gate)) * (h @ layer["mlp"]["up"])) @ layer["mlp"]["down"]
    x = numpy_rms_norm(x, params["final_norm"]["scale"], config.norm_eps)
    return x @ params["lm_head"]["kernel"]


def packed_inputs(example_lengths=EXAMPLE_LENGTHS, length=LENGTH, seed=0):
    """One row of packed examples followed by padding (segment id 0)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, TINY.vocab_size, size=(1, length)).astype(np.int32)
    segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(example_lengths)])
    segment_ids = np.pad(segments, (0, length - len(segments)))[None].astype(np.int32)
    positions = np.concatenate([np.arange(n) for n in example_lengths])
    positions = np.pad(positions, (0, length - len(positions)))[None].astype(np.int32)
    return tokens, positions, segment_ids


@pytest.fixture(scope="module")
def params():
    tokens, positions, segment_ids = packed_inputs()
    init = jax.jit(lambda rng: nn.unbox(Llama(TINY).init(rng, tokens, positions, segment_ids))["params"])
    return init(jax.random.key(0))


def packed_and_alone_batch():
    """Row 0 is a packed row; row 1 + i holds example i alone at the start (the rest of that row is
    other tokens, which causality hides from the example). Returns (tokens, positions, segment_ids,
    example starts in row 0)."""
    tokens, positions, segment_ids = packed_inputs()
    starts = np.cumsum((0,) + EXAMPLE_LENGTHS[:-1])
    batch_tokens = np.stack([tokens[0]] + [np.roll(tokens[0], -start) for start in starts])
    batch_positions = np.stack([positions[0]] + [np.arange(LENGTH)] * len(starts)).astype(np.int32)
    batch_segments = np.stack([segment_ids[0]] + [np.ones(LENGTH, np.int32)] * len(starts))
    return batch_tokens, batch_positions, batch_segments, starts


def loss_logits_and_grads(config, params):
    """Mean next-token cross-entropy on packed_and_alone_batch(), with its logits, and the gradients."""
    tokens, positions, segment_ids, _ = packed_and_alone_batch()
    targets = np.roll(tokens, -1, axis=1)

    def loss(params):
        logits = Llama(config).apply({"params": params}, tokens, positions, segment_ids)
        xent = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)
        return jnp.mean(xent), logits

    (loss_value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return loss_value, np.asarray(logits), grads


@pytest.fixture(scope="module")
def base_run(params):
    return loss_logits_and_grads(TINY, params)


def test_parameter_tree_matches_the_contract():
    tokens, positions, segment_ids = packed_inputs()
    boxed = jax.eval_shape(Llama(TINY).init, jax.random.key(0), tokens, positions, segment_ids)["params"]
    c = TINY
    expected = {  # docs/contracts.md, "Parameter tree"
        "embedder/embedding": ((c.vocab_size, c.embed_dim), ("vocab", "embed")),
        "layers/attention_norm/scale": ((c.num_layers, c.embed_dim), ("layers", "norm")),
        "layers/attention/query": ((c.num_layers, c.embed_dim, c.num_heads, c.head_dim),
                                   ("layers", "embed", "heads", "head_dim")),
        "layers/attention/key": ((c.num_layers, c.embed_dim, c.num_kv_heads, c.head_dim),
                                 ("layers", "embed", "kv_heads", "head_dim")),
        "layers/attention/value": ((c.num_layers, c.embed_dim, c.num_kv_heads, c.head_dim),
                                   ("layers", "embed", "kv_heads", "head_dim")),
        "layers/attention/out": ((c.num_layers, c.num_heads, c.head_dim, c.embed_dim),
                                 ("layers", "heads", "head_dim", "embed")),
        "layers/mlp_norm/scale": ((c.num_layers, c.embed_dim), ("layers", "norm")),
        "layers/mlp/gate": ((c.num_layers, c.embed_dim, c.mlp_dim), ("layers", "embed", "mlp")),
        "layers/mlp/up": ((c.num_layers, c.embed_dim, c.mlp_dim), ("layers", "embed", "mlp")),
        "layers/mlp/down": ((c.num_layers, c.mlp_dim, c.embed_dim), ("layers", "mlp", "embed")),
        "final_norm/scale": ((c.embed_dim,), ("norm",)),
        "lm_head/kernel": ((c.embed_dim, c.vocab_size), ("embed", "vocab")),
    }
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    actual = {"/".join(k.key for k in path): (box.value.shape, box.names) for path, box in leaves}
    assert actual == expected
    assert all(box.value.dtype == jnp.float32 for _, box in leaves)
    logits = jax.eval_shape(Llama(TINY.replace(compute_dtype="bfloat16")).apply,
                            {"params": nn.unbox(boxed)}, tokens, positions, segment_ids)
    assert logits.shape == (1, LENGTH, c.vocab_size) and logits.dtype == jnp.float32


def test_rms_norm_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 64)) * 3
    scale = rng.normal(size=(64,))
    out = RMSNorm(TINY).apply({"params": {"scale": jnp.asarray(scale, jnp.float32)}}, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(out, numpy_rms_norm(x, scale, TINY.norm_eps), rtol=1e-5, atol=1e-5)


def test_rotary_matches_hf_layout_and_depends_on_relative_position():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 6, 2, 16))
    positions = np.array([[0, 1, 2, 100, 7, 3]])
    out = np.asarray(apply_rotary(jnp.asarray(x, jnp.float32), jnp.asarray(positions), 10000.0))
    np.testing.assert_allclose(out, numpy_rotary(x, positions, 10000.0), rtol=1e-4, atol=1e-4)
    # The point of rotary embeddings: <R(m) q, R(n) k> depends only on m - n.
    query = jnp.broadcast_to(jnp.asarray(x[:, :1], jnp.float32), (1, 3, 2, 16))
    key = jnp.broadcast_to(jnp.asarray(x[:, 1:2], jnp.float32), (1, 3, 2, 16))
    rotated_query = apply_rotary(query, jnp.array([[5, 103, 5]]), 10000.0)
    rotated_key = apply_rotary(key, jnp.array([[2, 100, 3]]), 10000.0)
    scores = np.asarray(jnp.sum(rotated_query * rotated_key, axis=(2, 3)))[0]
    assert scores[0] == pytest.approx(scores[1], rel=1e-4)  # both at distance 3
    assert scores[0] != pytest.approx(scores[2], rel=1e-3)  # distance 2


def test_forward_matches_float64_numpy(params, base_run):
    tokens, positions, segment_ids = packed_inputs()
    _, logits, _ = base_run
    np.testing.assert_allclose(logits[:1], numpy_llama(params, TINY, tokens, positions, segment_ids),
                               atol=2e-4, rtol=2e-4)


def test_packed_row_equals_each_example_alone(base_run):
    _, logits, _ = base_run
    starts = packed_and_alone_batch()[3]
    for row, (start, length) in enumerate(zip(starts, EXAMPLE_LENGTHS), start=1):
        np.testing.assert_allclose(logits[0, start:start + length], logits[row, :length], atol=1e-5, rtol=1e-5)


def test_remat_and_unrolled_layers_change_nothing(params, base_run):
    base_loss, _, base_grads = base_run
    # One variant covers both switches: each compile costs seconds on CPU.
    loss, _, grads = loss_logits_and_grads(TINY.replace(remat="save_dots", scan_layers=False), params)
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), grads, base_grads)


def test_bad_model_configs_are_named():
    with pytest.raises(ModelConfigError, match="num_kv_heads"):
        TINY.replace(num_kv_heads=3)
    with pytest.raises(ModelConfigError, match="remat"):
        TINY.replace(remat="some")
    with pytest.raises(ModelConfigError, match="cudnn"):
        TINY.replace(attention="cudnn")  # TINY computes in float32
    with pytest.raises(ModelConfigError, match="unknown model config fields"):
        ModelConfig.from_config({**dataclasses.asdict(TINY), "hidden": 3})
    with pytest.raises(ValueError, match="max_seq_len"):
        tokens = jnp.zeros((1, TINY.max_seq_len + 1), jnp.int32)
        jax.eval_shape(Llama(TINY).init, jax.random.key(0), tokens, tokens)


def test_flop_count_uses_the_real_matmul_parameters():
    tokens, positions, segment_ids = packed_inputs()
    shapes = jax.eval_shape(Llama(TINY).init, jax.random.key(0), tokens, positions, segment_ids)["params"]
    shapes = nn.unbox(shapes)
    # Every parameter except the gathered embedding table and the elementwise norm scales.
    matmul_params = sum(np.prod(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
                        if not any(getattr(k, "key", "") in ("embedder", "scale") for k in path))
    assert flops.matmul_param_count(TINY) == matmul_params
    seq_len = 128
    # QK^T and AV over seq_len keys, 2 FLOPs per multiply-add, x3 with the backward, halved by causality.
    causal_attention = 2 * 2 * seq_len * TINY.num_heads * TINY.head_dim / 2 * 3 * TINY.num_layers
    assert flops.train_flops_per_token(TINY, seq_len) == 6 * matmul_params + causal_attention
    assert flops.train_flops_per_step(TINY, 4, seq_len) == 4 * seq_len * flops.train_flops_per_token(TINY, seq_len)


def test_decode_mode_keeps_the_params_and_takes_a_logically_named_cache():
    tokens, positions, segment_ids = packed_inputs()
    training = jax.eval_shape(Llama(TINY).init, jax.random.key(0), tokens, positions, segment_ids)
    cache = init_cache(TINY, 1, LENGTH)
    decoding = jax.eval_shape(functools.partial(Llama(TINY).init, cache=cache), jax.random.key(0),
                              tokens, positions, segment_ids)
    assert set(training) == set(decoding) == {"params"}  # the cache is an argument, not a collection
    assert jax.tree.structure(decoding["params"]) == jax.tree.structure(training["params"])
    c = TINY
    kv_shape = (c.num_layers, 1, c.num_kv_heads, LENGTH, c.head_dim)
    assert isinstance(cache, KVCache)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), cache) == KVCache(
        (kv_shape, c.compute_jnp_dtype), (kv_shape, c.compute_jnp_dtype), ((1, LENGTH), jnp.int32), ((), jnp.int32))
    assert cache_logical_axes() == KVCache(("layers", "batch", "kv_heads", "length", "head_dim"),
                                           ("layers", "batch", "kv_heads", "length", "head_dim"),
                                           ("batch", "length"), ())
    logits, new_cache = jax.eval_shape(functools.partial(Llama(TINY).apply, cache=cache, attend_length=LENGTH),
                                       {"params": nn.unbox(training["params"])}, tokens, positions, segment_ids)
    assert logits.shape == (1, LENGTH, c.vocab_size)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), new_cache) == jax.tree.map(lambda a: (a.shape, a.dtype), cache)
    with pytest.raises(ValueError, match="attend_length=8"):
        jax.eval_shape(functools.partial(Llama(TINY).apply, cache=cache, attend_length=8),
                       {"params": nn.unbox(training["params"])}, tokens[:, :9], positions[:, :9])


@pytest.mark.parametrize("bucket", [None, 8], ids=["whole_cache", "buckets_of_8"])
def test_cached_decoding_gives_the_full_forward_logits_at_every_step(params, bucket):
    """A prompt block then one token at a time through the cache, against one forward over all columns.

    Row 0 has no padding; row 1 is left-padded; row 2 is left-padded and packs two segments, the second
    continued by the decoded tokens. Tokens are fed as given (no argmax), so each column is compared.
    bucket=None attends over every slot; bucket=8 over the smallest multiple of 8 slots covering
    the filled ones, so the attended prefix grows (and crosses bucket boundaries) as the cache fills.
    """
    prompt_width, length = 13, 24
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, TINY.vocab_size, size=(3, length)).astype(np.int32)
    segment_ids = np.ones((3, length), np.int32)
    segment_ids[1, :5] = 0
    segment_ids[2, :3], segment_ids[2, 3:8], segment_ids[2, 8:] = 0, 1, 2
    positions = np.zeros((3, length), np.int32)
    for row in range(3):
        for segment in (1, 2):
            in_segment = segment_ids[row] == segment
            positions[row, in_segment] = np.arange(in_segment.sum())

    full = np.asarray(jax.jit(Llama(TINY).apply)({"params": params}, tokens, positions, segment_ids))
    decode = jax.jit(lambda params, cache, tokens, positions, segment_ids, attend_length: Llama(TINY).apply(
        {"params": params}, tokens, positions, segment_ids, cache=cache, attend_length=attend_length),
        static_argnums=5)
    cache = init_cache(TINY, 3, length)
    blocks = [slice(0, prompt_width)] + [slice(c, c + 1) for c in range(prompt_width, length)]
    for block in blocks:
        attend_length = None if bucket is None else -(-block.stop // bucket) * bucket
        logits, cache = decode(params, cache, tokens[:, block], positions[:, block], segment_ids[:, block],
                               attend_length)
        np.testing.assert_allclose(logits, full[:, block], atol=1e-5, rtol=1e-5, err_msg=f"columns {block}")
    assert int(cache.index) == length
    np.testing.assert_array_equal(cache.segment_ids, segment_ids)
