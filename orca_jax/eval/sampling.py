"""Sampled token choice for the decode loop: temperature, top-k and top-p (nucleus) filtering.

A `Sampler` is a `choose_token` for `generate.decode_loop`: called as sampler(logits, pad_id, keys) with
float32 [batch, vocab] logits and one PRNG key per row (the loop derives each step's keys by folding
the step number into the row's key in `DecodeState.rng`). Because a row's draw depends only on its own
key and step, the same seed gives the same tokens however the rows are batched or the steps chunked.

Filtering order, as Hugging Face applies it: logits / temperature, then top-k, then top-p on the
softmax of what is left, then one categorical draw. The pad id is never chosen (no word; see
`generate.greedy_token`). Ties at a cut-off keep every tied token, so top-k may keep more than k tokens
when logits are exactly equal. Temperature 0 is greedy: `chooser` returns `greedy_token` itself, so
greedy output stays bit-identical to the evaluation's.

A sampler is a frozen dataclass, hashable, so the compiled decode programs are cached per setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from orca_jax.errors import UserError
from orca_jax.eval.generate import greedy_token


class SamplingError(UserError):
    """A sampling setting out of range; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Temperature > 0; top_k 0 means no top-k cut; top_p 1.0 means no nucleus cut."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature > 0:
            raise SamplingError(f"--temperature {self.temperature}: a sampler needs a positive temperature "
                                "(0 is greedy decoding)")
        if self.top_k < 0:
            raise SamplingError(f"--top_k {self.top_k}: must be 0 (off) or a positive number of tokens")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"--top_p {self.top_p}: must be in (0, 1]")

    def filtered_logits(self, logits: jax.Array, pad_id: jax.Array) -> jax.Array:
        """Temperature-scaled logits with every token outside top-k / top-p (and the pad id) at -inf."""
        vocab = logits.shape[-1]
        logits = logits.astype(jnp.float32) / self.temperature
        logits = jnp.where(jnp.arange(vocab) == pad_id, -jnp.inf, logits)
        if 0 < self.top_k < vocab:
            kth = jax.lax.top_k(logits, self.top_k)[0][..., -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        if self.top_p < 1:
            ordered = jnp.sort(logits, axis=-1)[..., ::-1]
            probs = jax.nn.softmax(ordered, axis=-1)
            # A token is kept while the mass strictly before it is below top_p: the smallest set whose
            # mass reaches top_p (the most likely token is always kept).
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            kept = mass_before < self.top_p
            cutoff = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
            logits = jnp.where(logits < cutoff, -jnp.inf, logits)
        return logits

    def __call__(self, logits: jax.Array, pad_id: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        if keys is None:
            raise ValueError("a Sampler needs one PRNG key per row: start the decode with row keys")
        filtered = self.filtered_logits(logits, pad_id)
        return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)


def chooser(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
    """The `choose_token` for these flags: `greedy_token` at temperature 0, else a `Sampler`."""
    if temperature < 0:
        raise SamplingError(f"--temperature {temperature}: must be >= 0 (0 is greedy decoding)")
    if temperature == 0:
        if top_k < 0 or not 0 < top_p <= 1:
            Sampler(1.0, top_k, top_p)  # the same range checks, so a bad flag is never silently ignored
        return greedy_token
    return Sampler(temperature, top_k, top_p)


def row_keys(seed: int, row_ids: Sequence[int] | np.ndarray) -> jax.Array:
    """One PRNG key per row: the seed's key with the row's id folded in. A row's id (its place in the
    input file, the turn of a chat) fixes its draws whatever else shares its batch."""
    base = jax.random.key(seed)
    ids = jnp.asarray(np.asarray(row_ids, np.uint32))
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, ids)

