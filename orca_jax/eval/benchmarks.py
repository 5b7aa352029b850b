"""BIG-Bench Hard and AGIEval as zero-shot exact-match tasks, read from their public files.

Layout expected under a benchmarks directory (the files as published; they are never copied here):

    bbh/<task>.json        {"examples": [{"input": str, "target": str}, ...]}   (27 tasks)
    agieval/<task>.jsonl   one {"passage", "question", "options", "label", ...} per line

Prompting follows Orca's zero-shot evaluation: no exemplars, a system message asking for step-by-step
reasoning, the options listed for multiple-choice questions, and a per-task statement of the answer's
form. The system message also asks for the final `Answer:` line our training data ends with, which is
what `exact_match.extract_answer` reads first. Multiple-choice golds are written "(B)" for both
benchmarks, so `exact_match` accepts "B", "(B)" and "(B) <option text>".
"""

from __future__ import annotations

import json
import pathlib
import re
import string
from collections.abc import Sequence

from orca_jax.data.construct.jsonl import RecordFormatError, read_objects, require_strings
from orca_jax.eval.exact_match import EvalExample

SYSTEM_MESSAGE = (
    "You are an AI assistant. The user will give you a task. Think step-by-step and justify your steps. "
    "Then give your final answer on a last line of the form 'Answer: <answer>'.")

MULTIPLE_CHOICE_FORMAT = "Answer with the letter of the correct option in parentheses, for example (A)."
# The two BBH tasks whose answers are free text rather than an option, a label or a number.
OPEN_ANSWER_FORMATS = {
    "dyck_languages": "Answer with the closing brackets that complete the sequence, separated by spaces.",
    "word_sorting": "Answer with the words in sorted order, separated by single spaces.",
}
GENERIC_FORMAT = "Answer with the final answer only."
# A task whose golds take at most this many distinct values is a closed label set (Yes/No, valid/invalid).
MAX_LABELS = 4

_LETTERED_OPTIONS = re.compile(r"^\(A\) ", re.MULTILINE)
_INTEGER = re.compile(r"-?\d+")


def task_paths(directory: str | pathlib.Path, suffix: str, tasks: Sequence[str] | None) -> list[pathlib.Path]:
    """The files of `tasks` (all tasks when None) in `directory`, sorted by task name."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"benchmark directory {directory} does not exist")
    available = {path.name[:-len(suffix)]: path for path in directory.glob(f"*{suffix}")}
    if not available:
        raise FileNotFoundError(f"benchmark directory {directory} holds no *{suffix} files")
    chosen = sorted(available) if tasks is None else list(tasks)
    unknown = [task for task in chosen if task not in available]
    if unknown:
        raise ValueError(f"unknown tasks {unknown} in {directory}; available: {sorted(available)}")
    return [available[task] for task in chosen]


def bbh_answer_format(task: str, question: str, targets: Sequence[str]) -> str:
    """How the answer to a BBH question should be written: an option letter when the question lists
    lettered options, else judged from the form of all the task's gold targets."""
    if _LETTERED_OPTIONS.search(question):
        return MULTIPLE_CHOICE_FORMAT
    if task in OPEN_ANSWER_FORMATS:
        return OPEN_ANSWER_FORMATS[task]
    if all(_INTEGER.fullmatch(target) for target in targets):
        return "Answer with a single integer."
    labels = sorted(set(targets))
    if len(labels) <= MAX_LABELS:
        return f"Answer with one of: {', '.join(labels)}."
    return GENERIC_FORMAT


def _bbh_pairs(path: pathlib.Path) -> list[tuple[str, str]]:
    """(input, target) of every example in one BBH task file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RecordFormatError(f"{path}: not JSON ({err.msg})") from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not examples:
        raise RecordFormatError(f"{path}: expected an object with a non-empty 'examples' list")
    pairs = []
    for index, example in enumerate(examples):
        for field in ("input", "target"):
            if not isinstance(example, dict) or not isinstance(example.get(field), str):
                raise RecordFormatError(f"{path}: example {index}: field {field!r} is missing or not a string")
        pairs.append((example["input"], example["target"].strip()))
    return pairs


def read_bbh(bbh_dir: str | pathlib.Path, tasks: Sequence[str] | None = None,
             limit: int | None = None) -> list[EvalExample]:
    """BBH examples as zero-shot prompts, the first `limit` per task when `limit` is positive."""
    examples = []
    for path in task_paths(bbh_dir, ".json", tasks):
        task, pairs = path.stem, _bbh_pairs(path)
        targets = [target for _, target in pairs]
        for index, (question, target) in enumerate(pairs[:limit or None]):
            answer_format = bbh_answer_format(task, question, targets)
            examples.append(EvalExample(id=f"{task}.{index}", task=task, system_prompt=SYSTEM_MESSAGE,
                                        question=f"{question}\n\n{answer_format}", answer=target))
    return examples


def agieval_question(passage: str | None, question: str, options: Sequence[str]) -> str:
    """The user turn of an AGIEval item: passage, question, the lettered options, the answer form."""
    lines = [passage.strip(), ""] if passage and passage.strip() else []
    lines += [question.strip(), "Answer choices:"]
    for letter, option in zip(string.ascii_uppercase, options):
        marker = f"({letter})"
        lines.append(option if option.startswith(marker) else f"{marker} {option}")
    return "\n".join(lines + ["", MULTIPLE_CHOICE_FORMAT])


def _agieval_example(path: pathlib.Path, line_number: int, row: dict, index: int) -> EvalExample:
    require_strings(path, line_number, row, ("question", "label"))
    where = f"{path}: line {line_number}"
    passage, options = row.get("passage"), row.get("options")
    if passage is not None and not isinstance(passage, str):
        raise RecordFormatError(f"{where}: field 'passage' is a {type(passage).__name__}, not a string or null")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise RecordFormatError(f"{where}: field 'options' is not a non-empty list of strings (only the "
                                "multiple-choice AGIEval tasks Orca reports are supported)")
    letters = string.ascii_uppercase[:len(options)]
    if row["label"] not in letters:
        raise RecordFormatError(f"{where}: field 'label' is {row['label']!r}, not one of the option letters {letters}")
    task = path.stem
    return EvalExample(id=f"{task}.{index}", task=task, system_prompt=SYSTEM_MESSAGE,
                       question=agieval_question(passage, row["question"], options), answer=f"({row['label']})")


def read_agieval(agieval_dir: str | pathlib.Path, tasks: Sequence[str] | None = None,
                 limit: int | None = None) -> list[EvalExample]:
    """AGIEval multiple-choice items as zero-shot prompts, the first `limit` per task when positive."""
    examples = []
    for path in task_paths(agieval_dir, ".jsonl", tasks):
        for index, (line_number, row) in enumerate(read_objects(path)):
            if limit and index >= limit:
                break
            examples.append(_agieval_example(path, line_number, row, index))
    return examples


def read_benchmark(name: str, benchmarks_dir: str | pathlib.Path, tasks: Sequence[str] | None = None,
                   limit: int | None = None) -> list[EvalExample]:
    """The examples of benchmark `name` ('bbh' or 'agieval') from `benchmarks_dir/name/`."""
    if name not in READERS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(READERS)}")
    return READERS[name](pathlib.Path(benchmarks_dir) / name, tasks, limit)


READERS = {"bbh": read_bbh, "agieval": read_agieval}
