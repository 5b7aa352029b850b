"""tpu_scripts/ against a fake gcloud (tests/fake_gcloud): the commands they issue, in order, and how
watch.sh recovers from a preempted slice, a killed job, a trainer that stopped on purpose, and gives up
when its retry budget is spent. --dry-run prints every command and runs none. shellcheck when installed."""

import json
import os
import pathlib
import shutil
import subprocess

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "tpu_scripts"
FAKE_GCLOUD = pathlib.Path(__file__).resolve().parent / "fake_gcloud"


@pytest.fixture
def fake(tmp_path):
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "gcloud").symlink_to(FAKE_GCLOUD)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_GCLOUD_STATE": str(state),
           "TPU_ZONE": "us-east5-a", "TPU_PROJECT": "proj", "TPU_NAME": "orca-test", "TPU_TYPE": "v5p-128",
           "ORCA_BUCKET": "gs://bkt/orca", "WATCH_POLL_S": "0"}
    for name in ("TPU_SPOT", "TPU_CAPACITY", "ORCA_DRY_RUN", "ORCA_TPU_ENV", "WATCH_RETRIES"):
        env.pop(name, None)
    return env, state


def run(script: str, env: dict, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / script), *args], env={**env, **extra_env}, capture_output=True,
                          text=True, timeout=120)


def calls(state: pathlib.Path) -> list[list[str]]:
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def label(args: list[str] | str) -> str:
    """A call in a word or two: 'describe', 'create', 'delete', 'scp', 'ssh start', 'ssh status', ...
    `args` as gcloud got them, or a line --dry-run printed (bash-quoted)."""
    if isinstance(args, str):
        line = args.replace("\\ ", " ")
        args = line.split()[1:]
        command = line
    else:
        command = next((arg for arg in args if arg.startswith("--command=")), "")
    if args[:3] == ["compute", "tpus", "queued-resources"]:
        return args[3]
    if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
        for verb in ("install", "start", "status", "stop"):
            if f"worker.sh {verb}" in command:
                return f"ssh {verb}"
        return "ssh unpack" if "tar -xzf" in command else "ssh"
    return args[3] if args[:3] == ["compute", "tpus", "tpu-vm"] else " ".join(args)


SETUP_AND_LAUNCH = ["scp", "ssh unpack", "ssh install", "ssh start"]
CREATED = ["create", "describe", "describe"]  # WAITING_FOR_RESOURCES once, then ACTIVE


def test_watch_recovers_from_a_preemption_and_a_killed_job_until_the_run_finishes(fake):
    env, state = fake
    result = run("watch.sh", env, "--config.checkpoint.every_steps=100", TPU_CAPACITY="spot",
                 FAKE_GCLOUD_SCENARIO="preempt,exit:143,exit:0")
    assert result.returncode == 0, result.stdout + result.stderr
    got = [label(args) for args in calls(state)]
    assert got == (["describe", *CREATED, *SETUP_AND_LAUNCH,
                    "describe", "ssh status",  # running
                    "describe", "ssh status",  # preempted: ssh fails, the queued resource turns SUSPENDED
                    "describe",  # SUSPENDED: delete.sh (which looks first), create.sh
                    "describe", "delete", *CREATED, *SETUP_AND_LAUNCH,
                    "describe", "ssh status", "describe", "ssh status",  # running, then exited 143
                    "ssh start",  # relaunched on the same slice
                    "describe", "ssh status", "describe", "ssh status"]), got  # running, then exited 0
    creates = [args for args in calls(state) if args[:4] == ["compute", "tpus", "queued-resources", "create"]]
    for args in creates:
        assert "--spot" in args and "--node-id=orca-test" in args and "--accelerator-type=v5p-128" in args, args
    starts = [args for args in calls(state) if label(args) == "ssh start"]
    assert all("--config.checkpoint.every_steps=100" in args[-1] and "--config.workdir=runs/orca-test" in args[-1]
               and "--worker=all" in args for args in starts)
    deletes = [args for args in calls(state) if label(args) == "delete"]
    assert deletes and all("--force" in args for args in deletes)
    assert "the run finished" in result.stdout


def test_watch_stops_when_the_trainer_stopped_on_purpose(fake):
    env, state = fake
    result = run("watch.sh", env, FAKE_GCLOUD_SCENARIO="exit:1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert [label(args) for args in calls(state)].count("ssh start") == 1, "relaunched a run that stopped on purpose"
    assert "Not relaunching" in result.stdout


def test_watch_relaunches_a_job_that_died_of_an_exception(fake):
    env, state = fake
    result = run("watch.sh", env, FAKE_GCLOUD_SCENARIO="crash,exit:0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [label(args) for args in calls(state)].count("ssh start") == 2
    assert "exited 1 traceback" in result.stdout


def test_watch_gives_up_when_the_retry_budget_is_spent(fake):
    env, state = fake
    result = run("watch.sh", env, FAKE_GCLOUD_SCENARIO="exit:137", WATCH_RETRIES="2")
    assert result.returncode == 3, result.stdout + result.stderr
    assert [label(args) for args in calls(state)].count("ssh start") == 3  # the launch and two recoveries
    assert "retry budget" in result.stdout


def test_dry_run_prints_every_gcloud_command_and_runs_none(fake):
    env, state = fake
    result = run("watch.sh", env, "--dry-run", "--config", "configs/orca_13b.py", TPU_CAPACITY="reserved")
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls(state) == [], "--dry-run ran gcloud"
    printed = [line for line in result.stdout.splitlines() if line.startswith("gcloud ")]
    assert [label(line) for line in printed] == ["describe", "create", *SETUP_AND_LAUNCH[:3],
                                                              "ssh start", "ssh status"], printed
    create = printed[1]
    assert "queued-resources create orca-test" in create and "--reserved" in create and "--spot" not in create
    assert "--runtime-version=v2-alpha-tpuv5" in create and "--zone=us-east5-a" in create


@pytest.mark.parametrize("script, args", [("create.sh", ["--queued"]), ("create.sh", []), ("delete.sh", ["--yes"]),
                                          ("stop.sh", []), ("logs.sh", ["all"]), ("launch.sh", [])])
def test_every_script_dry_runs(fake, script, args):
    env, state = fake
    result = run(script, env, "--dry-run", *args, TPU_SPOT="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls(state) == []
    printed = [line for line in result.stdout.splitlines() if line.startswith("gcloud compute tpus ")]
    assert printed, result.stdout
    if script == "create.sh":
        assert "--spot" in printed[0] and ("queued-resources" in printed[0]) == bool(args)


def test_an_unknown_capacity_is_refused(fake):
    env, state = fake
    result = run("create.sh", env, "--queued", TPU_CAPACITY="cheap")
    assert result.returncode == 1 and "TPU_CAPACITY=cheap" in result.stderr
    assert calls(state) == []


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean():
    scripts = sorted(str(path) for path in SCRIPTS.glob("*.sh"))
    result = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True, cwd=SCRIPTS)
    assert result.returncode == 0, result.stdout + result.stderr
