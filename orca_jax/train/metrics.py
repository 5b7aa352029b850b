"""Where training numbers go: TensorBoard event files, a JSONL file and a progress bar.

Only process 0 writes; every other process gets a writer that does nothing, so the loop never asks
which process it is on. Throughput and MFU are computed here from wall-clock time, so the loop only
reports how many tokens a step saw and how long it waited for data and checkpoints.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import jax
import tqdm
from tensorboardX import SummaryWriter

from orca_jax import paths
from orca_jax.model import ModelConfig, flops

# Peak dense bf16 FLOP/s per device (keyed by jax's device_kind), from the vendors' data sheets;
# MFU is left out elsewhere (a CPU has no meaningful peak).
PEAK_FLOPS_BY_DEVICE_KIND = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5": 459e12,  # v5p
    "TPU v6 lite": 918e12,  # Trillium
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
}


def peak_flops_per_second() -> float | None:
    """All devices' peak FLOP/s together, or None when the device kind is not in the table."""
    kind = jax.devices()[0].device_kind
    per_device = PEAK_FLOPS_BY_DEVICE_KIND.get(kind)
    return None if per_device is None else per_device * jax.device_count()


class Throughput:
    """Step time, tokens/s, MFU and the share of wall time spent waiting, over the steps since the
    last report. Tokens are real (non-padding) ones, so packing losses show up as lower rates."""

    def __init__(self, model_config: ModelConfig, seq_len: int):
        self._flops_per_token = flops.train_flops_per_token(model_config, seq_len)
        self._peak = peak_flops_per_second()
        self.start_window()

    def start_window(self, now: float | None = None) -> None:
        """Forget everything so far (call after the first step, which includes compilation)."""
        now = time.perf_counter() if now is None else now
        self._start = now
        self._steps = 0
        self._tokens = 0
        self._data_wait = 0.0
        self._checkpoint_wait = 0.0

    def add_step(self, tokens: int) -> None:
        self._steps += 1
        self._tokens += tokens

    def add_data_wait(self, seconds: float) -> None:
        self._data_wait += seconds

    def add_checkpoint_wait(self, seconds: float) -> None:
        self._checkpoint_wait += seconds

    def exclude(self, seconds: float) -> None:
        """Leave out time that was neither training nor waiting for it (validation)."""
        self._start += seconds

    def report(self) -> dict[str, float]:
        """Rates since the previous report (call after the step's results were fetched)."""
        now = time.perf_counter()
        elapsed = max(now - self._start, 1e-9)
        tokens_per_second = self._tokens / elapsed
        rates = {
            "seconds_per_step": elapsed / max(self._steps, 1),
            "tokens_per_second": tokens_per_second,
            "data_wait_fraction": self._data_wait / elapsed,
            "checkpoint_wait_fraction": self._checkpoint_wait / elapsed,
        }
        if self._peak is not None:
            rates["mfu"] = tokens_per_second * self._flops_per_token / self._peak
        self.start_window(now)
        return rates


class MetricsWriter:
    """Appends scalars to `workdir/metrics.jsonl` and TensorBoard events in `workdir/tensorboard`.

    A resumed run appends: steps between the last checkpoint and the interruption appear twice, the
    later record being the one that counts. In a bucket (gs://, no append) metrics.jsonl is rewritten
    whole at each write (paths.AppendedText), so every record written is there when a run is killed;
    tensorboardX writes gs:// itself, uploading its events file at each flush (every 2 minutes and at
    close), and a resumed run adds a new events file.
    """

    def __init__(self, workdir: str | pathlib.Path, total_steps: int, initial_step: int):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        workdir = paths.path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = paths.AppendedText(workdir / "metrics.jsonl")
        self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))
        self._progress = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, stage: str, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        values = {name: float(value) for name, value in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, "stage": stage, **values}) + "\n")
        for name, value in values.items():
            if math.isfinite(value):
                self._tensorboard.add_scalar(f"{stage}/{name}", value, step)
        if "loss" in values:
            self._progress.set_postfix(stage=stage, loss=f"{values['loss']:.4f}", refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self.enabled:
            self._progress.update(steps)

    def close(self) -> None:
        if not self.enabled:
            return
        self._progress.close()
        self._tensorboard.close()
        self._jsonl.close()
