"""Serial tasks for the explanation-tuning ablation: questions a 2-4 layer model cannot answer in one
forward pass, each with three teachers' responses to the same question.

A question needs several dependent operations (a chain of additions, the columns of a 3-digit sum with
their carries, a running count, a date offset across a month end, a short word problem), so a model
that must write the answer at once has to do them all inside one pass. The three responses:

- `answer_only`: just `Answer: <gold>`;
- `terse`: two operations per line (the role of a teacher that explains in big steps);
- `step_by_step`: one operation per line, carries and running counts written out as tokens.

Every response ends with `Answer: <gold>`, the line `eval.scoring.score` reads. Ids read
`cot.<family>.<tier>.<n>`, so the evaluation reports accuracy per family (`eval.benchmarks.demo_task`).
Held-out questions are problem instances (the operands, not only the wording) absent from every
training file, and training files of any size drawn with the same seed share their first questions.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import pathlib
import random
from collections.abc import Callable, Sequence

STYLES = ("answer_only", "terse", "step_by_step")
COLLECTION = "cot"
MONTHS = tuple(calendar.month_name[1:])
MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # a common year: no February 29
NAMES = ("Ana", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana")
THINGS = ("marbles", "stickers", "apples", "stamps", "cards", "shells")


@dataclasses.dataclass(frozen=True)
class Problem:
    family: str
    instance: tuple
    """The family and its operands: what 'held out' means."""
    question: str
    answer: str
    steps: tuple[str, ...]
    """One operation per line."""
    terse: tuple[str, ...]
    """Two operations per line."""

    def response(self, style: str) -> str:
        lines = {"answer_only": (), "terse": self.terse, "step_by_step": self.steps}[style]
        return "\n".join((*lines, f"Answer: {self.answer}"))


def _running(start: int, moves: Sequence[tuple[str, str, int, str | None]]) -> tuple[list[str], tuple[str, ...], int]:
    """Step and terse lines of a running total. A move is (its step text '+ 12', its terse text '+ 3 * 4',
    the change, a line computing the change first or None)."""
    lines, terse, value = [], [], start
    for index, (text, _, change, prelude) in enumerate(moves):
        lines += [prelude] if prelude else []
        lines.append(f"{value} {text} = {value + change}")
        if index % 2 == 0:
            pair = moves[index:index + 2]
            terse.append(f"{value} {' '.join(m[1] for m in pair)} = {value + sum(m[2] for m in pair)}")
        value += change
    return lines, tuple(terse), value


def _signed_ops(rng: random.Random, start: int, count: int) -> list[int]:
    """Operands 1-6, added or subtracted, keeping every intermediate value in 0-29: few enough distinct
    sums (~360) for a small model to learn each as one step in a few hundred updates."""
    ops, value = [], start
    for _ in range(count):
        op = rng.randint(1, 6) * rng.choice((1, -1))
        if not 0 <= value + op <= 29:
            op = -op
        ops.append(op)
        value += op
    return ops


def _plain(change: int) -> tuple[str, str, int, None]:
    text = f"{'+' if change > 0 else '-'} {abs(change)}"
    return text, text, change, None


def chain(rng: random.Random) -> Problem:
    start = rng.randint(5, 25)
    ops = _signed_ops(rng, start, rng.randint(3, 4))
    expression = f"{start} " + " ".join(_plain(op)[0] for op in ops)
    question = rng.choice(("Compute {e}.", "What is {e}?")).format(e=expression)
    lines, terse, value = _running(start, [_plain(op) for op in ops])
    return Problem("chain", ("chain", start, tuple(ops)), question, str(value), tuple(lines), terse)


def carry(rng: random.Random) -> Problem:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    question = rng.choice(("What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} + {b}.")).format(a=a, b=b)
    lines, written, carried = [], "", 0
    for column in range(3):
        x, y = a // 10 ** column % 10, b // 10 ** column % 10
        total = x + y + carried
        written = str(total % 10) + written
        plus_carry = f" + {carried}" if carried else ""
        carried = total // 10
        lines.append(f"{x} + {y}{plus_carry} = {total}, carry {carried}, so far {written}")
    if carried:
        written = "1" + written
        lines.append(f"carry 1 goes in front: {written}")
    # Terse: the two lowest columns as one two-digit sum, then the hundreds with the carry in front.
    low = a % 100 + b % 100
    terse = [f"{a % 100:02d} + {b % 100:02d} = {low}, carry {low // 100}, so far {low % 100:02d}",
             lines[2] if not carried else f"{lines[2].split(',')[0]}, so far {written}"]
    return Problem("carry", ("carry", a, b), question, str(a + b), tuple(lines), tuple(terse))


def count(rng: random.Random) -> Problem:
    numbers = [rng.randint(1, 29) for _ in range(rng.randint(5, 7))]
    parity = rng.choice(("even", "odd"))
    question = rng.choice(("How many {p} numbers are in {n}?",
                           "Count the {p} numbers in {n}.")).format(p=parity, n=", ".join(map(str, numbers)))
    lines, terse, running = [], [], 0
    for index, number in enumerate(numbers):
        kind = "even" if number % 2 == 0 else "odd"
        running += kind == parity
        lines.append(f"{number} {kind}, count {running}")
        if index % 2 == 1:
            pair = numbers[index - 1:index + 1]
            hits = sum((n % 2 == 0) == (parity == "even") for n in pair)
            terse.append(f"{pair[0]} and {pair[1]}: {hits} {parity}, count {running}")
        elif index == len(numbers) - 1:
            terse.append(lines[-1])
    return Problem("count", ("count", parity, tuple(numbers)), question, str(running), tuple(lines), tuple(terse))


def date(rng: random.Random) -> Problem:
    month = rng.randrange(12)
    length, following = MONTH_DAYS[month], MONTHS[(month + 1) % 12]
    day = rng.randint(length - 9, length)
    offset = rng.randint(length - day + 1, length - day + 9)  # always past the month's end, by 1-9 days
    to_end, into = length - day, offset - (length - day)
    name = MONTHS[month]
    question = rng.choice(("What date is {k} days after {m} {d}?",
                           "What is the date {k} days after {m} {d}?")).format(k=offset, m=name, d=day)
    lines = (f"{name} has {length} days", f"{length} - {day} = {to_end} days to {name} {length}",
             f"{offset} - {to_end} = {into} days into {following}")
    terse = (f"{name} has {length} days, so {to_end} days to {name} {length}", lines[2])
    return Problem("date", ("date", month, day, offset), question, f"{following} {into}", lines, terse)


def word(rng: random.Random) -> Problem:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    start = rng.randint(5, 20)
    events, moves, value = [], [], start
    for _ in range(rng.randint(2, 3)):
        kind = rng.choice(("gain", "lose", "bags"))
        if kind == "lose" and value < 7:
            kind = "gain"
        if kind == "bags":
            bags, size = rng.randint(2, 3), rng.randint(2, 4)
            events.append(f"gets {bags} bags of {size}")
            moves.append((f"+ {bags * size}", f"+ {bags} * {size}", bags * size, f"{bags} * {size} = {bags * size}"))
        else:
            amount = rng.randint(1, 6)
            events.append(f"buys {amount}" if kind == "gain" else f"gives away {amount}")
            moves.append(_plain(amount if kind == "gain" else -amount))
        value += moves[-1][2]
    question = f"{name} has {start} {thing}, " + ", then ".join(events) + f". How many {thing} now?"
    lines, terse, value = _running(start, moves)
    return Problem("word", ("word", start, tuple(events)), question, str(value), tuple(lines), terse)


FAMILIES: dict[str, Callable[[random.Random], Problem]] = {
    "chain": chain, "carry": carry, "count": count, "date": date, "word": word}


def _draw(rng: random.Random, family: str, excluded: set[tuple]) -> Problem:
    while True:
        problem = FAMILIES[family](rng)
        if problem.instance not in excluded:
            return problem


def held_out(seed: int, per_family: int) -> list[Problem]:
    """`per_family` distinct questions of each family, family by family; the same for every model seed."""
    rng, seen, problems = random.Random(f"serial-{seed}-eval"), set(), []
    for family in FAMILIES:
        for _ in range(per_family):
            problem = _draw(rng, family, seen)
            seen.add(problem.instance)
            problems.append(problem)
    return problems


def training(seed: int, count: int, excluded: set[tuple]) -> list[Problem]:
    """`count` questions of random families, none an instance in `excluded`; a smaller count is a prefix."""
    rng = random.Random(f"serial-{seed}-train")
    return [_draw(rng, rng.choice(sorted(FAMILIES)), excluded) for _ in range(count)]


def _write(path: pathlib.Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_files(out_dir: str | pathlib.Path, files: dict[str, tuple[str, int]], *, seed: int = 0,
                eval_per_family: int = 30) -> dict[str, pathlib.Path]:
    """Training files `{name: (style, questions)}` as `<name>.jsonl` (OpenOrca's columns, empty system
    message) and `eval.jsonl` (id, system_prompt, question, answer); returns {name: path}, 'eval' too.
    Every file's questions are a prefix of the same draw, so files of one size differ only in style."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation = held_out(seed, eval_per_family)
    pool = training(seed, max(size for _, size in files.values()), {problem.instance for problem in evaluation})
    paths = {}
    for name, (style, size) in files.items():
        if style not in STYLES:
            raise ValueError(f"file {name}: style {style!r} is not one of {STYLES}")
        paths[name] = out_dir / f"{name}.jsonl"
        _write(paths[name], [{"id": f"{COLLECTION}.{p.family}.{name}.{i}", "system_prompt": "",
                              "question": p.question, "response": p.response(style)}
                             for i, p in enumerate(pool[:size])])
    paths["eval"] = out_dir / "eval.jsonl"
    _write(paths["eval"], [{"id": f"{COLLECTION}.{p.family}.eval.{i}", "system_prompt": "", "question": p.question,
                            "answer": p.answer} for i, p in enumerate(evaluation)])
    return paths
