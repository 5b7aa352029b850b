"""The evaluation report: Wilson intervals against the quadratic they solve, and both means."""

import re

import numpy as np
import pytest

from orca_jax.eval.report import Z_95, build_report, format_report, wilson_interval


@pytest.mark.parametrize("correct, n", [(8, 10), (0, 5), (5, 5), (1, 250), (123, 250), (2546, 2546)])
def test_wilson_interval_solves_the_score_equation(correct, n):
    # The Wilson interval is where (p_hat - p)^2 = z^2 p (1 - p) / n: a quadratic in p, solved here by
    # numpy's polynomial roots instead of the closed form the module uses.
    p_hat, z2 = correct / n, Z_95 ** 2
    roots = np.sort(np.roots([1 + z2 / n, -(2 * p_hat + z2 / n), p_hat ** 2]).real)
    low, high = wilson_interval(correct, n)
    assert (low, high) == pytest.approx((max(roots[0], 0.0), min(roots[1], 1.0)), abs=1e-9)
    assert low <= p_hat <= high


def test_report_means_over_tasks_and_over_examples():
    rows = ([{"benchmark": "bbh", "task": "snarks", "correct": i < 3} for i in range(4)]  # 75%
            + [{"benchmark": "bbh", "task": "navigate", "correct": i < 1, "truncated": i == 0} for i in range(10)]
            + [{"benchmark": "agieval", "task": "lsat-ar", "correct": False, "skipped": i < 2} for i in range(2)])
    report = build_report(rows, {"suite": "test"})
    assert list(report["tasks"]) == ["snarks", "navigate", "lsat-ar"]
    assert report["tasks"]["navigate"]["accuracy"] == pytest.approx(0.1)
    assert report["tasks"]["navigate"]["truncated"] == 1 and report["tasks"]["lsat-ar"]["skipped"] == 2
    assert report["benchmarks"]["bbh"]["task_mean"] == pytest.approx((0.75 + 0.1) / 2)
    assert report["benchmarks"]["bbh"]["example_mean"] == pytest.approx(4 / 14)
    assert report["overall"]["task_mean"] == pytest.approx((0.75 + 0.1 + 0.0) / 3)
    assert report["overall"]["example_mean"] == pytest.approx(4 / 16)
    assert report["overall"]["skipped"] == 2 and report["provenance"] == {"suite": "test"}
    table = format_report(report)
    assert "navigate" in table and "10.0%" in table and "overall (mean over tasks)" in table
    assert re.search(r"^bbh \(mean over tasks\) +14 +42\.5%", table, re.MULTILINE)
    assert re.search(r"^navigate +10 +10\.0% +1\.8%-40\.4% +0 +1$", table, re.MULTILINE)


def test_an_empty_report_is_an_error():
    with pytest.raises(ValueError, match="no scored examples"):
        build_report([])
