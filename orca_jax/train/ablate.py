"""`orca-jax ablate [--config F] [--config.a.b=v]`: Orca's two claims in miniature, with seeds and controls.

Each condition is an ordinary staged training run through the project's real path: the serial-task
generator (data/serial_tasks.py) -> sentencepiece -> TFDS shards -> packed pipeline -> `loop.train`
-> greedy decoding of the held-out questions -> the answer scorer. The data, tokenizer and shards are
made once and shared by every seed; each (condition, seed) trains in `workdir/<condition>/seed<k>`;
all runs share one compilation cache, so each program shape compiles once. A finished run's
`result.json` is kept, so rerunning the command picks up where it stopped.

Seeds change model initialisation and data order (TrainConfig.seed) and nothing else: the questions,
the held-out set and the tokenizer come from `ablate.data_seed`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import jax
from ml_collections import ConfigDict

from orca_jax import parallel
from orca_jax.config import ConfigError, default_config, parse_config_args
from orca_jax.data import prepare, serial_tasks
from orca_jax.data.jsonl import read_objects
from orca_jax.data.templates import get_template
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer
from orca_jax.errors import UserError
from orca_jax.eval import benchmarks, generate
from orca_jax.eval.prompts import PromptBuilder
from orca_jax.eval.report import build_report
from orca_jax.eval.runner import score_examples
from orca_jax.model import params_io
from orca_jax.train import ablate_report, loop
from orca_jax.train.config import INIT_PREVIOUS, INIT_RANDOM, TrainConfig

EXPLANATION, PROGRESSIVE = "explanation tuning", "progressive learning"
# dataset -> (response style, ablate field giving its number of questions)
DATASETS = {
    "answer_only": ("answer_only", "train_questions"),
    "terse": ("terse", "train_questions"),
    "step_by_step": ("step_by_step", "train_questions"),
    "small_step_by_step": ("step_by_step", "small_questions"),
}


@dataclasses.dataclass(frozen=True)
class AblateConfig:
    """The `ablate` block of configs/ablate.py."""

    data_dir: str
    data_seed: int = 0
    train_questions: int = 8000
    small_questions: int = 1000
    eval_per_family: int = 30
    tokenizer_pieces: int = 600
    split_digits: bool = True
    """False: numbers the tokenizer saw often become single pieces (data/tokenizer.train_tokenizer)."""
    validation_fraction: float = 0.02
    claim1_seeds: tuple[int, ...] = (0, 1, 2)
    claim2_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    claim1_steps: int = 600
    stage1_steps: int = 400
    stage2_steps: int = 200
    eval_batch_size: int = 50
    max_new_tokens: int = 112
    workers: int = 2
    """Processes training runs side by side (one per core); 1 trains them all in this process."""

    def __post_init__(self):
        if not 0 < self.small_questions <= self.train_questions:
            raise ConfigError(f"ablate.small_questions={self.small_questions} must be in 1..train_questions="
                              f"{self.train_questions}: the small set is the first of the same questions")
        for name in ("claim1_steps", "stage1_steps", "stage2_steps", "eval_per_family", "eval_batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ablate.{name} must be positive, got {getattr(self, name)}")

    @property
    def eval_path(self) -> pathlib.Path:
        return pathlib.Path(self.data_dir) / "eval.jsonl"

    def shards(self, dataset: str) -> str:
        return str(pathlib.Path(self.data_dir) / f"{dataset}_shards")


@dataclasses.dataclass(frozen=True)
class Condition:
    name: str
    claim: str
    stages: tuple[tuple[str, int], ...]
    """(dataset, steps) in training order; a later stage starts from the previous one's weights."""
    seeds: tuple[int, ...]

    @property
    def total_steps(self) -> int:
        return sum(steps for _, steps in self.stages)


def conditions(ablate: AblateConfig) -> list[Condition]:
    """Claim 1 at equal steps; claim 2's small set alone, after a terse stage 1, and alone for as many
    steps as both stages (the control: does stage 1 help, or only the extra steps?)."""
    s1, s2, claim1, claim2 = ablate.stage1_steps, ablate.stage2_steps, ablate.claim1_seeds, ablate.claim2_seeds
    return [
        Condition("answer_only", EXPLANATION, (("answer_only", ablate.claim1_steps),), claim1),
        Condition("terse", EXPLANATION, (("terse", ablate.claim1_steps),), claim1),
        Condition("step_by_step", EXPLANATION, (("step_by_step", ablate.claim1_steps),), claim1),
        Condition("small_step_by_step", PROGRESSIVE, (("small_step_by_step", s2),), claim2),
        Condition("terse_then_small_step_by_step", PROGRESSIVE, (("terse", s1), ("small_step_by_step", s2)), claim2),
        Condition("small_step_by_step_same_total", PROGRESSIVE, (("small_step_by_step", s1 + s2),), claim2),
    ]


