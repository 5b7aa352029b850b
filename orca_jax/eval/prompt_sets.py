"""Prompt sets of the open-ended evaluation: Vicuna's 80 questions, the Awesome ChatGPT prompts,
WizardLM's test set, or any JSONL of prompts, each read into `Prompt`s with a string id.

    vicuna    question.jsonl: question_id, text, category
    awesome   prompts.csv: header `act,prompt`; the id is the data row's number (1-based), the
              category "awesome" (162 distinct acts would make categories of one prompt)
    wizardlm  WizardLM_testset.jsonl: idx, Skill (the category), Instruction
    jsonl     any JSONL with an id (`id`, `question_id` or `idx`), a prompt (`text`, `question`,
              `prompt` or `instruction`) and optionally a `category` (else "all")

`auto` picks by the file: .csv is awesome; a JSONL whose first row has `question_id` and `text` is
vicuna, one with `Instruction` is wizardlm, anything else jsonl.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
from collections.abc import Sequence

from orca_jax.data.jsonl import read_objects
from orca_jax.errors import UserError

FORMATS = ("auto", "vicuna", "awesome", "wizardlm", "jsonl")
ID_FIELDS = ("id", "question_id", "idx")
TEXT_FIELDS = ("text", "question", "prompt", "instruction")


class PromptSetError(UserError):
    """A prompt file that cannot be read; the message names the file, the row and the field."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    category: str


def _id(value, path: pathlib.Path, row: int, field: str) -> str:
    # Ids are compared as strings, so 1 (Vicuna's int) and "1" (an answer file's) are the same question.
    if isinstance(value, bool) or not isinstance(value, (int, str)) or str(value).strip() == "":
        raise PromptSetError(f"{path}: line {row}: field {field!r} is not an integer or a non-empty string")
    return str(value)


def _text(row: dict, field: str, path: pathlib.Path, line: int) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        found = "missing" if value is None else "empty" if isinstance(value, str) else f"a {type(value).__name__}"
        raise PromptSetError(f"{path}: line {line}: field {field!r} is {found}, not a prompt")
    return value


def _read_jsonl_set(path: pathlib.Path, id_field: str, text_field: str, category_field: str) -> list[Prompt]:
    return [Prompt(_id(row.get(id_field), path, line, id_field), _text(row, text_field, path, line),
                   _text(row, category_field, path, line))
            for line, row in read_objects(path)]


def read_vicuna(path: pathlib.Path) -> list[Prompt]:
    return _read_jsonl_set(path, "question_id", "text", "category")


def read_wizardlm(path: pathlib.Path) -> list[Prompt]:
    return _read_jsonl_set(path, "idx", "Instruction", "Skill")


def read_awesome(path: pathlib.Path) -> list[Prompt]:
    with open(path, newline="", encoding="utf-8") as data:
        rows = list(csv.reader(data))
    if not rows or [cell.strip() for cell in rows[0]] != ["act", "prompt"]:
        raise PromptSetError(f"{path}: line 1: the header must be 'act,prompt'")
    prompts = []
    for number, row in enumerate(rows[1:], start=1):
        if len(row) != 2 or not row[1].strip():
            raise PromptSetError(f"{path}: data row {number}: expected 2 fields (act, prompt) with a prompt")
        prompts.append(Prompt(str(number), row[1], "awesome"))
    return prompts


def read_jsonl_prompts(path: pathlib.Path) -> list[Prompt]:
    prompts = []
    for line, row in read_objects(path):
        id_field = next((field for field in ID_FIELDS if field in row), None)
        text_field = next((field for field in TEXT_FIELDS if field in row), None)
        if id_field is None or text_field is None:
            wanted = ID_FIELDS if id_field is None else TEXT_FIELDS
            raise PromptSetError(f"{path}: line {line}: no field of {wanted}")
        category = row.get("category", "all")
        if not isinstance(category, str):
            raise PromptSetError(f"{path}: line {line}: field 'category' is not a string")
        prompts.append(Prompt(_id(row[id_field], path, line, id_field), _text(row, text_field, path, line), category))
    return prompts


def detect_format(path: pathlib.Path) -> str:
    if path.suffix == ".csv":
        return "awesome"
    with open(path, encoding="utf-8") as data:
        first = next((line for line in data if line.strip()), "")
    try:
        row = json.loads(first) if first else {}
    except json.JSONDecodeError:
        return "jsonl"  # the reader names the bad line
    if isinstance(row, dict) and "question_id" in row and "text" in row:
        return "vicuna"
    if isinstance(row, dict) and "Instruction" in row:
        return "wizardlm"
    return "jsonl"


READERS = {"vicuna": read_vicuna, "awesome": read_awesome, "wizardlm": read_wizardlm, "jsonl": read_jsonl_prompts}


def load_prompt_set(path: str | pathlib.Path, format: str = "auto", limit: int | None = None) -> list[Prompt]:
    """The prompts of `path` (first `limit` of them), ids unique."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PromptSetError(f"prompt set {path} does not exist")
    if format not in FORMATS:
        raise PromptSetError(f"prompt format {format!r}: choose one of {FORMATS}")
    prompts = READERS[detect_format(path) if format == "auto" else format](path)
    _check_unique(path, prompts)
    if not prompts:
        raise PromptSetError(f"{path}: no prompts")
    return prompts[:limit] if limit else prompts


def _check_unique(path: pathlib.Path, prompts: Sequence[Prompt]) -> None:
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.id in seen:
            raise PromptSetError(f"{path}: id {prompt.id!r} appears twice")
        seen.add(prompt.id)
