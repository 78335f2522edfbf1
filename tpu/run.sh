#!/usr/bin/env bash
# Usage: tpu/run.sh [--dry-run] --name=RUN [--workdir=gs://...] -- --config configs/X.py[:arg] [--config.k=v ...]
#
# Starts the same command on every worker of $TPU_NAME, detached (setsid + nohup, so an ssh drop
# or a closed laptop does not stop it):
#   cd ~/$REMOTE_DIR && [env $EXTRA_ENV] ~/$VENV_DIR/bin/python -m clipjax.main \
#     --config ... --config.distributed=on --workdir=WORKDIR
# WORKDIR defaults to gs://$BUCKET/$RUNS_PREFIX/RUN; it must be on gs:// (all hosts write the
# checkpoints of one run). --config.distributed=on is added unless you pass a value yourself.
# Each worker appends to ~/$LOG_DIR/RUN/worker<N>.log and records "PID START_TIME" in
# ~/$STATE_DIR/job.pid (tpu/logs.sh, tpu/stop.sh use them); a worker that already runs a job
# refuses. Resume after a preemption or a stop: the same command again (it continues from
# WORKDIR/checkpoints).
#   --dry-run   print the gcloud command instead of running it
#
# Worker side: bash ~/$REMOTE_DIR/tpu/run.sh --on-worker --name=RUN -- python ARGS... with
# VENV_DIR, STATE_DIR, LOG_DIR, EXTRA_ENV (and optionally WORKER_ID, LAUNCH_CHECK_S) from the
# environment; "python" means the venv's python.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

on_worker() {
  local name="" venv state log_dir log wid pid start env_words=() w
  while (($#)); do
    case "$1" in
      --name=*) name="${1#*=}" ;;
      --) shift && break ;;
      *) die "--on-worker: unknown argument '$1'." ;;
    esac
    shift
  done
  [[ -n "$name" && $# -gt 0 ]] || die "--on-worker needs --name=RUN -- COMMAND..."
  venv="$(abs_path "$VENV_DIR")"
  if [[ "$1" == python ]]; then
    [[ -x "$venv/bin/python" ]] || die "$(hostname): $venv/bin/python not found: run tpu/setup.sh."
    set -- "$venv/bin/python" "${@:2}"
  fi
  read -r -a env_words <<<"${EXTRA_ENV:-}"
  for w in "${env_words[@]}"; do
    [[ "$w" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "EXTRA_ENV word '$w' is not KEY=VALUE."
  done
  state="$(abs_path "$STATE_DIR")"
  mkdir -p "$state"
  wid="$(worker_id)"
  pid="$(job_pid "$state")"
  if [[ -n "$pid" ]]; then
    die "worker $wid: a clipjax job is already running (pid $pid, log" \
      "$(readlink "$state/current.log" || true)); stop it first with tpu/stop.sh."
  fi
  log_dir="$(abs_path "$LOG_DIR")/$name"
  mkdir -p "$log_dir"
  log="$log_dir/worker$wid.log"
  cd "$REPO_DIR"
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname) worker $wid: $(shell_quote "$@")" >>"$log"
  # setsid: own session and process group (stop.sh can end the whole group); nohup + no tty:
  # immune to the ssh hangup. The PID stays the same through the exec chain.
  setsid nohup env "${env_words[@]}" "$@" >>"$log" 2>&1 </dev/null &
  pid=$!
  start="$(proc_start_time "$pid")"
  echo "$pid $start" >"$state/job.pid"
  ln -sfn "$log" "$state/current.log"
  sleep "${LAUNCH_CHECK_S:-5}"
  if [[ -z "$(job_pid "$state")" ]]; then
    rm -f "$state/job.pid"
    echo "worker $wid: the job exited within ${LAUNCH_CHECK_S:-5}s; end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  echo "worker $wid: started pid $pid, log $log"
}

if [[ "${1:-}" == --on-worker ]]; then
  config_defaults
  shift
  on_worker "$@"
  exit 0
fi

name=""
workdir=""
while (($#)); do
  if common_flag "$1"; then
    shift
    continue
  fi
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --)
      shift
      break
      ;;
    *) die "unknown argument '$1'; clipjax arguments go after '--' (see $SCRIPT_NAME --help)." ;;
  esac
  shift
done
args=("$@")
[[ -n "$name" ]] || die "--name=RUN is required (it names the workdir and the log directory)."
[[ "$name" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ ]] || die "--name=$name: use letters, digits, . _ -"
((${#args[@]})) || die "no clipjax arguments: add -- --config configs/X.py [...]."
has_config=0
has_distributed=0
for a in "${args[@]}"; do
  case "$a" in
    --workdir | --workdir=*) die "pass the workdir as $SCRIPT_NAME --workdir=gs://..., before '--'." ;;
    --config | --config=*) has_config=1 ;;
    --config.distributed | --config.distributed=*) has_distributed=1 ;;
  esac
done
((has_config)) || die "the clipjax arguments need --config configs/X.py."

load_config
require TPU_NAME ZONE PROJECT
if [[ -z "$workdir" ]]; then
  require BUCKET
  workdir="gs://$BUCKET/$RUNS_PREFIX/$name"
fi
[[ "$workdir" == gs://* ]] ||
  die "--workdir=$workdir must be on gs://: every worker writes the same run's checkpoints."
# jax.distributed.initialize() on every host; "auto" may not detect a GCE TPU VM from its env.
((has_distributed)) || args+=(--config.distributed=on)

on_workers all "$(shell_quote env VENV_DIR="$VENV_DIR" STATE_DIR="$STATE_DIR" \
  LOG_DIR="$LOG_DIR" EXTRA_ENV="$EXTRA_ENV" bash "$REMOTE_DIR/tpu/run.sh" --on-worker \
  --name="$name" -- python -m clipjax.main "${args[@]}" --workdir="$workdir")"
echo "Follow worker 0 with tpu/logs.sh; metrics: gcloud storage cat $workdir/metrics.jsonl" >&2
