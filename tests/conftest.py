"""Test-wide environment: 8 fake CPU devices (for sharding tests) and no TensorFlow in transformers.

These must be set before JAX is imported anywhere, which is why they live here.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The real public BBH / AGIEval files live beside the checkout when the workplace provides them.
SHARED_BENCHMARKS = REPO_ROOT.parent / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT
