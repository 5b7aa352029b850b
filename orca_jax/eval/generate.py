"""Batched greedy decoding for our Llama over a key/value cache, one compiled program per
(batch, prompt width, max_new_tokens).

Prompts are right-aligned (left-padded) to a common width, so every row writes its next token into the
same cache slot and the whole decode loop is a single `jax.lax.while_loop` that stops as soon as every
row has emitted EOS. Padding is invisible to the real tokens: it carries segment id 0 (the model lets
segment 0 attend only to itself) and real tokens take positions 0, 1, ... from their first column,
exactly as if the prompt were alone.

The prompt (all but its last token) fills the cache in one prefill pass; then each loop step feeds one
token (the prompt's last, then each new one) and reads the next token's logits. Prefill logits are
never used, so XLA drops the lm_head over the prompt. A step costs one position through the layers
plus attention over the cache, instead of a forward pass over the whole buffer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from orca_jax import parallel
from orca_jax.model.config import ModelConfig
from orca_jax.model.llama import Llama, init_cache

# Prompt lengths round up to a power of two no smaller than this, so a benchmark compiles only a
# handful of buffer shapes instead of one per distinct prompt length.
MIN_PROMPT_BUCKET = 16


def prompt_bucket(prompt_length: int, longest_allowed: int) -> int:
    """The padded prompt width for a prompt: the next power of two, capped at `longest_allowed`."""
    bucket = MIN_PROMPT_BUCKET
    while bucket < prompt_length:
        bucket *= 2
    return min(bucket, longest_allowed)


@functools.lru_cache(maxsize=16)
def _compiled_decoder(model_config: ModelConfig, max_new_tokens: int,
                      output_sharding: NamedSharding | None):
    """The jitted prefill + decode loop; jax.jit itself keeps one executable per input shape and sharding.

    The EOS and pad ids are traced arguments, so a different tokenizer reuses the compiled loop.
    """
    model = Llama(model_config)

    def run_model(params, cache, tokens, positions, segment_ids):
        logits, variables = model.apply({"params": params, "cache": cache}, tokens, positions, segment_ids,
                                        decode=True, mutable=["cache"])
        return logits, variables["cache"]

    def decode(params, prompt_tokens: jax.Array, prompt_lengths: jax.Array, eos_id: jax.Array,
               pad_id: jax.Array):
        batch, prompt_width = prompt_tokens.shape
        # Slots for the prompt and every fed token; the last new token is never fed back.
        cache = init_cache(model_config, batch, prompt_width + max_new_tokens - 1)
        columns = jnp.arange(prompt_width, dtype=jnp.int32)[None, :]
        first_real_column = (prompt_width - prompt_lengths)[:, None]
        is_real = columns >= first_real_column
        prompt_positions = jnp.where(is_real, columns - first_real_column, 0)
        # Every prompt token but the last goes into the cache at once; the loop feeds the last one.
        _, cache = run_model(params, cache, prompt_tokens[:, :-1], prompt_positions[:, :-1],
                             is_real[:, :-1].astype(jnp.int32))
        # The pad id is no word (sentencepiece cannot decode it) and training never targets it.
        is_pad_logit = jnp.arange(model_config.vocab_size) == pad_id
        # Rows with an empty prompt only fill the batch up to its compiled size: they start finished,
        # and whatever they compute is discarded.
        finished = prompt_lengths == 0
        generated = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)

        def keep_going(state):
            step, _, _, finished, _ = state
            return (step < max_new_tokens) & ~jnp.all(finished)

        def decode_one_token(state):
            step, fed_token, cache, finished, generated = state
            # The fed token continues its row's only segment, right after the previous one.
            position = prompt_lengths - 1 + step
            logits, cache = run_model(params, cache, fed_token[:, None], position[:, None],
                                      jnp.ones((batch, 1), jnp.int32))
            next_logits = jnp.where(is_pad_logit, -jnp.inf, logits[:, 0])
            next_token = jnp.where(finished, pad_id, jnp.argmax(next_logits, axis=-1).astype(jnp.int32))
            generated = jax.lax.dynamic_update_slice_in_dim(generated, next_token[:, None], step, axis=1)
            return step + 1, next_token, cache, finished | (next_token == eos_id), generated

        steps, _, _, _, generated = jax.lax.while_loop(
            keep_going, decode_one_token,
            (jnp.int32(0), prompt_tokens[:, -1], cache, finished, generated))
        return generated, steps

    if output_sharding is None:
        return jax.jit(decode)
    return jax.jit(decode, out_shardings=(output_sharding, output_sharding))


def greedy_decode_batch(params, model_config: ModelConfig, prompt_tokens: np.ndarray,
                        prompt_lengths: np.ndarray, *, max_new_tokens: int, eos_id: int, pad_id: int,
                        mesh: Mesh | None = None) -> tuple[np.ndarray, int]:
    """Decode one already-padded batch.

    Args:
      params: the model's parameter arrays (unboxed), sharded on `mesh` or on one device.
      prompt_tokens: int32 [batch, prompt_width], each prompt right-aligned with `pad_id` on the left.
      prompt_lengths: int32 [batch], real tokens per row; 0 marks a filler row that generates nothing.
      mesh: when given, rows are split over its ('data', 'fsdp') axes and the result is replicated,
        so every process of a multi-host job can read it (all must pass the same prompts).
    Returns:
      (generated int32 [batch, max_new_tokens] with `pad_id` after each row's EOS, decode steps run).
    """
    prompt_tokens = np.asarray(prompt_tokens, np.int32)
    prompt_lengths = np.asarray(prompt_lengths, np.int32)
    if mesh is None:
        decoder = _compiled_decoder(model_config, max_new_tokens, None)
        generated, steps = decoder(params, prompt_tokens, prompt_lengths, eos_id, pad_id)
        return np.asarray(generated), int(steps)

    parallel.check_divisible("eval batch size", prompt_tokens.shape[0], mesh, ("data", "fsdp"))
    rows = parallel.batch_sharding(mesh)
    decoder = _compiled_decoder(model_config, max_new_tokens, NamedSharding(mesh, PartitionSpec()))
    prompt_tokens = jax.device_put(prompt_tokens, rows)
    prompt_lengths = jax.device_put(prompt_lengths, parallel.logical_sharding(mesh, ("batch",)))
    with parallel.activate(mesh):
        generated, steps = decoder(params, prompt_tokens, prompt_lengths, eos_id, pad_id)
    return np.asarray(generated), int(steps)


def greedy_generate(params, model_config: ModelConfig, prompts: Sequence[Sequence[int]], *,
                    max_new_tokens: int, eos_id: int, pad_id: int, batch_size: int,
                    mesh: Mesh | None = None) -> list[list[int]]:
    """Greedy continuations of token-id prompts, each cut before its EOS (at most max_new_tokens).

    Prompts are grouped by length bucket and decoded `batch_size` at a time; the last batch of a
    bucket is filled with empty rows so every call of a bucket reuses one compiled shape. On a mesh,
    `batch_size` rounds up to a multiple of the ('data', 'fsdp') devices the rows are split over.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be positive")
    if mesh is not None:
        row_groups = mesh.shape["data"] * mesh.shape["fsdp"]
        batch_size = -(-batch_size // row_groups) * row_groups
    longest_allowed = model_config.max_seq_len - max_new_tokens
    by_bucket: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        if not 0 < len(prompt) <= longest_allowed:
            raise ValueError(
                f"prompt {index} has {len(prompt)} tokens; it must have 1..{longest_allowed} so that "
                f"{max_new_tokens} new tokens fit in max_seq_len={model_config.max_seq_len}")
        by_bucket.setdefault(prompt_bucket(len(prompt), longest_allowed), []).append(index)

    continuations: list[list[int]] = [[] for _ in prompts]
    for bucket, indices in sorted(by_bucket.items()):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            prompt_tokens = np.full((batch_size, bucket), pad_id, np.int32)
            prompt_lengths = np.zeros((batch_size,), np.int32)
            for row, index in enumerate(chunk):
                prompt_tokens[row, bucket - len(prompts[index]):] = prompts[index]
                prompt_lengths[row] = len(prompts[index])
            generated, _ = greedy_decode_batch(
                params, model_config, prompt_tokens, prompt_lengths, max_new_tokens=max_new_tokens,
                eos_id=eos_id, pad_id=pad_id, mesh=mesh)
            for row, index in enumerate(chunk):
                continuations[index] = _cut_at_eos(generated[row], eos_id)
    return continuations


def _cut_at_eos(generated: np.ndarray, eos_id: int) -> list[int]:
    hits = np.flatnonzero(generated == eos_id)
    end = int(hits[0]) if hits.size else len(generated)
    return generated[:end].tolist()
