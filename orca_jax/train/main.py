"""`orca-jax train [--config F] [--config.a.b=v ...]`: the staged training job of a config.

With no --config it runs the packaged configs/demo.py (`--config demo`), which also prepares its own
inputs (demo data, tokenizer, TFDS shards, train/demo.py) and ends with a report of loss and held-out
accuracy per stage. Rerunning the same command resumes from the latest checkpoint. The config becomes
a typed TrainConfig and every cross-field check runs before any work (train/config.py), then a probe
object is written and deleted under the workdir (local or gs://, orca_jax/paths.py).

Exit codes: 0 done; 1 stopped (non-finite loss, bad config or data: the message says which);
143 preempted by SIGTERM after saving a checkpoint; 75 (multi-process runs) another process of the
job died, so this one stopped too (train/supervisor.py).
"""

from __future__ import annotations

import os
import sys

import jax

from orca_jax import parallel, paths
from orca_jax.config import ConfigError, default_config, parse_config_args
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.errors import UserError
from orca_jax.train import demo, loop, supervisor
from orca_jax.train.config import DistributedConfig, TrainConfig


def initialize_distributed(distributed: DistributedConfig) -> None:
    """Join the other processes of a multi-host run; a no-op for a single process.

    Several processes are recognised as supervisor.multi_process_environment says. On a Cloud TPU pod,
    SLURM or Open MPI, JAX finds the coordinator itself; anywhere else JAX_COORDINATOR_ADDRESS (host:port)
    comes with JAX_NUM_PROCESSES and JAX_PROCESS_ID. The timeouts are the config's `distributed` block.
    """
    env = os.environ
    if not supervisor.multi_process_environment(env):
        return
    explicit = {}
    if "JAX_COORDINATOR_ADDRESS" in env:
        if not {"JAX_NUM_PROCESSES", "JAX_PROCESS_ID"} <= env.keys():
            raise ConfigError("JAX_COORDINATOR_ADDRESS is set: set JAX_NUM_PROCESSES and JAX_PROCESS_ID too")
        explicit = dict(num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**explicit, initialization_timeout=distributed.initialization_timeout_seconds,
                               heartbeat_timeout_seconds=distributed.heartbeat_timeout_seconds,
                               shutdown_timeout_seconds=distributed.shutdown_timeout_seconds)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config, rest = parse_config_args(argv, default=default_config("demo"))
        if rest:
            raise ConfigError(f"unexpected arguments {rest}; use --config F and --config.a.b=value")
        run = TrainConfig.from_config(config)  # every cross-field check, before any work
        initialize_distributed(run.distributed)
        loop.enable_compilation_cache(run)  # before anything compiles: a restart loads the compiled steps
        mesh = parallel.mesh_from_config(run.mesh)
        run.check_mesh(mesh, jax.process_count())
        if jax.process_count() > 1:
            print(f"orca-jax train: process {jax.process_index()} of {jax.process_count()}, "
                  f"{jax.local_device_count()} of the mesh's {mesh.devices.size} devices "
                  f"({', '.join(f'{name}={size}' for name, size in mesh.shape.items())})", file=sys.stderr, flush=True)
        # The last check before any work: a missing bucket, no permission or a read-only disk ends the
        # job here in one line, not at its first checkpoint or from inside orbax.
        paths.check_writable(run.workdir, "workdir")
        if run.demo is not None:
            demo.prepare_demo(run)
        run.check_inputs()
        tokenizer = Tokenizer.load(run.data.tokenizer)
        run.check_tokenizer(tokenizer)
        plans = loop.train(run, mesh, tokenizer)
        if run.demo is not None and jax.process_index() == 0:
            demo.write_report(run, plans)
    except jax.errors.JaxRuntimeError as error:
        if jax.process_count() == 1 or not supervisor.peer_gone(error):
            raise
        print(supervisor.lost_process_line(" ".join(str(error).split())), file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Not a return: exiting normally runs jax.distributed's shutdown barrier, which waits for the dead
        # process until the coordination service aborts this one.
        os._exit(supervisor.LOST_PROCESS_EXIT_CODE)
    except loop.TrainingStopped as stopped:
        print(f"orca-jax train: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except UserError as error:
        print(f"orca-jax train: {error}", file=sys.stderr)
        return 1
    return 0
