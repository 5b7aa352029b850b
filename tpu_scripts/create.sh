#!/usr/bin/env bash
# Create the TPU VM slice named by common.sh's settings.
#
#   tpu_scripts/create.sh [--dry-run] [--queued]
#
# --queued asks for it through a queued resource: the request waits until capacity is free instead of
# failing, which is how large slices and spot capacity are usually obtained (watch.sh uses it). Without
# it the VM is created directly (fails at once when the zone has no capacity). TPU_CAPACITY=spot
# (--spot: preemptible) or reserved (--reserved: your reservation) in either case. Follow a queued
# request with: gcloud compute tpus queued-resources list --zone=...
set -euo pipefail
source "$(dirname "$0")/common.sh"

queued=0
case "${1:-}" in
    --queued) queued=1 ;;
    "") ;;
    *) usage ;;
esac

capacity=()
flag="$(capacity_flags)"
[[ -n "$flag" ]] && capacity=("$flag")

if ((queued)); then
    gcloud_cmd compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
        --project="$TPU_PROJECT" --zone="$TPU_ZONE" --accelerator-type="$TPU_TYPE" \
        --runtime-version="$TPU_VERSION" ${capacity[@]+"${capacity[@]}"}
else
    gcloud_cmd compute tpus tpu-vm create "$TPU_NAME" \
        --project="$TPU_PROJECT" --zone="$TPU_ZONE" --accelerator-type="$TPU_TYPE" \
        --version="$TPU_VERSION" ${capacity[@]+"${capacity[@]}"}
fi
