"""From scored examples to the report a reviewer reads: per task n, accuracy and a 95% interval, the
mean over tasks (the paper's headline) and the example-weighted mean, per benchmark and overall.

A skipped example (its prompt did not fit the window, `--long_prompts skip`) counts as wrong: dropping
it would let the hardest, longest questions leave the denominator. Skips and truncations are counted
per task so the reader sees how many there were.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from orca_jax.errors import UserError

# The normal quantile of a two-sided 95% interval.
Z_95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: honest near 0% and 100% and for small n,
    where the normal approximation's interval leaves [0, 1] or collapses to a point."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 or n correct one end is exactly 0 or 1; rounding must not move it inside.
    low = 0.0 if correct == 0 else max(0.0, centre - half_width)
    high = 1.0 if correct == n else min(1.0, centre + half_width)
    return low, high


def _summary(tasks: Mapping[str, dict]) -> dict:
    n = sum(task["n"] for task in tasks.values())
    correct = sum(task["correct"] for task in tasks.values())
    return {
        "tasks": len(tasks),
        "n": n,
        "task_mean": sum(task["accuracy"] for task in tasks.values()) / len(tasks) if tasks else 0.0,
        "example_mean": correct / n if n else 0.0,
        "skipped": sum(task["skipped"] for task in tasks.values()),
        "truncated": sum(task["truncated"] for task in tasks.values()),
    }


def build_report(rows: Iterable[Mapping], provenance: Mapping | None = None) -> dict:
    """Aggregate scored rows (each with 'benchmark', 'task', 'correct', and optionally 'skipped' and
    'truncated') into {'tasks': {task: ...}, 'benchmarks': {name: summary}, 'overall': summary,
    'provenance': ...}. Tasks keep the order they first appear in."""
    tasks: dict[str, dict] = {}
    for row in rows:
        task = tasks.setdefault(row["task"], {"benchmark": row["benchmark"], "n": 0, "correct": 0,
                                              "skipped": 0, "truncated": 0})
        task["n"] += 1
        task["correct"] += bool(row["correct"])
        task["skipped"] += bool(row.get("skipped"))
        task["truncated"] += bool(row.get("truncated"))
    if not tasks:
        raise UserError("nothing to report: no scored examples")
    for task in tasks.values():
        task["accuracy"] = task["correct"] / task["n"]
        task["ci95"] = list(wilson_interval(task["correct"], task["n"]))
    benchmarks = {}
    for name in dict.fromkeys(task["benchmark"] for task in tasks.values()):
        benchmarks[name] = _summary({key: task for key, task in tasks.items() if task["benchmark"] == name})
    return {"tasks": tasks, "benchmarks": benchmarks, "overall": _summary(tasks),
            "provenance": dict(provenance or {})}


def format_report(report: Mapping) -> str:
    """The per-task table, then each benchmark's and the overall means."""
    tasks = report["tasks"]
    width = max(len("overall (mean over tasks)"), *(len(task) for task in tasks))
    header = f"{'task':<{width}}  {'n':>5}  {'accuracy':>8}  {'95% interval':>15}  {'skipped':>7}  {'truncated':>9}"
    lines = [header, "-" * len(header)]
    for name, task in tasks.items():
        low, high = task["ci95"]
        lines.append(f"{name:<{width}}  {task['n']:>5}  {task['accuracy']:>8.1%}  "
                     f"{f'{low:.1%}-{high:.1%}':>15}  {task['skipped']:>7}  {task['truncated']:>9}")
    lines.append("-" * len(header))
    summaries = dict(report["benchmarks"])
    if len(summaries) > 1:
        summaries["overall"] = report["overall"]
    for name, summary in summaries.items():
        lines.append(f"{name + ' (mean over tasks)':<{width}}  {summary['n']:>5}  {summary['task_mean']:>8.1%}"
                     f"  {'':>15}  {summary['skipped']:>7}  {summary['truncated']:>9}")
        lines.append(f"{name + ' (example-weighted)':<{width}}  {summary['n']:>5}  {summary['example_mean']:>8.1%}")
    return "\n".join(lines)
