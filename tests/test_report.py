"""`orca-jax report RUN_DIR`: figures and a Markdown page from metrics.jsonl and eval/*.json, headless.

The fast tests draw from a hand-written metrics.jsonl; the slow one checks that the demo writes its
report through the same code (on the reduced demo run that tests/test_notebooks.py shares).
"""

import json
import os
import re
import struct
import subprocess
import sys

import pytest

from orca_jax import cli
from orca_jax.errors import UserError
from orca_jax.eval.report import build_report
from orca_jax.train import report

# The reduced demo (~3 min on 2 cores): two stages, an evaluation every 10 steps, checkpoints at each end.
REDUCED_DEMO = [
    "--config.demo.stage1_rows=600", "--config.demo.stage2_rows=300", "--config.demo.eval_rows=16",
    "--config.eval.examples_per_task=1", "--config.eval.max_new_tokens=32", "--config.eval.batch_size=8",
    "--config.eval.every_steps=10", "--config.data.batch_size=8", "--config.checkpoint.every_steps=10",
    "--config.stages.stage1.epochs=0", "--config.stages.stage1.num_steps=24",
    "--config.stages.stage2.epochs=0", "--config.stages.stage2.num_steps=12",
    "--config.stages.stage1.optimizer.warmup_steps=3", "--config.stages.stage2.optimizer.warmup_steps=3",
]


def run_reduced_demo(workdir):
    """Train the reduced demo into `workdir` in a fresh process on one CPU device; its stdout."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = subprocess.run([sys.executable, "-m", "orca_jax.cli", "train", f"--config.workdir={workdir}",
                             *REDUCED_DEMO], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def shared_demo_run(tmp_path_factory):
    """One reduced demo run per test session, whichever module asks first (kept under the session's
    base temp directory, so a second fixture, even in another module, finds it done)."""
    workdir = tmp_path_factory.getbasetemp() / "reduced_demo"
    stdout_file = workdir.with_name("reduced_demo.stdout")
    if not stdout_file.is_file():
        stdout_file.write_text(run_reduced_demo(workdir))
    return workdir, stdout_file.read_text()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    return shared_demo_run(tmp_path_factory)


def _records():
    records = [{"step": 0, "stage": "stage1", "val_loss": 6.9}]
    records.append({"step": 0, "stage": "stage1", "bench_accuracy": 0.0, "bench_accuracy/niv.min": 0.0,
                    "bench_accuracy/cot.add": 0.0})
    for stage, steps, loss in (("stage1", range(10, 101, 10), 6.0), ("stage2", range(110, 161, 10), 3.0)):
        for step in steps:
            records.append({"step": step, "stage": stage, "loss": loss / (1 + step / 50), "grad_norm": 2.0,
                            "learning_rate": 1e-3 * (1 - step / 200), "tokens_per_second": 1800.0 + step,
                            "packing_efficiency": 0.93})
        records.append({"step": steps[-1], "stage": stage, "val_loss": loss / 4})
        records.append({"step": steps[-1], "stage": stage, "bench_accuracy": 0.4, "bench_accuracy/niv.min": 0.5,
                        "bench_accuracy/cot.add": 0.3})
    records.insert(-6, {"step": 100, "stage": "stage2", "val_loss": 4.1})  # stage 2's start
    return records


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in _records()))
    rows = [{"benchmark": "demo", "task": task, "correct": correct}
            for task, answers in (("niv.min", [1, 1, 0]), ("cot.add", [0, 1, 0, 0])) for correct in answers]
    (run / "eval").mkdir()
    (run / "eval" / "final.json").write_text(json.dumps(build_report(rows)))
    return run


def png_size(path):
    """(width, height) of a PNG file, after checking its signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    assert data[-8:-4] == b"IEND", f"{path} is truncated"
    return struct.unpack(">II", data[16:24])


def check_report(readme):
    """Every linked figure exists and is a plausible PNG; every figure written is linked."""
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme.read_text())
    assert links and len(set(links)) == len(links)
    for link in links:
        path = readme.parent / link
        assert path.is_file(), f"README.md links {link}, which does not exist"
        width, height = png_size(path)
        assert 400 <= width <= 3000 and 250 <= height <= 3000, (link, width, height)
        assert path.stat().st_size > 8000, f"{link} is nearly empty ({path.stat().st_size} bytes)"
    assert sorted(links) == sorted(path.name for path in readme.parent.glob("*.png"))
    return links


