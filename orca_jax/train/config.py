"""The whole training run as typed, frozen configs, built once from a config file and checked at the door.

Config files stay plain Python returning a ConfigDict (big_vision's habit, `--config.a.b=v` overrides);
`TrainConfig.from_config` turns it into these dataclasses, each field documented where it is defined,
and checks every fact that spans two blocks (`TrainConfig.check_*`), with messages naming both fields.
Nothing downstream receives a ConfigDict. Model-only configs (configs/tiny.py, llama_13b.py) read the
same way: they simply have no stages.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from jax.sharding import Mesh

from orca_jax import paths
from orca_jax.config import ConfigError, typed_block
from orca_jax.data.config import DataConfig
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.eval.during_training import EvalConfig
from orca_jax.model.config import ModelConfig
from orca_jax.parallel import MeshConfig, MeshShapeError
from orca_jax.train.optimizer import OptimizerConfig

INIT_RANDOM = "random"
INIT_PREVIOUS = "previous"


class StageConfigError(ConfigError):
    """A stage description that cannot be trained; the message names the stage and field."""


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage of `stages`, in `stage_order`."""

    name: str
    dataset_dir: str
    """A dataset built by `orca-jax prepare-data` (train and validation splits)."""
    init: str = INIT_RANDOM
    """'random', 'previous' (the previous stage's final weights) or a params directory (convert-weights)."""
    epochs: int = 0
    """Passes over the data; 0 when num_steps is given."""
    num_steps: int = 0
    """Optimizer steps (the data repeats as needed); 0 when epochs is given."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """A fresh optimizer and schedule per stage (optimizer.py)."""

    def __post_init__(self):
        if self.num_steps < 0 or self.epochs < 0 or (self.num_steps == 0) == (self.epochs == 0):
            raise StageConfigError(f"stages.{self.name}: give exactly one of num_steps or epochs as a positive "
                                   f"number (num_steps={self.num_steps}, epochs={self.epochs})")

    @classmethod
    def from_config(cls, name: str, block: Mapping[str, Any]) -> StageConfig:
        values = {**dict(block.items()), "name": name}
        values["optimizer"] = OptimizerConfig.from_config(values.get("optimizer", {}))
        return typed_block(cls, values, StageConfigError, f"stages.{name}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """The `checkpoint` block."""

    every_steps: int = 1000
    """Save period in optimizer steps; every stage's last step is saved too."""
    keep: int = 2
    """Latest checkpoints kept, besides every stage's final one."""


