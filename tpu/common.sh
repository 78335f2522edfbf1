# shellcheck shell=bash
# Shared helpers for the tpu/*.sh scripts; sourced, never executed.
#
# Configuration: the variables in CONFIG_VARS come from the environment, else from the env file
# ($TPU_ENV_FILE, default tpu/env.sh; copy tpu/env.sh.example), else from the defaults below.
# A variable that is set (non-empty) in the environment always wins over the env file.
#
# Local side: load_config, require, run_cmd (prints the command, and runs it unless --dry-run),
# tpu_gcloud (gcloud compute tpus tpu-vm VERB $TPU_NAME --zone --project ...).
# Worker side (runs on a TPU VM through `bash clipjax/tpu/X.sh --on-worker`): job_pid, worker_id.

TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO_DIR="$(cd "$TPU_DIR/.." && pwd)"
SCRIPT_NAME="tpu/$(basename "$0")"
DRY_RUN=0

CONFIG_VARS=(
  TPU_NAME ZONE PROJECT ACCELERATOR_TYPE RUNTIME_VERSION BUCKET QR_NAME CREATE_FLAGS
  RUNS_PREFIX REMOTE_DIR VENV_DIR STATE_DIR LOG_DIR PYTHON_VERSION PIP_EXTRAS EXTRA_ENV GIT_URL
  GCS_MOUNT GCSFUSE_FLAGS
)

die() {
  echo "$SCRIPT_NAME: error: $*" >&2
  exit 2
}

# Prints the script's header comment (line 2 up to the first non-comment line) as its usage.
usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# Handles the flags every script shares; returns 1 when the flag is not one of them.
common_flag() {
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) return 1 ;;
  esac
}

load_config() {
  local env_file="${TPU_ENV_FILE:-$TPU_DIR/env.sh}" v
  local -A from_env=()
  for v in "${CONFIG_VARS[@]}"; do
    if [[ -n "${!v:-}" ]]; then from_env[$v]="${!v}"; fi
  done
  if [[ -n "${TPU_ENV_FILE:-}" && ! -f "$TPU_ENV_FILE" ]]; then
    die "TPU_ENV_FILE=$TPU_ENV_FILE does not exist."
  fi
  if [[ -f "$env_file" ]]; then
    # shellcheck source=/dev/null
    source "$env_file"
  fi
  for v in "${!from_env[@]}"; do printf -v "$v" '%s' "${from_env[$v]}"; done
  ENV_FILE_USED="$env_file"
  config_defaults
}

# Fills in the defaults and checks the values (worker side: the only configuration step).
config_defaults() {
  TPU_NAME="${TPU_NAME:-}"
  ZONE="${ZONE:-}"
  PROJECT="${PROJECT:-}"
  ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
  RUNTIME_VERSION="${RUNTIME_VERSION:-}"
  BUCKET="${BUCKET:-}"
  BUCKET="${BUCKET#gs://}"
  BUCKET="${BUCKET%/}"
  QR_NAME="${QR_NAME:-${TPU_NAME:+$TPU_NAME-qr}}"
  CREATE_FLAGS="${CREATE_FLAGS:-}"
  RUNS_PREFIX="${RUNS_PREFIX:-clipjax/runs}"
  REMOTE_DIR="${REMOTE_DIR:-clipjax}"
  VENV_DIR="${VENV_DIR:-clipjax-venv}"
  STATE_DIR="${STATE_DIR:-.clipjax-tpu}"
  LOG_DIR="${LOG_DIR:-clipjax-logs}"
  PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
  PIP_EXTRAS="${PIP_EXTRAS-tpu}"
  EXTRA_ENV="${EXTRA_ENV:-}"
  GIT_URL="${GIT_URL:-}"
  GCS_MOUNT="${GCS_MOUNT:-gcs}"
  GCSFUSE_FLAGS="${GCSFUSE_FLAGS:-}"
  if [[ ! "$REMOTE_DIR" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$ ]]; then
    die "REMOTE_DIR=$REMOTE_DIR must be a plain relative path under the remote home (it is" \
      "deleted and re-created by tpu/sync.sh), e.g. 'clipjax'."
  fi
  if [[ -n "$TPU_NAME" && ! "$TPU_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]]; then
    die "TPU_NAME=$TPU_NAME is not a valid Cloud TPU name (lowercase letters, digits, '-')."
  fi
}

# require VAR...: dies naming every listed variable that is empty.
require() {
  local v missing=()
  for v in "$@"; do
    if [[ -z "${!v:-}" ]]; then missing+=("$v"); fi
  done
  if ((${#missing[@]})); then
    die "${missing[*]} not set: set it in $ENV_FILE_USED (copy tpu/env.sh.example) or export it."
  fi
}

# Quotes each argument for a POSIX shell (bare when safe) and joins them with spaces.
shell_quote() {
  local a out=()
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  printf '%s' "${out[*]}"
}

# Prints `+ CMD` (stdout under --dry-run, stderr otherwise) and runs CMD unless --dry-run.
run_cmd() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(shell_quote "$@")"
    return 0
  fi
  printf '+ %s\n' "$(shell_quote "$@")" >&2
  "$@"
}

# tpu_gcloud VERB ARGS...: gcloud compute tpus tpu-vm VERB $TPU_NAME --zone --project ARGS...
tpu_gcloud() {
  local verb="$1"
  shift
  run_cmd gcloud compute tpus tpu-vm "$verb" "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" "$@"
}

# on_workers WORKERS COMMAND: runs the shell COMMAND over ssh on WORKERS ("all", "0", "1,3").
on_workers() {
  tpu_gcloud ssh --worker="$1" --command="$2"
}

# ---------------------------------------------------------------------------------------------
# Worker side.

# Absolute path: relative paths are taken under $HOME.
abs_path() {
  if [[ "$1" == /* ]]; then echo "$1"; else echo "$HOME/$1"; fi
}

# Start time (clock ticks since boot) of PID, from /proc/PID/stat; empty when PID is gone.
proc_start_time() {
  local stat rest fields
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  rest="${stat##*) }"
  read -r -a fields <<<"$rest"
  echo "${fields[19]:-}"
}

# Prints the PID of our running job (from STATE/job.pid: "PID START_TIME"), or nothing. The
# start time guards against a recycled PID: only the process we started is ever reported.
job_pid() {
  local pid_file="$1/job.pid" pid start
  [[ -f "$pid_file" ]] || return 0
  read -r pid start <"$pid_file" || true
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if [[ -n "$start" && "$(proc_start_time "$pid")" == "$start" ]]; then echo "$pid"; fi
}

# This worker's index in the slice: $WORKER_ID, else the TPU metadata server, else hostname.
worker_id() {
  local id=""
  if [[ -n "${WORKER_ID:-}" ]]; then
    echo "$WORKER_ID"
    return
  fi
  id="$(curl -sf --max-time 3 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
    2>/dev/null || true)"
  if [[ "$id" =~ ^[0-9]+$ ]]; then echo "$id"; else hostname; fi
}
