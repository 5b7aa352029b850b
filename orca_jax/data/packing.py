"""Packing: many variable-length examples into few fixed-length rows, with nothing leaking between them.

Each example (tokens t[0..n), response mask m[0..n)) occupies n-1 slots of a row: inputs t[:-1],
targets t[1:], loss_weights m[1:] (docs/contracts.md), so a target never reaches into the next
example. Segment ids (1..k in a row, 0 = padding) and per-example positions let attention and rotary
embeddings treat every example as if it were alone.

Rows are filled by best-fit decreasing over a window of examples: longest first, each into the open row
whose free space fits it most tightly. Plain concatenation strands the tail of every row a long
example does not fit into; best-fit leaves almost all the free space in the window's last row or two.

Examples longer than a row follow an overflow policy:
  'drop'               the example is skipped and counted.
  'truncate_response'  keep the prompt and the head of the response, cut to exactly one row. The EOS is
                       cut too: training "stop here" in mid-answer would teach the model to stop early.
                       An example whose prompt alone fills the row has no response target left and is
                       dropped (counted as dropped).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

OverflowPolicy = Literal["drop", "truncate_response"]
OVERFLOW_POLICIES: tuple[str, ...] = ("drop", "truncate_response")
ROW_FIELDS: tuple[str, ...] = ("inputs", "targets", "loss_weights", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class PackedWindow:
    """The rows made from one window of examples.

    `rows` maps each of ROW_FIELDS to a [num_rows, seq_len] array; `row_examples[r]` lists the window
    indices of the examples in row r, in segment order (segment id s is row_examples[r][s - 1]).
    """

    rows: dict[str, np.ndarray]
    row_examples: list[list[int]]
    num_examples: int
    num_dropped: int
    num_truncated: int

    @property
    def num_rows(self) -> int:
        return len(self.row_examples)

    @property
    def num_tokens(self) -> int:
        """Non-padding slots over all rows."""
        return int(np.count_nonzero(self.rows["segment_ids"]))

    @property
    def efficiency(self) -> float:
        """Non-padding slots / all slots (1.0 for an empty window)."""
        slots = self.rows["segment_ids"].size
        return self.num_tokens / slots if slots else 1.0


def fit_to_row(tokens: np.ndarray, response_mask: np.ndarray, seq_len: int,
               overflow: OverflowPolicy) -> tuple[np.ndarray, np.ndarray] | None:
    """The example as it will be packed (possibly truncated), or None if the policy drops it."""
    if len(tokens) - 1 <= seq_len:
        return tokens, response_mask
    if overflow == "drop":
        return None
    prompt_length = int(np.argmax(response_mask))
    if prompt_length > seq_len:
        return None
    return tokens[:seq_len + 1], response_mask[:seq_len + 1]


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign items (all <= capacity) to bins; returns each bin's item indices in placement order.

    Deterministic: ties in length keep input order, ties in free space pick the oldest bin.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    bins: list[list[int]] = []
    # Open bins sorted by free space: parallel lists, free_space ascending, (free, bin id) unique.
    free_space: list[tuple[int, int]] = []
    for item in order.tolist():
        length = int(lengths[item])
        slot = bisect.bisect_left(free_space, (length, -1))
        if slot == len(free_space):
            bin_id, free = len(bins), capacity
            bins.append([])
        else:
            free, bin_id = free_space.pop(slot)
        bins[bin_id].append(item)
        if free - length > 0:
            bisect.insort(free_space, (free - length, bin_id))
    return bins


def pack_examples(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int,
                  overflow: OverflowPolicy = "truncate_response") -> PackedWindow:
    """Pack (tokens, response_mask) examples into [rows, seq_len] arrays by best-fit decreasing.

    Padding slots hold `pad_id` in inputs and 0 in every other field.
    """
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow policy {overflow!r} is not one of {OVERFLOW_POLICIES}")
    kept_indices, kept, num_truncated = [], [], 0
    for index, (tokens, mask) in enumerate(examples):
        fitted = fit_to_row(tokens, mask, seq_len, overflow)
        if fitted is None:
            continue
        num_truncated += len(fitted[0]) < len(tokens)
        kept_indices.append(index)
        kept.append(fitted)

    slot_counts = np.array([len(tokens) - 1 for tokens, _ in kept], dtype=np.int64)
    bins = best_fit_decreasing(slot_counts, seq_len)
    num_rows = len(bins)

    # Where each kept example lands: its row, its segment id, its first slot in the row.
    placement = np.array([item for row in bins for item in row], dtype=np.int64)
    row_sizes = np.array([len(row) for row in bins], dtype=np.int64)
    row_of = np.repeat(np.arange(num_rows), row_sizes)
    first_of_row = (np.cumsum(row_sizes) - row_sizes)[row_of]
    segment_of = np.arange(len(placement)) - first_of_row + 1
    counts = slot_counts[placement]
    slot_offsets = np.cumsum(counts) - counts
    starts_in_row = slot_offsets - slot_offsets[first_of_row]

    # One flat gather/scatter for all examples: slot j of example e reads tokens[e][j] (input) and
    # tokens[e][j + 1] (target) and writes to row_of[e] * seq_len + starts_in_row[e] + j.
    tokens = np.concatenate([kept[i][0] for i in placement] or [np.zeros(0, np.int32)])
    masks = np.concatenate([kept[i][1] for i in placement] or [np.zeros(0, bool)])
    token_offsets = slot_offsets + np.arange(len(placement))
    within = np.arange(int(counts.sum())) - np.repeat(slot_offsets, counts)
    source = np.repeat(token_offsets, counts) + within
    destination = np.repeat(row_of * seq_len + starts_in_row, counts) + within

    flat_size = num_rows * seq_len
    inputs = np.full(flat_size, pad_id, np.int32)
    targets = np.zeros(flat_size, np.int32)
    loss_weights = np.zeros(flat_size, np.float32)
    segment_ids = np.zeros(flat_size, np.int32)
    positions = np.zeros(flat_size, np.int32)
    inputs[destination] = tokens[source]
    targets[destination] = tokens[source + 1]
    loss_weights[destination] = masks[source + 1]
    segment_ids[destination] = np.repeat(segment_of, counts)
    positions[destination] = within

    rows = {name: array.reshape(num_rows, seq_len) for name, array in zip(
        ROW_FIELDS, (inputs, targets, loss_weights, segment_ids, positions))}
    row_examples = [[kept_indices[item] for item in row] for row in bins]
    return PackedWindow(rows=rows, row_examples=row_examples, num_examples=len(examples),
                        num_dropped=len(examples) - len(kept), num_truncated=num_truncated)

