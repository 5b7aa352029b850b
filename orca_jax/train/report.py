"""`orca-jax report RUN_DIR`: a training run's figures and a Markdown page that links them, no Jupyter.

It reads what the training loop logged to RUN_DIR/metrics.jsonl (one JSON object per line: step,
stage and scalars) and any `orca-jax evaluate --report` files in RUN_DIR/eval/*.json, and writes PNGs
and RUN_DIR/report/README.md (or --output DIR):

  loss.png          training and validation loss of every stage on one global-step axis, each later
                    stage's start marked
  learning_rate.png the learning-rate schedule
  grad_norm.png     the gradient norm before clipping
  throughput.png    tokens per second and packing efficiency
  accuracy.png      held-out accuracy per task at each evaluation the loop logged (bench_accuracy/<task>)
  eval_<name>.png   per-task accuracy and 95% interval of each RUN_DIR/eval/<name>.json

Figures are drawn on `matplotlib.figure.Figure` objects (the Agg canvas), never through pyplot, so it
runs headless and leaves a notebook's backend alone; the notebooks call the same `plot_*` functions
on their own axes.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import sys
from collections.abc import Iterable, Sequence

from matplotlib.figure import Figure

from orca_jax import paths
from orca_jax.errors import UserError

ACCURACY = "bench_accuracy"  # what orca_jax.eval.during_training logs (not imported: it pulls in JAX)
METRICS_FILE = "metrics.jsonl"


class ReportError(UserError):
    """The run directory cannot be reported on (no metrics, unreadable files)."""


def load_metrics(run_dir: str | pathlib.Path) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl in file order."""
    path = paths.path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ReportError(f"{path} does not exist: is {run_dir} the workdir of a training run?")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}: line {number} is not JSON ({err.msg})") from None
        if not isinstance(record, dict) or "step" not in record or "stage" not in record:
            raise ReportError(f"{path}: line {number} has no step and stage")
        records.append(record)
    return records


def series(records: Iterable[dict], name: str, stage: str | None = None) -> tuple[list[int], list[float]]:
    """(steps, values) of scalar `name`, sorted by step, of one stage or all; where a resumed run logged
    a step twice, the later record wins."""
    by_step = {record["step"]: record[name] for record in records
               if name in record and (stage is None or record["stage"] == stage)}
    steps = sorted(by_step)
    return steps, [by_step[step] for step in steps]


def stages(records: Iterable[dict]) -> list[str]:
    """The stages in the order they were first logged."""
    return list(dict.fromkeys(record["stage"] for record in records))


def stage_starts(records: Sequence[dict]) -> dict[str, int]:
    """The first global step logged for each stage."""
    starts: dict[str, int] = {}
    for record in records:
        starts[record["stage"]] = min(record["step"], starts.get(record["stage"], record["step"]))
    return starts


