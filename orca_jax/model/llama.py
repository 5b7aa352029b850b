"""The LLaMA decoder in flax.linen: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Every parameter and main activation carries logical axis names ('embed', 'heads', ...); which device
holds what is decided by the rules in orca_jax.parallel, never here. Parameters are stored in
`param_dtype` and cast to `compute_dtype` where they enter a matmul; norms and softmax compute in
float32, and the logits are returned as float32. The layer stack is an `nn.scan`, so each layer
parameter has a leading 'layers' axis.

Decoding passes a `KVCache` of plain arrays in and gets the updated one back (`Llama(...)(...,
cache=cache, attend_length=n)`), so each new token costs one position instead of a forward pass over the
whole sequence. The cache is not a flax variable: the decode loop keeps it in its `while_loop` carry and
the layer scan carries the whole stacked cache too, writing each layer's new keys and values with one
`dynamic_update_slice` at [layer, :, :, slot] and reading back only the first `attend_length` slots of that
layer. Every buffer involved is a loop carry updated in place, so a step moves each cache byte at most
once (the filled prefix is read, the new slot written) and XLA keeps a single live cache. (A flax
'cache' collection under `nn.scan`, which this replaced, zero-filled a new stacked cache, sliced each
layer's cache out and stacked it back, and attended over every slot, filled or not: about ten
cache-sized reads and writes per token instead of one read.) See `Llama`, `KVCache` and `init_cache`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from orca_jax.model.attention import (
    KEY_VALUE_AXES,
    QUERY_AXES,
    dot_product_attention,
    masked_attention,
    segment_causal_mask,
)
from orca_jax.model.config import ModelConfig

# Logical names of the activations the model constrains.
RESIDUAL_AXES = ("batch", "length", "embed")
MLP_HIDDEN_AXES = ("batch", "length", "mlp")
LOGITS_AXES = ("batch", "length", "vocab")
# The decode cache: stacked keys/values (one [batch, kv_heads, length, head_dim] block per layer) and
# the per-slot segment ids. Shardings come from these names through orca_jax.parallel's rules. Slots
# and head_dim are the two minor dimensions: TPUs tile the two minor dimensions of an array (16 x 128
# for bfloat16), and kv_heads there (40 / 4 = 10 per chip at 13B) would pad the cache by 60%.
CACHE_KEY_VALUE_AXES = ("layers", "batch", "kv_heads", "length", "head_dim")
CACHE_SEGMENT_AXES = ("batch", "length")

# LLaMA's reference initialisation (HF `initializer_range`); converted checkpoints replace it anyway.
DEFAULT_INIT = nn.initializers.normal(stddev=0.02)

# 'save_dots' keeps the weight matmuls' outputs and recomputes the cheap elementwise work and the
# attention (its dots have batch dimensions, so they are not saved).
CHECKPOINT_POLICIES = {
    "full": None,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _weight(module: nn.Module, name: str, shape: tuple[int, ...], logical_axes: tuple[str, ...],
            config: ModelConfig) -> jax.Array:
    """A logically partitioned parameter, returned already cast to the compute dtype."""
    value = module.param(name, nn.with_logical_partitioning(DEFAULT_INIT, logical_axes), shape,
                         config.params_jnp_dtype)
    return value.astype(config.compute_jnp_dtype)


class RMSNorm(nn.Module):
    """x / rms(x) * scale, computed in float32 whatever the activation dtype."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), self.config.params_jnp_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.config.norm_eps)
        return (normed * scale.astype(jnp.float32)).astype(self.config.compute_jnp_dtype)


def apply_rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate [batch, length, heads, head_dim] by position, pairing dimension i with i + head_dim/2.

    That "rotate_half" pairing is Hugging Face's layout, so HF checkpoints load without permutation.
    """
    half = x.shape[-1] // 2
    inverse_frequency = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) * 2 / x.shape[-1])
    angles = positions.astype(jnp.float32)[:, :, None, None] * inverse_frequency  # [b, l, 1, half]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


class KVCache(NamedTuple):
    """The decode cache, plain arrays that the decode loop carries and the model returns updated."""

    key: jax.Array
    """[layers, batch, kv_heads, cache_length, head_dim] in the compute dtype (CACHE_KEY_VALUE_AXES)."""
    value: jax.Array
    """Same shape and dtype as `key`."""
    segment_ids: jax.Array
    """int32 [batch, cache_length]: each written slot's segment id; 0 for padding and unwritten slots."""
    index: jax.Array
    """int32 scalar: the next free slot (the number of slots written so far)."""


