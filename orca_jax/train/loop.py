"""The staged training loop: stages in order, resume from the latest checkpoint, preemption, NaN guard.

Orca trains in stages (FLAN-5M with ChatGPT's answers, then FLAN-1M with GPT-4's), each stage with
its own data, length, optimizer and schedule, the second starting from the first one's final weights.
`train(run, mesh, tokenizer)` runs every stage of `run.stages` and can be killed at any moment: the
same call again continues from the latest checkpoint with the same parameters, optimizer state and
next batch, so an interrupted run ends bit-identical to an uninterrupted one (same device count).

Every stage's length is fixed before it starts (given as steps, or counted from its epochs by one
pass over the packed data), because the learning-rate schedule and the global step numbering of
checkpoints depend on it.

The host keeps the device fed: it queues step k+1 before it looks at step k's metrics, and it looks
only when a log record falls due (every `log_every_steps`), or when it needs a step's state (a
checkpoint, validation, evaluation). A non-finite loss is therefore noticed up to that many steps late,
but always before a checkpoint is written from it (_StepLog). Preemption costs no wait either
(preemption.py).

It takes a typed `TrainConfig` (train/config.py), already checked at the door.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from orca_jax import parallel, paths
from orca_jax.data import pipeline, shards
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.eval.during_training import TrainingEvaluator
from orca_jax.model import params_io
from orca_jax.train import step as train_step
from orca_jax.train.checkpoint import Checkpointer, Position, UnreadableCheckpoint
from orca_jax.train.config import INIT_PREVIOUS, INIT_RANDOM, StageConfigError, TrainConfig
from orca_jax.train.metrics import MetricsWriter, Throughput
from orca_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from orca_jax.train.preemption import PreemptionWatch

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a supervisor expects of a process that SIGTERM ended


StepHook = Callable[[int, dict[str, jax.Array]], None]
"""Called with (global step, that step's metrics still on the device) right after a step is queued."""


class TrainingStopped(Exception):
    """Training ended early on purpose; the message says why and where the run stands."""

    exit_code = 1


class Preempted(TrainingStopped):
    exit_code = PREEMPTED_EXIT_CODE


class NonFiniteLoss(TrainingStopped):
    pass


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One stage with its length resolved."""

    index: int
    name: str
    dataset_dir: str
    init: str
    """'random', 'previous' (the previous stage's final weights) or a params directory (params_io)."""
    optimizer: OptimizerConfig
    epochs: int | None
    """Passes over the data; None when the stage is given in steps and the data repeats forever."""
    num_steps: int
    first_step: int
    """Global step count before this stage's first step (checkpoints are numbered globally)."""
    data_seed: int

    @property
    def last_step(self) -> int:
        return self.first_step + self.num_steps


def _train_batches(run: TrainConfig, plan: StagePlan, tokenizer: Tokenizer, mesh: Mesh) -> pipeline.TrainBatches:
    # An epoch stage's length was counted by count_steps, so the processes need not agree on it again.
    return pipeline.TrainBatches(shards.open_split(plan.dataset_dir, shards.TRAIN), tokenizer, run.data,
                                 seed=plan.data_seed, num_epochs=plan.epochs, mesh=mesh,
                                 num_batches=plan.num_steps if plan.epochs else None)


def count_steps(run: TrainConfig, dataset_dir: str, tokenizer: Tokenizer, seed: int, epochs: int) -> int:
    """Global batches in `epochs` passes over the packed data: the longest read share's count of local
    batches (shares that run out early feed padding until all are done, see pipeline.TrainBatches).

    Counting packs the whole stream once, minutes for FLAN-5M, so the count is kept in
    `workdir/stage_lengths.json` under everything that determines it, and a restart reads it back.
    """
    source = shards.open_split(dataset_dir, shards.TRAIN)
    data = run.data
    stream = json.dumps({"dataset_dir": str(paths.absolute(dataset_dir)), "records": len(source),
                         "epochs": epochs, "seed": seed, "tokenizer": str(tokenizer.path),
                         "template": data.template, "seq_len": data.seq_len, "batch_size": data.batch_size,
                         "pack_window": data.pack_window, "read_shares": data.read_shares or jax.process_count()},
                        sort_keys=True)
    cache_path = paths.path(run.workdir) / "stage_lengths.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if stream in cache:
        return cache[stream]
    steps = pipeline.stream_length(source, tokenizer, data, seed=seed, num_epochs=epochs)
    if jax.process_index() == 0:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps({**cache, stream: steps}, indent=1) + "\n")
    return steps


def plan_stages(run: TrainConfig, tokenizer: Tokenizer) -> list[StagePlan]:
    """Each stage with its length resolved (counting epochs over the packed data where needed)."""
    if not run.stages:
        raise StageConfigError("the config has no stages to train (stage_order and stages)")
    plans, first_step = [], 0
    for index, stage in enumerate(run.stages):
        data_seed = run.seed + index
        epochs = stage.epochs or None
        num_steps = stage.num_steps or count_steps(run, stage.dataset_dir, tokenizer, data_seed, epochs)
        learning_rate_schedule(stage.optimizer, num_steps)  # fails now, not after the previous stage trained
        plans.append(StagePlan(index=index, name=stage.name, dataset_dir=stage.dataset_dir, init=stage.init,
                               optimizer=stage.optimizer, epochs=epochs, num_steps=num_steps,
                               first_step=first_step, data_seed=data_seed))
        first_step += num_steps
    return plans


def enable_compilation_cache(run: TrainConfig) -> paths.AnyPath | None:
    """Turn on JAX's persistent compilation cache (unless `run.compilation_cache` is False) in
    `run.compilation_cache_dir` or <workdir>/compilation_cache; returns the directory (None when off).

    Call before anything is compiled. Every program is cached, however small or quick to compile (JAX's
    defaults skip programs compiled in under a second, which on a CPU are most of them).
    """
    if not run.compilation_cache:
        return None
    # A gs:// directory works as it is: JAX reads and writes the cache through etils.epath.
    directory = paths.absolute(run.compilation_cache_dir or paths.path(run.workdir) / "compilation_cache")
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory


def stage_init_rng(seed: int, stage_index: int) -> jax.Array:
    """The key a stage with init='random' draws its parameters from."""
    return jax.random.fold_in(jax.random.key(seed), stage_index)


class Stage:
    """Everything one stage compiles and reads: model, optimizer, steps, data."""

    def __init__(self, run: TrainConfig, plan: StagePlan, tokenizer: Tokenizer, mesh: Mesh):
        self.run, self.plan, self.tokenizer, self.mesh = run, plan, tokenizer, mesh
        self.model_config = run.model
        self.optimizer = make_optimizer(plan.optimizer, plan.num_steps)
        # Tabled once: the schedule is jnp code, so a value for a log record would wait behind the
        # queued train steps on the device.
        schedule = learning_rate_schedule(plan.optimizer, plan.num_steps)
        self.learning_rates = np.asarray(jax.vmap(schedule)(jnp.arange(plan.num_steps)))
        self.params_abstract = parallel.abstract_params(self.model_config, mesh)
        self.state_abstract = train_step.abstract_state(self.params_abstract, self.optimizer, mesh)
        self.steps = train_step.CompiledSteps(self.model_config, self.optimizer, plan.optimizer.grad_accum_steps,
                                              mesh, self.state_abstract)
        self.batches = _train_batches(run, plan, tokenizer, mesh)

    def initial_params(self, checkpointer: Checkpointer, previous: StagePlan | None):
        init = self.plan.init
        if init == INIT_RANDOM:
            rng = stage_init_rng(self.run.seed, self.plan.index)
            return train_step.init_sharded_params(self.model_config, rng, self.params_abstract)
        if init == INIT_PREVIOUS:
            return checkpointer.restore_params(previous.last_step, self.params_abstract)
        return params_io.restore_params(init, self.params_abstract)

    def validation_loss(self, params) -> float | None:
        """Token-weighted loss over the first `data.validation_batches` batches (0: all) of the stage's
        validation split; None when it has none."""
        source = shards.open_split(self.plan.dataset_dir, shards.VALIDATION)
        if len(source) == 0:
            return None
        batches: Iterator = pipeline.validation_batches(source, self.tokenizer, self.run.data, self.mesh)
        results = jax.device_get([self.steps.eval(params, batch) for batch in batches])  # one wait, at the end
        loss_sum = sum(float(result["loss_sum"]) for result in results)
        weight = sum(float(result["response_tokens"]) for result in results)
        return loss_sum / max(weight, 1.0)


def train(run: TrainConfig, mesh: Mesh, tokenizer: Tokenizer, on_step: StepHook | None = None) -> list[StagePlan]:
    """Run (or resume) every stage; returns the stage plans (their checkpoints are kept). `on_step`
    sees every step as it is queued (benchmarks/train_step.py times steps with it); it must not block.

    A checkpoint that cannot be read back (a file missing or truncated) is reported in one line on
    stderr, moved aside (`<step>.corrupt-<time>` beside it) and the run resumes from the newest readable
    one, as if it had been killed before that step was saved.
    """
    workdir = paths.path(run.workdir)
    plans = plan_stages(run, tokenizer)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=run.checkpoint.keep,
                                keep_steps=[plan.last_step for plan in plans])
    evaluator = (TrainingEvaluator(run.eval, run.model, tokenizer, run.data.template, mesh)
                 if run.eval.enabled else None)
    try:
        while True:
            try:
                _train_from_latest(run, mesh, tokenizer, plans, checkpointer, evaluator, on_step)
                return plans
            except UnreadableCheckpoint as unreadable:
                moved = checkpointer.move_aside(unreadable.step)
                latest = checkpointer.latest_step()
                resuming = f"resuming from step {latest}" if latest is not None else "starting from scratch"
                print(f"warning: {unreadable}; moved it aside to {moved}, {resuming}", file=sys.stderr, flush=True)
    finally:
        checkpointer.wait()
        checkpointer.close()


