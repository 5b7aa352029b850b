#!/usr/bin/env bash
# Start (or restart) training on every worker, in the background, resuming from the run's checkpoints.
#
#   tpu_scripts/launch.sh [--dry-run] [--config configs/orca_13b.py] [--config.a.b=value ...]
#
# The job runs in the bucket mount (ORCA_BUCKET at /gcs/orca on every worker), so the config's
# relative paths are bucket paths: orca_13b.py reads weights/llama-13b and data/flan5m_chatgpt, and the
# run directory (workdir) is runs/$ORCA_RUN. --config, if given, must come first and is relative to
# the checkout; the other arguments go to `orca-jax train` as they are. Rerunning this script (after a
# crash, after a preemption and create.sh + setup.sh, or to change a setting) continues from the
# latest checkpoint there; a run still in progress is first stopped with SIGTERM (it saves a
# checkpoint). JAX finds the other hosts of the pod by itself (jax.distributed).
set -euo pipefail
source "$(dirname "$0")/common.sh"
require ORCA_BUCKET

config=configs/orca_13b.py
if [[ "${1:-}" == --config ]]; then
    [[ $# -ge 2 ]] || usage
    config="$2"
    shift 2
fi
[[ -f "$(dirname "$0")/../$config" ]] || die "no config $config in this checkout"

tpu_ssh all "$(worker_command start "$config" "--config.workdir=runs/$ORCA_RUN" "$@")"
echo "follow it with tpu_scripts/logs.sh"