@dataclasses.dataclass(frozen=True)
class DebugConfig:
    """The `debug` block: switches for tests."""

    nan_at_step: int = -1
    """A global step whose batch is poisoned with NaN (tests the guard); -1 is off."""
    sync_every_step: bool = False
    """Fetch every step's metrics before queueing the next, as the loop did before issue 10, so the
    device idles while the host works (benchmarks/train_step.py --sync every_step measures the cost)."""


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """The `distributed` block: how the processes of a multi-host run join and watch each other
    (passed to jax.distributed.initialize; a single process ignores it)."""

    heartbeat_timeout_seconds: int = 100
    """A process that sends no heartbeat for this long counts as dead, and every other process then
    stops (exit 75) instead of waiting forever in a collective for it. JAX's default, long enough for a
    loaded host or a network hiccup; the death of process 0, which hosts the coordinator, is noticed
    at once."""
    shutdown_timeout_seconds: int = 300
    """How long a finishing process waits for the others to finish."""
    initialization_timeout_seconds: int = 300
    """How long the processes wait for each other to start (a pod's hosts boot at different times)."""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"distributed.{field.name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The `demo` block: what `orca-jax train` prepares before training when it is missing (train/demo.py)."""

    data_dir: str
    """Where the synthetic two-teacher data, tokenizer and shards go."""
    data_seed: int = 0
    stage1_rows: int = 4000
    stage2_rows: int = 2000
    eval_rows: int = 200
    tokenizer_pieces: int = 1000
    validation_fraction: float = 0.05


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run: the top level of a config file."""

    model: ModelConfig
    workdir: str = ""
    """checkpoints/, metrics.jsonl, tensorboard/, stage_lengths.json; a local path or gs://bucket/...
    (every path of a config may be either: orca_jax/paths.py)."""
    seed: int = 0
    """Random init of stage k uses fold_in(key(seed), k); the data order of stage k uses seed + k."""
    mesh: MeshConfig = MeshConfig()
    data: DataConfig = DataConfig()
    stages: tuple[StageConfig, ...] = ()
    """The stages in training order (the config's `stage_order` over its `stages` block)."""
    checkpoint: CheckpointConfig = CheckpointConfig()
    log_every_steps: int = 10
    """Metrics period in steps."""
    eval_every_steps: int = 0
    """Validation-loss period in steps; 0 for only the start and end of each stage."""
    eval: EvalConfig = EvalConfig()
    """Benchmark accuracy during training (eval/during_training.py); off unless it names a suite."""
    debug: DebugConfig = DebugConfig()
    distributed: DistributedConfig = DistributedConfig()
    demo: DemoConfig | None = None
    compilation_cache: bool = True
    """JAX's persistent compilation cache (train/loop.py enable_compilation_cache): a restarted run loads
    its compiled programs instead of compiling them again. False: compile every time."""
    compilation_cache_dir: str = ""
    """Where that cache lives; empty for <workdir>/compilation_cache. Runs of the same code and shapes may
    share one (entries are keyed by program, compiler options and jax version)."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], check_training: bool = True) -> TrainConfig:
        """Type every block and check what the blocks must agree on; unknown fields are errors.

        `check_training=False` types the blocks without the training checks (evaluation and generation
        read the tokenizer, template, mesh and eval blocks of a training config, not its batches)."""
        values = dict(config.items())
        if "model" not in values:
            raise ConfigError("the config has no model block")
        values["model"] = ModelConfig.from_config(values["model"])
        values["mesh"] = MeshConfig.from_config(values.get("mesh"))
        values["data"] = DataConfig.from_config(values.get("data"))
        values["eval"] = EvalConfig.from_config(values.get("eval"))
        for name, block_type in (("checkpoint", CheckpointConfig), ("debug", DebugConfig), ("demo", DemoConfig),
                                 ("distributed", DistributedConfig)):
            if values.get(name) is not None:
                values[name] = typed_block(block_type, values[name], ConfigError, f"{name} config")
        values["stages"] = _stages(values.pop("stages", None), values.pop("stage_order", None))
        run = typed_block(cls, values, ConfigError, "config")
        if check_training:
            run.check_blocks()
        return run

    def to_json(self) -> str:
        """The whole run as JSON (saved in every checkpoint; its `model` block describes the params)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def check_blocks(self) -> None:
        """Facts that span blocks and need nothing but the config."""
        for name, value, least in (("checkpoint.every_steps", self.checkpoint.every_steps, 1),
                                   ("checkpoint.keep", self.checkpoint.keep, 1),
                                   ("log_every_steps", self.log_every_steps, 1),
                                   ("eval_every_steps", self.eval_every_steps, 0)):
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}: "
                              "rows longer than the model's window cannot be trained on")
        if self.eval.enabled and self.eval.max_new_tokens >= self.model.max_seq_len:
            raise ConfigError(f"eval.max_new_tokens={self.eval.max_new_tokens} leaves no room for a prompt in "
                              f"model.max_seq_len={self.model.max_seq_len}")
        for index, stage in enumerate(self.stages):
            if stage.init == INIT_PREVIOUS and index == 0:
                raise StageConfigError(f"stages.{stage.name}.init='previous' but {stage.name} is the first stage")
            accumulation = stage.optimizer.grad_accum_steps
            if self.data.batch_size % accumulation:
                raise StageConfigError(f"stages.{stage.name}.optimizer.grad_accum_steps={accumulation} does not "
                                       f"divide data.batch_size={self.data.batch_size}")

    def check_mesh(self, mesh: Mesh, process_count: int) -> None:
        """The batch must split over the mesh's rows (data x fsdp), also per microbatch, and over processes."""
        row_groups = math.prod(mesh.shape[axis] for axis in ("data", "fsdp"))
        for stage in self.stages or (None,):
            accumulation = stage.optimizer.grad_accum_steps if stage else 1
            rows = self.data.batch_size // accumulation
            if rows % row_groups:
                where = f" / stages.{stage.name}.optimizer.grad_accum_steps={accumulation}" if accumulation > 1 else ""
                raise MeshShapeError(f"data.batch_size={self.data.batch_size}{where} gives {rows} rows per "
                                     f"microbatch, not divisible by the mesh's data x fsdp = {row_groups} devices "
                                     f"(mesh {dict(mesh.shape)})")
        if self.data.batch_size % process_count:
            raise MeshShapeError(f"data.batch_size={self.data.batch_size} does not split over "
                                 f"{process_count} processes")
        shares = self.data.read_shares
        if shares and (shares % process_count or self.data.batch_size % shares):
            raise MeshShapeError(f"data.read_shares={shares} must be a multiple of the {process_count} processes "
                                 f"and divide data.batch_size={self.data.batch_size}")

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        tokenizer.check_fits(self.model.vocab_size)

    def check_inputs(self) -> None:
        """The files the stages and the evaluation read exist (checked after the demo prepared its own)."""
        if self.eval.enabled:
            field = "eval_path" if self.eval.suite == "demo" else "benchmarks_dir"
            path = getattr(self.eval, field)
            if not path or not paths.path(path).exists():
                raise ConfigError(f"eval.{field}={path!r} does not exist (eval.suite={self.eval.suite!r})")
        for stage in self.stages:
            if stage.init not in (INIT_RANDOM, INIT_PREVIOUS) and not paths.path(stage.init).is_dir():
                raise StageConfigError(f"stages.{stage.name}.init={stage.init!r} is neither 'random', 'previous' "
                                       "nor an existing params directory")
            if not (paths.path(stage.dataset_dir) / "dataset_info.json").is_file():
                raise StageConfigError(f"stages.{stage.name}.dataset_dir={stage.dataset_dir!r} is not a built dataset")


def _stages(stages: Mapping[str, Any] | None, order) -> tuple[StageConfig, ...]:
    if stages is None and order is None:
        return ()
    names = list(order or ())
    if stages is None or sorted(names) != sorted(stages.keys()):
        raise StageConfigError(f"stage_order {names} must list each of stages {sorted(stages or {})} once")
    return tuple(StageConfig.from_config(name, stages[name]) for name in names)
