"""The sentencepiece wrapper: the pad id Orca added, explicit BOS/EOS, lossless round trips, errors."""

import numpy as np
import pytest

from orca_jax.data.tokenizer import Tokenizer, TokenizerError, train_tokenizer

from synthetic_text import corpus, sentence, trained_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return trained_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=600)


def test_pad_is_appended_after_the_pieces(tokenizer):
    assert tokenizer.num_pieces == 600
    assert tokenizer.pad_id == 600
    assert tokenizer.vocab_size == 601
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)


def test_encode_adds_no_bos_or_eos(tokenizer):
    ids = tokenizer.encode(sentence(np.random.default_rng(1), 20))
    assert ids and tokenizer.bos_id not in ids and tokenizer.eos_id not in ids


@pytest.mark.parametrize("text", [
    "plain words here", "  leading spaces\n\nand blank lines\t tabs ",
    "unseen characters: éü 日本語 🙂 <|im_start|>", "digits 1234567890", ""])
def test_decode_inverts_encode(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    # BOS/EOS/pad around the text do not change it.
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.pad_id]) == text


def test_byte_fallback_instead_of_unk(tokenizer):
    assert tokenizer.unk_id not in tokenizer.encode("ß∑ 龍 ☃")


def test_encode_batch_matches_encode(tokenizer):
    rng = np.random.default_rng(2)
    texts = [sentence(rng, n) for n in (1, 7, 40)]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]


def test_vocab_size_counts_pieces(tmp_path):
    model = train_tokenizer(corpus(seed=3, num_texts=500), tmp_path / "small", vocab_size=300)
    assert Tokenizer.load(model).vocab_size == 301


@pytest.mark.parametrize("split_digits", [True, False])
def test_split_digits_decides_whether_numbers_are_one_piece(tmp_path, split_digits):
    rng = np.random.default_rng(4)
    texts = [*corpus(seed=5, num_texts=300), *(f"{a} + {b} = {a + b}" for a, b in rng.integers(0, 30, size=(3000, 2)))]
    tokenizer = Tokenizer.load(train_tokenizer(texts, tmp_path / "numbers", vocab_size=400,
                                               split_digits=split_digits))
    pieces = [tokenizer._sp.id_to_piece(i) for i in tokenizer.encode("14 + 13 = 27")]
    most_digits = max(sum(c.isdigit() for c in piece) for piece in pieces)
    assert most_digits == (1 if split_digits else 2), pieces
    assert tokenizer.decode(tokenizer.encode("14 + 13 = 27")) == "14 + 13 = 27"


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope.model")


def test_corrupt_model_is_a_clear_error(tmp_path):
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"this is not a protobuf")
    with pytest.raises(TokenizerError, match="not a readable sentencepiece model"):
        Tokenizer.load(corrupt)


def test_impossible_training_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="failed"):
        train_tokenizer(["tiny corpus"], tmp_path / "t", vocab_size=100_000)
