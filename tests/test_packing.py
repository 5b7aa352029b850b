"""Best-fit packing: against a hand-computed packing, no leakage between examples, overflow policies,
and the efficiency it reaches on realistic lengths."""

import numpy as np
import pytest

from orca_jax.data.packing import ROW_FIELDS, best_fit_decreasing, pack_examples

PAD = 99


def example(first_token: int, prompt_length: int, response_length: int):
    """Tokens first_token, first_token+1, ...; the mask is true on the last `response_length` tokens."""
    tokens = np.arange(first_token, first_token + prompt_length + response_length, dtype=np.int32)
    mask = np.arange(len(tokens)) >= prompt_length
    return tokens, mask


def test_best_fit_decreasing_by_hand():
    # Slot counts 5, 4, 3, 3, 2, 1 into rows of 8, longest first, tightest fitting row:
    # 5 -> new row A (3 free); 4 -> new row B (4 free); 3 -> A (full); 3 -> B (1 free);
    # 2 -> new row C; 1 -> B (full). Greedy concatenation in input order would need 4 rows.
    lengths = [2, 5, 3, 1, 4, 3]
    assert best_fit_decreasing(lengths, 8) == [[1, 2], [4, 5, 3], [0]]


def test_pack_by_hand():
    # Example e has n tokens: it fills n - 1 slots; inputs t[:-1], targets t[1:], weights m[1:].
    examples = [example(10, 2, 2),   # t = 10 11 | 12 13   (3 slots)
                example(20, 3, 3),   # t = 20 21 22 | 23 24 25   (5 slots)
                example(30, 2, 1)]   # t = 30 31 | 32   (2 slots)
    packed = pack_examples(examples, seq_len=8, pad_id=PAD)
    # Best fit: 5 -> row 0; 3 -> row 0 (full); 2 -> row 1.
    assert packed.row_examples == [[1, 0], [2]]
    expected = {
        "inputs": [[20, 21, 22, 23, 24, 10, 11, 12], [30, 31, PAD, PAD, PAD, PAD, PAD, PAD]],
        "targets": [[21, 22, 23, 24, 25, 11, 12, 13], [31, 32, 0, 0, 0, 0, 0, 0]],
        "loss_weights": [[0, 0, 1, 1, 1, 0, 1, 1], [0, 1, 0, 0, 0, 0, 0, 0]],
        "segment_ids": [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 0, 0, 0, 0, 0, 0]],
        "positions": [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 0, 0, 0, 0, 0, 0]],
    }
    for name in ROW_FIELDS:
        np.testing.assert_array_equal(packed.rows[name], expected[name], err_msg=name)
    assert packed.rows["inputs"].dtype == np.int32 and packed.rows["loss_weights"].dtype == np.float32
    assert packed.num_tokens == 10 and packed.efficiency == pytest.approx(10 / 16)


def random_examples(rng, count, max_length):
    examples, first = [], 0
    for _ in range(count):
        prompt = int(rng.integers(1, 20))
        response = int(rng.integers(1, max_length))
        examples.append(example(first, prompt, response))
        first += prompt + response
    return examples


def test_every_segment_is_its_example_alone():
    rng = np.random.default_rng(0)
    examples = random_examples(rng, 300, 120)
    packed = pack_examples(examples, seq_len=128, pad_id=PAD, overflow="drop")
    placed = sorted(i for row in packed.row_examples for i in row)
    kept = [i for i, (t, _) in enumerate(examples) if len(t) - 1 <= 128]
    assert placed == kept and packed.num_dropped == len(examples) - len(kept)
    for r, members in enumerate(packed.row_examples):
        rows = {name: packed.rows[name][r] for name in ROW_FIELDS}
        for segment, index in enumerate(members, start=1):
            tokens, mask = examples[index]
            in_segment = rows["segment_ids"] == segment
            # Contiguous, in order, and the target is always the next token of the same example.
            np.testing.assert_array_equal(rows["inputs"][in_segment], tokens[:-1])
            np.testing.assert_array_equal(rows["targets"][in_segment], tokens[1:])
            np.testing.assert_array_equal(rows["loss_weights"][in_segment], mask[1:])
            np.testing.assert_array_equal(rows["positions"][in_segment], np.arange(len(tokens) - 1))
        padding = rows["segment_ids"] == 0
        assert not rows["loss_weights"][padding].any() and not rows["targets"][padding].any()
        assert (rows["inputs"][padding] == PAD).all()


def test_truncate_response_keeps_the_prompt_and_drops_the_eos():
    fits = example(0, 3, 4)
    too_long = example(100, 4, 30)
    prompt_too_long = example(200, 12, 5)
    packed = pack_examples([fits, too_long, prompt_too_long], seq_len=10, pad_id=PAD)
    assert (packed.num_examples, packed.num_truncated, packed.num_dropped) == (3, 1, 1)
    row = packed.row_examples.index([1])
    # Exactly one full row: prompt 100..103, then the first 7 response tokens; no EOS (133) anywhere.
    np.testing.assert_array_equal(packed.rows["inputs"][row], np.arange(100, 110))
    np.testing.assert_array_equal(packed.rows["targets"][row], np.arange(101, 111))
    np.testing.assert_array_equal(packed.rows["loss_weights"][row], [0, 0, 0] + [1] * 7)


def test_drop_policy_counts_every_overlong_example():
    examples = [example(0, 3, 4), example(100, 4, 30), example(200, 2, 9)]
    packed = pack_examples(examples, seq_len=10, pad_id=PAD, overflow="drop")
    assert (packed.num_truncated, packed.num_dropped) == (0, 1)
    assert sorted(i for row in packed.row_examples for i in row) == [0, 2]


def test_unknown_policy_is_an_error():
    with pytest.raises(ValueError, match="truncate_response"):
        pack_examples([example(0, 1, 1)], seq_len=8, pad_id=PAD, overflow="wrap")


def test_empty_window_packs_to_no_rows():
    packed = pack_examples([example(0, 30, 5)], seq_len=8, pad_id=PAD, overflow="drop")
    assert packed.num_rows == 0 and packed.rows["inputs"].shape == (0, 8) and packed.efficiency == 1.0


def test_efficiency_on_an_openorca_like_length_mix():
    # Many short answers, a long tail to ~1,500 tokens, short questions (lengths in tokens).
    rng = np.random.default_rng(1)
    count = 1000
    responses = np.clip(rng.lognormal(5.3, 0.9, count), 3, 1500).astype(int)
    questions = np.clip(rng.lognormal(4.3, 0.7, count), 8, 400).astype(int)
    examples = [example(0, int(q), int(r)) for q, r in zip(questions, responses)]
    packed = pack_examples(examples, seq_len=2048, pad_id=PAD)
    slots = sum(len(t) - 1 for t, _ in examples)
    assert packed.num_tokens == slots
    lower_bound_rows = -(-slots // 2048)
    assert packed.efficiency == pytest.approx(slots / (packed.num_rows * 2048))
    assert packed.num_rows <= lower_bound_rows + 1
    assert packed.efficiency >= 0.98
