"""A non-editable install carries the configs: the packaged demo config loads and drives `orca-jax train`
from outside the source tree."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_a_non_editable_install_finds_the_demo_config(repo_root, tmp_path):
    venv = tmp_path / "venv"
    # The dependencies are already installed here: the new environment sees them, and only orca-jax
    # itself is built (in pip's isolated build environment) and installed as a wheel, with no link back
    # to the source tree.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(repo_root)],
                   check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    found = subprocess.run(
        [str(python), "-c", "import orca_jax.config as c; print(c.__file__); print(c.default_config('demo')); "
         "print(c.load_config('demo').workdir)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    module_file, demo_config, workdir = found.stdout.split()
    assert module_file.startswith(str(venv)) and demo_config.startswith(str(venv)), found.stdout
    assert workdir == "./runs/demo"
    # The default job reads that config: a bad override is reported against it before any work.
    train = subprocess.run([str(venv / "bin" / "orca-jax"), "train", "--config.data.seq_len=512"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 1, train.stderr
    assert "data.seq_len=512 exceeds model.max_seq_len=256" in train.stderr
    assert not any(elsewhere.iterdir())
