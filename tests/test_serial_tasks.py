"""The ablation's serial tasks: every step-by-step line is one operation and right, worked out here from
the question text alone; terse lines hold two; answer-only has none; held-out instances stay out."""

import datetime
import json
import re

import pytest

from orca_jax.data import serial_tasks

MONTHS = [datetime.date(2023, month, 1).strftime("%B") for month in range(1, 13)]  # 2023: a common year
# One operation per line, for each family (the last line of each response is the answer line).
ONE_STEP = {
    "chain": [r"\d+ [+-] \d \= \d+"],
    "carry": [r"\d \+ \d( \+ 1)? = \d+, carry [01], so far \d+", r"carry 1 goes in front: \d+"],
    "count": [r"\d+ (even|odd), count \d+"],
    "date": [r"[A-Z][a-z]+ has \d+ days", r"\d+ - \d+ = \d+ days to [A-Z][a-z]+ \d+",
             r"\d+ - \d+ = \d+ days into [A-Z][a-z]+"],
    "word": [r"\d+ [+-] \d+ = \d+", r"\d \* \d = \d+"],
}

INSTANCE_PARTS = r"\d+|[+-]|even|odd|buys|gives|bags|[A-Z][a-z]+ \d"


@pytest.fixture(scope="module")
def problems():
    rng = serial_tasks.random.Random(3)
    return [serial_tasks.FAMILIES[family](rng) for _ in range(300) for family in serial_tasks.FAMILIES]


def _numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def _check_chain(problem):
    expression = re.search(r"(\d+(?: [+-] \d+)+)", problem.question).group(1)
    tokens = expression.split()
    value = int(tokens[0])
    for line, (sign, operand) in zip(problem.steps, zip(tokens[1::2], tokens[2::2]), strict=True):
        after = value + int(operand) if sign == "+" else value - int(operand)
        assert line == f"{value} {sign} {operand} = {after}"
        value = after
    assert problem.answer == str(eval(expression)) == str(value)


def _check_carry(problem):
    a, b = _numbers(problem.question)
    carried = 0
    for column, line in enumerate(problem.steps[:3]):
        x, y = a // 10 ** column % 10, b // 10 ** column % 10
        total = x + y + carried
        sofar = str((a % 10 ** (column + 1) + b % 10 ** (column + 1)) % 10 ** (column + 1)).zfill(column + 1)
        addend = f" + {carried}" if carried else ""
        carried = total // 10
        assert line == f"{x} + {y}{addend} = {total}, carry {carried}, so far {sofar}"
    assert problem.steps[3:] == ((f"carry 1 goes in front: {a + b}",) if a + b >= 1000 else ())
    assert problem.answer == str(a + b)


def _check_count(problem):
    parity = "even" if "even" in problem.question else "odd"
    numbers = _numbers(problem.question)
    running = 0
    for number, line in zip(numbers, problem.steps, strict=True):
        kind = "odd" if number % 2 else "even"
        running += kind == parity
        assert line == f"{number} {kind}, count {running}"
    assert problem.answer == str(sum((n % 2 == 0) == (parity == "even") for n in numbers))


def _check_date(problem):
    offset, day = _numbers(problem.question)
    month = next(index for index, name in enumerate(MONTHS, 1) if name in problem.question)
    start = datetime.date(2023, month, day)
    end = start + datetime.timedelta(days=offset)
    assert problem.answer == f"{end.strftime('%B')} {end.day}"
    month_end = (datetime.date(2023 + month // 12, month % 12 + 1, 1) - datetime.timedelta(days=1)).day
    to_end = month_end - day
    assert problem.steps == (f"{MONTHS[month - 1]} has {month_end} days",
                             f"{month_end} - {day} = {to_end} days to {MONTHS[month - 1]} {month_end}",
                             f"{offset} - {to_end} = {end.day} days into {end.strftime('%B')}")


def _check_word(problem):
    value = _numbers(problem.question)[0]
    lines = iter(problem.steps)
    for event in re.findall(r"(buys \d+|gives away \d+|gets \d+ bags of \d+)", problem.question):
        numbers = _numbers(event)
        if event.startswith("gets"):
            change = numbers[0] * numbers[1]
            assert next(lines) == f"{numbers[0]} * {numbers[1]} = {change}"
        else:
            change = numbers[0] if event.startswith("buys") else -numbers[0]
        assert next(lines) == f"{value} {'+' if change > 0 else '-'} {abs(change)} = {value + change}"
        value += change
    assert next(lines, None) is None
    assert problem.answer == str(value)


def test_every_step_by_step_trace_is_right(problems):
    checks = {"chain": _check_chain, "carry": _check_carry, "count": _check_count, "date": _check_date,
              "word": _check_word}
    for problem in problems:
        checks[problem.family](problem)


def test_one_operation_per_step_two_per_terse_line_none_answer_only(problems):
    for problem in problems:
        patterns = [re.compile(pattern) for pattern in ONE_STEP[problem.family]]
        *steps, last = problem.response("step_by_step").split("\n")
        assert last == f"Answer: {problem.answer}" and steps
        assert all(any(p.fullmatch(line) for p in patterns) for line in steps), problem
        assert problem.response("answer_only") == f"Answer: {problem.answer}"
        *terse, last = problem.response("terse").split("\n")
        assert last == f"Answer: {problem.answer}"
        assert len(terse) == (len(steps) + 1) // 2 or problem.family in ("carry", "word")
        assert len(terse) < len(steps)
        # Every terse line but an odd one out does at least two of the step lines' operations.
        assert sum(not any(p.fullmatch(line) for p in patterns) for line in terse) >= len(terse) - 1


def test_files_share_questions_and_hold_out_eval_instances(tmp_path):
    files = {"all": ("step_by_step", 400), "small": ("step_by_step", 50), "bare": ("answer_only", 400)}
    paths = serial_tasks.write_files(tmp_path, files, seed=5, eval_per_family=8)
    rows = {name: [json.loads(line) for line in path.read_text().splitlines()] for name, path in paths.items()}
    assert [r["question"] for r in rows["small"]] == [r["question"] for r in rows["all"][:50]]
    assert [r["question"] for r in rows["bare"]] == [r["question"] for r in rows["all"]]
    assert {r["id"].split(".")[1] for r in rows["all"]} == set(serial_tasks.FAMILIES)
    evaluation = rows["eval"]
    assert len(evaluation) == 8 * len(serial_tasks.FAMILIES)
    assert all(r["system_prompt"] == "" for rs in rows.values() for r in rs)

    def instance(row):  # the operands, signs, month, parity and events: the wording aside
        return row["id"].split(".")[1], tuple(re.findall(INSTANCE_PARTS, row["question"]))
    held_out = [instance(row) for row in evaluation]
    assert len(set(held_out)) == len(held_out)
    assert not set(held_out) & {instance(row) for row in rows["all"]}
    again = serial_tasks.write_files(tmp_path / "again", files, seed=5, eval_per_family=8)
    assert all(again[name].read_bytes() == paths[name].read_bytes() for name in paths)
