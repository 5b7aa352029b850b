"""Batched greedy decoding for our Llama over a key/value cache that every step updates in place.

One compiled program per (batch, prompt width, max_new_tokens): a prefill pass and a decode loop.

Prompts are right-aligned (left-padded) to a common width, so every row writes its next token into the
same cache slot and the loop is `jax.lax.while_loop`s that stop as soon as every row has emitted EOS.
Padding is invisible to the real tokens: it carries segment id 0 (the model lets segment 0 attend only
to itself) and real tokens take positions 0, 1, ... from their first column, exactly as if the prompt
were alone. The prompt (all but its last token) fills the cache in one prefill pass; then each step
feeds one token (the prompt's last, then each new one) and reads the next token's logits. Prefill
logits are never used, so XLA drops the lm_head over the prompt.

Decoding is memory-bound: a step reads every weight and the filled cache and writes one slot, and
the design keeps it to that.
- The cache (`llama.KVCache`: stacked keys/values [layers, batch, slots, kv_heads, head_dim], slot
  segment ids, write index) is a plain array tuple in the while_loop carry, passed into the model and
  returned. Inside, the layer scan carries it too and writes each layer's new key/value with one
  `dynamic_update_slice`, so XLA updates one buffer in place (tests check the compiled loop holds a
  single cache and copies none of it).
- Attention reads a prefix of the cache, not all of it: the loop runs in segments, one per attention
  bucket (`attend_buckets`: min_bucket, 2x, 4x, ... slots, the last the whole cache), and a step in a
  segment attends over the bucket's slots only. At n filled slots a step reads at most
  2 * max(n, min_bucket) slots instead of the whole cache; each bucket compiles its own loop body.
- Parameters are decoded in the compute dtype (`decode_params_dtype`): the model casts every weight to
  it at its matmul anyway, so casting once beforehand gives the same logits and halves the weight bytes
  a bfloat16 model reads per step (and the memory float32 parameters take). Norm scales stay as they
  are (elementwise, in float32). `params_dtype='float32'` keeps float32.
- On a mesh, the decode rules (`parallel.DECODE_AXIS_RULES`, the default `axis_rules`) split heads,
  kv_heads and mlp over 'tensor' and keep 'embed' whole, so a step all-gathers no weights (FSDP
  training rules would gather every weight for every token); rows split over 'data' and 'fsdp'.
  `abstract_decode_params` describes parameters in that layout and dtype for a direct restore.

The token choice is one small function (`greedy_token`): a sampler (`sampling.Sampler`) replaces it in
`decode_loop`, drawing with per-row PRNG keys carried in `DecodeState.rng` (None for greedy decoding,
whose program is unchanged). `streaming.ChunkedDecoder` runs the same prefill and loop a few steps per
call, so a host can stream tokens or stop rows between calls (chat, stop strings) without recompiling
per token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from orca_jax import parallel
from orca_jax.model.config import ModelConfig
from orca_jax.model.llama import KVCache, Llama, init_cache, init_params

# Prompt lengths round up to a power of two no smaller than this, so a benchmark compiles only a
# handful of buffer shapes instead of one per distinct prompt length.
MIN_PROMPT_BUCKET = 16
# The smallest attention bucket (cache slots a step reads); buckets double from it. 128 slots is a
# TPU tile, and at 13B a 128-slot bucket's keys and values are already small beside the weights.
MIN_ATTEND_BUCKET = 128


def prompt_bucket(prompt_length: int, longest_allowed: int) -> int:
    """The padded prompt width for a prompt: the next power of two, capped at `longest_allowed`."""
    bucket = MIN_PROMPT_BUCKET
    while bucket < prompt_length:
        bucket *= 2
    return min(bucket, longest_allowed)


def attend_buckets(cache_length: int, min_bucket: int = MIN_ATTEND_BUCKET) -> tuple[int, ...]:
    """The attended prefix lengths a decode loop steps through: min_bucket, 2 * min_bucket, ... and
    finally cache_length itself (every bucket below it is smaller)."""
    if min_bucket < 1:
        raise ValueError(f"min_bucket={min_bucket} must be positive")
    buckets, bucket = [], min_bucket
    while bucket < cache_length:
        buckets.append(bucket)
        bucket *= 2
    return (*buckets, cache_length)


def bucket_for(filled: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `filled` slots."""
    return next(bucket for bucket in buckets if bucket >= filled)


# ---- Parameters for decoding -------------------------------------------------------------------

