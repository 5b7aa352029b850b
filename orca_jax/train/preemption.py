"""SIGTERM (how a TPU VM announces preemption) as one decision that every process takes at the same step.

Two mechanisms, chosen by whether jax.distributed is running:

- With jax.distributed (every multi-process run), JAX's preemption service owns SIGTERM: its handler,
  installed by `jax.distributed.initialize`, tells the coordination service, which picks a step every
  process can still reach (one past the furthest any has called), and
  `multihost_utils.reached_preemption_sync_point(step)` answers True at that step on every process.
  Asking costs no communication, so the loop asks every step without the host waiting on anything.
  A Python SIGTERM handler must not be installed here: it would replace JAX's.
- Without it (a single process), `reached_preemption_sync_point` always answers False, so a Python
  handler sets a flag the loop reads every step; there is nobody to agree with.

If JAX's preemption service was turned off (`jax_enable_preemption_service`) in a multi-process run,
the processes agree on the Python flag with an all-gather every `agree_every` steps instead.
"""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


def _jax_service_running() -> bool:
    return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class PreemptionWatch:
    """`reached(step)`: True at the step where every process stops to save, once any got SIGTERM.

    Every process must call `reached` with every step number, in increasing order, from the same first step.
    """

    def __init__(self, agree_every: int = 1):
        self._agree_every = agree_every
        self._requested = False
        self._previous = None
        self.uses_jax_service = False

    def __enter__(self) -> PreemptionWatch:
        self.uses_jax_service = _jax_service_running()
        if not self.uses_jax_service:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if not self.uses_jax_service:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum, frame) -> None:
        self._requested = True

    def reached(self, step: int) -> bool:
        if self.uses_jax_service:
            return multihost_utils.reached_preemption_sync_point(step)
        if jax.process_count() == 1:
            return self._requested
        if step % self._agree_every:
            return False
        return bool(multihost_utils.process_allgather(np.int32(self._requested)).any())