def split_config(config: ConfigDict) -> tuple[dict, AblateConfig]:
    """The training blocks (everything but `ablate` and `optimizer`, which every stage gets) and the
    typed `ablate` block."""
    values = config.to_dict()
    block = dict(values.pop("ablate"))
    for name in ("claim1_seeds", "claim2_seeds"):
        block[name] = tuple(block.get(name, ()))
    try:
        ablate = AblateConfig(**block)
    except TypeError as error:
        raise ConfigError(f"ablate config: {error}") from None
    return values, ablate


def run_config(base: dict, ablate: AblateConfig, condition: Condition, seed: int) -> TrainConfig:
    """The training config of one (condition, seed): the base blocks with its workdir, seed and stages."""
    optimizer = base["optimizer"]
    stages = {}
    for index, (dataset, steps) in enumerate(condition.stages):
        stages[dataset] = {"dataset_dir": ablate.shards(dataset), "init": INIT_PREVIOUS if index else INIT_RANDOM,
                           "num_steps": steps, "optimizer": optimizer}
    values = {key: value for key, value in base.items() if key != "optimizer"}
    values.update(workdir=str(pathlib.Path(base["workdir"]) / condition.name / f"seed{seed}"), seed=seed,
                  stages=stages, stage_order=[dataset for dataset, _ in condition.stages])
    return TrainConfig.from_config(values)


def prepare_data(ablate: AblateConfig, base: dict) -> Tokenizer:
    """Question files, tokenizer and shards, each made once and only when missing."""
    data_dir = pathlib.Path(ablate.data_dir)
    files = {name: (style, getattr(ablate, size)) for name, (style, size) in DATASETS.items()}
    paths = {name: data_dir / f"{name}.jsonl" for name in [*files, "eval"]}
    if not all(path.is_file() for path in paths.values()):
        serial_tasks.write_files(data_dir, files, seed=ablate.data_seed, eval_per_family=ablate.eval_per_family)
    tokenizer_path = pathlib.Path(base["data"]["tokenizer"])
    if not tokenizer_path.is_file():
        # The template's own text too: left out, its markers cost ~25 byte pieces per example.
        template = get_template(base["data"]["template"])
        texts = (template.render_prompt(row["system_prompt"], row["question"]) + row["response"]
                 for name in files for _, row in read_objects(paths[name]))
        train_tokenizer(texts, tokenizer_path.with_suffix(""), ablate.tokenizer_pieces,
                        split_digits=ablate.split_digits)
    tokenizer = Tokenizer.load(tokenizer_path)
    for name in files:
        if not (pathlib.Path(ablate.shards(name)) / "dataset_info.json").is_file():
            prepare.prepare([str(paths[name])], ablate.shards(name), tokenizer=tokenizer,
                            template=base["data"]["template"], seq_len=base["data"]["seq_len"],
                            validation=ablate.validation_fraction, bad_rows="skip", seed=ablate.data_seed,
                            progress=False)
    return tokenizer


def logged_steps(workdir: str) -> dict:
    """Steps, first and last training loss, and first validation loss, as the loop logged them."""
    records = [record for _, record in read_objects(pathlib.Path(workdir) / "metrics.jsonl")]
    losses = [(record["step"], record["loss"]) for record in records if "loss" in record]
    validation = [record["val_loss"] for record in records if "val_loss" in record]
    return {"trained_steps": max(step for step, _ in losses), "first_loss": losses[0][1],
            "last_loss": losses[-1][1], "initial_val_loss": validation[0]}


def evaluate(run: TrainConfig, mesh, tokenizer: Tokenizer, ablate: AblateConfig, step: int) -> list[dict]:
    """Scored rows of every held-out question for the parameters of checkpoint `step`.

    All families are decoded together (runner.evaluate_examples decodes task by task: five decode
    loops where one does)."""
    params = params_io.restore_params(pathlib.Path(run.workdir) / "checkpoints" / str(step),
                                      generate.abstract_decode_params(run.model, mesh))
    builder = PromptBuilder(tokenizer, run.data.template, system_message="",
                            max_tokens=run.model.max_seq_len - ablate.max_new_tokens)
    return score_examples(params, run.model, tokenizer, builder, benchmarks.read_demo(ablate.eval_path),
                          max_new_tokens=ablate.max_new_tokens, batch_size=ablate.eval_batch_size, mesh=mesh)


def run_one(run: TrainConfig, mesh, tokenizer: Tokenizer, ablate: AblateConfig, condition: Condition,
            seed: int) -> dict:
    """Train one (condition, seed), or resume it, and score it held out; kept in result.json."""
    result_path = pathlib.Path(run.workdir) / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    started = time.perf_counter()
    plans = loop.train(run, mesh, tokenizer)
    trained = time.perf_counter()
    rows = evaluate(run, mesh, tokenizer, ablate, plans[-1].last_step)
    report = build_report(rows)
    result = {"condition": condition.name, "claim": condition.claim, "seed": seed,
              "stages": [[plan.name, plan.num_steps] for plan in plans],
              "accuracy": report["overall"]["example_mean"],
              "families": {task.split(".", 1)[1]: summary["accuracy"] for task, summary in report["tasks"].items()},
              **logged_steps(run.workdir),
              "train_seconds": round(trained - started, 1),
              "eval_seconds": round(time.perf_counter() - trained, 1)}
    (pathlib.Path(run.workdir) / "eval_rows.jsonl").write_text(
        "".join(json.dumps({key: row[key] for key in ("task", "index", "gold", "response", "extracted", "correct")})
                + "\n" for row in rows))
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    return result


