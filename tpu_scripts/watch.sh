#!/usr/bin/env bash
# Keep a run going until it finishes: get a slice through a queued resource, set it up, launch the job,
# and when the slice is preempted or fails, or the job dies, recover and relaunch, within a budget.
#
#   tpu_scripts/watch.sh [--dry-run] [--config F] [--config.a.b=value ...]
#
# The arguments are launch.sh's. Every WATCH_POLL_S seconds (default 60) it reads the queued
# resource's state:
#   ABSENT                  create it: create.sh --queued (TPU_CAPACITY=spot | reserved | on-demand)
#   ACTIVE                  the first time for this slice: setup.sh, then launch.sh; later: the job's
#                           state on worker 0 (worker.sh status)
#   SUSPENDED, FAILED       preempted (spot) or failed: delete it and create it again (one recovery)
#   anything else           (WAITING_FOR_RESOURCES, PROVISIONING, SUSPENDING, ...): wait
# The job's state: running: wait. Exit 0: the run is finished; watch.sh exits 0 (and deletes the slice
# if WATCH_DELETE_WHEN_DONE=1). Exit 1: the trainer stopped on purpose (a NaN, a bad config or data:
# its log says which) and would stop again: watch.sh exits 1 and leaves the slice for you to look at.
# Any other exit (143 after SIGTERM, 137 killed, a crash, exit 1 with a traceback in the log: an
# exception, not a decision) or no job at all: relaunch (one recovery).
# Worker 0 unreachable WATCH_UNREACHABLE polls in a row (default 3): relaunch (one recovery).
# After WATCH_RETRIES recoveries (default 10) it gives up with exit code 3. The trainer resumes from the
# run's latest readable checkpoint each time, so a recovery costs the steps since that checkpoint.
# --dry-run prints the gcloud commands of one pass from an empty project (create, setup, launch and
# one status poll) without running any.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require ORCA_BUCKET
here="$(dirname "$0")"

poll_s="${WATCH_POLL_S:-60}"
retries_left="${WATCH_RETRIES:-10}"
unreachable_limit="${WATCH_UNREACHABLE:-3}"

note() {
    echo "watch.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): $*"
}

recover() {
    ((retries_left > 0)) || { note "giving up: the retry budget (WATCH_RETRIES) is spent"; exit 3; }
    retries_left=$((retries_left - 1))
    note "$* (recoveries left: $retries_left)"
}

job_status() {
    local output
    output="$(tpu_ssh 0 "$(worker_command status)" 2>/dev/null)" || { echo unreachable; return; }
    output="$(grep '^status: ' <<<"$output" | tail -n 1)" || true
    echo "${output#status: }"
}

if ((DRY_RUN)); then
    queued_resource_state
    "$here/create.sh" --queued
    "$here/setup.sh"
    "$here/launch.sh" "$@"
    tpu_ssh 0 "$(worker_command status)"
    exit 0
fi

launched=0
unreachable=0
while true; do
    queued_resource_state
    state="$QR_STATE"
    case "$state" in
        ABSENT)
            note "no queued resource $TPU_NAME: creating it ($TPU_CAPACITY)"
            "$here/create.sh" --queued
            launched=0 ;;
        SUSPENDED | FAILED)
            recover "queued resource $TPU_NAME is $state: deleting and recreating it"
            "$here/delete.sh" --yes
            "$here/create.sh" --queued
            launched=0 ;;
        ACTIVE)
            if ((!launched)); then
                note "slice $TPU_NAME is ACTIVE: setting up and launching"
                "$here/setup.sh"
                "$here/launch.sh" "$@"
                launched=1
                unreachable=0
            else
                status="$(job_status)"
                case "$status" in
                    running) unreachable=0 ;;
                    "exited 0")
                        note "the run finished (exit 0)"
                        if [[ "${WATCH_DELETE_WHEN_DONE:-0}" == 1 ]]; then
                            "$here/delete.sh" --yes
                        fi
                        exit 0 ;;
                    "exited 1")
                        note "the trainer stopped on purpose (exit 1); see tpu_scripts/logs.sh. Not relaunching."
                        exit 1 ;;
                    unreachable)
                        unreachable=$((unreachable + 1))
                        if ((unreachable >= unreachable_limit)); then
                            recover "worker 0 unreachable $unreachable polls in a row: relaunching"
                            "$here/launch.sh" "$@"
                            unreachable=0
                        fi ;;
                    *)
                        recover "the job is not running (${status:-no status}): relaunching"
                        "$here/launch.sh" "$@"
                        unreachable=0 ;;
                esac
            fi ;;
        *) ;;  # waiting for capacity, provisioning, deleting: nothing to do yet
    esac
    sleep "$poll_s"
done
