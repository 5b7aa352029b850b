#!/usr/bin/env bash
# Create the TPU VM slice named by common.sh's settings.
#
#   tpu_scripts/create.sh [--queued]
#
# --queued asks for it through a queued resource: the request waits until capacity is free instead of
# failing, which is how large slices and spot capacity are usually obtained. Without it the VM is
# created directly (fails at once when the zone has no capacity). TPU_SPOT=1 asks for spot capacity
# in either case. Follow a queued request with: gcloud compute tpus queued-resources list --zone=...
set -euo pipefail
source "$(dirname "$0")/common.sh"

queued=0
case "${1:-}" in
    --queued) queued=1 ;;
    "") ;;
    *) usage ;;
esac

capacity=()
[[ "$TPU_SPOT" == 1 ]] && capacity=(--spot)

if ((queued)); then
    gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
        --project="$TPU_PROJECT" --zone="$TPU_ZONE" --accelerator-type="$TPU_TYPE" \
        --runtime-version="$TPU_VERSION" "${capacity[@]}"
else
    gcloud compute tpus tpu-vm create "$TPU_NAME" \
        --project="$TPU_PROJECT" --zone="$TPU_ZONE" --accelerator-type="$TPU_TYPE" \
        --version="$TPU_VERSION" "${capacity[@]}"
fi
