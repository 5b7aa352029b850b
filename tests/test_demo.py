"""The synthetic demo data: determinism, correct gold answers (recomputed here), held-out eval, sizes."""

import calendar
import datetime
import json
import re

import pytest

from orca_jax.data import demo
from orca_jax.data.construct.system_messages import SYSTEM_MESSAGES
from orca_jax.data.templates import encode_example
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer

SIZES = {"stage1": 400, "stage2": 200, "eval": 60}
DAY_NAMES = list(calendar.day_name)  # Monday first
A_MONDAY = datetime.date(2024, 1, 1)


@pytest.fixture(scope="module")
def demo_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths = demo.write_demo_data(out, seed=7, stage1_rows=SIZES["stage1"], stage2_rows=SIZES["stage2"],
                                 eval_rows=SIZES["eval"])
    return {name: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            for name, path in paths.items()}


def _task(row) -> str:
    return row["id"].split(".")[1]


def _numbers(question: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", question)]


def _expected_answer(task: str, question: str) -> str:
    """The gold answer worked out from the question text alone."""
    numbers = _numbers(question)
    if task == "add":
        return str(eval("+".join(map(str, numbers))))
    if task == "subtract":
        return str(max(numbers) - min(numbers))  # "a minus b" and "subtract b from a" both mean a - b >= 0
    if task == "compare":
        return str(min(numbers) if "smaller" in question else max(numbers))
    if task == "max":
        return str(max(numbers))
    if task == "min":
        return str(min(numbers))
    if task == "sort":
        return ", ".join(map(str, sorted(numbers)))
    if task == "count":
        return str(len(numbers))
    if task == "weekday":
        (days,) = numbers
        (start,) = [name for name in DAY_NAMES if name in question]
        start_date = A_MONDAY + datetime.timedelta(days=DAY_NAMES.index(start))
        backwards = "before" in question or "ago" in question
        return (start_date + datetime.timedelta(days=-days if backwards else days)).strftime("%A")
    raise AssertionError(f"unknown task {task}")


def _instance(task: str, question: str) -> tuple:
    """The problem instance a question asks about, independent of its wording."""
    numbers = _numbers(question)
    if task == "subtract":
        numbers = sorted(numbers)
    if task == "weekday":
        backward = "before" in question or "ago" in question
        return task, tuple(numbers), [d for d in DAY_NAMES if d in question][0], backward
    return task, tuple(numbers), "smaller" in question


def test_files_have_the_asked_sizes_and_fields(demo_rows):
    for name, rows in demo_rows.items():
        assert len(rows) == SIZES[name]
        answer_field = "answer" if name == "eval" else "response"
        assert all(set(row) == {"id", "system_prompt", "question", answer_field} for row in rows)
        assert all(row["system_prompt"] in SYSTEM_MESSAGES.values() for row in rows)
    ids = [row["id"] for rows in demo_rows.values() for row in rows]
    assert len(ids) == len(set(ids))
    assert {row["id"].split(".")[0] for row in demo_rows["stage1"]} == {"cot", "flan", "niv", "t0"}
    assert {_task(row) for row in demo_rows["stage1"]} == set(demo.TASKS)


def test_every_gold_answer_is_right(demo_rows):
    for name in ("stage1", "stage2"):
        for row in demo_rows[name]:
            *explanation, last_line = row["response"].split("\n")
            assert explanation and last_line == f"Answer: {_expected_answer(_task(row), row['question'])}", row
    for row in demo_rows["eval"]:
        assert row["answer"] == _expected_answer(_task(row), row["question"]), row


def test_stage2_explains_step_by_step_at_more_length(demo_rows):
    def mean_length(rows):
        return sum(len(row["response"]) for row in rows) / len(rows)
    assert mean_length(demo_rows["stage2"]) > 2 * mean_length(demo_rows["stage1"])


def test_eval_instances_appear_in_no_training_file(demo_rows):
    held_out = [_instance(_task(row), row["question"]) for row in demo_rows["eval"]]
    assert len(set(held_out)) == len(held_out)
    training = {_instance(_task(row), row["question"]) for name in ("stage1", "stage2") for row in demo_rows[name]}
    assert not training & set(held_out)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    def contents(seed, out):
        exit_code = demo.main(["--out", str(out), "--seed", str(seed), "--stage1_rows", "50", "--stage2_rows", "20",
                               "--eval_rows", "10"])
        assert exit_code == 0
        return {name: (out / f"{name}.jsonl").read_bytes() for name in ("stage1", "stage2", "eval")}
    first, again, other = contents(1, tmp_path / "a"), contents(1, tmp_path / "b"), contents(2, tmp_path / "c")
    assert first == again
    assert all(first[name] != other[name] for name in first)


def test_examples_fit_a_256_token_row_with_a_1000_piece_tokenizer(demo_rows, tmp_path):
    training = demo_rows["stage1"] + demo_rows["stage2"]
    model = train_tokenizer([f"{r['system_prompt']}\n{r['question']}\n{r['response']}" for r in training],
                            tmp_path / "tok", vocab_size=1000)
    tokenizer = Tokenizer.load(model)
    lengths = [len(encode_example(tokenizer, "orca", r["system_prompt"], r["question"], r["response"])[0])
               for r in training]
    assert max(lengths) - 1 <= 256
