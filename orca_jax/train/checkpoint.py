"""Training checkpoints: one orbax CheckpointManager, one checkpoint per saved step.

A checkpoint holds four items:
    params     the parameters           (StandardSave; restored onto any mesh via target shardings)
    opt_state  the optimizer state      (StandardSave; a new stage does not read it)
    data       the data iterator state  (JSON from the pipeline's get_state())
    meta       where training stands    (JSON: stage index and name, step in the stage, RNG seed,
                                         the whole config)
Step numbers are global (they keep counting across stages), so "the latest checkpoint" alone says
which stage and step to resume from. Saves are asynchronous: `save` returns once the arrays are
copied off the accelerator and the files are written in the background.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from orca_jax.train.step import TrainState

ITEMS = ("params", "opt_state", "data", "meta")


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training stands, as recorded in a checkpoint's `meta` item."""

    stage_index: int
    stage_name: str
    stage_step: int
    """Optimizer steps already taken in this stage."""
    rng_seed: int
    """The seed that random parameter initialisation of every stage derives from."""


class Checkpointer:
    """Saves and restores training checkpoints under `directory`.

    Keeps the latest `keep` checkpoints plus those at `keep_steps` (each stage's final step, which the
    next stage starts from and which stays for evaluation).
    """

    def __init__(self, directory: str | pathlib.Path, keep: int, keep_steps: Sequence[int]):
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be at least 1, got {keep}")
        self.directory = pathlib.Path(directory).absolute()
        preservation = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(keep),
            checkpoint_managers.CustomSteps(list(keep_steps)),
        ])
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=ITEMS,
            options=ocp.CheckpointManagerOptions(preservation_policy=preservation,
                                                 enable_async_checkpointing=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: TrainState, data_state: dict[str, Any], position: Position,
             config_json: str) -> None:
        meta = {**dataclasses.asdict(position), "config": config_json}
        self._manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)), force=True)

    def position(self, step: int) -> Position:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        return Position(**{field.name: meta[field.name] for field in dataclasses.fields(Position)})

    def restore_params(self, step: int, abstract_params):
        """Parameters only, laid out as `abstract_params` (ShapeDtypeStructs with shardings) says."""
        return self._manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params))).params

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The train state (onto the shardings in `abstract_state`) and the data iterator state."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
            data=ocp.args.JsonRestore()))
        return TrainState(params=restored.params, opt_state=restored.opt_state), restored.data

    def wait(self) -> None:
        """Block until every asynchronous save has been committed to disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

