"""The demo job's two ends: preparing its inputs before training, and its report after.

`orca-jax train` with the default config (configs/demo.py, which has a `demo` block) first writes the
synthetic two-teacher data, trains a small tokenizer on it and builds the TFDS shards, each only when
missing, so a rerun resumes instead of rebuilding. After training, the report reads back what the loop
logged: each stage's first and last losses, and the held-out accuracy the `eval` block measured
before training and at each stage's end. Every one of these paths may be gs:// (orca_jax.paths): the
tokenizer and the shards are built locally and copied up.
"""

from __future__ import annotations

import json

from orca_jax import paths
from orca_jax.data import prepare
from orca_jax.data.demo import write_demo_data
from orca_jax.data.jsonl import read_objects
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer
from orca_jax.eval.during_training import ACCURACY
from orca_jax.train.config import TrainConfig
from orca_jax.train.loop import StagePlan
from orca_jax.train.report import write_report as write_figures

DEMO_FILES = ("stage1", "stage2", "eval")


def prepare_demo(run: TrainConfig) -> None:
    """Write what the demo trains on, skipping every part that already exists."""
    demo, data_dir = run.demo, paths.path(run.demo.data_dir)
    files = {name: data_dir / f"{name}.jsonl" for name in DEMO_FILES}
    if not all(path.is_file() for path in files.values()):
        write_demo_data(data_dir, seed=demo.data_seed, stage1_rows=demo.stage1_rows,
                        stage2_rows=demo.stage2_rows, eval_rows=demo.eval_rows)
    tokenizer_path = paths.path(run.data.tokenizer)
    if not tokenizer_path.is_file():
        texts = (f"{row['system_prompt']}\n{row['question']}\n{row['response']}"
                 for name in ("stage1", "stage2") for _, row in read_objects(files[name]))
        train_tokenizer(texts, tokenizer_path.with_suffix(""), demo.tokenizer_pieces)
    tokenizer = Tokenizer.load(tokenizer_path)
    for stage in run.stages:
        dataset_dir = paths.path(stage.dataset_dir)
        if not (dataset_dir / "dataset_info.json").is_file():
            prepare.prepare([str(files[stage.name])], dataset_dir, tokenizer=tokenizer, template=run.data.template,
                            seq_len=run.data.seq_len, validation=demo.validation_fraction,
                            bad_rows="skip", seed=demo.data_seed, progress=False)


def _metrics(run: TrainConfig) -> list[dict]:
    return [record for _, record in read_objects(paths.path(run.workdir) / "metrics.jsonl")]


def stage_losses(records: list[dict]) -> dict[str, dict[str, float]]:
    """First and last logged training loss and first and last validation loss of each stage (the
    later record wins where a resumed run logged a step twice)."""
    by_stage: dict[str, dict[str, dict[int, float]]] = {}
    for record in records:
        for name in ("loss", "val_loss"):
            if name in record:
                by_stage.setdefault(record["stage"], {}).setdefault(name, {})[record["step"]] = record[name]
    summary = {}
    for stage, series in by_stage.items():
        summary[stage] = {}
        for name, values in series.items():
            steps = sorted(values)
            summary[stage][f"first_{name}"] = values[steps[0]]
            summary[stage][f"last_{name}"] = values[steps[-1]]
    return summary


def demo_report(run: TrainConfig, plans: list[StagePlan]) -> dict:
    """Losses of each stage and the held-out accuracy before training and at each stage's end."""
    records = _metrics(run)
    evaluations = {(record["stage"], record["step"]): record for record in records if ACCURACY in record}
    points = [("untrained", plans[0].name, plans[0].first_step)]
    points += [(plan.name, plan.name, plan.last_step) for plan in plans]
    report = {"accuracy": {}, "accuracy_per_task": {}}
    for label, stage, step in points:
        if (stage, step) in evaluations:
            record = evaluations[stage, step]
            report["accuracy"][label] = record[ACCURACY]
            report["accuracy_per_task"][label] = {name[len(ACCURACY) + 1:]: value for name, value in record.items()
                                                  if name.startswith(ACCURACY + "/")}
    report["losses"] = stage_losses(records)
    return report


def write_report(run: TrainConfig, plans: list[StagePlan]) -> None:
    """Print the report and write it to workdir/report.json, and the figures with their Markdown page to
    workdir/report/ (train/report.py, what `orca-jax report WORKDIR` writes)."""
    report = demo_report(run, plans)
    (paths.path(run.workdir) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n== demo report ==")
    for stage, losses in report["losses"].items():
        print(f"{stage}: " + ", ".join(f"{name} {value:.4f}" for name, value in losses.items()))
    if report["accuracy"]:
        print("held-out accuracy (mean over tasks): " + ", ".join(
            f"{name} {value:.1%}" for name, value in report["accuracy"].items()))
    print(f"figures and summary: {write_figures(run.workdir)}")
