#!/usr/bin/env bash
# Stop the run on every worker: SIGTERM, so it saves a checkpoint before exiting (exit code 143).
#
#   tpu_scripts/stop.sh [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"
[[ $# -eq 0 ]] || usage

tpu_ssh all "$(worker_command stop)"
