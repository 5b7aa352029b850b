"""Chunked decoding: the evaluation's prefill and bucketed loop (`generate.py`), a few steps per call.

For hosts that read tokens as they come (chat streaming) or end rows early (stop strings): one
compilation per batch shape serves every chunk (the end step is traced), greedy decoding gives exactly
`generate.greedy_generate`'s tokens, and a sampler's draws depend only on each row's seed and step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh

from orca_jax import parallel
from orca_jax.eval.generate import (
    MIN_ATTEND_BUCKET,
    DecodeState,
    _decode_segments,
    _prefill,
    _rules_key,
    attend_buckets,
    check_prompt_fits,
    greedy_token,
    prepare_params,
    prompt_bucket,
)
from orca_jax.model.config import ModelConfig
from orca_jax.model.llama import Llama


@functools.lru_cache(maxsize=16)
def _chunk_programs(model_config: ModelConfig, max_new_tokens: int, min_bucket: int, axis_rules: tuple,
                    choose_token):
    """(start, advance), jitted: start is `_prefill`; advance(params, state, prompt_lengths, eos_id,
    pad_id, end_step) runs the bucketed loop up to the traced `end_step`, so one compilation per batch
    shape serves every chunk. The state is donated: its cache is updated in place across calls."""
    model = Llama(model_config)

    def start(params, prompt_tokens, prompt_lengths, pad_id, rng):
        with nn.logical_axis_rules(axis_rules):
            buckets = attend_buckets(prompt_tokens.shape[1] + max_new_tokens - 1, min_bucket)
            return _prefill(model, model_config, params, prompt_tokens, prompt_lengths, pad_id, rng,
                            max_new_tokens=max_new_tokens, buckets=buckets)

    def advance(params, state: DecodeState, prompt_lengths, eos_id, pad_id, end_step):
        with nn.logical_axis_rules(axis_rules):
            cache_length = state.cache.key.shape[3]
            prompt_width = cache_length - max_new_tokens + 1
            return _decode_segments(model, params, state, prompt_lengths, eos_id, pad_id,
                                    prompt_width=prompt_width, max_new_tokens=max_new_tokens,
                                    buckets=attend_buckets(cache_length, min_bucket),
                                    choose_token=choose_token, end_step=end_step)

    # CPU buffers cannot be donated (jax would warn on every call); accelerators update in place.
    donate = () if jax.default_backend() == "cpu" else (1,)
    return jax.jit(start), jax.jit(advance, donate_argnums=donate)


class ChunkedDecoder:
    """Decode padded batches `steps` tokens per call, for hosts that read tokens as they come (chat
    streaming) or end rows early (stop strings), with the evaluation's prefill, loop and token choice:
    greedy decoding gives exactly `greedy_generate`'s tokens, and a sampler's draws depend only on each
    row's key and step, not on the chunking.

    Parameters are cast and laid out once (see `greedy_decode_batch`). On a mesh, rows split over the
    mesh axes of 'batch' (so a batch must divide over them).
    """

    def __init__(self, params, model_config: ModelConfig, *, max_new_tokens: int, eos_id: int, pad_id: int,
                 choose_token=greedy_token, mesh: Mesh | None = None, params_dtype=None,
                 min_bucket: int = MIN_ATTEND_BUCKET, axis_rules=parallel.DECODE_AXIS_RULES):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be positive")
        self.model_config, self.max_new_tokens = model_config, max_new_tokens
        self.eos_id, self.pad_id, self.mesh = eos_id, pad_id, mesh
        self.rules = _rules_key(axis_rules)
        self.params = prepare_params(params, model_config, mesh, params_dtype, self.rules)
        self._start, self._advance = _chunk_programs(model_config, max_new_tokens, min_bucket, self.rules,
                                                     choose_token)

    def _placed(self, array, logical: tuple[str, ...]):
        if self.mesh is None:
            return array
        return jax.device_put(array, parallel.logical_sharding(self.mesh, logical, rules=self.rules))

    def _run(self, function, *args):
        if self.mesh is None:
            return function(*args)
        with parallel.activate(self.mesh, rules=self.rules):
            return function(*args)

    def start(self, prompts: Sequence[Sequence[int]], rng: jax.Array | None = None,
              batch_size: int | None = None) -> ChunkedRun:
        """Prefill `prompts` (padded with empty rows to `batch_size`, default their number, so a fixed
        batch size reuses one compiled shape per prompt bucket). `rng`: one key per prompt
        (`sampling.row_keys`), required by a sampler."""
        batch_size = len(prompts) if batch_size is None else batch_size
        if not 0 < len(prompts) <= batch_size:
            raise ValueError(f"{len(prompts)} prompts for a batch of {batch_size}")
        for index, prompt in enumerate(prompts):
            check_prompt_fits(index, len(prompt), self.model_config, self.max_new_tokens)
        width = prompt_bucket(max(map(len, prompts)), self.model_config.max_seq_len - self.max_new_tokens)
        tokens = np.full((batch_size, width), self.pad_id, np.int32)
        lengths = np.zeros((batch_size,), np.int32)
        for row, prompt in enumerate(prompts):
            tokens[row, width - len(prompt):] = prompt
            lengths[row] = len(prompt)
        if self.mesh is not None:
            batch_axes = parallel.logical_to_spec(("batch",), rules=self.rules)[0]
            parallel.check_divisible("batch size", batch_size, self.mesh, batch_axes)
        if rng is not None and batch_size > len(prompts):
            # Filler rows never draw (they start finished), but the carry needs a key per row.
            rng = jnp.concatenate([rng, jnp.repeat(rng[:1], batch_size - len(prompts))])
        lengths = self._placed(lengths, ("batch",))
        state = self._run(self._start, self.params, self._placed(tokens, ("batch", "length")), lengths,
                          self.pad_id, None if rng is None else self._placed(rng, ("batch",)))
        return ChunkedRun(self, state, lengths, len(prompts))


class ChunkedRun:
    """One batch being decoded by a `ChunkedDecoder`; the host reads it between `advance` calls."""

    def __init__(self, decoder: ChunkedDecoder, state: DecodeState, prompt_lengths: jax.Array, rows: int):
        self.decoder, self.state, self.prompt_lengths, self.rows = decoder, state, prompt_lengths, rows
        self._read()

    def _read(self) -> None:
        self.step = int(self.state.step)
        self.finished = np.asarray(self.state.finished)[:self.rows]
        self._generated = None

    @property
    def done(self) -> bool:
        return self.step >= self.decoder.max_new_tokens or bool(self.finished.all())

    def advance(self, steps: int) -> None:
        """Decode up to `steps` more tokens (fewer when every row finishes or max_new_tokens is reached)."""
        end = min(self.step + steps, self.decoder.max_new_tokens)
        decoder = self.decoder
        self.state = decoder._run(decoder._advance, decoder.params, self.state, self.prompt_lengths,
                                  decoder.eos_id, decoder.pad_id, end)
        self._read()

    def tokens(self) -> list[list[int]]:
        """Each prompt's tokens so far, cut before its EOS (or where `stop` ended it: pad ids follow)."""
        if self._generated is None:
            self._generated = np.asarray(self.state.generated)
        ends = np.isin(self._generated[:self.rows, :self.step], (self.decoder.eos_id, self.decoder.pad_id))
        return [row[:int(np.argmax(end)) if end.any() else self.step].tolist()
                for row, end in zip(self._generated[:self.rows], ends)]

    def stop(self, rows: Sequence[int]) -> None:
        """End these rows now (a stop string was seen): they generate nothing more, and the loop ends
        once every row has stopped."""
        if not len(rows):
            return
        mask = np.zeros(self.state.finished.shape, bool)
        mask[np.asarray(rows)] = True
        finished = self.state.finished | self.decoder._placed(mask, ("batch",))
        self.state = self.state._replace(finished=finished)
        self._read()
