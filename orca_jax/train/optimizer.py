"""The optimizer of one training stage: AdamW behind global-norm clipping, warmup then decay.

Each stage builds its own optimizer (and so its own schedule and a fresh state): the paper's second
stage continues from the first stage's weights, not from its Adam moments or its decayed learning rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from orca_jax.config import typed_block
from orca_jax.errors import UserError

DECAYS = ("cosine", "linear", "constant")


class OptimizerConfigError(UserError):
    """An optimizer setting that cannot be used; the message names the field."""


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """One stage's optimizer settings (the `optimizer` block of a stage in the config)."""

    learning_rate: float = 2e-5
    """Peak learning rate, reached at the end of warmup."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from 0 to `learning_rate`."""
    decay: str = "cosine"
    """Shape of the decay after warmup: 'cosine', 'linear' or 'constant'."""
    end_learning_rate_fraction: float = 0.0
    """Learning rate at the last step, as a fraction of the peak."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay; never applied to RMSNorm scales."""
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0
    """Global-norm gradient clipping threshold; 0 disables clipping."""
    grad_accum_steps: int = 1
    """Microbatches per optimizer step: the global batch is split into this many and their
    gradients summed inside the one jitted step (see step.py)."""

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise OptimizerConfigError(f"optimizer.decay={self.decay!r}: choose one of {DECAYS}")
        if not self.learning_rate > 0:
            raise OptimizerConfigError(f"optimizer.learning_rate must be positive, got {self.learning_rate}")
        for name in ("warmup_steps", "weight_decay", "clip_norm", "end_learning_rate_fraction"):
            if getattr(self, name) < 0:
                raise OptimizerConfigError(f"optimizer.{name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.grad_accum_steps, int) or self.grad_accum_steps < 1:
            raise OptimizerConfigError(
                f"optimizer.grad_accum_steps must be a positive integer, got {self.grad_accum_steps!r}")

    @classmethod
    def from_config(cls, block: Mapping[str, Any]) -> OptimizerConfig:
        return typed_block(cls, block, OptimizerConfigError, "optimizer")


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> Callable[[int], Any]:
    """Linear warmup to the peak, then the configured decay to the end value at `total_steps`."""
    if config.warmup_steps >= total_steps:
        raise OptimizerConfigError(
            f"optimizer.warmup_steps={config.warmup_steps} leaves no steps to train in a stage of "
            f"{total_steps} steps")
    peak = config.learning_rate
    end = peak * config.end_learning_rate_fraction
    decay_steps = total_steps - config.warmup_steps
    if config.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.end_learning_rate_fraction)
    elif config.decay == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def weight_decay_mask(params) -> Any:
    """True for every parameter that takes weight decay: all but the RMSNorm `scale`s.

    Decided by name, not rank: the scanned layer stack gives norm scales a leading layers axis,
    so they are 2-D like the matrices.
    """
    def decays(path, _):
        return getattr(path[-1], "key", None) != "scale"
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW with the stage's schedule and the decay mask."""
    adamw = optax.adamw(learning_rate_schedule(config, total_steps), b1=config.b1, b2=config.b2,
                        eps=config.eps, weight_decay=config.weight_decay, mask=weight_decay_mask)
    if config.clip_norm == 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
