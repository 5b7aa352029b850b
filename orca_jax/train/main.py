"""`orca-jax train [--config F] [--config.a.b=v ...]`: the staged training job of a config.

With no --config it runs configs/demo.py, which also prepares its own inputs (demo data, tokenizer,
TFDS shards) and ends with a report of loss and held-out exact-match accuracy per stage. Rerunning
the same command resumes from the latest checkpoint.

Exit codes: 0 done; 1 stopped (non-finite loss, bad config or data: the message says which);
143 preempted by SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import jax

from orca_jax import parallel
from orca_jax.config import ConfigError, parse_config_args
from orca_jax.data import prepare
from orca_jax.data.demo import write_demo_data
from orca_jax.data.records import DataError
from orca_jax.data.tokenizer import Tokenizer, TokenizerError, train_tokenizer
from orca_jax.eval.during_training import ACCURACY
from orca_jax.model import ModelConfigError, params_io
from orca_jax.train import loop
from orca_jax.train.optimizer import OptimizerConfigError

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py"


def initialize_distributed() -> None:
    """Join the other processes of a multi-host run; a no-op for a single process.

    Several processes are recognised by: a Cloud TPU pod slice (TPU_WORKER_HOSTNAMES lists more than
    one VM; a one-host TPU VM lists one), SLURM (SLURM_NTASKS > 1) or Open MPI
    (OMPI_COMM_WORLD_SIZE > 1), where JAX finds the coordinator itself; or, anywhere else, an explicit
    JAX_COORDINATOR_ADDRESS (host:port) with JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    """
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        if not {"JAX_NUM_PROCESSES", "JAX_PROCESS_ID"} <= env.keys():
            raise ConfigError("JAX_COORDINATOR_ADDRESS is set: set JAX_NUM_PROCESSES and JAX_PROCESS_ID too")
        jax.distributed.initialize(num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
    elif (len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1 or int(env.get("SLURM_NTASKS", "1")) > 1
          or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1):
        jax.distributed.initialize()


def prepare_demo(config) -> None:
    """Write what the demo trains on, skipping every part that already exists."""
    demo, data_dir = config.demo, pathlib.Path(config.demo.data_dir)
    paths = {name: data_dir / f"{name}.jsonl" for name in ("stage1", "stage2", "eval")}
    if not all(path.is_file() for path in paths.values()):
        write_demo_data(data_dir, seed=demo.data_seed, stage1_rows=demo.stage1_rows,
                        stage2_rows=demo.stage2_rows, eval_rows=demo.eval_rows)
    tokenizer_path = pathlib.Path(config.data.tokenizer)
    if not tokenizer_path.is_file():
        texts = (f"{row['system_prompt']}\n{row['question']}\n{row['response']}"
                 for name in ("stage1", "stage2") for row in _read_jsonl(paths[name]))
        train_tokenizer(texts, tokenizer_path.with_suffix(""), demo.tokenizer_pieces)
    tokenizer = Tokenizer.load(tokenizer_path)
    for name in config.stage_order:
        dataset_dir = pathlib.Path(config.stages[name].dataset_dir)
        if not (dataset_dir / "dataset_info.json").is_file():
            prepare.prepare([str(paths[name])], dataset_dir, tokenizer=tokenizer, template=config.data.template,
                            seq_len=config.data.seq_len, validation=demo.validation_fraction,
                            bad_rows="skip", seed=demo.data_seed, progress=False)


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def _stage_losses(metrics_path: pathlib.Path) -> dict[str, dict[str, float]]:
    """First and last logged training loss and first and last validation loss of each stage (the
    later record wins where a resumed run logged a step twice)."""
    by_stage: dict[str, dict[str, dict[int, float]]] = {}
    for record in _read_jsonl(metrics_path):
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


def demo_report(config, plans: list[loop.StagePlan]) -> dict:
    """Losses of each stage and the held-out accuracy the loop logged (the `eval` block) before
    training and at each stage's end, read back from metrics.jsonl (the later record of a step wins)."""
    records = _read_jsonl(pathlib.Path(config.workdir) / "metrics.jsonl")
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
    report["losses"] = _stage_losses(pathlib.Path(config.workdir) / "metrics.jsonl")
    return report


def _print_report(report: dict) -> None:
    print("\n== demo report ==")
    for stage, losses in report["losses"].items():
        parts = [f"{name} {value:.4f}" for name, value in losses.items()]
        print(f"{stage}: " + ", ".join(parts))
    if report["accuracy"]:
        print("held-out accuracy (mean over tasks): " + ", ".join(
            f"{name} {value:.1%}" for name, value in report["accuracy"].items()))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config, rest = parse_config_args(argv, default=str(DEFAULT_CONFIG))
        if rest:
            raise ConfigError(f"unexpected arguments {rest}; use --config F and --config.a.b=value")
        initialize_distributed()
        mesh = parallel.mesh_from_config(config.mesh)
        if "demo" in config:
            prepare_demo(config)
        tokenizer = Tokenizer.load(config.data.tokenizer)
        if tokenizer.vocab_size > config.model.vocab_size:
            raise ConfigError(f"the tokenizer {config.data.tokenizer} has {tokenizer.vocab_size} ids but "
                              f"model.vocab_size is {config.model.vocab_size}")
        plans = loop.train(config, mesh, tokenizer)
        if "demo" in config:
            if jax.process_index() == 0:
                report = demo_report(config, plans)
                (pathlib.Path(config.workdir) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
                _print_report(report)
    except loop.TrainingStopped as stopped:
        print(f"orca-jax train: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except (ConfigError, DataError, ModelConfigError, OptimizerConfigError, loop.StageConfigError,
            parallel.MeshShapeError, TokenizerError, params_io.ParamsIOError) as error:
        print(f"orca-jax train: {error}", file=sys.stderr)
        return 1
    return 0