def decode_params_dtype(model_config: ModelConfig) -> jnp.dtype:
    """The dtype decoding keeps weights in by default: the model's compute dtype (bf16 for the 13B
    configs), which is what every matmul casts them to anyway."""
    return model_config.compute_jnp_dtype


def _keeps_its_dtype(path) -> bool:
    """Norm scales are elementwise and applied in float32; casting them would change the logits."""
    return any(getattr(key, "key", None) == "scale" for key in path)


def _decode_dtype(path, leaf_dtype, dtype) -> jnp.dtype:
    return jnp.dtype(leaf_dtype) if _keeps_its_dtype(path) else jnp.dtype(dtype)


def decode_param_shardings(model_config: ModelConfig, mesh: Mesh,
                           axis_rules=parallel.DECODE_AXIS_RULES) -> Any:
    """NamedShardings of every parameter under `axis_rules` (default: the decode rules)."""
    boxed = jax.eval_shape(lambda: init_params(model_config, jax.random.key(0)))
    return parallel.param_shardings(mesh, boxed, rules=axis_rules)


def abstract_decode_params(model_config: ModelConfig, mesh: Mesh | None = None, dtype=None,
                           axis_rules=parallel.DECODE_AXIS_RULES) -> Any:
    """ShapeDtypeStructs of the parameters as decoding wants them: weights in `dtype` (default
    `decode_params_dtype`), norm scales in the config's param_dtype, laid out by `axis_rules` on `mesh`
    (no sharding without a mesh). Pass it to `params_io.restore_params` to restore straight into that
    layout and dtype (no float32 copy of a 13B model ever exists)."""
    dtype = decode_params_dtype(model_config) if dtype is None else dtype
    boxed = jax.eval_shape(lambda: init_params(model_config, jax.random.key(0)))
    shapes = nn.unbox(boxed)
    shardings = (parallel.param_shardings(mesh, boxed, rules=axis_rules) if mesh is not None
                 else jax.tree.map(lambda _: None, shapes))
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, _decode_dtype(path, leaf.dtype, dtype),
                                                          sharding=sharding),
        shapes, shardings)


def prepare_params(params, model_config: ModelConfig, mesh: Mesh | None = None, dtype=None,
                   axis_rules=parallel.DECODE_AXIS_RULES) -> Any:
    """`params` cast to the decode dtype (default `decode_params_dtype`; norm scales kept) and, on a
    mesh, laid out by `axis_rules`. Parameters already so are returned as they are, without a copy."""
    dtype = decode_params_dtype(model_config) if dtype is None else dtype
    targets = jax.tree_util.tree_map_with_path(lambda path, leaf: _decode_dtype(path, leaf.dtype, dtype), params)
    shardings = decode_param_shardings(model_config, mesh, axis_rules) if mesh is not None else None

    def ready(leaf, target, sharding) -> bool:
        if leaf.dtype != target:
            return False
        return sharding is None or (isinstance(leaf, jax.Array)
                                    and leaf.sharding.is_equivalent_to(sharding, leaf.ndim))

    leaves, treedef = jax.tree.flatten(params)
    target_leaves = treedef.flatten_up_to(targets)
    sharding_leaves = treedef.flatten_up_to(shardings) if shardings is not None else [None] * len(leaves)
    if all(map(ready, leaves, target_leaves, sharding_leaves)):
        return params
    cast = jax.jit(lambda tree: jax.tree.map(lambda leaf, target: leaf.astype(target), tree, targets),
                   out_shardings=shardings)
    return cast(params)


# ---- The decode loop ---------------------------------------------------------------------------

class DecodeState(NamedTuple):
    """The decode while_loop's carry."""

    step: jax.Array
    """int32 scalar: tokens generated so far (the next one goes to column `step` of `generated`)."""
    fed_token: jax.Array
    """int32 [batch]: the token the next step feeds (the prompt's last, then each generated one)."""
    cache: KVCache
    finished: jax.Array
    """bool [batch]: rows that emitted EOS (or were filler rows from the start)."""
    generated: jax.Array
    """int32 [batch, max_new_tokens]: the tokens so far, pad_id after a row's EOS."""
    rng: jax.Array | None = None
    """PRNG keys [batch] of a sampled decode (None when greedy); step s draws with fold_in(key, s), so
    the keys never change and a row's draws do not depend on how the steps are chunked."""


def greedy_token(logits: jax.Array, pad_id: jax.Array, keys: jax.Array | None = None) -> jax.Array:
    """The next token of each row from its float32 [batch, vocab] logits: the argmax, never pad_id.

    (The pad id is no word: sentencepiece cannot decode it and training never targets it.) `keys` is
    ignored: the signature is that of every `choose_token`.
    """
    is_pad = jnp.arange(logits.shape[-1]) == pad_id
    return jnp.argmax(jnp.where(is_pad, -jnp.inf, logits), axis=-1).astype(jnp.int32)


