"""Sampling FLAN-v2 zero-shot queries into FLAN-5M and its FLAN-1M subset (the paper's Table 3).

Each sub-collection is read twice, streaming: the first pass counts the zero-shot queries of every
task, the selection is then decided on those counts alone (how many queries each task gives, and
which of its queries by position), and the second pass emits the chosen rows. Memory is therefore
proportional to the number of tasks plus the number of queries kept, never to the export's size.

Strategies:
  all           every query (CoT), at most `size` of them
  per_task_cap  at most `per_task_cap` queries of each task (NIV2), at most `size` in all
  algorithm1    the paper's Algorithm 1 (FLAN2021, T0): pick a live task uniformly at random,
                draw one of its queries without replacement, drop tasks that run empty, repeat
                until `size` queries are drawn or no task is left
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import random
import re
from collections.abc import Iterator, Mapping, Sequence

from orca_jax.data.construct import flan
from orca_jax.data.construct.system_messages import SYSTEM_MESSAGES, SystemMessagePicker

STRATEGIES = ("all", "per_task_cap", "algorithm1")
FLAN5M_FILE = "flan5m.jsonl"
FLAN1M_FILE = "flan1m.jsonl"
REPORT_FILE = "sample_report.json"


@dataclasses.dataclass(frozen=True)
class CollectionSpec:
    """How one sub-collection is sampled; `name` is also the prefix of its ids ("niv.17")."""

    name: str
    files: tuple[str, ...]
    strategy: str
    size: int
    per_task_cap: int
    messages: tuple[int, ...]
    message_weights: tuple[float, ...]
    exclude_tasks: str

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"collections.{self.name}.strategy {self.strategy!r} is not one of {STRATEGIES}")
        if self.size < 0:
            raise ValueError(f"collections.{self.name}.size must be >= 0, got {self.size}")
        if self.strategy == "per_task_cap" and self.per_task_cap <= 0:
            raise ValueError(f"collections.{self.name}.per_task_cap must be > 0 for strategy per_task_cap")
        if self.size > 0 and not self.files:
            raise ValueError(
                f"collections.{self.name}.files is empty: name the exports to sample from (or set size=0 to skip it)"
            )

    @classmethod
    def from_config(cls, name: str, config: Mapping) -> "CollectionSpec":
        files = config["files"]
        return cls(
            name=name,
            files=(files,) if isinstance(files, str) else tuple(files),
            strategy=config["strategy"],
            size=int(config["size"]),
            per_task_cap=int(config["per_task_cap"]),
            messages=tuple(config["messages"]),
            message_weights=tuple(config["message_weights"]),
            exclude_tasks=config["exclude_tasks"],
        )


def algorithm1_draws(task_sizes: Mapping[str, int], n: int, rng: random.Random) -> Iterator[str]:
    """The task of each of Algorithm 1's draws, in order (at most n; fewer if every task runs empty).

    Picking uniformly among all tasks and redrawing when the pick is empty is the same distribution
    as picking uniformly among the tasks that still have queries, which is what this does.
    """
    remaining = {task: size for task, size in task_sizes.items() if size > 0}
    live = sorted(remaining)
    for _ in range(n):
        if not live:
            return
        index = rng.randrange(len(live))
        task = live[index]
        remaining[task] -= 1
        yield task
        if remaining[task] == 0:
            live[index] = live[-1]
            live.pop()


def draws_per_task(spec: CollectionSpec, task_sizes: Mapping[str, int], rng: random.Random) -> dict[str, int]:
    """How many queries each task gives under the collection's strategy."""
    if spec.strategy == "algorithm1":
        return dict(collections.Counter(algorithm1_draws(task_sizes, spec.size, rng)))
    cap = spec.per_task_cap if spec.strategy == "per_task_cap" else None
    counts = {task: min(size, cap) if cap else size for task, size in sorted(task_sizes.items())}
    if sum(counts.values()) <= spec.size:
        return counts
    # Too many: keep a uniform random `size` of the candidates, which preserves each task's cap.
    candidates = [task for task, count in counts.items() for _ in range(count)]
    return dict(collections.Counter(rng.sample(candidates, spec.size)))