class LoadSampler:
    """The 1-minute load average every `every` seconds while the ablation runs: the CPU is shared, and
    a wall time means little without what else ran beside it."""

    def __init__(self, every: float = 15.0):
        self.samples, self._stop = [os.getloadavg()[0]], threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every,), daemon=True)
        self._thread.start()

    def _sample(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        return {"mean": round(sum(self.samples) / len(self.samples), 2), "max": max(self.samples),
                "samples": len(self.samples)}


def shares(costs: list[int], workers: int) -> list[list[int]]:
    """Run indices per worker, the costliest run first onto the least loaded worker; each worker's list
    in plan order. Every process computes the same split from the same config."""
    loads, split = [0] * workers, [[] for _ in range(workers)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        worker = loads.index(min(loads))
        loads[worker] += costs[index]
        split[worker].append(index)
    return [sorted(indices) for indices in split]


def train_share(indices: list[int], plan: list[tuple[Condition, int]], runs: list[TrainConfig], ablate: AblateConfig,
                label: str = "") -> None:
    """Train and score the runs at `indices`, one after another, in this process."""
    if not indices:
        return
    loop.enable_compilation_cache(runs[indices[0]])  # every run names the same cache directory
    mesh = parallel.mesh_from_config(runs[indices[0]].mesh)
    for index in indices:
        runs[index].check_mesh(mesh, jax.process_count())
    tokenizer = Tokenizer.load(runs[indices[0]].data.tokenizer)
    runs[indices[0]].check_tokenizer(tokenizer)
    for number, index in enumerate(indices, 1):
        (condition, seed), run = plan[index], runs[index]
        result = run_one(run, mesh, tokenizer, ablate, condition, seed)
        print(f"{label}[{number}/{len(indices)}] {condition.name} seed {seed}: {result['trained_steps']} steps, "
              f"held-out exact match {result['accuracy']:.1%} ({result['train_seconds']} s training, "
              f"{result['eval_seconds']} s evaluation)", flush=True)


def run_workers(argv: list[str], workers: int, log_dir: pathlib.Path) -> None:
    """`workers` processes of this command (`--worker k` first), each training its share; their
    progress lines come through, everything else goes to log_dir/worker<k>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [open(log_dir / f"worker{k}.log", "w") for k in range(workers)]
    processes = [subprocess.Popen([sys.executable, "-m", "orca_jax.train.ablate", "--worker", str(k), *argv],
                                  stderr=log) for k, log in enumerate(logs)]
    try:
        codes = [process.wait() for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for log in logs:
            log.close()
    failed = [k for k, code in enumerate(codes) if code]
    if failed:
        raise UserError(f"ablation worker(s) {failed} failed (exit codes {[codes[k] for k in failed]}); "
                        f"see {', '.join(str(log_dir / f'worker{k}.log') for k in failed)}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    worker = None
    if argv[:1] == ["--worker"]:  # a process run_workers started
        worker, argv = int(argv[1]), argv[2:]
    try:
        config, rest = parse_config_args(argv, default=default_config("ablate"))
        if rest:
            raise ConfigError(f"unexpected arguments {rest}; use --config F and --config.a.b=value")
        base, ablate = split_config(config)
        plan = [(condition, seed) for condition in conditions(ablate) for seed in condition.seeds]
        runs = [run_config(base, ablate, condition, seed) for condition, seed in plan]  # every check first
        split = shares([condition.total_steps for condition, _ in plan], ablate.workers)
        if worker is not None:
            train_share(split[worker], plan, runs, ablate, label=f"worker {worker} ")
            return 0
        started, load = time.perf_counter(), LoadSampler()
        prepare_data(ablate, base)
        if ablate.workers == 1:
            train_share(split[0], plan, runs, ablate)
        else:
            run_workers(argv, ablate.workers, pathlib.Path(base["workdir"]) / "logs")
        results = [json.loads((pathlib.Path(run.workdir) / "result.json").read_text()) for run in runs]
        timing = {"wall_seconds": round(time.perf_counter() - started, 1), "load": load.stop(),
                  "cpu_count": os.cpu_count(), "workers": ablate.workers}
        written = ablate_report.write(base["workdir"], results, [dataclasses.asdict(c) for c in conditions(ablate)],
                                      timing)
        print(ablate_report.format_tables(results))
        print(f"{len(runs)} runs took {timing['wall_seconds']:.0f} s ({ablate_report.load_text(timing)}); "
              f"tables and figure: {', '.join(map(str, written))}")
    except loop.TrainingStopped as stopped:
        print(f"orca-jax ablate: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except UserError as error:
        print(f"orca-jax ablate: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