def decode_loop(model: Llama, params, state: DecodeState, prompt_lengths: jax.Array, eos_id: jax.Array,
                pad_id: jax.Array, *, attend_length: int, end_step: int | jax.Array,
                choose_token: Callable[..., jax.Array] = greedy_token) -> DecodeState:
    """Generate from `state` until step `end_step` (exclusive) or every row has finished, each step
    attending over the cache's first `attend_length` slots (which must cover every slot the steps fill).

    choose_token(logits [batch, vocab] float32, pad_id, keys) -> int32 [batch] picks each step's tokens;
    keys are the rows' keys for this step (None when `state.rng` is None).
    """
    batch = state.fed_token.shape[0]

    def keep_going(state: DecodeState):
        return (state.step < end_step) & ~jnp.all(state.finished)

    def decode_one_token(state: DecodeState) -> DecodeState:
        # The fed token continues its row's only segment, right after the previous one.
        position = prompt_lengths - 1 + state.step
        logits, cache = model.apply({"params": params}, state.fed_token[:, None], position[:, None],
                                    jnp.ones((batch, 1), jnp.int32), cache=state.cache,
                                    attend_length=attend_length)
        keys = None if state.rng is None else jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.rng, state.step)
        next_token = jnp.where(state.finished, pad_id, choose_token(logits[:, 0], pad_id, keys))
        generated = jax.lax.dynamic_update_slice_in_dim(state.generated, next_token[:, None], state.step, axis=1)
        return DecodeState(state.step + 1, next_token, cache, state.finished | (next_token == eos_id), generated,
                           state.rng)

    return jax.lax.while_loop(keep_going, decode_one_token, state)


def _prefill(model: Llama, model_config: ModelConfig, params, prompt_tokens: jax.Array,
             prompt_lengths: jax.Array, pad_id: jax.Array, rng: jax.Array | None, *, max_new_tokens: int,
             buckets: tuple[int, ...]) -> DecodeState:
    """A fresh cache with every prompt token but the last in it: the loop's first state."""
    batch, prompt_width = prompt_tokens.shape
    # Slots for the prompt and every fed token; the last new token is never fed back.
    cache = init_cache(model_config, batch, prompt_width + max_new_tokens - 1)
    columns = jnp.arange(prompt_width, dtype=jnp.int32)[None, :]
    first_real_column = (prompt_width - prompt_lengths)[:, None]
    is_real = columns >= first_real_column
    prompt_positions = jnp.where(is_real, columns - first_real_column, 0)
    if prompt_width > 1:
        # Every prompt token but the last goes into the cache at once; the loop feeds the last one.
        _, cache = model.apply({"params": params}, prompt_tokens[:, :-1], prompt_positions[:, :-1],
                               is_real[:, :-1].astype(jnp.int32), cache=cache,
                               attend_length=bucket_for(prompt_width - 1, buckets))
    # Rows with an empty prompt only fill the batch up to its compiled size: they start finished,
    # and whatever they compute is discarded.
    return DecodeState(jnp.int32(0), prompt_tokens[:, -1], cache, prompt_lengths == 0,
                       jnp.full((batch, max_new_tokens), pad_id, jnp.int32), rng)


def _decode_segments(model: Llama, params, state: DecodeState, prompt_lengths: jax.Array, eos_id: jax.Array,
                     pad_id: jax.Array, *, prompt_width: int, max_new_tokens: int, buckets: tuple[int, ...],
                     choose_token, end_step: jax.Array | None = None) -> DecodeState:
    """Run the loop bucket by bucket up to `end_step` (default: max_new_tokens). A segment whose steps
    are all done already (a later chunk of a chunked decode) runs no iteration."""
    # Step s writes slot prompt_width - 1 + s, so it fits a bucket b while prompt_width + s <= b.
    segment_start = 0
    for bucket in buckets:
        segment_end = min(bucket - prompt_width + 1, max_new_tokens)
        if segment_end <= segment_start:
            continue
        stop = segment_end if end_step is None else jnp.minimum(segment_end, end_step)
        state = decode_loop(model, params, state, prompt_lengths, eos_id, pad_id, attend_length=bucket,
                            end_step=stop, choose_token=choose_token)
        segment_start = segment_end
    return state


