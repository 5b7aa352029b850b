#!/usr/bin/env bash
# Delete the TPU slice (and its queued resource, when it came from one). The bucket is kept:
# data, weights, checkpoints and metrics of every run survive.
#
#   tpu_scripts/delete.sh [--dry-run] [--yes]
#
# Stop the run first (stop.sh) unless it is already dead, or the last steps since its checkpoint are lost.
set -euo pipefail
source "$(dirname "$0")/common.sh"

case "${1:-}" in
    --yes) ;;
    "") read -r -p "delete TPU $TPU_NAME in $TPU_ZONE ($TPU_PROJECT)? [y/N] " answer
        [[ "$answer" == [yY] ]] || exit 1 ;;
    *) usage ;;
esac

where=(--project="$TPU_PROJECT" --zone="$TPU_ZONE")
queued_resource_state
if [[ "$QR_STATE" != ABSENT ]]; then
    # --force deletes the node along with the request.
    gcloud_cmd compute tpus queued-resources delete "$TPU_NAME" "${where[@]}" --force --quiet
else
    gcloud_cmd compute tpus tpu-vm delete "$TPU_NAME" "${where[@]}" --quiet
fi
