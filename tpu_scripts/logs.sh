#!/usr/bin/env bash
# Show a worker's training log.
#
#   tpu_scripts/logs.sh [--dry-run] [WORKER] [-f]
#
# WORKER defaults to 0 (process 0 writes the metrics and the progress lines; other workers' logs show
# their own errors). -f follows the log until Ctrl-C; otherwise the last 100 lines are printed.
# WORKER may be "all" (without -f) to see the tail of every worker's log.
set -euo pipefail
source "$(dirname "$0")/common.sh"

worker=0
follow=0
for arg in "$@"; do
    case "$arg" in
        -f) follow=1 ;;
        all | [0-9]*) worker="$arg" ;;
        *) usage ;;
    esac
done
[[ "$worker" == all && "$follow" == 1 ]] && die "-f follows one worker's log; name it"

if ((follow)); then
    tpu_ssh "$worker" "tail -n 100 -F orca-logs/train.log"
else
    # Single quotes: $(hostname) is the worker's, expanded there.
    # shellcheck disable=SC2016
    tpu_ssh "$worker" 'echo "== $(hostname)"; tail -n 100 orca-logs/train.log'
fi
