"""Real multi-process JAX jobs for tests: N processes on this machine, each with its own CPU devices,
joined by jax.distributed through a coordinator on a free loopback port.

Each process gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (what `orca-jax train`
reads, train/main.py), XLA_FLAGS for its device count and tests/ on PYTHONPATH (so `python -c "from
test_x import *; ..."` works). Output goes to one log file per process, not pipes: a process blocked on
a full pipe would stall the collectives of all the others.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

TESTS_DIR = pathlib.Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


COORDINATION_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class Job:
    """`commands[i]` run as process i of one jax.distributed job with `devices_per_process` CPU devices
    (`distributed=False`: one plain process, no coordinator, for comparisons)."""

    def __init__(self, commands: Sequence[Sequence[str]], devices_per_process: int, log_dir: pathlib.Path,
                 distributed: bool = True):
        if not distributed and len(commands) != 1:
            raise ValueError("only a single process runs without a coordinator")
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_paths = [log_dir / f"process{i}.log" for i in range(len(commands))]
        base = {name: value for name, value in os.environ.items() if name not in COORDINATION_ENV}
        base.update({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
                     "JAX_PLATFORMS": "cpu",
                     "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])})
        if distributed:
            base.update(JAX_COORDINATOR_ADDRESS=f"localhost:{free_port()}", JAX_NUM_PROCESSES=str(len(commands)))
        self.processes = []
        for i, command in enumerate(commands):
            env = {**base, "JAX_PROCESS_ID": str(i)} if distributed else base
            with self.log_paths[i].open("wb") as log:
                self.processes.append(subprocess.Popen(list(command), env=env, stdout=log, stderr=subprocess.STDOUT))

    def output(self, i: int) -> str:
        return self.log_paths[i].read_text(errors="replace")

    def running(self) -> list[bool]:
        return [process.poll() is None for process in self.processes]

    def signal(self, sig: int, which: Sequence[int] | None = None) -> None:
        for i in range(len(self.processes)) if which is None else which:
            if self.processes[i].poll() is None:
                self.processes[i].send_signal(sig)

    def wait(self, timeout_s: float) -> list[int]:
        """Every process's exit code; past the deadline all are killed and the codes say so (-9)."""
        deadline = time.monotonic() + timeout_s
        codes = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                codes.append(process.wait())
        return codes

    def outputs(self, tail: int = 4000) -> str:
        """The end of every process's log, for assertion messages."""
        return "\n".join(f"--- process {i} ---\n{self.output(i)[-tail:]}" for i in range(len(self.processes)))