def _train_from_latest(run: TrainConfig, mesh: Mesh, tokenizer: Tokenizer, plans: list[StagePlan],
                       checkpointer: Checkpointer, evaluator: TrainingEvaluator | None,
                       on_step: StepHook | None) -> None:
    """Every stage from the latest checkpoint on; UnreadableCheckpoint when a checkpoint it reads is damaged."""
    latest = checkpointer.latest_step()
    position = None
    if latest is not None:
        unreadable = checkpointer.unreadable(latest)
        if unreadable is not None:
            raise unreadable
        position = checkpointer.position(latest)
        _check_resumable(position, latest, plans, checkpointer)
    writer = MetricsWriter(paths.path(run.workdir), total_steps=plans[-1].last_step, initial_step=latest or 0)
    try:
        with PreemptionWatch(agree_every=run.log_every_steps) as preemption:
            for plan in plans:
                if position is not None and (plan.index < position.stage_index or (
                        plan.index == position.stage_index and position.stage_step == plan.num_steps)):
                    continue  # finished before this run started
                resume = position if position is not None and position.stage_index == plan.index else None
                previous = plans[plan.index - 1] if plan.index else None
                _run_stage(run, Stage(run, plan, tokenizer, mesh), checkpointer, writer,
                           preemption, resume, previous, evaluator, on_step)
    finally:
        writer.close()


