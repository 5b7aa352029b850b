"""The judged comparison as a table: per category and for the whole set, the candidate's total score
as a percentage of the reference's, a bootstrap 95% interval, wins / ties / losses, and what could not
be judged.

A question counts once both orders are judged: its scores are the means over the two orders (judges
favour the answer shown first, so one order alone is biased). A question with an order that failed, or
was never judged, is listed as unjudged with the reasons; it is not silently left out of the counts.
The interval resamples questions with replacement (seeded, so the report is reproducible) and takes
the 2.5th and 97.5th percentiles of total(candidate) / total(reference).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

import numpy as np

ORDERS = ("candidate_first", "reference_first")


def bootstrap_ratio_interval(candidate: np.ndarray, reference: np.ndarray, resamples: int,
                             seed: int) -> tuple[float, float]:
    """95% percentile interval of 100 * sum(candidate) / sum(reference) over questions resampled."""
    if len(candidate) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(candidate), size=(resamples, len(candidate)))
    ratios = 100.0 * candidate[picks].sum(axis=1) / reference[picks].sum(axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def _summary(rows: Sequence[dict], resamples: int, seed: int) -> dict:
    candidate = np.array([row["candidate"] for row in rows], dtype=np.float64)
    reference = np.array([row["reference"] for row in rows], dtype=np.float64)
    total_c, total_r = float(candidate.sum()), float(reference.sum())
    low, high = bootstrap_ratio_interval(candidate, reference, resamples, seed)
    return {
        "n": len(rows),
        "candidate_total": total_c,
        "reference_total": total_r,
        "relative_pct": 100.0 * total_c / total_r if total_r else float("nan"),
        "ci95": [low, high],
        "wins": int((candidate > reference).sum()),
        "ties": int((candidate == reference).sum()),
        "losses": int((candidate < reference).sum()),
    }


def build_report(prompts: Sequence, judgements: Mapping[str, dict], failures: Mapping[str, dict], *,
                 set_name: str, resamples: int = 2000, seed: int = 0, provenance: Mapping | None = None) -> dict:
    """`judgements` / `failures` are keyed by journal id "<question_id>:<order>"."""
    per_question, unjudged = [], []
    first_minus_second = []
    for prompt in prompts:
        records = [judgements.get(f"{prompt.id}:{order}") for order in ORDERS]
        for record in records:
            if record is not None:
                first, second = ((record["candidate_score"], record["reference_score"])
                                 if record["order"] == "candidate_first"
                                 else (record["reference_score"], record["candidate_score"]))
                first_minus_second.append(first - second)
        if all(records):
            per_question.append({
                "question_id": prompt.id, "category": prompt.category,
                "candidate": sum(r["candidate_score"] for r in records) / 2,
                "reference": sum(r["reference_score"] for r in records) / 2,
            })
            continue
        reasons = {order: (failures[f"{prompt.id}:{order}"]["reason"] if f"{prompt.id}:{order}" in failures
                           else "not judged") for order, record in zip(ORDERS, records) if record is None}
        unjudged.append({"question_id": prompt.id, "category": prompt.category, "reasons": reasons})
    by_category: dict[str, list[dict]] = collections.defaultdict(list)
    for row in per_question:
        by_category[row["category"]].append(row)
    return {
        "set": set_name,
        "questions": len(prompts),
        "overall": _summary(per_question, resamples, seed),
        "categories": {name: _summary(rows, resamples, seed) for name, rows in sorted(by_category.items())},
        "unjudged": unjudged,
        "unparseable_failures": sum("unparseable" in failure["reason"] for failure in failures.values()),
        # Mean of (score of the answer shown first - score of the one shown second): the position bias.
        "first_position_advantage": float(np.mean(first_minus_second)) if first_minus_second else float("nan"),
        "per_question": per_question,
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": "question"},
        "provenance": dict(provenance or {}),
    }


def format_report(report: Mapping) -> str:
    """A fixed-width table: one row per category, then the set's row."""
    header = f"{'category':<20} {'n':>4} {'cand':>7} {'ref':>7} {'rel %':>6}  {'95% CI':<13} {'W/T/L':>9}"
    lines = [f"set {report['set']}: {report['questions']} questions, {len(report['unjudged'])} unjudged, "
             f"first-shown advantage {report['first_position_advantage']:+.2f}", header]

    def row(name: str, summary: Mapping) -> str:
        low, high = summary["ci95"]
        wtl = f"{summary['wins']}/{summary['ties']}/{summary['losses']}"
        return (f"{name:<20} {summary['n']:>4} {summary['candidate_total']:>7.1f} {summary['reference_total']:>7.1f} "
                f"{summary['relative_pct']:>6.1f}  {low:>5.1f}-{high:<6.1f} {wtl:>9}")

    lines += [row(name, summary) for name, summary in report["categories"].items()]
    lines.append(row(f"all ({report['set']})", report["overall"]))
    for item in report["unjudged"]:
        lines.append(f"unjudged {item['question_id']} ({item['category']}): "
                     + "; ".join(f"{order}: {reason}" for order, reason in item["reasons"].items()))
    return "\n".join(lines)