@dataclasses.dataclass(frozen=True)
class CollectionPlan:
    """What the first pass decided: the queries, by position within their task, that will be kept."""

    spec: CollectionSpec
    paths: tuple[pathlib.Path, ...]
    task_sizes: Mapping[str, int]
    chosen: Mapping[str, frozenset[int]]
    picker: SystemMessagePicker

    def report(self) -> dict:
        return {
            "name": self.spec.name,
            "tasks_available": len(self.task_sizes),
            "queries_available": sum(self.task_sizes.values()),
            "tasks_sampled": len(self.chosen),
            "queries_sampled": sum(map(len, self.chosen.values())),
            "size_requested": self.spec.size,
        }


def plan_collection(
    spec: CollectionSpec, columns: flan.FlanColumns, zero_shot_types: Sequence[str], seed: int
) -> CollectionPlan:
    """First pass: count each task's zero-shot queries, then choose which of them to keep."""
    picker = SystemMessagePicker(spec.name, spec.messages, spec.message_weights)
    paths = tuple(flan.expand_paths(spec.files))
    excluded = re.compile(spec.exclude_tasks, re.IGNORECASE) if spec.exclude_tasks else None
    task_sizes = {
        task: size
        for task, size in flan.count_zero_shot_per_task(paths, columns, zero_shot_types).items()
        if excluded is None or not excluded.search(task)
    }
    rng = random.Random(f"{seed}/{spec.name}")
    counts = draws_per_task(spec, task_sizes, rng)
    chosen = {task: frozenset(rng.sample(range(task_sizes[task]), count)) for task, count in sorted(counts.items())}
    return CollectionPlan(spec, paths, task_sizes, chosen, picker)


def sampled_records(
    plan: CollectionPlan,
    columns: flan.FlanColumns,
    zero_shot_types: Sequence[str],
    multiple_choice_types: Sequence[str],
    seed: int,
) -> Iterator[dict]:
    """Second pass: the chosen queries in export order, each with its system message."""
    rng = random.Random(f"{seed}/{plan.spec.name}/messages")
    multiple_choice = frozenset(multiple_choice_types)
    seen_per_task = collections.Counter()
    emitted = 0
    for query in flan.read_zero_shot(plan.paths, columns, zero_shot_types):
        if query.task not in plan.chosen:
            continue
        position = seen_per_task[query.task]
        seen_per_task[query.task] += 1
        if position not in plan.chosen[query.task]:
            continue
        number = plan.picker.pick(rng, query.template_type in multiple_choice)
        yield {
            "id": f"{plan.spec.name}.{emitted}",
            "system_prompt": SYSTEM_MESSAGES[number],
            "question": query.query,
            "system_message": number,
            "task": query.task,
            "template_type": query.template_type,
            "target": query.target,
        }
        emitted += 1


def _write_atomically(path: pathlib.Path, lines: Iterator[str]) -> int:
    """Write lines to path via a temporary file and a rename, so a crash leaves no half file."""
    temporary = path.with_name(path.name + ".tmp")
    count = 0
    with open(temporary, "w", encoding="utf-8") as out:
        for line in lines:
            out.write(line)
            count += 1
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    return count


def write_sample(
    specs: Sequence[CollectionSpec],
    columns: flan.FlanColumns,
    zero_shot_types: Sequence[str],
    multiple_choice_types: Sequence[str],
    flan1m_size: int,
    seed: int,
    out_dir: pathlib.Path,
) -> dict:
    """Write flan5m.jsonl, its random subset flan1m.jsonl (same ids) and a report; return the report."""
    # Every collection is planned before anything is written, so a bad export fails early.
    plans = [plan_collection(spec, columns, zero_shot_types, seed) for spec in specs if spec.size > 0]
    out_dir.mkdir(parents=True, exist_ok=True)
    records = (
        record
        for plan in plans
        for record in sampled_records(plan, columns, zero_shot_types, multiple_choice_types, seed)
    )
    total = _write_atomically(out_dir / FLAN5M_FILE, (json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    subset_size = min(flan1m_size, total)
    kept = set(random.Random(f"{seed}/flan1m").sample(range(total), subset_size))
    with open(out_dir / FLAN5M_FILE, encoding="utf-8") as flan5m:
        _write_atomically(out_dir / FLAN1M_FILE, (line for i, line in enumerate(flan5m) if i in kept))

    report = {
        "seed": seed,
        "flan5m_queries": total,
        "flan1m_queries": subset_size,
        "collections": [plan.report() for plan in plans],
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