class CacheWrite(NamedTuple):
    """What every layer of a decode call shares: where the block goes, what its queries see, how far."""

    first_slot: jax.Array
    """int32 scalar: the slot the block's first token is written to."""
    mask: jax.Array
    """bool [batch, 1, block, attend_length]: which of the first attend_length slots each query sees."""
    attend_length: int
    """Static: attention reads slots [0, attend_length) of the cache, which must cover the block."""


def cache_logical_axes() -> KVCache:
    """The logical axis names of each `KVCache` field, for `parallel.logical_sharding`."""
    return KVCache(CACHE_KEY_VALUE_AXES, CACHE_KEY_VALUE_AXES, CACHE_SEGMENT_AXES, ())


def _write_and_read_layer(stacked: jax.Array, block: jax.Array, layer: jax.Array, cache_write: CacheWrite):
    """Write a [batch, block, kv_heads, head_dim] block into layer `layer` of the stacked cache at the
    block's slots; return (the updated stacked cache, that layer's first attend_length slots as
    [batch, attend_length, kv_heads, head_dim]).

    The write comes before the read, so XLA updates the loop-carried buffer in place instead of
    copying it; the read is a static-size dynamic slice, so attention touches the filled prefix only.
    (The axis swaps are layout only: XLA folds them into the update and into the attention dots.)
    """
    zero = jnp.zeros((), jnp.int32)
    block = jnp.swapaxes(block, 1, 2)[None].astype(stacked.dtype)  # [1, batch, kv_heads, block, head_dim]
    stacked = jax.lax.dynamic_update_slice(stacked, block, (layer, zero, zero, cache_write.first_slot, zero))
    stacked = nn.with_logical_constraint(stacked, CACHE_KEY_VALUE_AXES)
    _, batch, kv_heads, _, head_dim = stacked.shape
    prefix = jax.lax.dynamic_slice(stacked, (layer, zero, zero, zero, zero),
                                   (1, batch, kv_heads, cache_write.attend_length, head_dim))[0]
    return stacked, nn.with_logical_constraint(jnp.swapaxes(prefix, 1, 2), KEY_VALUE_AXES)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids, cache_write: CacheWrite | None = None, layer_cache=None):
        """Training: the attention output. Decoding (cache_write and layer_cache = (layer index, stacked
        keys, stacked values) given): (output, updated stacked keys, updated stacked values)."""
        cfg = self.config
        query_w = _weight(self, "query", (cfg.embed_dim, cfg.num_heads, cfg.head_dim),
                          ("embed", "heads", "head_dim"), cfg)
        key_w = _weight(self, "key", (cfg.embed_dim, cfg.num_kv_heads, cfg.head_dim),
                        ("embed", "kv_heads", "head_dim"), cfg)
        value_w = _weight(self, "value", (cfg.embed_dim, cfg.num_kv_heads, cfg.head_dim),
                          ("embed", "kv_heads", "head_dim"), cfg)
        out_w = _weight(self, "out", (cfg.num_heads, cfg.head_dim, cfg.embed_dim),
                        ("heads", "head_dim", "embed"), cfg)

        query = nn.with_logical_constraint(jnp.einsum("ble,ehd->blhd", x, query_w), QUERY_AXES)
        key = nn.with_logical_constraint(jnp.einsum("ble,ehd->blhd", x, key_w), KEY_VALUE_AXES)
        value = nn.with_logical_constraint(jnp.einsum("ble,ehd->blhd", x, value_w), KEY_VALUE_AXES)
        query = apply_rotary(query, positions, cfg.rope_theta)
        key = apply_rotary(key, positions, cfg.rope_theta)
        if cache_write is None:
            attended = dot_product_attention(query, key, value, segment_ids, cfg.attention)
            attended = nn.with_logical_constraint(attended, QUERY_AXES)
            return jnp.einsum("blhd,hde->ble", attended, out_w)
        # Always the XLA kernel: the cuDNN and splash kernels want equal, tile-sized query and key
        # lengths (training shapes), while a decode step is one query against the cache's prefix.
        layer, key_cache, value_cache = layer_cache
        key_cache, keys = _write_and_read_layer(key_cache, key, layer, cache_write)
        value_cache, values = _write_and_read_layer(value_cache, value, layer, cache_write)
        attended = nn.with_logical_constraint(masked_attention(query, keys, values, cache_write.mask), QUERY_AXES)
        return jnp.einsum("blhd,hde->ble", attended, out_w), key_cache, value_cache


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        gate_w = _weight(self, "gate", (cfg.embed_dim, cfg.mlp_dim), ("embed", "mlp"), cfg)
        up_w = _weight(self, "up", (cfg.embed_dim, cfg.mlp_dim), ("embed", "mlp"), cfg)
        down_w = _weight(self, "down", (cfg.mlp_dim, cfg.embed_dim), ("mlp", "embed"), cfg)
        hidden = jax.nn.silu(jnp.einsum("ble,em->blm", x, gate_w)) * jnp.einsum("ble,em->blm", x, up_w)
        hidden = nn.with_logical_constraint(hidden, MLP_HIDDEN_AXES)
        return jnp.einsum("blm,me->ble", hidden, down_w)


