"""Causal self-attention over packed rows, behind one function with three kernels.

Every implementation computes the same thing: a query attends to keys at or before its position that
carry the same segment id (packed examples never see each other; padding, id 0, only sees padding).
Grouped-query attention shares each key/value head among num_heads // num_kv_heads query heads.
`masked_attention` (the XLA kernel) also takes queries against a longer key/value cache, with
`segment_causal_mask` placing the queries inside it; decoding uses that pair.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import PartitionSpec

from orca_jax.model.config import ATTENTION_IMPLEMENTATIONS

# Logical names of the [batch, length, heads, head_dim] operands, resolved by the active axis rules.
QUERY_AXES = ("batch", "length", "heads", "head_dim")
KEY_VALUE_AXES = ("batch", "length", "kv_heads", "head_dim")

# Splash tiles; 512 is the largest tile that fits VMEM on every TPU generation at head_dim 128.
SPLASH_MAX_BLOCK = 512


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          segment_ids: jax.Array | None, implementation: str = "xla") -> jax.Array:
    """Causal (and segment-masked) attention.

    Args:
      query: [batch, length, num_heads, head_dim].
      key, value: [batch, length, num_kv_heads, head_dim]; num_heads must be a multiple of num_kv_heads.
      segment_ids: int [batch, length], or None for plain causal attention over the whole row.
      implementation: 'xla', 'cudnn' or 'splash' (off TPU, splash runs in Pallas interpret mode: slow,
        but it lets tests check the kernel on CPU).
    Returns:
      [batch, length, num_heads, head_dim] in the query's dtype.
    """
    _check_shapes(query, key, value, segment_ids)
    if implementation == "xla":
        return masked_attention(query, key, value, attention_mask(segment_ids, query.shape[1]))
    if implementation == "cudnn":
        return _cudnn_attention(query, key, value, segment_ids)
    if implementation == "splash":
        return _splash_attention(query, key, value, segment_ids)
    raise ValueError(f"attention implementation {implementation!r}: choose one of {ATTENTION_IMPLEMENTATIONS}")


def _check_shapes(query, key, value, segment_ids) -> None:
    batch, length, num_heads, head_dim = query.shape
    if key.shape != value.shape or key.shape[:2] != (batch, length) or key.shape[3] != head_dim:
        raise ValueError(f"attention: key {key.shape} / value {value.shape} do not match query {query.shape}")
    if num_heads % key.shape[2]:
        raise ValueError(f"attention: {num_heads} query heads are not a multiple of {key.shape[2]} kv heads")
    if segment_ids is not None and segment_ids.shape != (batch, length):
        raise ValueError(f"attention: segment_ids {segment_ids.shape} should be {(batch, length)}")


def attention_mask(segment_ids: jax.Array | None, length: int) -> jax.Array:
    """Boolean [batch or 1, 1, length_q, length_kv]: True where the query may attend to the key."""
    if segment_ids is None:
        return jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
    return segment_causal_mask(segment_ids, segment_ids, first_query_slot=0)


def segment_causal_mask(query_segment_ids: jax.Array, key_segment_ids: jax.Array,
                        first_query_slot: jax.Array | int) -> jax.Array:
    """Boolean [batch, 1, queries, keys]: query i sees key j when j <= first_query_slot + i and both
    carry the same segment id.

    The queries are a block of consecutive slots of the key axis starting at `first_query_slot` (0 in
    training, where queries and keys are the same row; the write index when decoding against a cache,
    where keys past the block are unwritten slots that causality hides).
    """
    query_slots = first_query_slot + jnp.arange(query_segment_ids.shape[1])
    causal = query_slots[:, None] >= jnp.arange(key_segment_ids.shape[1])[None, :]
    same_segment = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    return (causal[None] & same_segment)[:, None]


def masked_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
    """The XLA kernel: softmax(q k^T / sqrt(d)) v wherever `mask` allows, for any mask.

    Args:
      query: [batch, queries, num_heads, head_dim].
      key, value: [batch, keys, num_kv_heads, head_dim]; keys may outnumber queries (a cache).
      mask: boolean, broadcastable to [batch, 1, queries, keys]; every query must see some key.
    Returns:
      [batch, queries, num_heads, head_dim] in the query's dtype.
    """
    batch, length, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[2]
    # Fold the query heads that share a kv head into a group axis instead of repeating k/v in memory.
    grouped_query = query.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
    # Matmuls stay in the input dtype (with a float32 result their backward would mix dtypes and fall
    # off the bfloat16 tensor cores); the softmax itself runs in float32.
    logits = jnp.einsum("bqkgd,bskd->bkgqs", grouped_query, key).astype(jnp.float32) / np.sqrt(head_dim)
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)  # broadcast over the group axis
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, value)
    return out.reshape(batch, length, num_heads, head_dim)


def _cudnn_attention(query, key, value, segment_ids):
    if segment_ids is None:
        # The causal flag lets cuDNN skip the upper triangle instead of reading a mask.
        return jax.nn.dot_product_attention(query, key, value, is_causal=True, implementation="cudnn")
    mask = attention_mask(segment_ids, query.shape[1])
    return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation="cudnn")


def _splash_attention(query, key, value, segment_ids):
    # Imported here: Pallas' TPU ops take seconds to import and only the splash path needs them.
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

    length, head_dim = query.shape[1], query.shape[3]
    if segment_ids is None:
        segment_ids = jnp.ones(query.shape[:2], jnp.int32)
    # Splash takes pre-scaled queries and a [heads, length, head_dim] layout per example.
    query = jnp.swapaxes(query / np.sqrt(head_dim).astype(query.dtype), 1, 2)
    key, value = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)

    mesh = jax.sharding.get_abstract_mesh()
    # The mesh's devices, not the host's backend, say what the kernel is compiled for: a CPU host
    # compiling ahead of time for a TPU topology must emit the real Mosaic kernel.
    platform = jax.default_backend() if mesh.empty else mesh.abstract_device.platform

    def per_shard(query, key, value, segment_ids):
        kernel = _splash_kernel(query.shape[1], length, interpret=platform != "tpu")
        ids = jax.vmap(splash.SegmentIds)(segment_ids, segment_ids)
        return jax.vmap(kernel)(query, key, value, segment_ids=ids)

    if mesh.empty:
        out = per_shard(query, key, value, segment_ids)
    else:
        # Pallas kernels see one device's block: split batch and heads as the axis rules do elsewhere.
        batch_axes, _, heads_axes, _ = nn.logical_to_mesh_axes(QUERY_AXES)
        kv_heads_axes = nn.logical_to_mesh_axes(KEY_VALUE_AXES)[2]
        qkv_spec = lambda heads: PartitionSpec(batch_axes, heads, None, None)  # noqa: E731
        out = jax.shard_map(
            per_shard, mesh=mesh,
            in_specs=(qkv_spec(heads_axes), qkv_spec(kv_heads_axes), qkv_spec(kv_heads_axes),
                      PartitionSpec(batch_axes, None)),
            out_specs=qkv_spec(heads_axes), check_vma=False,
        )(query, key, value, segment_ids)
    return jnp.swapaxes(out, 1, 2)


def _splash_kernel(num_heads: int, length: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

    block = min(SPLASH_MAX_BLOCK, length)
    if length % block:
        raise ValueError(f"splash attention: sequence length {length} is not a multiple of {block}")
    blocks = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                               block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                               block_q_dq=block, block_kv_dq=block)
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length))] * num_heads)
    return splash.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)
