"""`orca-jax train` as a real two-process jax.distributed job on the CPU (4 devices per process, one
8-device mesh over both), through both stages of tests/test_resume.py's small demo config.

What a pod run relies on: the two processes train exactly what one process trains on the same eight
devices and the same global batches; SIGKILL of every process and a restart, or SIGTERM to one process,
stop and resume the job bit-identically; a process that dies makes the other stop within the heartbeat
timeout with one line, not hang in a collective.
"""

import json
import os
import pathlib
import random
import re
import signal
import sys
import time

import jax
import numpy as np
import pytest
from test_resume import STAGE1_STEPS, STAGE2_STEPS, demo_data, final_params, logged_steps, write_config  # noqa: F401

from orca_jax.config import ConfigError, load_config
from orca_jax.train import loop, supervisor
from orca_jax.train.checkpoint import Checkpointer
from orca_jax.train.config import DistributedConfig, TrainConfig
from orca_jax.train.supervisor import LOST_PROCESS_EXIT_CODE

from distributed_job import Job

PROCESSES, DEVICES_PER_PROCESS = 2, 4
HEARTBEAT_TIMEOUT_S = 10  # a process silent this long is dead; short for the test, long enough for a loaded host
RUN_TIMEOUT_S = 300
LAST_STEP = STAGE1_STEPS + STAGE2_STEPS

# tests/test_resume.py's config (its checkpoints every 3 steps, a log record every step) on an 8-device
# mesh whose fsdp axis spans both processes, so parameters, gradients and the batch are split across
# them; two read shares, so one process reads exactly the batches two processes read.
WRAPPER = '''
from orca_jax.config import load_config


def get_config():
    config = load_config({base!r})
    config.data.batch_size = 8
    config.data.read_shares = {processes}
    config.mesh = {{"data": 1, "fsdp": -1, "tensor": 1}}
    config.distributed = {{"heartbeat_timeout_seconds": {heartbeat}, "shutdown_timeout_seconds": 60,
                          "initialization_timeout_seconds": 120}}
    config.compilation_cache_dir = {cache!r}  # one for the module: the runs compile the same programs
    return config
'''


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("multihost_compilation_cache")


def multihost_config(repo_root, demo_data, workdir: pathlib.Path, cache: pathlib.Path) -> pathlib.Path:
    base = write_config(repo_root, demo_data, workdir)  # final_params(workdir) reads it back
    path = workdir.with_name(workdir.name + "-multihost.py")
    path.write_text(WRAPPER.format(base=str(base), processes=PROCESSES, heartbeat=HEARTBEAT_TIMEOUT_S,
                                   cache=str(cache)))
    return path


def start(config: pathlib.Path, log_dir: pathlib.Path, processes: int = PROCESSES,
          devices: int = DEVICES_PER_PROCESS) -> Job:
    """`orca-jax train` as a job of `processes` (1: a plain process without jax.distributed)."""
    command = [sys.executable, "-m", "orca_jax.cli", "train", "--config", str(config)]
    return Job([command] * processes, devices_per_process=devices, log_dir=log_dir, distributed=processes > 1)


def wait_for_step(job: Job, workdir: pathlib.Path, step: int) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while step not in logged_steps(workdir):
        assert all(job.running()), f"the job ended before step {step}\n{job.outputs()}"
        assert time.monotonic() < deadline, f"no step {step} within {RUN_TIMEOUT_S} s\n{job.outputs()}"
        time.sleep(0.05)


def run_to_end(config: pathlib.Path, log_dir: pathlib.Path, **options) -> Job:
    job = start(config, log_dir, **options)
    codes = job.wait(RUN_TIMEOUT_S)
    assert codes == [0] * len(codes), job.outputs()
    return job


def assert_bit_identical(workdir: pathlib.Path, reference: pathlib.Path, context: str) -> None:
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(final_params(workdir)),
                                 jax.tree.leaves(final_params(reference))):
        np.testing.assert_array_equal(got, want, err_msg=f"{context}: {jax.tree_util.keystr(path)}")


