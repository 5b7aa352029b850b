"""Sampled token choice: filters against NumPy references on fixed logits, draw frequencies against the
softmax, top-k=1 against greedy decoding, and seeded reproducibility independent of batching/chunking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orca_jax.errors import UserError
from orca_jax.eval import generate, sampling, streaming
from orca_jax.eval.sampling import Sampler

from test_generate import CONFIG, PAD_ID, UNREACHABLE_EOS, params, random_prompt  # noqa: F401 (fixture)

LOGITS = np.array([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0, 9.0],
                   [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 9.0]], np.float32)
FIXED_PAD = 6  # the largest logit of each row sits on the pad id, which must never be chosen


def numpy_filter(logits: np.ndarray, pad_id: int, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The reference: the kept set of each row built token by token in descending order."""
    out = np.full_like(logits, -np.inf)
    for row, values in enumerate(logits / temperature):
        values = values.copy()
        values[pad_id] = -np.inf
        order = np.argsort(-values, kind="stable")
        if top_k:
            order = order[:top_k]
        probs = np.exp(values[order] - values[order].max())
        probs /= probs.sum()
        kept, mass = [], 0.0
        for token, prob in zip(order, probs):
            if mass >= top_p:
                break
            kept.append(token)
            mass += prob
        out[row, kept] = values[kept]
    return out


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 0.5), (1.0, 0, 0.9), (0.7, 0, 0.75), (1.0, 0, 1.0), (1.0, 0, 1e-6), (1.0, 3, 1.0), (1.3, 4, 0.8)])
def test_filtered_logits_match_a_numpy_reference(temperature, top_k, top_p):
    got = np.asarray(Sampler(temperature, top_k, top_p).filtered_logits(jnp.asarray(LOGITS), FIXED_PAD))
    expected = numpy_filter(LOGITS, FIXED_PAD, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    np.testing.assert_allclose(got[~np.isinf(got)], expected[~np.isinf(expected)], rtol=1e-6)
    assert np.isinf(got[:, FIXED_PAD]).all()


def draw(sampler: Sampler, logits: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    keys = sampling.row_keys(seed, np.arange(n))
    return np.asarray(jax.jit(sampler)(jnp.asarray(np.tile(logits, (n, 1))), FIXED_PAD, keys))


def test_temperature_sampling_frequencies_match_the_softmax():
    # Fixed seed: the draw is deterministic, so this cannot flake. 40k draws put one standard error
    # of each frequency below 0.0025; the 0.015 tolerance is six of them, while a sampler that ignored
    # the temperature (p = softmax(logits)) would be off by more than 0.05.
    logits, temperature, n = LOGITS[0], 0.8, 40_000
    tokens = draw(Sampler(temperature), logits, n)
    frequencies = np.bincount(tokens, minlength=len(logits)) / n
    scaled = np.where(np.arange(len(logits)) == FIXED_PAD, -np.inf, logits / temperature)
    expected = np.exp(scaled - scaled.max())
    expected /= expected.sum()
    assert frequencies[FIXED_PAD] == 0
    np.testing.assert_allclose(frequencies, expected, atol=0.015)
    untempered = np.exp(np.where(np.isinf(scaled), -np.inf, logits) - 3.0)
    assert np.abs(untempered / untempered.sum() - frequencies).max() > 0.05


def test_top_k_sampling_draws_only_the_k_likeliest_in_proportion():
    tokens = draw(Sampler(1.0, top_k=2), LOGITS[0], 20_000, seed=1)
    frequencies = np.bincount(tokens, minlength=7) / len(tokens)
    assert set(np.flatnonzero(frequencies)) == {0, 5}  # logits 2.0 and 3.0; the pad's 9.0 is never drawn
    np.testing.assert_allclose(frequencies[5], 1 / (1 + np.exp(-1.0)), atol=0.015)


def test_chooser_is_greedy_at_temperature_zero_and_checks_its_flags():
    assert sampling.chooser(0.0) is generate.greedy_token
    assert sampling.chooser(0.5, top_k=3) == Sampler(0.5, 3, 1.0)
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-2),
                dict(temperature=0.0, top_p=2.0)):
        with pytest.raises(UserError):
            sampling.chooser(**bad)


def chunked(params, prompts, choose_token, rng, chunk: int, batch_size=None, new_tokens: int = 12):
    decoder = streaming.ChunkedDecoder(params, CONFIG, max_new_tokens=new_tokens, eos_id=UNREACHABLE_EOS,
                                      pad_id=PAD_ID, choose_token=choose_token, min_bucket=8)
    run = decoder.start(prompts, rng=rng, batch_size=batch_size)
    while not run.done:
        run.advance(chunk)
    return run.tokens()


def test_top_k_one_equals_greedy_decoding(params):
    prompts = [random_prompt(seed, length) for seed, length in zip(range(80, 83), (4, 9, 13))]
    greedy = generate.greedy_generate(params, CONFIG, prompts, max_new_tokens=12, eos_id=UNREACHABLE_EOS,
                                      pad_id=PAD_ID, batch_size=3, min_bucket=8)
    top1 = chunked(params, prompts, Sampler(1.7, top_k=1), sampling.row_keys(3, range(3)), chunk=5)
    assert top1 == greedy


def test_seeded_sampling_is_reproducible_whatever_the_batch_and_chunks(params):
    prompts = [random_prompt(seed, length) for seed, length in zip(range(90, 93), (5, 8, 11))]
    sampler = Sampler(1.0)
    first = chunked(params, prompts, sampler, sampling.row_keys(7, range(3)), chunk=12)
    assert chunked(params, prompts, sampler, sampling.row_keys(7, range(3)), chunk=12) == first
    # Row 2 alone in a padded batch of 2, decoded a token per call, draws exactly as before.
    assert chunked(params, prompts[2:], sampler, sampling.row_keys(7, [2]), chunk=1, batch_size=2) == first[2:]
    other_seed = chunked(params, prompts, sampler, sampling.row_keys(8, range(3)), chunk=12)
    assert other_seed != first
    greedy = chunked(params, prompts, generate.greedy_token, None, chunk=12)
    assert first != greedy  # at temperature 1 over random weights, some draw leaves the argmax


def test_the_one_shot_program_samples_like_the_chunked_decoder(params):
    prompts = [random_prompt(seed, length) for seed, length in zip(range(95, 97), (6, 10))]
    sampler, keys = Sampler(0.9, top_p=0.9), sampling.row_keys(4, range(2))
    tokens = np.full((2, 16), PAD_ID, np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, -len(prompt):] = prompt
    decode = jax.jit(generate.decode_program(CONFIG, 12, min_bucket=8, choose_token=sampler))
    generated, _ = decode(params, tokens, np.array([6, 10], np.int32), UNREACHABLE_EOS, PAD_ID, keys)
    assert np.asarray(generated).tolist() == chunked(params, prompts, sampler, keys, chunk=4)