def _check_resumable(position: Position, step: int, plans: list[StagePlan], checkpointer: Checkpointer) -> None:
    """The latest checkpoint must sit where this config's stage plan puts it."""
    plan = plans[position.stage_index] if position.stage_index < len(plans) else None
    if (plan is None or plan.name != position.stage_name or position.stage_step > plan.num_steps
            or plan.first_step + position.stage_step != step):
        raise StageConfigError(
            f"the latest checkpoint in {checkpointer.directory} (step {step}, stage {position.stage_name!r} "
            f"step {position.stage_step}) does not fit this config's stages "
            f"{[(p.name, p.num_steps) for p in plans]}: use a new workdir or the config it was trained with")


class _StepLog:
    """Steps queued on the device whose metrics the host has not looked at yet.

    The host never waits for a step it has just queued unless it needs that step's state (to save,
    validate or evaluate it) or the config says so (`debug.sync_every_step`); otherwise it settles the
    previous steps when a log record falls due, while the newest step keeps the device busy. Settling
    fetches every pending step's metrics in one transfer, stops the run at the first non-finite loss or
    gradient norm (before anything is saved from it), and writes the log records.
    """

    def __init__(self, run: TrainConfig, stage: Stage, writer: MetricsWriter, checkpointer: Checkpointer, start: int):
        self.run, self.stage, self.writer, self.checkpointer, self.start = run, stage, writer, checkpointer, start
        self.throughput = Throughput(stage.model_config, run.data.seq_len)
        self._pending: list[tuple[int, dict[str, jax.Array], float, int]] = []
        self._losses, self._norms, self._efficiency = [], [], []

    def add(self, stage_step: int, metrics: dict[str, jax.Array]) -> None:
        batches = self.stage.batches
        self._pending.append((stage_step, metrics, batches.stats.efficiency, batches.epoch))

    def due(self, stage_step: int) -> bool:
        """Whether a settled `stage_step` writes a log record (the first step: it starts the rate window)."""
        return stage_step == self.start + 1 or stage_step % self.run.log_every_steps == 0

    def settle(self, through: int) -> None:
        """Fetch, check and log every pending step up to `through` (blocks until that step is done)."""
        ready = [entry for entry in self._pending if entry[0] <= through]
        if not ready:
            return
        del self._pending[:len(ready)]
        plan = self.stage.plan
        for (stage_step, _, efficiency, epoch), metrics in zip(ready, jax.device_get([e[1] for e in ready])):
            global_step = plan.first_step + stage_step
            loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
            if not (np.isfinite(loss) and np.isfinite(grad_norm)):
                self.checkpointer.wait()
                what = f"loss is {loss}" if not np.isfinite(loss) else f"gradient norm is {grad_norm}"
                raise NonFiniteLoss(
                    f"stage {plan.name} step {stage_step} (global step {global_step}): {what}. Stopped without "
                    f"saving; the last good checkpoint is step {self.checkpointer.latest_step()} in "
                    f"{self.checkpointer.directory}")
            if stage_step == self.start + 1:
                self.throughput.start_window()  # the first step of a run compiles: not a rate worth reporting
            else:
                self.throughput.add_step(int(metrics["real_tokens"]))
            self.writer.advance()
            self._losses.append(loss)
            self._norms.append(grad_norm)
            self._efficiency.append(efficiency)
            if stage_step % self.run.log_every_steps == 0 or stage_step == plan.num_steps:
                self.writer.write(global_step, plan.name, {
                    "loss": np.mean(self._losses), "grad_norm": np.mean(self._norms),
                    "learning_rate": self.stage.learning_rates[stage_step - 1],
                    "packing_efficiency": np.mean(self._efficiency), "epoch": epoch, **self.throughput.report()})
                self._losses, self._norms, self._efficiency = [], [], []


