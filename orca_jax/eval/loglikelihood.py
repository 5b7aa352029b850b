"""Log-likelihood scoring: how probable the model finds each continuation given its context, many
(context, continuation) pairs packed into each row so one forward pass scores many options.

A pair is token ids: the context (BOS + prompt) and the continuation (an option's tokens). Its score is
the summed log-probability of the continuation's tokens, each given everything before it, plus whether
every continuation token is the model's greedy choice (lm-evaluation-harness's `is_greedy`).

Rows. A pair of n = len(context) + len(continuation) tokens takes n - 1 slots of a row (inputs t[:-1],
targets t[1:], as in training: docs/contracts.md); pairs are packed into rows of `row_length` slots by
the training pipeline's best-fit decreasing (`packing.best_fit_decreasing`), each pair its own segment
(ids 1..k) with positions restarting at 0, so the model's segment mask keeps the pairs apart and every
pair scores exactly as it would alone (tests check this against one pair per row and against
transformers). A pair too long for a row loses the start of its context (lm-evaluation-harness cuts
the same way); a continuation longer than a row cannot be scored and is an error.

Rows are scored `batch_rows` at a time, split over the mesh's data and fsdp axes (the `batch` rule),
parameters laid out by `axis_rules` (the training rules by default: a forward pass over full rows is
compute-bound like a train step, unlike a decode step). One compiled program per (batch_rows,
row_length); the last batch is filled with empty rows.

Text to pairs (`encode_pair`) follows lm-evaluation-harness's causal-model rule, so both paths give the
same ids: trailing whitespace of the context moves to the front of the continuation, and the
continuation's ids are those of encode(context + continuation) after the first len(encode(context)).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from orca_jax import parallel
from orca_jax.data.packing import best_fit_decreasing
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.errors import UserError
from orca_jax.eval.benchmarks import Example
from orca_jax.eval.generate import prepare_params
from orca_jax.eval.prompts import PromptBuilder
from orca_jax.eval.runner import run_by_task
from orca_jax.model.config import ModelConfig
from orca_jax.model.llama import Llama


class ScoringError(UserError):
    """A pair that cannot be scored (empty, or a continuation longer than a row); the message says which."""


@dataclasses.dataclass(frozen=True)
class Pair:
    context: tuple[int, ...]
    """Token ids the continuation is conditioned on (BOS + prompt); at least one."""
    continuation: tuple[int, ...]
    """Token ids scored; at least one."""


@dataclasses.dataclass(frozen=True)
class PairScore:
    logprob: float
    """Summed log-probability (natural log) of the continuation's tokens."""
    num_tokens: int
    """Continuation tokens scored."""
    greedy: bool
    """Every continuation token was the argmax of its logits."""
    truncated: bool = False
    """The context lost its start to fit the row."""


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str, *, bos: bool = True) -> Pair:
    """Token ids of a (context, continuation) text pair by lm-evaluation-harness's causal rule (module
    docstring); the context starts with BOS when `bos`."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    prefix = [tokenizer.bos_id] if bos else []
    context_ids = prefix + tokenizer.encode(context) if context else prefix
    whole = prefix + tokenizer.encode(context + continuation)
    return Pair(tuple(context_ids), tuple(whole[len(context_ids):]))


def _fit(pair: Pair, row_length: int, index: int) -> tuple[np.ndarray, int, bool]:
    """(tokens, continuation length, truncated) of a pair as it goes into a row of `row_length` slots."""
    if not pair.context or not pair.continuation:
        raise ScoringError(f"pair {index}: context and continuation must each have at least one token "
                           f"(have {len(pair.context)} and {len(pair.continuation)})")
    if len(pair.continuation) > row_length:
        raise ScoringError(f"pair {index}: its continuation has {len(pair.continuation)} tokens, more than "
                           f"a row's {row_length} slots")
    tokens = np.asarray(pair.context + pair.continuation, np.int32)
    truncated = len(tokens) - 1 > row_length
    return (tokens[-(row_length + 1):] if truncated else tokens), len(pair.continuation), truncated


def build_rows(pairs: Sequence[Pair], row_length: int, pad_id: int, *, packed: bool = True
               ) -> tuple[dict[str, np.ndarray], list[list[int]], list[bool]]:
    """(rows, row_pairs, truncated): [num_rows, row_length] arrays inputs, targets, positions,
    segment_ids and weights (1.0 on continuation targets), each row's pair indices in segment order,
    and which pairs lost context. `packed=False` puts one pair per row (the reference layout)."""
    fitted = [_fit(pair, row_length, index) for index, pair in enumerate(pairs)]
    slots = [len(tokens) - 1 for tokens, _, _ in fitted]
    bins = best_fit_decreasing(slots, row_length) if packed else [[index] for index in range(len(pairs))]
    shape = (len(bins), row_length)
    rows = {"inputs": np.full(shape, pad_id, np.int32), "targets": np.zeros(shape, np.int32),
            "positions": np.zeros(shape, np.int32), "segment_ids": np.zeros(shape, np.int32),
            "weights": np.zeros(shape, np.float32)}
    for row, members in enumerate(bins):
        start = 0
        for segment, index in enumerate(members, start=1):
            tokens, scored, _ = fitted[index]
            end = start + len(tokens) - 1
            rows["inputs"][row, start:end] = tokens[:-1]
            rows["targets"][row, start:end] = tokens[1:]
            rows["positions"][row, start:end] = np.arange(len(tokens) - 1)
            rows["segment_ids"][row, start:end] = segment
            rows["weights"][row, end - scored:end] = 1.0
            start = end
    return rows, bins, [truncated for _, _, truncated in fitted]


@functools.lru_cache(maxsize=8)
def _token_scorer(model_config: ModelConfig, axis_rules: tuple) -> Callable:
    """jit(params, inputs, positions, segment_ids, targets) -> (log p(target), target is argmax), per slot."""
    model = Llama(model_config)

    @jax.jit
    def score(params, inputs, positions, segment_ids, targets):
        logits = model.apply({"params": params}, inputs, positions, segment_ids).astype(jnp.float32)
        # log_softmax gathered at the target, without materialising a second [rows, length, vocab] array.
        target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        logprobs = target_logits - jax.nn.logsumexp(logits, axis=-1)
        return logprobs, jnp.argmax(logits, axis=-1) == targets

    return score


def _rows_per_batch(batch_rows: int, mesh: Mesh | None, axis_rules: tuple) -> int:
    """`batch_rows` rounded up to a multiple of the devices rows are split over."""
    if mesh is None:
        return batch_rows
    axes = parallel.logical_to_spec(("batch",), rules=axis_rules)[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    groups = int(np.prod([mesh.shape[axis] for axis in axes]))
    return -(-batch_rows // groups) * groups


def score_pairs(params, model_config: ModelConfig, pairs: Sequence[Pair], *, pad_id: int,
                row_length: int | None = None, batch_rows: int = 8, packed: bool = True,
                mesh: Mesh | None = None, params_dtype=None, axis_rules=parallel.LOGICAL_AXIS_RULES,
                on_batch_done: Callable[[int], None] | None = None) -> list[PairScore]:
    """The score of every pair, in order (module docstring). `row_length` defaults to the model's
    max_seq_len. `params_dtype` None keeps float32 weights float32 (`generate.prepare_params` casts and
    lays them out once: pass parameters already so to avoid the copy). `on_batch_done(rows_done)`
    follows progress."""
    if not pairs:
        return []
    row_length = model_config.max_seq_len if row_length is None else row_length
    if not 1 < row_length <= model_config.max_seq_len:
        raise ScoringError(f"row length {row_length} must be in 2..max_seq_len={model_config.max_seq_len}")
    rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in axis_rules)
    rows, bins, truncated = build_rows(pairs, row_length, pad_id, packed=packed)
    per_batch = _rows_per_batch(batch_rows, mesh, rules)
    dtype = params_dtype if params_dtype is not None else jnp.dtype(model_config.param_dtype)
    params = prepare_params(params, model_config, mesh, dtype, rules)
    scorer = _token_scorer(model_config, rules)
    names = ("inputs", "positions", "segment_ids", "targets")
    logprobs = np.zeros(rows["inputs"].shape, np.float32)
    greedy = np.zeros(rows["inputs"].shape, bool)
    num_rows = len(bins)
    for start in range(0, num_rows, per_batch):
        batch = []
        for name in names:
            block = rows[name][start:start + per_batch]
            if len(block) < per_batch:  # empty rows: one compiled shape for every batch
                filler = np.full((per_batch - len(block), row_length), pad_id if name == "inputs" else 0, np.int32)
                block = np.concatenate([block, filler])
            batch.append(block if mesh is None else jax.device_put(block, parallel.logical_sharding(
                mesh, ("batch", "length"), rules)))
        if mesh is None:
            out_logprobs, out_greedy = scorer(params, *batch)
        else:
            with parallel.activate(mesh, rules):
                out_logprobs, out_greedy = scorer(params, *batch)
        end = min(start + per_batch, num_rows)
        logprobs[start:end] = np.asarray(out_logprobs)[:end - start]
        greedy[start:end] = np.asarray(out_greedy)[:end - start]
        if on_batch_done is not None:
            on_batch_done(end)
    scores: list[PairScore | None] = [None] * len(pairs)
    for row, members in enumerate(bins):
        for segment, index in enumerate(members, start=1):
            mask = (rows["segment_ids"][row] == segment) & (rows["weights"][row] > 0)
            scores[index] = PairScore(logprob=float(logprobs[row][mask].sum(dtype=np.float64)),
                                      num_tokens=int(mask.sum()), greedy=bool(greedy[row][mask].all()),
                                      truncated=truncated[index])
    return scores


# ---- Multiple-choice benchmarks by log-likelihood ------------------------------------------------

# BBH tasks whose inputs list no options: their answer is one of two labels.
BBH_LABEL_CHOICES = {"boolean_expressions": ("True", "False"), "sports_understanding": ("yes", "no"),
                     "web_of_lies": ("Yes", "No")}
# What decides a row's `correct`: the summed log-likelihood (lm-eval's acc), or it divided by the
# option's tokens, or by its UTF-8 bytes (lm-eval's acc_bytes; its acc_norm divides by characters,
# the same for ASCII options).
NORMALIZATIONS = ("none", "tokens", "bytes")


def _letter(option: str) -> str | None:
    """'(C)' of an option written '(C) text' or '(C)text'; None when it has no such letter."""
    if len(option) >= 3 and option[0] == "(" and option[2] == ")" and option[1].isupper():
        return option[:3]
    return None


def _plain(text: str) -> str:
    return " ".join(text.casefold().replace("(", " ").replace(")", " ").split()).rstrip(".")


def choices_for(example: Example) -> tuple[tuple[str, ...], int | None]:
    """(the continuations scored, the gold's index among them or None when the gold names none).

    Each option is scored as listed, letter and text together: AGIEval's "(A)21" (as lm-eval's
    agieval tasks score them), BBH's "(A) 12/11/1937" or "Yes"; BBH tasks listing no options score
    their two labels. AGIEval's gold is a position; BBH's matches an option exactly, by its letter,
    or by its text. Three BBH golds name no option (movie_recommendation.163, ruin_names.99 and .144:
    the published options split the answer at its commas): those rows count as wrong, marked skipped.
    """
    choices = example.options or BBH_LABEL_CHOICES.get(example.task, ())
    if example.benchmark not in ("bbh", "agieval") or not choices:
        raise UserError(f"{example.id}: the loglikelihood method scores multiple-choice examples; this "
                        f"{example.benchmark} example lists no options (use --method generate)")
    gold = example.gold.strip()
    if example.benchmark == "agieval":
        # AGIEval's label is the option's position (a few logiqa-en options are written "B? ..." or
        # without a letter at all), as lm-eval's agieval tasks read it.
        position = ord(gold.strip("()")[:1] or "?") - ord("A")
        return tuple(choices), position if 0 <= position < len(choices) else None
    for rule in (lambda option: option == gold, lambda option: _letter(option) == gold,
                 lambda option: _letter(option) == f"({gold})",
                 lambda option: _plain(option[3:] if _letter(option) else option) == _plain(gold)):
        hits = [index for index, option in enumerate(choices) if rule(option)]
        if len(hits) == 1:
            return tuple(choices), hits[0]
    return tuple(choices), None


def _delimited(prompt_text: str, choice: str) -> str:
    """The continuation text: a space after a prompt ending in a non-space ("...A:" -> " (A) ..."),
    nothing after one ending in whitespace (the chat template's "### Assistant:\\n")."""
    return choice if not prompt_text or prompt_text[-1].isspace() else " " + choice


def pick(logprobs: Sequence[float], lengths: Sequence[int]) -> int:
    """Index of the best option by log-likelihood per unit of `lengths` (all ones: the plain sum)."""
    return int(np.argmax(np.asarray(logprobs, np.float64) / np.maximum(np.asarray(lengths, np.float64), 1)))


def evaluate_choices(params, model_config: ModelConfig, tokenizer: Tokenizer, builder: PromptBuilder,
                     examples: Sequence[Example], *, normalize: str = "none", row_length: int | None = None,
                     batch_rows: int = 8, mesh: Mesh | None = None, params_dtype=None,
                     axis_rules=parallel.LOGICAL_AXIS_RULES, journal=None, progress: bool = False) -> list[dict]:
    """Scored rows of multiple-choice `examples`, task by task (finished tasks go to `journal`, a
    runner.Journal, and are taken from it on a rerun). Each row: benchmark, task, index, prompt,
    options, choices, gold, gold_index, loglikelihoods, choice_tokens, choice_bytes, predicted
    (by `normalize`), correct, correct_by {none, tokens, bytes}, skipped (no option matched the
    gold), truncated."""
    if normalize not in NORMALIZATIONS:
        raise UserError(f"--normalize {normalize!r}: choose one of {NORMALIZATIONS}")
    def score_task(task_examples: list[Example], on_batch_done) -> list[dict]:
        return _score_task(params, model_config, tokenizer, builder, task_examples, normalize,
                           row_length=row_length, batch_rows=batch_rows, mesh=mesh, params_dtype=params_dtype,
                           axis_rules=axis_rules)

    return run_by_task(examples, score_task, journal=journal, progress=progress, desc="loglikelihood")


def _score_task(params, model_config, tokenizer, builder, examples, normalize, **scoring) -> list[dict]:
    prompts = [builder.build(example) for example in examples]
    per_example = [choices_for(example) for example in examples]
    pairs, owners = [], []
    for number, (prompt, (choices, _)) in enumerate(zip(prompts, per_example)):
        for choice in choices:
            pairs.append(encode_pair(tokenizer, prompt.text, _delimited(prompt.text, choice)))
            owners.append(number)
    scores = score_pairs(params, model_config, pairs, pad_id=tokenizer.pad_id, **scoring)
    grouped: list[list[PairScore]] = [[] for _ in examples]
    for owner, score in zip(owners, scores):
        grouped[owner].append(score)
    rows = []
    for example, prompt, (choices, gold_index), option_scores in zip(examples, prompts, per_example, grouped):
        logprobs = [score.logprob for score in option_scores]
        lengths = {"none": [1] * len(choices), "tokens": [score.num_tokens for score in option_scores],
                   "bytes": [len(choice.encode("utf-8")) for choice in choices]}
        verdicts = {name: gold_index is not None and pick(logprobs, lengths[name]) == gold_index
                    for name in NORMALIZATIONS}
        rows.append({"benchmark": example.benchmark, "task": example.task, "index": example.index,
                     "prompt": prompt.text, "options": list(example.options), "choices": list(choices),
                     "gold": example.gold, "gold_index": gold_index, "loglikelihoods": logprobs,
                     "choice_tokens": lengths["tokens"], "choice_bytes": lengths["bytes"],
                     "predicted": pick(logprobs, lengths[normalize]), "correct": verdicts[normalize],
                     "correct_by": verdicts, "skipped": gold_index is None,
                     "truncated": prompt.truncated or any(score.truncated for score in option_scores)})
    return rows
