#!/usr/bin/env bash
# Start (or restart) training on every worker, in the background, resuming from the run's checkpoints.
#
#   tpu_scripts/launch.sh [--config configs/orca_13b.py] [--config.a.b=value ...]
#
# Arguments go to `orca-jax train` after the defaults below (a later --config replaces the default
# one). The run directory is <bucket>/runs/$ORCA_RUN, seen by every worker at the gcsfuse mount, so
# rerunning this script, after a crash, a preemption and create.sh + setup.sh, or to change a setting,
# continues from the latest checkpoint there. A run still in progress is first stopped with SIGTERM
# (it saves a checkpoint). JAX finds the other hosts of the pod by itself (jax.distributed).
set -euo pipefail
source "$(dirname "$0")/common.sh"
require ORCA_BUCKET

tpu_ssh all "$(worker_command start --config configs/orca_13b.py \
    "--config.workdir=$ORCA_MOUNT/runs/$ORCA_RUN" "$@")"
echo "follow it with tpu_scripts/logs.sh"
