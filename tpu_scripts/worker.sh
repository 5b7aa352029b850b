#!/usr/bin/env bash
# Runs ON each TPU VM worker (setup.sh, launch.sh and stop.sh call it over ssh with --worker=all).
#
#   worker.sh install          virtualenv with orca-jax and jax[tpu]; gcsfuse
#   worker.sh start CONFIG ARGS...
#                              (re)start `orca-jax train --config CONFIG ARGS...` in the background, logging
#                              to ~/orca-logs; CONFIG is relative to the checkout, and the job runs in the
#                              bucket mount, so the config's relative paths (weights/, data/, runs/) are
#                              paths in the bucket
#   worker.sh stop             SIGTERM the run (it saves a checkpoint, then exits) and wait for it
#   worker.sh status           one line: "status: running", "status: exited CODE" (the trainer's exit
#                              code: 0 done, 1 stopped on purpose, "1 traceback" an uncaught exception,
#                              143 SIGTERM) or "status: none"
#
# Needs ORCA_BUCKET, ORCA_MOUNT and ORCA_JAX_SPEC in the environment (common.sh's worker_command).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$HOME/orca-venv"
LOGS="$HOME/orca-logs"
PIDFILE="$LOGS/train.pid"
EXITFILE="$LOGS/train.exit"
# The trainer's SIGTERM handler saves a checkpoint of a 13B model to the bucket before exiting.
STOP_TIMEOUT_S=600

usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" >&2
    exit 2
}

install() {
    local release
    release="$(lsb_release -cs)"
    # Rewriting the key and the source list is harmless when a previous install left them.
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
        | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
    echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$release main" \
        | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    sudo apt-get update -q
    sudo apt-get install -y -q gcsfuse python3-venv
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    # jax[tpu] pins the libtpu that matches its jax; installed together with the package so that pip
    # resolves one jax for both.
    "$VENV/bin/pip" install -q -e "$REPO" "$ORCA_JAX_SPEC"
    "$VENV/bin/python" -c 'import jax, orca_jax; print("jax", jax.__version__, "ready")'
}

mount_bucket() {
    mountpoint -q "$ORCA_MOUNT" && return
    local bucket="${ORCA_BUCKET#gs://}"
    local prefix=""
    if [[ "$bucket" == */* ]]; then
        prefix="${bucket#*/}"
        bucket="${bucket%%/*}"
    fi
    sudo mkdir -p "$ORCA_MOUNT"
    sudo chown "$(id -u):$(id -g)" "$ORCA_MOUNT"
    # --implicit-dirs: see directories that other tools created as mere object-name prefixes.
    gcsfuse --implicit-dirs ${prefix:+--only-dir "$prefix"} "$bucket" "$ORCA_MOUNT"
}

running_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(cat "$PIDFILE")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

stop() {
    local pid waited=0
    pid="$(running_pid)" || { echo "no run in progress"; return 0; }
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= STOP_TIMEOUT_S)); then
            echo "run $pid still alive after ${STOP_TIMEOUT_S}s; killing it" >&2
            kill -KILL "$pid"
            break
        fi
        sleep 5
        waited=$((waited + 5))
    done
    rm -f "$PIDFILE"
    echo "stopped run $pid"
}

status() {
    if running_pid >/dev/null; then
        echo "status: running"
    elif [[ -f "$EXITFILE" ]]; then
        # Exit code 1 is both the trainer's own one-line stop and an uncaught exception: the
        # traceback in the log tells them apart.
        if [[ "$(cat "$EXITFILE")" == 1 ]] && grep -q '^Traceback (most recent call last)' "$LOGS/train.log"; then
            echo "status: exited 1 traceback"
        else
            echo "status: exited $(cat "$EXITFILE")"
        fi
    else
        echo "status: none"
    fi
}

start() {
    local config="$REPO/$1" log
    shift
    [[ -f "$config" ]] || { echo "no config $config" >&2; exit 1; }
    stop
    mount_bucket
    mkdir -p "$LOGS"
    log="$LOGS/train-$(date -u +%Y%m%dT%H%M%SZ).log"
    ln -sfn "$log" "$LOGS/train.log"
    cd "$ORCA_MOUNT"
    # setsid: the run outlives this ssh session; the trainer resumes from its latest checkpoint.
    rm -f "$EXITFILE"
    # A small shell around the trainer records its exit code (for status, hence watch.sh) and passes
    # SIGTERM on to it, waiting until the trainer has saved and exited.
    # shellcheck disable=SC2016
    setsid nohup bash -c 'exitfile="$1"; shift
        trap '\''kill -TERM "$child" 2>/dev/null'\'' TERM
        "$@" & child=$!
        while true; do
            wait "$child"; code=$?
            kill -0 "$child" 2>/dev/null || break
        done
        echo "$code" >"$exitfile"' run "$EXITFILE" "$VENV/bin/orca-jax" train --config "$config" "$@" \
        >"$log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    echo "started run $! on $(hostname), log $log"
}

case "${1:-}" in
    install) install ;;
    start) [[ $# -ge 2 ]] || usage; shift; start "$@" ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