def decode_program(model_config: ModelConfig, max_new_tokens: int, min_bucket: int = MIN_ATTEND_BUCKET,
                   axis_rules=parallel.DECODE_AXIS_RULES, choose_token=greedy_token):
    """decode(params, prompt_tokens, prompt_lengths, eos_id, pad_id, rng=None) -> (generated, steps): the
    function greedy_decode_batch jits (also lowered on abstract inputs by benchmarks/decode_fit.py).
    `rng` (PRNG keys [batch], `sampling.row_keys`) goes with a sampling `choose_token`.

    The model's logical constraints resolve through `axis_rules`, applied while the function traces
    (so they belong to the function, not to whatever rules a caller has active), and take effect
    under a current mesh (`parallel.activate` or `jax.set_mesh`).
    """
    model = Llama(model_config)

    def decode(params, prompt_tokens: jax.Array, prompt_lengths: jax.Array, eos_id: jax.Array,
               pad_id: jax.Array, rng: jax.Array | None = None):
        with nn.logical_axis_rules(axis_rules):
            prompt_width = prompt_tokens.shape[1]
            buckets = attend_buckets(prompt_width + max_new_tokens - 1, min_bucket)
            state = _prefill(model, model_config, params, prompt_tokens, prompt_lengths, pad_id, rng,
                             max_new_tokens=max_new_tokens, buckets=buckets)
            state = _decode_segments(model, params, state, prompt_lengths, eos_id, pad_id,
                                     prompt_width=prompt_width, max_new_tokens=max_new_tokens,
                                     buckets=buckets, choose_token=choose_token)
            return state.generated, state.step

    return decode


@functools.lru_cache(maxsize=16)
def _compiled_decoder(model_config: ModelConfig, max_new_tokens: int, min_bucket: int, axis_rules: tuple,
                      output_sharding: NamedSharding | None):
    """The jitted prefill + decode loop; jax.jit itself keeps one executable per input shape and sharding.

    The EOS and pad ids are traced arguments, so a different tokenizer reuses the compiled loop.
    """
    decode = decode_program(model_config, max_new_tokens, min_bucket, axis_rules)
    if output_sharding is None:
        return jax.jit(decode)
    return jax.jit(decode, out_shardings=(output_sharding, output_sharding))


def _rules_key(axis_rules) -> tuple:
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in axis_rules)


def _decode_prepared(params, model_config: ModelConfig, prompt_tokens: np.ndarray, prompt_lengths: np.ndarray,
                     *, max_new_tokens: int, eos_id: int, pad_id: int, mesh: Mesh | None, min_bucket: int,
                     axis_rules) -> tuple[np.ndarray, int]:
    prompt_tokens = np.asarray(prompt_tokens, np.int32)
    prompt_lengths = np.asarray(prompt_lengths, np.int32)
    if mesh is None:
        decoder = _compiled_decoder(model_config, max_new_tokens, min_bucket, axis_rules, None)
        generated, steps = decoder(params, prompt_tokens, prompt_lengths, eos_id, pad_id)
        return np.asarray(generated), int(steps)

    batch_axes = parallel.logical_to_spec(("batch",), rules=axis_rules)[0]
    parallel.check_divisible("eval batch size", prompt_tokens.shape[0], mesh, batch_axes)
    decoder = _compiled_decoder(model_config, max_new_tokens, min_bucket, axis_rules,
                                NamedSharding(mesh, PartitionSpec()))
    prompt_tokens = jax.device_put(prompt_tokens,
                                   parallel.logical_sharding(mesh, ("batch", "length"), rules=axis_rules))
    prompt_lengths = jax.device_put(prompt_lengths, parallel.logical_sharding(mesh, ("batch",), rules=axis_rules))
    with parallel.activate(mesh, rules=axis_rules):
        generated, steps = decoder(params, prompt_tokens, prompt_lengths, eos_id, pad_id)
    return np.asarray(generated), int(steps)


