#!/usr/bin/env bash
# Usage: tpu/stop.sh [--dry-run] [--grace=SECONDS] [--kill] [--worker=all|N]
#
# Stops the clipjax job that tpu/run.sh started on each worker, and nothing else: the PID comes
# from ~/$STATE_DIR/job.pid and is used only while its start time still matches (no recycled
# PIDs). SIGTERM first, to the python process: with jax.distributed initialised every host meets
# orbax's preemption sync point, saves a checkpoint at the same step and exits (resume = the same
# tpu/run.sh command). After --grace seconds (default 300) the job's process group gets SIGKILL.
#   --kill        SIGKILL the job's process group at once (no checkpoint)
#   --worker=N    only worker N (default all)
#   --dry-run     print the gcloud command instead of running it
#
# Worker side: bash ~/$REMOTE_DIR/tpu/stop.sh --on-worker [--grace=S] [--kill], STATE_DIR from
# the environment.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

grace=300
kill_now=0

kill_group() {
  local pid="$1" pgid
  pgid="$(ps -o pgid= -p "$pid" | tr -d ' ' || true)"
  if [[ "$pgid" == "$pid" ]]; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  kill -KILL "$pid" 2>/dev/null || true
}

on_worker() {
  local state pid wid i
  state="$(abs_path "$STATE_DIR")"
  wid="$(worker_id)"
  pid="$(job_pid "$state")"
  if [[ -z "$pid" ]]; then
    echo "worker $wid: no clipjax job running"
    rm -f "$state/job.pid"
    return
  fi
  if ((kill_now)); then
    echo "worker $wid: SIGKILL to job $pid and its process group"
    kill_group "$pid"
  else
    echo "worker $wid: SIGTERM to job $pid; waiting up to ${grace}s for its checkpoint and exit"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace; i++)); do
      [[ -n "$(job_pid "$state")" ]] || break
      sleep 1
    done
    if [[ -n "$(job_pid "$state")" ]]; then
      echo "worker $wid: job $pid still running after ${grace}s; SIGKILL to its process group"
      kill_group "$pid"
    fi
  fi
  for ((i = 0; i < 10; i++)); do
    [[ -n "$(job_pid "$state")" ]] || break
    sleep 0.5
  done
  rm -f "$state/job.pid"
  echo "worker $wid: stopped"
}

parse_stop_flag() {
  case "$1" in
    --grace=*)
      grace="${1#*=}"
      [[ "$grace" =~ ^[0-9]+$ ]] || die "--grace=$grace must be a whole number of seconds."
      ;;
    --kill) kill_now=1 ;;
    *) return 1 ;;
  esac
}

if [[ "${1:-}" == --on-worker ]]; then
  config_defaults
  shift
  for a in "$@"; do parse_stop_flag "$a" || die "--on-worker: unknown argument '$a'."; done
  on_worker
  exit 0
fi

workers=all
while (($#)); do
  if common_flag "$1" || parse_stop_flag "$1"; then
    shift
    continue
  fi
  case "$1" in
    --worker=*) workers="${1#*=}" ;;
    *) die "unknown argument '$1' (see $SCRIPT_NAME --help)." ;;
  esac
  shift
done

load_config
require TPU_NAME ZONE PROJECT
worker_flags=(--grace="$grace")
if ((kill_now)); then worker_flags+=(--kill); fi
on_workers "$workers" "$(shell_quote env STATE_DIR="$STATE_DIR" bash "$REMOTE_DIR/tpu/stop.sh" \
  --on-worker "${worker_flags[@]}")"