@pytest.fixture(scope="module")
def baseline(repo_root, demo_data, compilation_cache, tmp_path_factory) -> tuple[pathlib.Path, Job]:
    """The uninterrupted two-process run (read only)."""
    workdir = tmp_path_factory.mktemp("multihost") / "baseline"
    config = multihost_config(repo_root, demo_data, workdir, compilation_cache)
    job = run_to_end(config, workdir.with_name("baseline-logs"))
    return workdir, job


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains_on_the_same_devices(repo_root, demo_data, compilation_cache,
                                                                         baseline, tmp_path):
    """Both stages on a mesh over both processes; the final parameters are those of one process with
    the same eight devices and the same global batches, within the 8-device test's tolerance
    (tests/test_sharding.py: gloo's cross-process sums may add in another order)."""
    workdir, job = baseline
    for i in range(PROCESSES):
        assert (f"process {i} of {PROCESSES}, {DEVICES_PER_PROCESS} of the mesh's {PROCESSES * DEVICES_PER_PROCESS} "
                "devices (data=1, fsdp=8, tensor=1)") in job.output(i), job.outputs()
    for step in (STAGE1_STEPS, LAST_STEP):  # each stage's final checkpoint holds both processes' shards
        assert (workdir / "checkpoints" / str(step) / "params" / "ocdbt.process_1").is_dir()
    stages = {record["stage"] for record in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
              if "loss" in record}
    assert stages == {"stage1", "stage2"} and max(logged_steps(workdir)) == LAST_STEP

    alone = tmp_path / "one_process"
    run_to_end(multihost_config(repo_root, demo_data, alone, compilation_cache), tmp_path / "logs", processes=1,
               devices=PROCESSES * DEVICES_PER_PROCESS)
    compared = 0
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(final_params(workdir)),
                                 jax.tree.leaves(final_params(alone))):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
        compared += 1
    assert compared > 0


@pytest.mark.slow
def test_killed_then_preempted_job_resumes_bit_identical(repo_root, demo_data, compilation_cache, baseline,
                                                          tmp_path):
    """SIGKILL of every process in stage 1, a restart; then SIGTERM to process 1 alone in stage 2: JAX's
    preemption service makes both save the same step and exit 143; a restart runs to the end, and the
    parameters are bit-identical to the uninterrupted job's."""
    workdir = tmp_path / "interrupted"
    config = multihost_config(repo_root, demo_data, workdir, compilation_cache)
    kill_step = random.randint(4, STAGE1_STEPS - 1)  # past the first checkpoint (step 3)
    job = start(config, tmp_path / "killed-logs")
    wait_for_step(job, workdir, kill_step)
    job.signal(signal.SIGKILL)
    assert job.wait(RUN_TIMEOUT_S) == [-signal.SIGKILL] * PROCESSES
    assert max(logged_steps(workdir)) < STAGE1_STEPS + 1

    job = start(config, tmp_path / "preempted-logs")
    wait_for_step(job, workdir, STAGE1_STEPS + 1)
    job.signal(signal.SIGTERM, which=[1])
    assert job.wait(RUN_TIMEOUT_S) == [loop.PREEMPTED_EXIT_CODE] * PROCESSES, job.outputs()
    saved = [re.findall(r"SIGTERM: saved a checkpoint at stage stage2 step \d+ \(global step (\d+)\)", job.output(i))
             for i in range(PROCESSES)]
    assert all(len(steps) == 1 for steps in saved) and saved[0] == saved[1], job.outputs()
    stopped_at = int(saved[0][0])
    checkpointer = Checkpointer(workdir / "checkpoints", keep=2, keep_steps=[])
    assert checkpointer.latest_step() == stopped_at < LAST_STEP, (checkpointer.all_steps(), stopped_at)
    checkpointer.close()

    run_to_end(config, tmp_path / "resumed-logs")
    assert_bit_identical(workdir, baseline[0], f"killed at step {kill_step}, preempted at step {stopped_at}")


def training_process(supervisor_pid: int) -> int:
    """The pid of the process that `orca-jax train`'s supervisor runs the job in."""
    children = pathlib.Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.slow
@pytest.mark.parametrize("victim, how", [(0, "killed"), (1, "killed"), (1, "stopped")],
                         ids=["coordinator_killed", "worker_killed", "worker_hangs"])