class DecoderLayer(nn.Module):
    """Pre-norm residual block; the (carry, output) signature is what nn.scan expects.

    Training carries the residual stream x. Decoding (cache_write given) carries (x, layer index,
    stacked keys, stacked values): the whole cache rides in the layer loop's carry, so each layer
    updates its slice in place rather than the scan slicing layers out and stacking them back.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, carry, positions, segment_ids, cache_write):
        if cache_write is None:
            x, layer_cache = carry, None
        else:
            x, layer, key_cache, value_cache = carry
            layer_cache = (layer, key_cache, value_cache)
        x = nn.with_logical_constraint(x, RESIDUAL_AXES)
        attended = Attention(self.config, name="attention")(
            RMSNorm(self.config, name="attention_norm")(x), positions, segment_ids, cache_write, layer_cache)
        if cache_write is not None:
            attended, key_cache, value_cache = attended
        x = nn.with_logical_constraint(x + attended, RESIDUAL_AXES)
        x = x + Mlp(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(x))
        x = nn.with_logical_constraint(x, RESIDUAL_AXES)
        if cache_write is None:
            return x, None
        return (x, layer + 1, key_cache, value_cache), None


class Embedder(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, tokens):
        cfg = self.config
        table = self.param("embedding", nn.with_logical_partitioning(DEFAULT_INIT, ("vocab", "embed")),
                           (cfg.vocab_size, cfg.embed_dim), cfg.params_jnp_dtype)
        # Gather first, then cast: casting the whole table would touch vocab x embed values per step.
        return jnp.take(table, tokens, axis=0).astype(cfg.compute_jnp_dtype)


class LmHead(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kernel = _weight(self, "kernel", (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"), cfg)
        # The matmul runs in the compute dtype and only its result is widened: a float32 result type
        # would make the backward matmuls mix float32 and bfloat16 operands and run at float32 speed.
        logits = jnp.einsum("ble,ev->blv", x, kernel).astype(jnp.float32)
        return nn.with_logical_constraint(logits, LOGITS_AXES)


class Llama(nn.Module):
    """logits [batch, length, vocab] (float32) = Llama(config).apply(variables, tokens, positions, segment_ids).

    tokens, positions, segment_ids: int32 [batch, length]. Positions restart at 0 for every packed
    example; segment ids are 1..k per example and 0 for padding. segment_ids=None means one causal
    sequence per row (positions still given explicitly).

    Decoding: `logits, cache = model.apply({'params': p}, tokens, positions, segment_ids, cache=cache,
    attend_length=n)` writes the block (a prompt, or one token per step) into the cache's next free
    slots and attends over slots [0, n) with the training masks: a token sees the slots at or before
    its own that carry its segment id, so left padding (segment 0) and unwritten slots stay invisible.
    `attend_length` (static; default: the whole cache) must cover every slot written so far including
    the block; a decode loop passes a bucket just above the filled count, so a step reads O(filled)
    cache, not O(cache_length). The cache (`KVCache`, see `init_cache`) is returned updated, not kept
    in a flax collection. Writing past cache_length is the caller's error: XLA clamps the slot instead
    of failing.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array | None = None,
                 cache: KVCache | None = None, attend_length: int | None = None):
        cfg = self.config
        if tokens.ndim != 2 or positions.shape != tokens.shape:
            raise ValueError(f"Llama: tokens {tokens.shape} and positions {positions.shape} must both be "
                             "[batch, length]")
        if tokens.shape[1] > cfg.max_seq_len:
            raise ValueError(f"Llama: sequence length {tokens.shape[1]} exceeds max_seq_len={cfg.max_seq_len}")
        x = nn.with_logical_constraint(Embedder(cfg, name="embedder")(tokens), RESIDUAL_AXES)
        if cache is not None:
            return self._decode(x, tokens, positions, segment_ids, cache, attend_length)

        layer = DecoderLayer
        if cfg.remat != "none":
            # prevent_cse guards against XLA merging the recomputation away; a scan body cannot be
            # CSE'd across iterations, so it would only cost speed here.
            layer = nn.remat(layer, policy=CHECKPOINT_POLICIES[cfg.remat], prevent_cse=False)
        x, _ = self._layer_stack(layer)(x, positions, segment_ids, None)
        return LmHead(cfg, name="lm_head")(RMSNorm(cfg, name="final_norm")(x))

    def _layer_stack(self, layer):
        cfg = self.config
        stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                        unroll=1 if cfg.scan_layers else cfg.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        return stack(cfg, name="layers")

    def _decode(self, x, tokens, positions, segment_ids, cache: KVCache, attend_length: int | None):
        """The layers against the cache: record the block's segment ids in the next free slots, mask
        the first attend_length slots once for all layers, run the stack with the cache in its carry."""
        cache_length = cache.segment_ids.shape[1]
        attend_length = cache_length if attend_length is None else attend_length
        if not tokens.shape[1] <= attend_length <= cache_length:
            raise ValueError(f"Llama: attend_length={attend_length} must lie in [block length "
                             f"{tokens.shape[1]}, cache length {cache_length}]")
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        first_slot = cache.index
        slot_segment_ids = nn.with_logical_constraint(jax.lax.dynamic_update_slice_in_dim(
            cache.segment_ids, segment_ids.astype(jnp.int32), first_slot, axis=1), CACHE_SEGMENT_AXES)
        mask = segment_causal_mask(segment_ids, slot_segment_ids[:, :attend_length], first_slot)
        cache_write = CacheWrite(first_slot, mask, attend_length)
        key = nn.with_logical_constraint(cache.key, CACHE_KEY_VALUE_AXES)
        value = nn.with_logical_constraint(cache.value, CACHE_KEY_VALUE_AXES)
        (x, _, key, value), _ = self._layer_stack(DecoderLayer)(
            (x, jnp.zeros((), jnp.int32), key, value), positions, segment_ids, cache_write)
        logits = LmHead(self.config, name="lm_head")(RMSNorm(self.config, name="final_norm")(x))
        return logits, KVCache(key, value, slot_segment_ids, first_slot + tokens.shape[1])


def init_params(config: ModelConfig, rng: jax.Array):
    """Freshly initialised parameters of `config`, still boxed with their logical axis names.

    Parameter shapes depend on neither the input's nor the attention kernel, so a one-token input
    through the XLA kernel serves every config (splash accepts only tile-sized sequences).
    """
    one_token = jnp.zeros((1, 1), jnp.int32)
    model = Llama(dataclasses.replace(config, attention="xla"))
    return model.init(rng, one_token, one_token, one_token)["params"]


def init_cache(config: ModelConfig, batch_size: int, cache_length: int) -> KVCache:
    """An empty `KVCache` (zeros) of batch_size rows and cache_length slots, keys and values in the
    compute dtype. Unwritten slots must be zeros, not garbage: masked out, they still multiply a zero
    probability, and 0 * NaN would poison the output."""
    kv_shape = (config.num_layers, batch_size, config.num_kv_heads, cache_length, config.head_dim)
    return KVCache(key=jnp.zeros(kv_shape, config.compute_jnp_dtype),
                   value=jnp.zeros(kv_shape, config.compute_jnp_dtype),
                   segment_ids=jnp.zeros((batch_size, cache_length), jnp.int32),
                   index=jnp.zeros((), jnp.int32))
