"""Text <-> token ids: a sentencepiece model plus one added pad token, the way Orca extended LLaMA.

LLaMA's `tokenizer.model` has no pad piece, so Orca appended one after the last piece: with 32000
pieces the pad id is 32000 and the embedding table has 32001 rows. We do the same for any model:
`pad_id == number of pieces`, `vocab_size == pieces + 1`. sentencepiece itself never sees the pad id.

BOS/EOS are never added by `encode`; the prompt templates place them explicitly, so the loss mask can
say exactly which tokens belong to the response.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from orca_jax import paths
from orca_jax.errors import UserError


class TokenizerError(UserError):
    """A tokenizer model that is missing, unreadable, or unusable; the message names the file."""


class Tokenizer:
    """A sentencepiece processor with an extra pad id appended after its pieces."""

    def __init__(self, processor: spm.SentencePieceProcessor, path: str | os.PathLike | None = None):
        self._sp = processor
        self.path = None if path is None else paths.path(path)
        self.num_pieces: int = processor.get_piece_size()
        self.pad_id: int = self.num_pieces
        self.vocab_size: int = self.num_pieces + 1
        self.bos_id: int = processor.bos_id()
        self.eos_id: int = processor.eos_id()
        self.unk_id: int = processor.unk_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise TokenizerError(f"tokenizer {path}: the model defines no BOS or no EOS piece "
                                 f"(bos_id={self.bos_id}, eos_id={self.eos_id})")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a sentencepiece `.model` file (LLaMA's `tokenizer.model` for real runs), local or gs://
        (sentencepiece opens local files only, so the model's bytes are read here)."""
        path = paths.path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer model {path} does not exist")
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(path.read_bytes())
        except (OSError, RuntimeError) as err:
            raise TokenizerError(
                f"tokenizer model {path} is not a readable sentencepiece model: {err}") from None
        return cls(processor, path)

    def check_fits(self, model_vocab_size: int) -> None:
        """Every id this tokenizer makes (its pieces and the appended pad) must have a row in a model of
        `model_vocab_size` rows: the one vocabulary check every command makes."""
        if self.vocab_size > model_vocab_size:
            raise TokenizerError(f"the tokenizer {self.path} has {self.vocab_size} ids (pieces + pad) but "
                                 f"model.vocab_size is {model_vocab_size}")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS or EOS."""
        return self._sp.encode(text, add_bos=False, add_eos=False)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
        """Token ids of each text (no BOS/EOS). sentencepiece encodes a list in C++ threads outside the
        GIL; num_threads=0 lets it use all cores."""
        return self._sp.encode(list(texts), add_bos=False, add_eos=False, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; pad ids are skipped (sentencepiece does not know them), BOS/EOS render as ''."""
        return self._sp.decode([int(i) for i in ids if int(i) != self.pad_id])

    def __repr__(self) -> str:
        return f"Tokenizer(path={self.path}, pieces={self.num_pieces}, pad_id={self.pad_id})"


def train_tokenizer(texts: Iterable[str], out_prefix: str | os.PathLike, vocab_size: int, *,
                    max_lines: int = 200_000, num_threads: int = 2, split_digits: bool = True) -> paths.AnyPath:
    """Train a small LLaMA-like BPE sentencepiece model on `texts`; returns the `.model` path.

    Meant for tests and the demo (a few hundred KB of text trains in about a second). Like LLaMA's
    model: unk=0, bos=1, eos=2, no pad piece (Tokenizer adds it), byte fallback so any text encodes,
    digits split (unless `split_digits=False`: the ablation's small numbers then become one piece each,
    so a line of arithmetic is one lookup), and whitespace kept verbatim (identity normalization) so
    decode(encode(t)) == t.
    `vocab_size` counts sentencepiece pieces only; the Tokenizer's vocab_size is one more.
    `out_prefix` may be gs://...: sentencepiece writes local files, so the model is trained in a
    temporary directory and copied up.
    """
    if paths.is_url(out_prefix):
        target = paths.path(out_prefix)
        with tempfile.TemporaryDirectory(prefix="orca-jax-tokenizer-") as local:
            trained = train_tokenizer(texts, pathlib.Path(local) / target.name, vocab_size, max_lines=max_lines,
                                      num_threads=num_threads, split_digits=split_digits)
            model = target.with_name(trained.name)
            model.write_bytes(trained.read_bytes())
            target.with_name(target.name + ".vocab").write_bytes(trained.with_suffix(".vocab").read_bytes())
        return model
    out_prefix = pathlib.Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    # sentencepiece trains on lines and skips long ones; newlines are byte pieces anyway.
    lines = (line for text in texts for line in text.split("\n") if line.strip())
    with open(os.devnull, "w") as quiet:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines, model_prefix=str(out_prefix), vocab_size=vocab_size,
                model_type="bpe", byte_fallback=True, split_digits=split_digits,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True, character_coverage=0.9995,
                input_sentence_size=max_lines, shuffle_input_sentence=True,
                num_threads=num_threads, logstream=quiet)
        except RuntimeError as err:
            raise TokenizerError(
                f"training a {vocab_size}-piece tokenizer at {out_prefix} failed: {err}") from None
    return out_prefix.with_name(out_prefix.name + ".model")
