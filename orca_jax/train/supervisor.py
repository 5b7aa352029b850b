"""`orca-jax train`'s entry point: in a multi-process run, a small parent watches the training process so
that a job which lost one of its processes ends in one line on every other one, not in a hang or a crash dump.

When a process of a jax.distributed job dies, JAX's coordination service ends the others: within
`distributed.heartbeat_timeout_seconds` when the dead one stops sending heartbeats, at once when it
was process 0, which hosts the service. It does so from C++, by a fatal log line ("Terminating process
because the JAX distributed service detected fatal errors"), a native stack trace and SIGABRT; no
Python code runs, so the training process itself cannot say anything clearer. This parent process
(standard library only, it never imports JAX) runs the job as its child, passes its stderr through,
holds back that fatal report, and prints instead

    orca-jax train: the job lost one of its processes (<JAX's status, one line>); this process stopped
    too. Restart every process to resume from the latest checkpoint

exiting with LOST_PROCESS_EXIT_CODE. When the loss reaches Python first instead (a collective fails:
gloo on the CPU notices the closed connection), the training process prints the same line itself
(train/main.py). Every other exit passes through unchanged (a signal N as 128 + N).
SIGTERM is passed on to the child (it saves a checkpoint and exits 143); the child dies with the
parent (Linux's parent-death signal), so SIGKILL of the parent ends both. A single process runs the
job directly, without a parent: it has no peers to lose.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

WORKER_ENV = "ORCA_JAX_TRAIN_WORKER"
"""Set in the child's environment: it trains instead of supervising."""
LOST_PROCESS_EXIT_CODE = 75  # EX_TEMPFAIL: nothing is wrong with the run; restarting all processes resumes it
# absl's prefix (severity F, date, time, thread, file:line) and the message JAX aborts with.
_FATAL_LINE = re.compile(rb"F\d{4} [^\n\r\]]{0,80}\] Terminating process because the JAX distributed service "
                         rb"detected fatal errors")
_STATUS_END = re.compile(r"\s(?:The tasks have crashed|Check earlier logs|This indicates|Additional GRPC|RPC: /|"
                         r"\[type\.googleapis\.com)|\*\*\* Check failure")
# What a collective or the coordination service raises into Python when a peer is gone (gloo on CPU
# notices the closed connection before the heartbeat timeout does).
_PEER_GONE = re.compile(r"Connection (?:reset|closed) by peer|Socket closed|Gloo \w+ failed|UNAVAILABLE|heartbeat")


def multi_process_environment(env=os.environ) -> bool:
    """Whether this process is one of several of a job, as initialize_distributed (train/main.py) sees it:
    an explicit JAX_COORDINATOR_ADDRESS, a Cloud TPU pod slice (TPU_WORKER_HOSTNAMES lists more than one
    VM; a one-host TPU VM lists one), SLURM (SLURM_NTASKS > 1) or Open MPI (OMPI_COMM_WORLD_SIZE > 1)."""
    return ("JAX_COORDINATOR_ADDRESS" in env or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
            or int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def lost_process_status(report: str) -> str:
    """JAX's status from its fatal report (the text from the marker line on), in one line."""
    _, _, status = report.partition("absl::Status:")
    status = _STATUS_END.split(status, maxsplit=1)[0]
    return " ".join(status.split()) or "no status given"


_LOST_LINE_START = b"orca-jax train: the job lost one of its processes ("


def lost_process_line(status: str) -> str:
    return (f"{_LOST_LINE_START.decode()}{status}); this process stopped too. "
            "Restart every process to resume from the latest checkpoint")


def peer_gone(error: BaseException) -> bool:
    """Whether an error raised into Python (a JaxRuntimeError) says another process is gone."""
    return bool(_PEER_GONE.search(str(error)))


def _die_with_parent(parent: int) -> None:
    """In the child before it execs: the kernel sends it SIGKILL when the parent dies."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _pass_stderr(source: int) -> tuple[bytes | None, bool, bool]:
    """Copy the child's stderr to ours as it comes, until it closes; from JAX's fatal line on, keep it
    instead. Returns what was kept (None if the marker never came), whether what was passed
    on ends a line (a progress bar does not) and whether the child printed the lost-process line itself."""
    pending, kept, passed, reported = b"", None, b"\n", False
    while chunk := os.read(source, 1 << 16):
        if kept is not None:
            kept += chunk
            continue
        pending += chunk
        fatal = _FATAL_LINE.search(pending)
        if fatal:
            cut = fatal.start()
            kept = pending[cut:]
        else:
            # Hold back only what may be the start of the fatal line, from the last F of the unfinished
            # line on; the rest (a progress bar ends no line) passes at once.
            line_start = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
            cut = pending.rfind(b"F", line_start)
            if cut < 0:
                cut = len(pending)
        if cut:
            os.write(2, pending[:cut])
            passed = pending[:cut]
            reported = reported or _LOST_LINE_START in passed
        pending = b"" if kept is not None else pending[cut:]
    if pending:
        os.write(2, pending)
        passed = pending
    return kept, passed.endswith(b"\n"), reported


def supervise(argv: list[str]) -> int:
    command = [sys.executable, "-m", "orca_jax.cli", "train", *argv]
    parent = os.getpid()
    child = subprocess.Popen(command, env={**os.environ, WORKER_ENV: "1"}, stderr=subprocess.PIPE,
                             preexec_fn=lambda: _die_with_parent(parent))
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    # Ctrl-C reaches the child from the terminal itself; the parent waits for it to finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    kept, line_ended, reported = _pass_stderr(child.stderr.fileno())
    code = child.wait()
    if reported:  # the fatal report may still follow the child's own line: it is the same news
        return LOST_PROCESS_EXIT_CODE
    if kept is not None:
        status = lost_process_status(kept.decode(errors="replace"))
        print(("" if line_ended else "\n") + lost_process_line(status), file=sys.stderr, flush=True)
        return LOST_PROCESS_EXIT_CODE
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if multi_process_environment() and WORKER_ENV not in os.environ:
        return supervise(argv)
    from orca_jax.train import main as train_main

    return train_main.main(argv)