def test_report_writes_linked_figures(run_dir, capsys):
    assert cli.main(["report", str(run_dir)]) == 0
    readme = run_dir / "report" / "README.md"
    assert str(readme) in capsys.readouterr().out
    links = check_report(readme)
    assert set(links) == {"loss.png", "learning_rate.png", "grad_norm.png", "throughput.png", "accuracy.png",
                          "eval_final.png"}
    text = readme.read_text()
    assert "| stage1 | 0–100 | 5.0000 → 2.0000 | 6.9000 → 1.5000 | 40.0% |" in text, text
    assert "| stage2 | 100–160 | " in text


def test_output_directory_and_missing_scalars(run_dir, tmp_path):
    """Only the figures the records allow: a run that logged losses alone gets the loss figure alone."""
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "stage": "stage1", "loss": 2.0}) + "\n"
                                           + json.dumps({"step": 2, "stage": "stage1", "loss": 1.5}) + "\n")
    (run_dir / "eval" / "final.json").unlink()
    readme = report.write_report(run_dir, tmp_path / "elsewhere")
    assert readme == tmp_path / "elsewhere" / "README.md" and check_report(readme) == ["loss.png"]


def test_series_and_stage_starts():
    records = _records() + [{"step": 160, "stage": "stage2", "loss": 0.5}]  # a resumed run logged 160 again
    steps, values = report.series(records, "loss", "stage2")
    assert steps == list(range(110, 161, 10)) and values[-1] == 0.5
    assert report.stage_starts(records) == {"stage1": 0, "stage2": 100}
    assert list(report.evaluations(records)) == ["stage1@0", "stage1@100", "stage2@160"]


@pytest.mark.parametrize("content, message", [
    (None, "metrics.jsonl does not exist: is "),
    ("", "is empty: the run logged nothing yet"),
    ('{"step": 1, "stage": "stage1"}\n{not json\n', "metrics.jsonl: line 2 is not JSON"),
    ('{"loss": 1.0}\n', "metrics.jsonl: line 1 has no step and stage"),
])
def test_unusable_run_dir_is_one_line(tmp_path, capsys, content, message):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(UserError, match=re.escape(message)):
        report.write_report(tmp_path)
    assert report.main([str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("orca-jax report: ") and message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "report").exists()


def test_eval_file_that_is_no_report(run_dir):
    (run_dir / "eval" / "rows.json").write_text("[1, 2]")
    with pytest.raises(report.ReportError, match=r"rows.json is not an `orca-jax evaluate --report` file"):
        report.write_report(run_dir)


@pytest.mark.slow
def test_demo_writes_its_figures(demo_run):
    workdir, stdout = demo_run
    readme = workdir / "report" / "README.md"
    assert f"figures and summary: {readme}" in stdout
    assert (workdir / "report.json").is_file() and "== demo report ==" in stdout
    links = check_report(readme)
    assert {"loss.png", "learning_rate.png", "grad_norm.png", "throughput.png", "accuracy.png"} <= set(links)


REPRODUCED = ("loss", "val_loss", "grad_norm", "learning_rate", "packing_efficiency")


def _reproduced_scalars(workdir):
    """{(stage, step): {name: value}} of everything that must not depend on timing or threads."""
    scalars = {}
    for record in report.load_metrics(workdir):
        scalars.setdefault((record["stage"], record["step"]), {}).update(
            {name: value for name, value in record.items()
             if name in REPRODUCED or name.startswith(report.ACCURACY)})
    return scalars


def _pieces(workdir):
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(workdir / "data" / "tokenizer.model"))
    return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]


@pytest.mark.slow
def test_two_fresh_demo_runs_give_identical_numbers(demo_run, tmp_path):
    """A fresh workdir rebuilds everything (data, tokenizer, shards) and retrains: every loss, gradient
    norm and accuracy equals the shared run's exactly. (The tokenizer.model bytes differ only by the
    model_prefix path sentencepiece records in its trainer spec; its pieces and scores must not.)"""
    first, _ = demo_run
    second = tmp_path / "again"
    run_reduced_demo(second)
    for name in ("stage1.jsonl", "stage2.jsonl", "eval.jsonl"):
        assert (first / "data" / name).read_bytes() == (second / "data" / name).read_bytes(), name
    assert _pieces(first) == _pieces(second)
    expected, got = _reproduced_scalars(first), _reproduced_scalars(second)
    assert got.keys() == expected.keys()
    differing = {key: (expected[key], got[key]) for key in expected if expected[key] != got[key]}
    assert not differing, differing
    assert any(report.ACCURACY in values for values in got.values())
    assert json.loads((first / "report.json").read_text()) == json.loads((second / "report.json").read_text())
