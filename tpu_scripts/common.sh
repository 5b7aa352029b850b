# shellcheck shell=bash
# Settings shared by the TPU scripts, sourced by each of them (not run on its own).
#
# Every value comes from the environment so that nothing personal lives in the repo: export them in
# your shell, or keep them in a file outside the repo and point ORCA_TPU_ENV at it, e.g.
#     export ORCA_TPU_ENV=~/orca-tpu.env    # lines like: TPU_ZONE=us-east5-a
#
#   TPU_PROJECT    GCP project (default: gcloud's configured project)
#   TPU_ZONE       zone that has the accelerator type, e.g. us-east5-a (v5p), us-central2-b (v4)  [required]
#   TPU_NAME       name of the TPU VM (and of its queued resource)          (default: orca-13b)
#   TPU_TYPE       accelerator type, e.g. v5p-128, v4-64, v5litepod-256     (default: v5p-128)
#   TPU_VERSION    TPU VM runtime image (default: the one for TPU_TYPE's generation)
#   TPU_CAPACITY   on-demand | spot (cheap, preemptible at any time) | reserved (your reservation)
#                  (default: on-demand; TPU_SPOT=1, the older spelling, means spot)
#   ORCA_BUCKET    gs://bucket[/prefix] holding data, weights and run directories  [required by setup/launch]
#   ORCA_RUN       run name; its directory is <bucket mount>/runs/ORCA_RUN  (default: TPU_NAME)
#   ORCA_JAX_SPEC  pip requirement that brings libtpu                        (default: jax[tpu])

# The calling script's header comment (from its second line to the first line that is not a comment).
usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" >&2
    exit 2
}

# Sourcing keeps the caller's arguments, so every script answers -h / --help here, before the
# settings below are demanded, and takes a leading --dry-run here (the shift removes it from the
# caller's arguments): every gcloud command is then printed, one per line, instead of run. Scripts that
# call other scripts pass it on through ORCA_DRY_RUN.
DRY_RUN="${ORCA_DRY_RUN:-0}"
case "${1:-}" in
    -h | --help) usage ;;
    --dry-run) DRY_RUN=1; shift ;;
esac
export ORCA_DRY_RUN="$DRY_RUN"

# Every gcloud call goes through here (so --dry-run sees them all).
gcloud_cmd() {
    if ((DRY_RUN)); then
        printf 'gcloud'
        printf ' %q' "$@"
        printf '\n'
    else
        gcloud "$@"
    fi
}

if [[ -n "${ORCA_TPU_ENV:-}" ]]; then
    # shellcheck source=/dev/null
    source "$ORCA_TPU_ENV"
fi

TPU_PROJECT="${TPU_PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
((DRY_RUN)) && TPU_PROJECT="${TPU_PROJECT:-YOUR_PROJECT}"
TPU_ZONE="${TPU_ZONE:-}"
TPU_NAME="${TPU_NAME:-orca-13b}"
TPU_TYPE="${TPU_TYPE:-v5p-128}"
TPU_SPOT="${TPU_SPOT:-0}"
TPU_CAPACITY="${TPU_CAPACITY:-$([[ "$TPU_SPOT" == 1 ]] && echo spot || echo on-demand)}"
ORCA_BUCKET="${ORCA_BUCKET:-}"
ORCA_RUN="${ORCA_RUN:-$TPU_NAME}"
ORCA_JAX_SPEC="${ORCA_JAX_SPEC:-jax[tpu]}"

# Where the bucket is mounted (gcsfuse) on every worker. Training reads and writes plain paths, and a
# multi-host checkpoint must land in one directory that all hosts see: the mount is that directory.
ORCA_MOUNT="/gcs/orca"
# The checkout on each worker, relative to the login user's home directory.
ORCA_REMOTE_DIR="orca-jax"

default_runtime_version() {
    case "$1" in
        v4-*) echo "tpu-ubuntu2204-base" ;;
        v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
        v5p-*) echo "v2-alpha-tpuv5" ;;
        v6e-*) echo "v2-alpha-tpuv6e" ;;
        *) echo "no default runtime version for TPU_TYPE=$1; set TPU_VERSION" >&2; return 1 ;;
    esac
}
TPU_VERSION="${TPU_VERSION:-$(default_runtime_version "$TPU_TYPE")}"

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

require() {
    local name
    for name in "$@"; do
        [[ -n "${!name:-}" ]] || die "set $name (see tpu_scripts/common.sh)"
    done
}

# Run a shell command on one worker (0, 1, ...) or on all of them at once ("all").
tpu_ssh() {
    local worker="$1" command="$2"
    gcloud_cmd compute tpus tpu-vm ssh "$TPU_NAME" --project="$TPU_PROJECT" --zone="$TPU_ZONE" \
        --worker="$worker" --command="$command"
}

# The worker-side script with the settings it needs, quoted for the remote shell.
worker_command() {
    printf 'ORCA_BUCKET=%q ORCA_MOUNT=%q ORCA_JAX_SPEC=%q bash %q/tpu_scripts/worker.sh' \
        "$ORCA_BUCKET" "$ORCA_MOUNT" "$ORCA_JAX_SPEC" "$ORCA_REMOTE_DIR"
    printf ' %q' "$@"
}

# The gcloud flag for TPU_CAPACITY (none for on-demand).
capacity_flags() {
    case "$TPU_CAPACITY" in
        on-demand) ;;
        spot) echo --spot ;;
        reserved) echo --reserved ;;
        *) die "TPU_CAPACITY=$TPU_CAPACITY: use on-demand, spot or reserved" ;;
    esac
}

# Sets QR_STATE to the queued resource's state (ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED, FAILED, ...)
# or ABSENT; with --dry-run it prints the describe command and sets DRY_RUN.
queued_resource_state() {
    local describe=(compute tpus queued-resources describe "$TPU_NAME" --project="$TPU_PROJECT"
        --zone="$TPU_ZONE" --format='value(state.state)')
    if ((DRY_RUN)); then
        gcloud_cmd "${describe[@]}"
        QR_STATE=DRY_RUN
        return
    fi
    QR_STATE="$(gcloud "${describe[@]}" 2>/dev/null)" || QR_STATE=""
    QR_STATE="${QR_STATE:-ABSENT}"
}

require TPU_PROJECT TPU_ZONE