def test_a_lost_process_makes_the_other_stop_in_one_line_within_the_heartbeat_timeout(repo_root, demo_data,
                                                                                       compilation_cache, tmp_path,
                                                                                       victim, how):
    """Process 0 hosts JAX's coordinator: its death is noticed at once. A dead worker's closed connection
    fails the next collective. A hung one (SIGSTOP: its sockets stay open, its collectives never end)
    is noticed when its heartbeats stop (distributed.heartbeat_timeout_seconds)."""
    workdir = tmp_path / "lost"
    job = start(multihost_config(repo_root, demo_data, workdir, compilation_cache), tmp_path / "lost-logs")
    wait_for_step(job, workdir, 2)
    survivor = 1 - victim
    if how == "killed":
        job.signal(signal.SIGKILL, which=[victim])
    else:
        os.kill(training_process(job.processes[victim].pid), signal.SIGSTOP)
    lost = time.monotonic()
    try:
        code = job.processes[survivor].wait(timeout=HEARTBEAT_TIMEOUT_S + 60)
    finally:
        job.signal(signal.SIGKILL, which=[victim])  # its training process dies with it, stopped or not
    waited = time.monotonic() - lost
    output = job.output(survivor)
    assert code == LOST_PROCESS_EXIT_CODE, output[-3000:]
    assert waited < HEARTBEAT_TIMEOUT_S + 30, waited
    last_line = output.strip().splitlines()[-1]
    if how == "stopped":  # nothing but the missing heartbeats can tell
        assert "stopped sending heartbeats" in last_line, last_line
    assert last_line.startswith("orca-jax train: the job lost one of its processes ("), output[-3000:]
    assert last_line.endswith("Restart every process to resume from the latest checkpoint"), last_line
    assert "stack trace" not in output and "Traceback" not in output and output.count("orca-jax train: the job") == 1
    job.wait(RUN_TIMEOUT_S)


# JAX's fatal reports as a survivor's stderr showed them (jax 0.10.2), stack trace shortened.
FATAL_REPORTS = {
    "F1202 16:10:15.387949    4353 client.h:80] Terminating process because the JAX distributed service detected "
    "fatal errors. This most likely indicates that another task died; see the other task logs for more details. "
    "Disable Python buffering, i.e. `python -u`, to be sure to see all the previous output. absl::Status: "
    "UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n1\nThe tasks have crashed. "
    "Check the task logs for an earlier error, or scheduler events (e.g. preemption, eviction) to debug further.\n\n"
    "RPC: /xla.coordination.CoordinationService/PollForError [type.googleapis.com/tensorflow.CoordinationServiceError"
    "='']\n*** Check failure stack trace: ***\n    @     0x7f14b9a40634  absl::log_internal::LogMessage::SendToLog()\n":
    "UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats): 1",
    "F1202 16:12:10.689458    5698 client.h:80] Terminating process because the JAX distributed service detected "
    "fatal errors. This most likely indicates that another task died; see the other task logs for more details. "
    "absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was "
    "preempted/died/restarted unexpectedly or this task is experiencing network issues. Check earlier logs from "
    "1) this task, 2) the leader (usually slice 0 task 0), and 3) cluster scheduler to debug further.\nAdditional "
    "GRPC error information from remote target coordination_service while calling /xla.coordination."
    "CoordinationService/PollForError:\n:UNKNOWN:Error received from peer  {grpc_message:\"Socket closed\"}\n"
    "*** Check failure stack trace: ***\n":
    "UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was "
    "preempted/died/restarted unexpectedly or this task is experiencing network issues.",
}


@pytest.mark.parametrize("separator", ["\n", ""], ids=["after_a_line", "after_a_progress_bar"])
@pytest.mark.parametrize("report", FATAL_REPORTS, ids=["worker_stopped_heartbeats", "coordinator_gone"])
def test_the_fatal_report_is_held_back_and_read_as_one_status(report, separator, capfd):
    """What the supervisor does with a dying training process's stderr, fed in awkward chunks: what
    comes before the report passes (a progress bar too, before its line ends), the report does not."""
    before = "W1202 16:10:14.1 1 x.cc:1] a warning\n  7%|7         | 1/14 [00:13<02:59]\r 14%|#4        | 2/14"
    before += separator
    stream = (before + report).encode()
    read_end, write_end = os.pipe()
    for start in range(0, len(stream), 37):
        os.write(write_end, stream[start:start + 37])
    os.close(write_end)
    kept, line_ended, reported = supervisor._pass_stderr(read_end)
    os.close(read_end)
    assert capfd.readouterr().err == before and line_ended == (separator == "\n") and not reported
    assert kept.decode() == report
    assert supervisor.lost_process_status(kept.decode()) == FATAL_REPORTS[report]


def test_the_distributed_timeouts_are_a_typed_config_block(repo_root):
    config = load_config(str(repo_root / "configs" / "orca_13b.py"))
    assert TrainConfig.from_config(config).distributed == DistributedConfig(heartbeat_timeout_seconds=100)
    config.distributed.heartbeat_timeout_seconds = 0
    with pytest.raises(ConfigError, match="distributed.heartbeat_timeout_seconds must be a positive integer, got 0"):
        TrainConfig.from_config(config)
