#!/usr/bin/env bash
# Copy this checkout's committed code to every worker and install it (orca-jax, jax[tpu], gcsfuse).
#
#   tpu_scripts/setup.sh [--dry-run]
#
# Ships `git archive HEAD` (commit first: uncommitted edits stay behind) and records the commit in
# COMMIT on each worker. Rerun after every code change and on every freshly created slice; a running
# training job is not touched until the next launch.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"
[[ $# -eq 0 ]] || usage
require ORCA_BUCKET

repo="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
commit="$(git -C "$repo" rev-parse HEAD)"
archive="$(mktemp -d)/orca-jax.tar.gz"
trap 'rm -rf "$(dirname "$archive")"' EXIT
git -C "$repo" archive --format=tar.gz --output="$archive" HEAD

gcloud_cmd compute tpus tpu-vm scp "$archive" "$TPU_NAME:orca-jax.tar.gz" \
    --project="$TPU_PROJECT" --zone="$TPU_ZONE" --worker=all
# Unpack into a fresh directory and swap it in, so no file of an older commit survives.
tpu_ssh all "set -e; rm -rf $ORCA_REMOTE_DIR.new; mkdir $ORCA_REMOTE_DIR.new
    tar -xzf orca-jax.tar.gz -C $ORCA_REMOTE_DIR.new && echo $commit > $ORCA_REMOTE_DIR.new/COMMIT
    rm -rf $ORCA_REMOTE_DIR && mv $ORCA_REMOTE_DIR.new $ORCA_REMOTE_DIR && rm orca-jax.tar.gz"
tpu_ssh all "$(worker_command install)"
echo "workers of $TPU_NAME are on commit $commit"
