"""The LLaMA decoder in flax.linen: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Every parameter and main activation carries logical axis names ('embed', 'heads', ...); which device
holds what is decided by the rules in orca_jax.parallel, never here. Parameters are stored in
`param_dtype` and cast to `compute_dtype` where they enter a matmul; norms and softmax compute in
float32, and the logits are returned as float32. The layer stack is an `nn.scan`, so each layer parameter has a leading 'layers' axis.

Decoding (`decode=True`) keeps a key/value cache in the 'cache' collection so each new token costs one
position instead of a forward pass over the whole sequence; see `Llama` and `init_cache`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from orca_jax.model.attention import (KEY_VALUE_AXES, QUERY_AXES, dot_product_attention, masked_attention,
                                      segment_causal_mask)
from orca_jax.model.config import ModelConfig

# Logical names of the activations the model constrains.
RESIDUAL_AXES = ("batch", "length", "embed")
MLP_HIDDEN_AXES = ("batch", "length", "mlp")
LOGITS_AXES = ("batch", "length", "vocab")
# The cache's per-slot segment ids; its keys and values use the attention's KEY_VALUE_AXES.
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


class CacheWrite(NamedTuple):
    """Where a block goes in every layer's cache and what its queries may see there (same in all layers)."""

    first_slot: jax.Array
    """int32 scalar: the slot the block's first token is written to."""
    mask: jax.Array
    """bool [batch, 1, block, cache_length]: which slots each of the block's queries attends to."""


def _cached(module: nn.Module, name: str, block: jax.Array, first_slot: jax.Array) -> jax.Array:
    """Write a [batch, block, kv_heads, head_dim] block into the layer's cache; return the whole cache.

    The variable is created with the block's shape, so the input given to `init` sets the cache length.
    """
    cache = module.variable("cache", name, nn.with_logical_partitioning(jnp.zeros, KEY_VALUE_AXES),
                            block.shape, block.dtype)
    cache.value = jax.lax.dynamic_update_slice_in_dim(cache.value, block, first_slot, axis=1)
    return nn.with_logical_constraint(cache.value, KEY_VALUE_AXES)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids, cache_write: CacheWrite | None = None):
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
        else:
            # Always the XLA kernel: the cuDNN and splash kernels want equal, tile-sized query and key
            # lengths (training shapes), while a decode step is one query against the whole cache.
            attended = masked_attention(query, _cached(self, "key", key, cache_write.first_slot),
                                        _cached(self, "value", value, cache_write.first_slot), cache_write.mask)
        attended = nn.with_logical_constraint(attended, QUERY_AXES)
        return jnp.einsum("blhd,hde->ble", attended, out_w)


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
    """Pre-norm residual block; the (carry, output) signature is what nn.scan expects."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids, cache_write):
        x = nn.with_logical_constraint(x, RESIDUAL_AXES)
        attended = Attention(self.config, name="attention")(
            RMSNorm(self.config, name="attention_norm")(x), positions, segment_ids, cache_write)
        x = nn.with_logical_constraint(x + attended, RESIDUAL_AXES)
        x = x + Mlp(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(x))
        return nn.with_logical_constraint(x, RESIDUAL_AXES), None


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

    decode=True runs against a key/value cache: `logits, {'cache': cache} = model.apply({'params': p,
    'cache': cache}, tokens, positions, segment_ids, decode=True, mutable=['cache'])` writes the block
    (a prompt, or one token per step) into the next free slots and attends over every slot written so
    far, with the training masks: a token sees the slots at or before its own that carry its segment
    id, so left padding (segment 0) stays invisible. The cache (see `init_cache`) holds, per layer,
    'key'/'value' [layers, batch, cache_length, kv_heads, head_dim], plus 'segment_ids' [batch,
    cache_length] and the write 'index'. Writing past cache_length is the caller's error: XLA clamps
    the slot instead of failing.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array | None = None,
                 decode: bool = False) -> jax.Array:
        cfg = self.config
        if tokens.ndim != 2 or positions.shape != tokens.shape:
            raise ValueError(f"Llama: tokens {tokens.shape} and positions {positions.shape} must both be "
                             "[batch, length]")
        if tokens.shape[1] > cfg.max_seq_len:
            raise ValueError(f"Llama: sequence length {tokens.shape[1]} exceeds max_seq_len={cfg.max_seq_len}")
        x = nn.with_logical_constraint(Embedder(cfg, name="embedder")(tokens), RESIDUAL_AXES)
        cache_write = self._claim_cache_slots(tokens, segment_ids) if decode else None

        layer = DecoderLayer
        if cfg.remat != "none" and not decode:
            # prevent_cse guards against XLA merging the recomputation away; a scan body cannot be
            # CSE'd across iterations, so it would only cost speed here.
            layer = nn.remat(layer, policy=CHECKPOINT_POLICIES[cfg.remat], prevent_cse=False)
        stack = nn.scan(layer, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                        unroll=1 if cfg.scan_layers else cfg.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = stack(cfg, name="layers")(x, positions, segment_ids, cache_write)
        return LmHead(cfg, name="lm_head")(RMSNorm(cfg, name="final_norm")(x))

    def _claim_cache_slots(self, tokens: jax.Array, segment_ids: jax.Array | None) -> CacheWrite:
        """Record the block's segment ids in the next free slots, advance the write index, and mask."""
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        segment_ids_slots = self.variable("cache", "segment_ids",
                                          nn.with_logical_partitioning(jnp.zeros, CACHE_SEGMENT_AXES),
                                          tokens.shape, jnp.int32)
        write_index = self.variable("cache", "index", jnp.zeros, (), jnp.int32)
        first_slot = write_index.value
        segment_ids_slots.value = jax.lax.dynamic_update_slice_in_dim(
            segment_ids_slots.value, segment_ids.astype(jnp.int32), first_slot, axis=1)
        write_index.value = first_slot + tokens.shape[1]
        slot_segment_ids = nn.with_logical_constraint(segment_ids_slots.value, CACHE_SEGMENT_AXES)
        return CacheWrite(first_slot, segment_causal_mask(segment_ids, slot_segment_ids, first_slot))


def init_params(config: ModelConfig, rng: jax.Array):
    """Freshly initialised parameters of `config`, still boxed with their logical axis names.

    Parameter shapes depend on neither the input's nor the attention kernel, so a one-token input
    through the XLA kernel serves every config (splash accepts only tile-sized sequences).
    """
    one_token = jnp.zeros((1, 1), jnp.int32)
    model = Llama(dataclasses.replace(config, attention="xla"))
    return model.init(rng, one_token, one_token, one_token)["params"]


def init_cache(config: ModelConfig, batch_size: int, cache_length: int):
    """An empty cache for `Llama(config).apply(..., decode=True)`: zeros (unboxed) for batch_size rows
    of cache_length slots. Inside a jit this costs no model computation (only shapes are traced)."""
    slots = jax.ShapeDtypeStruct((batch_size, cache_length), jnp.int32)
    init = functools.partial(Llama(config).init, decode=True)
    shapes = nn.unbox(jax.eval_shape(init, jax.random.key(0), slots, slots, slots)["cache"])
    return jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)