def _run_stage(run: TrainConfig, stage: Stage, checkpointer: Checkpointer, writer: MetricsWriter,
               preemption: PreemptionWatch, resume: Position | None, previous: StagePlan | None,
               evaluator: TrainingEvaluator | None, on_step: StepHook | None) -> None:
    plan = stage.plan
    if resume is None:
        state = train_step.init_state(stage.initial_params(checkpointer, previous), stage.optimizer,
                                      stage.state_abstract)
        start = 0
        _write_validation(writer, stage, state.params, plan.first_step)
        if evaluator is not None and plan.init != INIT_PREVIOUS:
            # A stage from the previous one's weights starts where that stage's final evaluation was.
            writer.write(plan.first_step, plan.name, evaluator(state.params))
    else:
        state, data_state = checkpointer.restore(plan.first_step + resume.stage_step, stage.state_abstract)
        stage.batches.set_state(data_state)
        start = resume.stage_step
    config_json = run.to_json()
    log = _StepLog(run, stage, writer, checkpointer, start)
    throughput = log.throughput

    for stage_step in range(start + 1, plan.num_steps + 1):
        global_step = plan.first_step + stage_step
        waited = time.perf_counter()
        batch = next(stage.batches, None)
        if batch is None:
            raise TrainingStopped(f"stage {plan.name}: the data ran out at step {stage_step} of "
                                  f"{plan.num_steps}")
        throughput.add_data_wait(time.perf_counter() - waited)
        if global_step == run.debug.nan_at_step:
            batch["loss_weights"] = batch["loss_weights"] * np.float32("nan")
        state, metrics = stage.steps.train(state, batch)
        if on_step is not None:
            on_step(global_step, metrics)
        log.add(stage_step, metrics)

        stage_done = stage_step == plan.num_steps
        preempted = preemption.reached(global_step)
        validate = stage_done or (run.eval_every_steps and stage_step % run.eval_every_steps == 0)
        benchmark = evaluator is not None and (
            stage_done or (evaluator.config.every_steps and stage_step % evaluator.config.every_steps == 0))
        save = stage_done or preempted or stage_step % run.checkpoint.every_steps == 0
        if log.due(stage_step - 1):
            log.settle(through=stage_step - 1)  # while this step runs
        if save or validate or benchmark or run.debug.sync_every_step:
            # This step's state is used next, so its loss must be seen first. Settled apart from the
            # previous steps, so each log record's rates end when its own step did.
            log.settle(through=stage_step)
        evaluating = time.perf_counter()
        if validate:
            _write_validation(writer, stage, state.params, global_step)
        if benchmark:
            writer.write(global_step, plan.name, evaluator(state.params))
        throughput.exclude(time.perf_counter() - evaluating)
        if save:
            waited = time.perf_counter()
            checkpointer.save(global_step, state, stage.batches.get_state(),
                              Position(plan.index, plan.name, stage_step, run.seed), config_json)
            throughput.add_checkpoint_wait(time.perf_counter() - waited)
        if preempted:
            checkpointer.wait()
            raise Preempted(f"SIGTERM: saved a checkpoint at stage {plan.name} step {stage_step} (global "
                            f"step {global_step}) in {checkpointer.directory}; rerun the same command to resume")


def _write_validation(writer: MetricsWriter, stage: Stage, params, global_step: int) -> None:
    loss = stage.validation_loss(params)
    if loss is not None:
        writer.write(global_step, stage.plan.name, {"val_loss": loss})