def mark_stage_starts(ax, records: Sequence[dict]) -> None:
    """A dashed vertical line where each stage after the first begins, labelled with its name."""
    for index, (stage, start) in enumerate(stage_starts(records).items()):
        if index:
            ax.axvline(start, color="grey", linestyle="--", linewidth=1)
            ax.annotate(stage, (start, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", color="grey", fontsize=8)


def _plot_scalar(ax, records: Sequence[dict], name: str, label: str | None, **style) -> bool:
    """One line per stage of scalar `name` (one legend entry); False when nothing logged it."""
    drawn = False
    colour = style.pop("color", None)
    for stage in stages(records):
        steps, values = series(records, name, stage)
        if steps:
            (line,) = ax.plot(steps, values, label=None if drawn else label, color=colour,
                              marker="." if len(steps) < 30 else None, **style)
            colour, drawn = line.get_color(), True
    return drawn


def plot_loss(ax, records: Sequence[dict], label: str = "") -> None:
    """Training loss (solid) and validation loss (dashed, dots) of every stage on one step axis."""
    prefix = f"{label} " if label else ""
    _plot_scalar(ax, records, "loss", f"{prefix}train loss")
    _plot_scalar(ax, records, "val_loss", f"{prefix}validation loss", linestyle="--")
    mark_stage_starts(ax, records)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    ax.legend(fontsize=8)


def plot_scalar(ax, records: Sequence[dict], name: str, label: str = "", ylabel: str | None = None) -> None:
    """Any logged scalar against the step, stage starts marked."""
    _plot_scalar(ax, records, name, label or name)
    mark_stage_starts(ax, records)
    ax.set(xlabel="step", ylabel=ylabel or name, title=name.replace("_", " "))
    if label:
        ax.legend(fontsize=8)


def evaluations(records: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per-task accuracy of every evaluation the loop logged, keyed 'stage@step' in log order."""
    points: dict[str, dict[str, float]] = {}
    for record in records:
        if ACCURACY in record:
            points[f"{record['stage']}@{record['step']}"] = {
                name[len(ACCURACY) + 1:]: value for name, value in record.items() if name.startswith(ACCURACY + "/")}
    return points


def plot_task_accuracy(ax, points: dict[str, dict[str, float]], errors: dict[str, Sequence] | None = None) -> None:
    """Grouped horizontal bars: one group per task, one bar per evaluation point. `errors` (one point
    only) maps a task to its (low, high) interval."""
    tasks = list(dict.fromkeys(task for accuracy in points.values() for task in accuracy))
    height = 0.8 / max(1, len(points))
    for index, (label, accuracy) in enumerate(points.items()):
        positions = [t + index * height for t in range(len(tasks))]
        values = [accuracy.get(task, 0.0) for task in tasks]
        xerr = None
        if errors is not None:
            xerr = [[value - errors[task][0] for task, value in zip(tasks, values)],
                    [errors[task][1] - value for task, value in zip(tasks, values)]]
        ax.barh(positions, values, height=height, label=label, xerr=xerr, capsize=2 if xerr else 0)
    ax.set_yticks([t + 0.4 - height / 2 for t in range(len(tasks))], tasks, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="accuracy", title="held-out accuracy per task")
    if len(points) > 1:
        ax.legend(fontsize=7, loc="lower right")


def eval_reports(run_dir: str | pathlib.Path) -> dict[str, dict]:
    """The `orca-jax evaluate --report` files in RUN_DIR/eval/*.json, by file stem."""
    reports = {}
    for path in sorted((paths.path(run_dir) / "eval").glob("*.json")):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ReportError(f"{path} is not JSON ({err})") from None
        if not isinstance(report, dict) or not isinstance(report.get("tasks"), dict):
            raise ReportError(f"{path} is not an `orca-jax evaluate --report` file (no 'tasks')")
        reports[path.stem] = report
    return reports


def _figure(width: float = 7, height: float = 4, rows: int = 1) -> tuple[Figure, list]:
    figure = Figure(figsize=(width, height * rows), layout="constrained")
    return figure, [figure.add_subplot(rows, 1, row + 1) for row in range(rows)]


def _save(figure: Figure, path: paths.AnyPath) -> str:
    png = io.BytesIO()  # rendered in memory: matplotlib cannot write to a bucket
    figure.savefig(png, format="png", dpi=110)
    path.write_bytes(png.getvalue())
    return path.name


def write_figures(records: Sequence[dict], run_dir: paths.AnyPath, out_dir: paths.AnyPath) -> dict[str, str]:
    """Every figure the records and eval reports allow, as {caption: file name under out_dir}."""
    logged = {name for record in records for name in record}
    figures = {}
    if logged & {"loss", "val_loss"}:
        figure, (ax,) = _figure()
        plot_loss(ax, records)
        figures["Loss of each stage"] = _save(figure, out_dir / "loss.png")
    for name, ylabel, caption in (("learning_rate", "learning rate", "Learning-rate schedule"),
                                  ("grad_norm", "global norm (before clipping)", "Gradient norm")):
        if name in logged:
            figure, (ax,) = _figure(height=3)
            plot_scalar(ax, records, name, ylabel=ylabel)
            figures[caption] = _save(figure, out_dir / f"{name}.png")
    if logged & {"tokens_per_second", "packing_efficiency"}:
        figure, axes = _figure(height=2.6, rows=2)
        plot_scalar(axes[0], records, "tokens_per_second", ylabel="tokens / s")
        plot_scalar(axes[1], records, "packing_efficiency", ylabel="real tokens / slots")
        figures["Throughput and packing efficiency"] = _save(figure, out_dir / "throughput.png")
    points = evaluations(records)
    if any(points.values()):
        figure, (ax,) = _figure(height=max(3, 0.25 * len(points) * len(next(iter(points.values()))) + 1))
        plot_task_accuracy(ax, points)
        figures["Held-out accuracy per task at each evaluation"] = _save(figure, out_dir / "accuracy.png")
    for name, report in eval_reports(run_dir).items():
        tasks = report["tasks"]
        figure, (ax,) = _figure(height=max(3, 0.3 * len(tasks) + 1))
        plot_task_accuracy(ax, {name: {task: row["accuracy"] for task, row in tasks.items()}},
                           errors={task: row.get("ci95", (row["accuracy"],) * 2) for task, row in tasks.items()})
        ax.set_title(f"eval/{name}.json: accuracy per task (95% interval)")
        figures[f"`orca-jax evaluate` report eval/{name}.json"] = _save(figure, out_dir / f"eval_{name}.png")
    return figures


def _summary_table(records: Sequence[dict]) -> list[str]:
    lines = ["| stage | steps | train loss (first → last) | validation loss (first → last) | accuracy at end |",
             "|---|---|---|---|---|"]
    for stage in stages(records):
        steps = sorted({record["step"] for record in records if record["stage"] == stage})
        cells = []
        for name in ("loss", "val_loss"):
            _, values = series(records, name, stage)
            cells.append(f"{values[0]:.4f} → {values[-1]:.4f}" if values else "–")
        _, accuracy = series(records, ACCURACY, stage)
        cells.append(f"{accuracy[-1]:.1%}" if accuracy else "–")
        lines.append(f"| {stage} | {steps[0]}–{steps[-1]} | " + " | ".join(cells) + " |")
    return lines


def write_report(run_dir: str | pathlib.Path, out_dir: str | pathlib.Path | None = None) -> paths.AnyPath:
    """Write the figures and out_dir/README.md (default RUN_DIR/report), local or gs://; returns the
    README's path."""
    run_dir = paths.path(run_dir)
    records = load_metrics(run_dir)
    if not records:
        raise ReportError(f"{run_dir / METRICS_FILE} is empty: the run logged nothing yet")
    out_dir = paths.path(out_dir) if out_dir is not None else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(records, run_dir, out_dir)
    lines = [f"# Training report: `{run_dir if paths.is_url(run_dir) else run_dir.resolve()}`", "",
             f"From `{METRICS_FILE}` ({len(records)} records) and any `eval/*.json`; "
             f"regenerate with `orca-jax report {run_dir}`.", ""]
    lines += _summary_table(records) + [""]
    for caption, name in figures.items():
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    readme = out_dir / "README.md"
    readme.write_text("\n".join(lines), encoding="utf-8")
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orca-jax report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a training run's workdir (holds metrics.jsonl)")
    parser.add_argument("--output", help="where the figures and README.md go (default RUN_DIR/report)")
    flags = parser.parse_args(argv)
    try:
        readme = write_report(flags.run_dir, flags.output)
    except UserError as error:
        print(f"orca-jax report: {error}", file=sys.stderr)
        return 1
    print(f"report: {readme} (figures beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
