"""The ablation's tables and figure: held-out exact match per condition, mean ± sd over seeds, each
seed, each task family, and claim 2's paired differences (same seed, same initialisation).

`write(root, results, ...)` writes `root/ablation.json` (every run's result and the summary),
`root/ablation.md` (the tables) and `root/ablation.png` (Agg canvas, no pyplot, as train/report.py).
"""

from __future__ import annotations

import json
import pathlib
import statistics
from collections.abc import Sequence

from matplotlib.figure import Figure

# Claim 2's comparisons: (label, condition, baseline); differences are taken per seed.
COMPARISONS = (
    ("stage 1 + stage 2 vs stage 2 alone (equal stage-2 steps)", "terse_then_small_step_by_step",
     "small_step_by_step"),
    ("stage 1 + stage 2 vs stage 2 data alone for the same total steps", "terse_then_small_step_by_step",
     "small_step_by_step_same_total"),
)


def _spread(values: Sequence[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _pm(summary: dict) -> str:
    return f"{100 * summary['mean']:.1f} ± {100 * summary['sd']:.1f}"


def summarize(results: Sequence[dict]) -> dict:
    """{claim: {condition: {accuracy: spread, per_seed: {seed: acc}, families: {family: spread}, steps}}}
    in the order the runs came, and claim 2's paired differences."""
    summary: dict = {}
    for result in results:
        entry = summary.setdefault(result["claim"], {}).setdefault(
            result["condition"], {"steps": result["trained_steps"], "per_seed": {}, "families": {}})
        entry["per_seed"][result["seed"]] = result["accuracy"]
        for family, accuracy in result["families"].items():
            entry["families"].setdefault(family, []).append(accuracy)
    for conditions in summary.values():
        for entry in conditions.values():
            entry["accuracy"] = _spread(list(entry["per_seed"].values()))
            entry["families"] = {family: _spread(values) for family, values in entry["families"].items()}
    by_condition = {result["condition"]: {} for result in results}
    for result in results:
        by_condition[result["condition"]][result["seed"]] = result["accuracy"]
    differences = []
    for label, condition, baseline in COMPARISONS:
        if condition in by_condition and baseline in by_condition:
            seeds = sorted(by_condition[condition].keys() & by_condition[baseline].keys())
            deltas = [by_condition[condition][seed] - by_condition[baseline][seed] for seed in seeds]
            if deltas:
                differences.append({"label": label, "condition": condition, "baseline": baseline,
                                    "per_seed": dict(zip(seeds, deltas)), **_spread(deltas),
                                    "seeds_better": sum(delta > 0 for delta in deltas)})
    return {"claims": summary, "differences": differences}


def format_tables(results: Sequence[dict]) -> str:
    """Markdown: per claim, one row per condition (mean ± sd, each seed) and one per family; then the
    paired differences."""
    summary = summarize(results)
    out = []
    for claim, conditions in summary["claims"].items():
        seeds = sorted({seed for entry in conditions.values() for seed in entry["per_seed"]})
        families = list(next(iter(conditions.values()))["families"])
        out += [f"### {claim}: held-out exact match (%)", "",
                "| condition | steps | mean ± sd | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
                "| --- | ---: | ---: | " + " | ".join("---:" for _ in seeds) + " |"]
        for name, entry in conditions.items():
            per_seed = [f"{100 * entry['per_seed'][seed]:.1f}" if seed in entry["per_seed"] else "" for seed in seeds]
            out.append(f"| {name} | {entry['steps']} | {_pm(entry['accuracy'])} | " + " | ".join(per_seed) + " |")
        out += ["", "Per task family, mean ± sd over seeds (%):", "", "| condition | " + " | ".join(families) + " |",
                "| --- | " + " | ".join("---:" for _ in families) + " |"]
        for name, entry in conditions.items():
            out.append(f"| {name} | " + " | ".join(_pm(entry["families"][family]) for family in families) + " |")
        out.append("")
    if summary["differences"]:
        out += ["### progressive learning: paired differences (points, same seed)", "",
                "| comparison | mean ± sd | seeds better | per seed |", "| --- | ---: | ---: | --- |"]
        for difference in summary["differences"]:
            per_seed = ", ".join(f"{100 * delta:+.1f}" for delta in difference["per_seed"].values())
            out.append(f"| {difference['label']} | {100 * difference['mean']:+.1f} ± {100 * difference['sd']:.1f} | "
                       f"{difference['seeds_better']} of {difference['n']} | {per_seed} |")
        out.append("")
    return "\n".join(out)


def plot(results: Sequence[dict]) -> Figure:
    """Per claim: mean ± sd per condition (bars), each seed (dots), and per family (grouped bars)."""
    summary = summarize(results)["claims"]
    figure = Figure(figsize=(6 * len(summary), 8), layout="constrained")
    axes = figure.subplots(2, len(summary), squeeze=False)
    for column, (claim, conditions) in enumerate(summary.items()):
        names = list(conditions)
        top, bottom = axes[0][column], axes[1][column]
        for x, name in enumerate(names):
            entry = conditions[name]
            top.bar(x, 100 * entry["accuracy"]["mean"], yerr=100 * entry["accuracy"]["sd"], capsize=4,
                    color=f"C{x}", alpha=0.6)
            seeds = list(entry["per_seed"].values())
            top.scatter([x] * len(seeds), [100 * value for value in seeds], color="black", s=12, zorder=3)
        top.set(title=f"{claim}: held-out exact match", ylabel="% correct (mean ± sd, dots: seeds)", ylim=(0, 100))
        top.set_xticks(range(len(names)), [name.replace("_", "\n") for name in names], fontsize=7)
        families = list(conditions[names[0]]["families"])
        width = 0.8 / len(names)
        for x, name in enumerate(names):
            spreads = [conditions[name]["families"][family] for family in families]
            bottom.bar([i + (x - (len(names) - 1) / 2) * width for i in range(len(families))],
                       [100 * s["mean"] for s in spreads], width, yerr=[100 * s["sd"] for s in spreads],
                       capsize=2, color=f"C{x}", alpha=0.8, label=name)
        bottom.set_xticks(range(len(families)), families)
        bottom.set(title="per task family", ylabel="% correct (mean ± sd)", ylim=(0, 100))
        bottom.legend(fontsize=7)
    return figure


def load_text(timing: dict) -> str:
    load = timing["load"]
    return f"1-minute load average {load['mean']:.1f} mean, {load['max']:.1f} max, on {timing['cpu_count']} CPUs"


def write(root: str | pathlib.Path, results: Sequence[dict], conditions: Sequence[dict], timing: dict,
          ) -> list[pathlib.Path]:
    """ablation.json, ablation.md and ablation.png under `root`; returns their paths."""
    root = pathlib.Path(root)
    paths = [root / "ablation.json", root / "ablation.md", root / "ablation.png"]
    paths[0].write_text(json.dumps({"timing": timing, "conditions": list(conditions), "runs": list(results),
                                    **summarize(results)}, indent=1) + "\n")
    minutes = timing["wall_seconds"] / 60
    paths[1].write_text(f"# Ablation: held-out exact match\n\n{format_tables(results)}\n"
                        f"{len(results)} runs in {minutes:.1f} min ({load_text(timing)}).\n\n"
                        "![ablation](ablation.png)\n")
    plot(results).savefig(paths[2], dpi=110)
    return paths
