"""Exact-match scoring: pull the final answer out of a response, normalize, compare, and report.

Our teachers end every response with a line `Answer: <gold>` (docs/contracts.md), so that line is the
answer. Models not trained on that format (and BBH-style chain-of-thought) often end instead with
"... so the answer is X." or name an option "(B)"; `extract_answer` falls back to those in turn.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Sequence

from jax.sharding import Mesh

from orca_jax.data.construct.jsonl import RecordFormatError, read_objects, require_strings
from orca_jax.data.templates import Template, encode_prompt
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.eval.generate import greedy_generate
from orca_jax.model.config import ModelConfig

_ANSWER_LABEL = re.compile(r"answer\s*:", re.IGNORECASE)
# "the answer is 3.5." -> "3.5": a period ends the answer only when a space or the line end follows.
_THE_ANSWER_IS = re.compile(r"\bthe (?:final |correct )?answer is:?[ \t]*([^\n]*?)[ \t]*(?:\.(?=\s|$)|$)",
                            re.IGNORECASE | re.MULTILINE)
# A multiple-choice option as BBH names it; benchmarks.py writes AGIEval's golds the same way.
_OPTION = re.compile(r"\(([A-Za-z])\)")
# A prediction that starts by naming an option, "(b)" or "(b) frankenstein" once normalized.
_LEADING_OPTION = re.compile(r"\(([a-z])\)(?:\s|$)|([a-z])$")


@dataclasses.dataclass(frozen=True)
class EvalExample:
    """One question to answer, from the demo's eval.jsonl or a benchmark file."""

    id: str
    task: str
    """What accuracy is broken down by: the demo's `collection.task`, a benchmark's file name."""
    system_prompt: str
    question: str
    answer: str
    """The gold answer, compared with `exact_match`."""


def extract_answer(text: str) -> str:
    """The final answer stated in a response, stripped; '' if the response is empty.

    In order of preference:
    1. the text after the last `Answer:` (any case), up to the end of that line;
    2. X in the last "the answer is X" (also "the final/correct answer is X"), without a closing period;
    3. the last option named as "(X)", returned as "(X)";
    4. the last non-empty line.
    """
    labels = list(_ANSWER_LABEL.finditer(text))
    if labels:
        return text[labels[-1].end():].split("\n", 1)[0].strip()
    statements = _THE_ANSWER_IS.findall(text)
    if statements:
        return statements[-1].strip()
    options = _OPTION.findall(text)
    if options:
        return f"({options[-1]})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def normalize(answer: str) -> str:
    """Lower case, single spaces, no surrounding space or trailing periods, "(b)" -> "b"."""
    answer = " ".join(answer.split()).lower().rstrip(".").strip()
    option = re.fullmatch(r"\(([a-z])\)", answer)
    return option.group(1) if option else answer


def exact_match(prediction: str, gold: str) -> bool:
    """Whether an extracted prediction states the gold answer.

    When the gold names an option, "(B)", a prediction naming that option counts whether or not it
    repeats the option's text ("B", "(B)", "(B) Frankenstein"); otherwise the normalized strings must
    match.
    """
    gold_option = _OPTION.fullmatch(gold.strip())
    if gold_option:
        named = _LEADING_OPTION.match(normalize(prediction))
        return named is not None and (named.group(1) or named.group(2)) == gold_option.group(1).lower()
    return normalize(prediction) == normalize(gold)


def score_responses(examples: Sequence[EvalExample], responses: Sequence[str]) -> dict:
    """Accuracy overall and per task, with each example's prediction.

    Returns {'accuracy': float, 'n': int, 'per_task': {task: accuracy}, 'per_task_n': {task: count},
    'examples': [{'id', 'task', 'gold', 'prediction', 'correct', 'response'}, ...]}.
    """
    if len(examples) != len(responses):
        raise ValueError(f"{len(examples)} examples but {len(responses)} responses")
    if not examples:
        raise ValueError("nothing to score: no examples")
    scored, correct_by_task, count_by_task = [], {}, {}
    for example, response in zip(examples, responses):
        prediction = extract_answer(response)
        correct = exact_match(prediction, example.answer)
        count_by_task[example.task] = count_by_task.get(example.task, 0) + 1
        correct_by_task[example.task] = correct_by_task.get(example.task, 0) + int(correct)
        scored.append({"id": example.id, "task": example.task, "gold": example.answer,
                       "prediction": prediction, "correct": correct, "response": response})
    tasks = sorted(count_by_task)
    return {
        "accuracy": sum(correct_by_task.values()) / len(examples),
        "n": len(examples),
        "per_task": {task: correct_by_task[task] / count_by_task[task] for task in tasks},
        "per_task_n": {task: count_by_task[task] for task in tasks},
        "examples": scored,
    }


def evaluate_examples(params, model_config: ModelConfig, tokenizer: Tokenizer, template: str | Template,
                      examples: Sequence[EvalExample], *, max_new_tokens: int, batch_size: int,
                      mesh: Mesh | None = None) -> dict:
    """Greedy-decode a response to each example's prompt and score it (see `score_responses`)."""
    prompts = [encode_prompt(tokenizer, template, example.system_prompt, example.question)
               for example in examples]
    continuations = greedy_generate(params, model_config, prompts, max_new_tokens=max_new_tokens,
                                    eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                                    batch_size=batch_size, mesh=mesh)
    return score_responses(examples, [tokenizer.decode(ids) for ids in continuations])


def demo_task(example_id: str) -> str:
    """The task of a demo id `collection.task.tier.index` (orca_jax.data.demo): `collection.task`."""
    return ".".join(example_id.split(".")[:2])


def read_demo_eval(path: str | pathlib.Path, limit: int | None = None) -> list[EvalExample]:
    """The demo's eval.jsonl rows (`id`, `system_prompt`, `question`, `answer`); the first `limit` rows
    when `limit` is positive (None or 0: all, as the demo config's `eval_questions` means it).

    A malformed row is a RecordFormatError naming the file, the line and the field.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demo eval file {path} does not exist (write it with orca-jax make-demo-data)")
    examples = []
    for line_number, row in read_objects(path):
        if limit and len(examples) >= limit:
            break
        require_strings(path, line_number, row, ("id", "system_prompt", "question", "answer"))
        if not row["answer"].strip():
            raise RecordFormatError(f"{path}: line {line_number}: field 'answer' is empty")
        examples.append(EvalExample(id=row["id"], task=demo_task(row["id"]), system_prompt=row["system_prompt"],
                                    question=row["question"], answer=row["answer"]))
    if not examples:
        raise ValueError(f"{path}: no eval rows")
    return examples


def evaluate_demo(params, model_config: ModelConfig, tokenizer: Tokenizer, template: str | Template,
                  eval_path: str | pathlib.Path, max_new_tokens: int, batch_size: int,
                  mesh: Mesh | None = None, limit: int | None = None) -> dict:
    """Exact match of greedy responses on the demo's held-out questions (the first `limit`; 0/None: all).

    Returns the `score_responses` dict: accuracy, n, per_task (by `collection.task` id prefix),
    per_task_n and examples.
    """
    examples = read_demo_eval(eval_path, limit)
    return evaluate_examples(params, model_config, tokenizer, template, examples,
                             max_new_tokens=max_new_tokens, batch_size=batch_size, mesh=mesh)
