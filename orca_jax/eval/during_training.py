"""Benchmark accuracy during training, logged beside the validation loss.

A config's `eval` block (EvalConfig) names a suite or some of its tasks and how many examples of each;
the training loop calls `TrainingEvaluator` at a stage's start (unless the stage starts from the
previous stage's final weights, which were just evaluated), every `every_steps` steps and at the
stage's end. Prompts are built once per run; each call greedy-decodes them with the live training
parameters (cast once to the compute dtype, kept in the training layout) and returns the scalars the
metrics writer logs: `bench_accuracy` (the mean over tasks, the paper's headline) and
`bench_accuracy/<task>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jax.sharding import Mesh

from orca_jax import parallel
from orca_jax.config import ConfigError, typed_block
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.eval import benchmarks
from orca_jax.eval.generate import prepare_params
from orca_jax.eval.prompts import PromptBuilder, resolve_system_message
from orca_jax.eval.report import build_report
from orca_jax.eval.runner import evaluate_examples
from orca_jax.model.config import ModelConfig

ACCURACY = "bench_accuracy"
TRAINING_RULES = parallel.LOGICAL_AXIS_RULES


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The `eval` block of a training config."""

    suite: str = ""
    """A suite of orca_jax.eval.benchmarks.SUITES ('demo', 'orca', 'bbh23', ...); '' turns evaluation off."""
    tasks: tuple[str, ...] = ()
    """Only these tasks of the suite; () for all of them."""
    examples_per_task: int = 0
    """The first N examples of each task; 0 for all."""
    every_steps: int = 0
    """Evaluate every N steps of a stage, besides its start and end; 0 for only those."""
    benchmarks_dir: str = ""
    """The folder holding bbh/ and agieval/ (for those suites)."""
    eval_path: str = ""
    """The demo's eval.jsonl (for the demo suite)."""
    max_new_tokens: int = 64
    batch_size: int = 16
    """Prompts decoded together; rounded up to a multiple of the mesh's data x fsdp size."""
    system_message: str | None = None
    """As `orca-jax evaluate --system_message`: text, 'empty' or 1-16; None: the demo's own per
    question, empty for the benchmarks."""
    prompt_style: str = "chat"

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> EvalConfig:
        if block is None:
            return cls()
        values = dict(block.items())
        values["tasks"] = tuple(values.get("tasks", ()))
        config = typed_block(cls, values, ConfigError, "eval config")
        for name in ("examples_per_task", "every_steps"):
            if getattr(config, name) < 0:
                raise ConfigError(f"eval.{name} must be >= 0, got {getattr(config, name)}")
        if config.suite and (config.max_new_tokens < 1 or config.batch_size < 1):
            raise ConfigError("eval.max_new_tokens and eval.batch_size must be positive")
        return config

    @property
    def enabled(self) -> bool:
        return bool(self.suite)


class TrainingEvaluator:
    """Scores parameters on the configured examples; one instance per training run."""

    def __init__(self, config: EvalConfig, model_config: ModelConfig, tokenizer: Tokenizer, template: str,
                 mesh: Mesh):
        self.config, self.model_config, self.tokenizer, self.mesh = config, model_config, tokenizer, mesh
        self.examples = benchmarks.load_suite(
            config.suite, benchmarks_dir=config.benchmarks_dir or None, demo_path=config.eval_path or None,
            tasks=config.tasks or None, limit=config.examples_per_task or None)
        system_message = resolve_system_message(config.system_message)
        if system_message is None and config.suite != "demo":
            system_message = ""
        self.builder = PromptBuilder(tokenizer, template, style=config.prompt_style,
                                     system_message=system_message,
                                     max_tokens=model_config.max_seq_len - config.max_new_tokens)

    def __call__(self, params) -> dict[str, float]:
        # The training layout, not the decode rules: those keep every weight whole on each FSDP shard,
        # which a 13B model being trained has no room for. One compute-dtype copy serves every task.
        params = prepare_params(params, self.model_config, self.mesh, axis_rules=TRAINING_RULES)
        rows = evaluate_examples(params, self.model_config, self.tokenizer, self.builder, self.examples,
                                 max_new_tokens=self.config.max_new_tokens, batch_size=self.config.batch_size,
                                 mesh=self.mesh, axis_rules=TRAINING_RULES)
        report = build_report(rows)
        scalars = {ACCURACY: report["overall"]["task_mean"]}
        scalars.update({f"{ACCURACY}/{task}": summary["accuracy"] for task, summary in report["tasks"].items()})
        return scalars
