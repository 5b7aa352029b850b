"""A synthetic two-teacher dataset small enough for a tiny LLaMA to learn on a CPU in minutes.

It mirrors Orca's data at toy scale: every row is (system message, question, teacher explanation) in
OpenOrca's columns, ids carry a FLAN-v2 sub-collection prefix, and there are two teachers:

- `stage1.jsonl`: more rows with terse explanations, the role ChatGPT plays as Orca's intermediate
  teacher;
- `stage2.jsonl`: fewer rows with step-by-step explanations, the role of GPT-4;
- `eval.jsonl`: held-out questions (`id, system_prompt, question, answer`) whose problem instances
  (the operands, not only the wording) appear in neither training file.

Every response ends with a line `Answer: <gold>`, which `eval.scoring.score` reads.

The tasks have short verifiable answers and were chosen so that a 1-5M parameter model can learn them
in a few hundred steps: the answer is a number or weekday named in the question, or one successor/
predecessor chain away from it, and the step-by-step explanations spell out exactly that chain
(counting up or down, running maxima, next weekdays), which is the point of explanation tuning.

Operands are kept small (numbers 1-25, at most 5 counting steps, lists of 3-5, weekdays at most a
week away) because the demo's few hundred CPU steps teach a ~1M-parameter model to copy numbers from
the question only when there are few of them to copy: with two-digit operands up to 99, lists of up
to 7 and chains of up to 9 steps it learned the format but answered about 5% of held-out questions.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import random
from collections.abc import Callable

from orca_jax import paths
from orca_jax.data.construct.system_messages import PAPER_ASSIGNMENT, SYSTEM_MESSAGES, SystemMessagePicker

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# Messages 14 (translation) and 15 (a long multi-part format) fit none of these tasks and alone would
# take a third of a 256-token row; the multiple-choice-only ones are excluded by the picker.
UNFIT_SYSTEM_MESSAGES = frozenset({14, 15})


@dataclasses.dataclass(frozen=True)
class Problem:
    """One task instance and how each teacher explains it."""

    instance: tuple  # the task and its operands: what "held out" means for the eval questions
    question: str
    answer: str
    terse: str  # stage-1 explanation
    step_by_step: str  # stage-2 explanation


def _number_list(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers))


def _steps(count: int) -> str:
    return "1 step" if count == 1 else f"{count} steps"


def _add(rng: random.Random) -> Problem:
    a, b = rng.randint(1, 20), rng.randint(1, 5)
    question = rng.choice(("What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}.")).format(a=a, b=b)
    counting = _number_list(list(range(a + 1, a + b + 1)))
    return Problem(("add", a, b), question, str(a + b), f"{a} + {b} = {a + b}.",
                   f"To add {b} to {a}, count up {_steps(b)} from {a}: {counting}. So {a} + {b} = {a + b}.")


def _subtract(rng: random.Random) -> Problem:
    a, b = rng.randint(6, 25), rng.randint(1, 5)
    question = rng.choice(("What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} - {b}.")).format(a=a, b=b)
    counting = _number_list(list(range(a - 1, a - b - 1, -1)))
    return Problem(("subtract", a, b), question, str(a - b), f"{a} - {b} = {a - b}.",
                   f"To take {b} away from {a}, count down {_steps(b)} from {a}: {counting}. So {a} - {b} = {a - b}.")


def _compare(rng: random.Random) -> Problem:
    a, b = rng.sample(range(1, 21), 2)
    want_larger = rng.random() < 0.5
    word = "larger" if want_larger else "smaller"
    question = rng.choice(("Which number is {w}, {a} or {b}?", "Which is {w}: {a} or {b}?")).format(w=word, a=a, b=b)
    answer = max(a, b) if want_larger else min(a, b)
    if a // 10 != b // 10:
        digits = f"Compare the tens digits: {a // 10} and {b // 10}."
    else:
        digits = f"Both tens digits are {a // 10}, so compare the ones digits: {a % 10} and {b % 10}."
    return Problem(("compare", a, b, want_larger), question, str(answer), f"The {word} number is {answer}.",
                   f"{digits} {max(a, b)} is larger than {min(a, b)}, so the {word} number is {answer}.")


def _extreme(rng: random.Random, largest: bool) -> Problem:
    numbers = rng.sample(range(1, 21), 3)
    word, pick = ("largest", max) if largest else ("smallest", min)
    question = rng.choice((f"What is the {word} number in the list {{numbers}}?",
                           f"Find the {'maximum' if largest else 'minimum'} of {{numbers}}.")).format(
        numbers=_number_list(numbers))
    running = [pick(numbers[:i + 1]) for i in range(len(numbers))]
    return Problem(("max" if largest else "min", tuple(numbers)), question, str(pick(numbers)),
                   f"The {word} number is {pick(numbers)}.",
                   f"Go through the list keeping the {word} number so far: {_number_list(running)}. "
                   f"The {word} number is {pick(numbers)}.")


def _sort(rng: random.Random) -> Problem:
    numbers = rng.sample(range(1, 21), 3)
    question = rng.choice(("Sort {numbers} from smallest to largest.",
                           "Put these numbers in increasing order: {numbers}.")).format(numbers=_number_list(numbers))
    remaining, steps = list(numbers), []
    while len(remaining) > 1:
        smallest = min(remaining)
        steps.append(f"The smallest of {_number_list(remaining)} is {smallest}.")
        remaining.remove(smallest)
    steps.append(f"That leaves {remaining[0]}.")
    ordered = _number_list(sorted(numbers))
    return Problem(("sort", tuple(numbers)), question, ordered, f"In increasing order: {ordered}.",
                   " ".join(steps) + f" In order: {ordered}.")


def _count(rng: random.Random) -> Problem:
    numbers = [rng.randint(1, 20) for _ in range(rng.randint(3, 5))]
    question = rng.choice(("How many numbers are in the list {numbers}?",
                           "Count the numbers in this list: {numbers}.")).format(numbers=_number_list(numbers))
    tally = ", ".join(f"{n} ({i})" for i, n in enumerate(numbers, start=1))
    return Problem(("count", tuple(numbers)), question, str(len(numbers)), f"The list has {len(numbers)} numbers.",
                   f"Count them one by one: {tally}. There are {len(numbers)} numbers.")


def _weekday(rng: random.Random) -> Problem:
    start, days, forward = rng.randrange(7), rng.randint(1, 7), rng.random() < 0.5
    unit = "day" if days == 1 else "days"
    if forward:
        question = rng.choice(("What day of the week is {n} {unit} after {day}?",
                               "If today is {day}, what day will it be in {n} {unit}?"))
    else:
        question = rng.choice(("What day of the week is {n} {unit} before {day}?",
                               "If today is {day}, what day was it {n} {unit} ago?"))
    question = question.format(n=days, unit=unit, day=WEEKDAYS[start])
    step = 1 if forward else -1
    passed = [WEEKDAYS[(start + step * i) % 7] for i in range(1, days + 1)]
    relation = "after" if forward else "before"
    direction = "forward" if forward else "back"
    return Problem(("weekday", start, days, forward), question, passed[-1],
                   f"{days} {unit} {relation} {WEEKDAYS[start]} is {passed[-1]}.",
                   f"Count {direction} {days} {unit} from {WEEKDAYS[start]}: {', '.join(passed)}. "
                   f"So {days} {unit} {relation} {WEEKDAYS[start]} is {passed[-1]}.")


# task -> (FLAN-v2 sub-collection its ids are filed under, generator)
TASKS: dict[str, tuple[str, Callable[[random.Random], Problem]]] = {
    "add": ("cot", _add),
    "subtract": ("cot", _subtract),
    "compare": ("t0", _compare),
    "max": ("niv", functools.partial(_extreme, largest=True)),
    "min": ("niv", functools.partial(_extreme, largest=False)),
    "sort": ("niv", _sort),
    "count": ("niv", _count),
    "weekday": ("flan", _weekday),
}

_PICKERS = {
    collection: SystemMessagePicker(collection, [n for n in numbers if n not in UNFIT_SYSTEM_MESSAGES])
    for collection, numbers in PAPER_ASSIGNMENT.items()
}


def _rows(rng: random.Random, count: int, tier: str, excluded: frozenset[tuple] = frozenset(),
          distinct: bool = False) -> list[tuple[str, str, Problem]]:
    """`count` (id, system message, problem) rows of instances outside `excluded`, each instance at
    most once if `distinct`."""
    rows, unavailable = [], set(excluded)
    while len(rows) < count:
        task = rng.choice(sorted(TASKS))
        collection, make_problem = TASKS[task]
        problem = make_problem(rng)
        if problem.instance in unavailable:
            continue
        if distinct:
            unavailable.add(problem.instance)
        system_prompt = SYSTEM_MESSAGES[_PICKERS[collection].pick(rng, multiple_choice=False)]
        rows.append((f"{collection}.{task}.{tier}.{len(rows)}", system_prompt, problem))
    return rows


def _write_jsonl(path: paths.AnyPath, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_demo_data(out_dir: str | pathlib.Path, seed: int = 0, stage1_rows: int = 4000, stage2_rows: int = 2000,
                    eval_rows: int = 200) -> dict[str, paths.AnyPath]:
    """Write stage1.jsonl, stage2.jsonl and eval.jsonl into `out_dir` (local or gs://); the same seed gives
    the same bytes.

    Returns {'stage1': path, 'stage2': path, 'eval': path}.
    """
    out_dir = paths.path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # One random stream per file: resizing one training file leaves the other's rows unchanged.
    eval_problems = _rows(random.Random(f"orca-demo-{seed}-eval"), eval_rows, "eval", distinct=True)
    held_out = frozenset(problem.instance for _, _, problem in eval_problems)
    files = {name: out_dir / f"{name}.jsonl" for name in ("stage1", "stage2", "eval")}
    for tier, count, explain in (("stage1", stage1_rows, lambda p: p.terse),
                                 ("stage2", stage2_rows, lambda p: p.step_by_step)):
        rows = _rows(random.Random(f"orca-demo-{seed}-{tier}"), count, tier, excluded=held_out)
        _write_jsonl(files[tier], [
            {"id": row_id, "system_prompt": system_prompt, "question": problem.question,
             "response": f"{explain(problem)}\nAnswer: {problem.answer}"}
            for row_id, system_prompt, problem in rows])
    _write_jsonl(files["eval"], [
        {"id": row_id, "system_prompt": system_prompt, "question": problem.question, "answer": problem.answer}
        for row_id, system_prompt, problem in eval_problems])
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orca-jax make-demo-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write stage1/stage2/eval .jsonl into")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")
    parser.add_argument("--stage1_rows", type=int, default=4000, help="rows of terse (ChatGPT-like) explanations")
    parser.add_argument("--stage2_rows", type=int, default=2000, help="rows of step-by-step (GPT-4-like) explanations")
    parser.add_argument("--eval_rows", type=int, default=200, help="held-out questions with gold answers")
    args = parser.parse_args(argv)
    files = write_demo_data(args.out, seed=args.seed, stage1_rows=args.stage1_rows,
                            stage2_rows=args.stage2_rows, eval_rows=args.eval_rows)
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0
