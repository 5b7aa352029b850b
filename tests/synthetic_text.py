"""Deterministic pseudo-English for the data tests: a corpus to train a tiny tokenizer on, and
OpenOrca-shaped records ({id, system_prompt, question, response}) of chosen sizes."""

from __future__ import annotations

import pathlib

import numpy as np

from orca_jax.data.tokenizer import Tokenizer, train_tokenizer

_SYLLABLES = ("ka", "lo", "mi", "ter", "on", "ra", "sen", "ti", "vu", "bel", "dor", "an", "is", "qu",
              "ex", "ph", "st", "ing", "ed", "ly", "ze", "wo", "ch", "gr")
_PUNCTUATION = (".", ",", "?", "!", ":", ";", " 42", " 7", "\n", " (x)", "\n- ")
SYSTEM_MESSAGES = ("", "You are a helpful assistant.",
                   "You are an AI assistant. Think step by step and justify your answer.")


def _lexicon(rng: np.random.Generator, size: int = 400) -> list[str]:
    lengths = rng.integers(1, 4, size)
    return ["".join(rng.choice(_SYLLABLES, n)) for n in lengths]


_LEXICON = _lexicon(np.random.default_rng(0))


def sentence(rng: np.random.Generator, num_words: int) -> str:
    """`num_words` Zipf-distributed pseudo-words with occasional punctuation, digits and newlines."""
    ranks = np.minimum(rng.zipf(1.3, num_words), len(_LEXICON)) - 1
    parts = []
    for rank in ranks:
        parts.append(_LEXICON[rank])
        if rng.random() < 0.12:
            parts[-1] += rng.choice(_PUNCTUATION)
    return " ".join(parts)


def corpus(seed: int = 0, num_texts: int = 1500) -> list[str]:
    rng = np.random.default_rng(seed)
    return [sentence(rng, int(rng.integers(5, 60))) for _ in range(num_texts)]


def trained_tokenizer(directory: pathlib.Path, vocab_size: int = 600) -> Tokenizer:
    return Tokenizer.load(train_tokenizer(corpus(), directory / "tokenizer", vocab_size))


def records(num_records: int, seed: int, max_response_words: int = 120) -> list[dict[str, str]]:
    """Records with unique ids; responses from 1 to `max_response_words` words."""
    rng = np.random.default_rng(seed)
    return [{"id": f"ex-{seed}-{index}",
             "system_prompt": str(rng.choice(SYSTEM_MESSAGES)),
             "question": sentence(rng, int(rng.integers(3, 30))),
             "response": sentence(rng, int(rng.integers(1, max_response_words + 1)))}
            for index in range(num_records)]