def greedy_decode_batch(params, model_config: ModelConfig, prompt_tokens: np.ndarray,
                        prompt_lengths: np.ndarray, *, max_new_tokens: int, eos_id: int, pad_id: int,
                        mesh: Mesh | None = None, params_dtype=None, min_bucket: int = MIN_ATTEND_BUCKET,
                        axis_rules=parallel.DECODE_AXIS_RULES) -> tuple[np.ndarray, int]:
    """Decode one already-padded batch.

    Args:
      params: the model's parameter arrays (unboxed), on `mesh` or on one device. They are cast to
        `params_dtype` (default: `decode_params_dtype`, the compute dtype) and laid out by
        `axis_rules` first, unless already so (see `prepare_params`).
      prompt_tokens: int32 [batch, prompt_width], each prompt right-aligned with `pad_id` on the left.
      prompt_lengths: int32 [batch], real tokens per row; 0 marks a filler row that generates nothing.
      mesh: when given, rows are split over the mesh axes `axis_rules` give 'batch' (the decode rules:
        'data' and 'fsdp') and the result is replicated, so every process of a multi-host job can read
        it (all must pass the same prompts).
      min_bucket: the smallest attention bucket (see `attend_buckets`).
    Returns:
      (generated int32 [batch, max_new_tokens] with `pad_id` after each row's EOS, decode steps run).
    """
    params = prepare_params(params, model_config, mesh, params_dtype, axis_rules)
    return _decode_prepared(params, model_config, prompt_tokens, prompt_lengths, max_new_tokens=max_new_tokens,
                            eos_id=eos_id, pad_id=pad_id, mesh=mesh, min_bucket=min_bucket,
                            axis_rules=_rules_key(axis_rules))


def greedy_generate(params, model_config: ModelConfig, prompts: Sequence[Sequence[int]], *,
                    max_new_tokens: int, eos_id: int, pad_id: int, batch_size: int,
                    mesh: Mesh | None = None, params_dtype=None, min_bucket: int = MIN_ATTEND_BUCKET,
                    axis_rules=parallel.DECODE_AXIS_RULES,
                    on_batch_done: Callable[[int], None] | None = None) -> list[list[int]]:
    """Greedy continuations of token-id prompts, each cut before its EOS (at most max_new_tokens).

    Prompts are grouped by length bucket and decoded `batch_size` at a time; the last batch of a
    bucket is filled with empty rows so every call of a bucket reuses one compiled shape. On a mesh,
    `batch_size` rounds up to a multiple of the devices the rows are split over. Parameters are cast
    and laid out once for all batches (`params_dtype`, `axis_rules`: see `greedy_decode_batch`).
    `on_batch_done(prompts_done)` is called after each decoded batch with the number of prompts
    decoded so far.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be positive")
    rules = _rules_key(axis_rules)
    if mesh is not None:
        batch_axes = parallel.logical_to_spec(("batch",), rules=rules)[0]
        batch_axes = () if batch_axes is None else (batch_axes,) if isinstance(batch_axes, str) else batch_axes
        row_groups = int(np.prod([mesh.shape[axis] for axis in batch_axes]))
        batch_size = -(-batch_size // row_groups) * row_groups
    longest_allowed = model_config.max_seq_len - max_new_tokens
    by_bucket: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        check_prompt_fits(index, len(prompt), model_config, max_new_tokens)
        by_bucket.setdefault(prompt_bucket(len(prompt), longest_allowed), []).append(index)

    params = prepare_params(params, model_config, mesh, params_dtype, rules)
    continuations: list[list[int]] = [[] for _ in prompts]
    done = 0
    for bucket, indices in sorted(by_bucket.items()):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            prompt_tokens = np.full((batch_size, bucket), pad_id, np.int32)
            prompt_lengths = np.zeros((batch_size,), np.int32)
            for row, index in enumerate(chunk):
                prompt_tokens[row, bucket - len(prompts[index]):] = prompts[index]
                prompt_lengths[row] = len(prompts[index])
            generated, _ = _decode_prepared(
                params, model_config, prompt_tokens, prompt_lengths, max_new_tokens=max_new_tokens,
                eos_id=eos_id, pad_id=pad_id, mesh=mesh, min_bucket=min_bucket, axis_rules=rules)
            for row, index in enumerate(chunk):
                continuations[index] = _cut_at_eos(generated[row], eos_id)
            done += len(chunk)
            if on_batch_done is not None:
                on_batch_done(done)
    return continuations


def check_prompt_fits(index: int, length: int, model_config: ModelConfig, max_new_tokens: int) -> None:
    """A prompt must leave room for max_new_tokens in the model's window (ValueError naming it if not)."""
    longest_allowed = model_config.max_seq_len - max_new_tokens
    if not 0 < length <= longest_allowed:
        raise ValueError(
            f"prompt {index} has {length} tokens; it must have 1..{longest_allowed} so that "
            f"{max_new_tokens} new tokens fit in max_seq_len={model_config.max_seq_len}")


def _cut_at_eos(generated: np.ndarray, eos_id: int) -> list[int]:
    hits = np.flatnonzero(generated == eos_id)
    end = int(hits[0]) if hits.size else len(generated)
    return generated[:end].tolist()
