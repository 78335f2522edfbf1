#!/usr/bin/env bash
# Usage: tpu/logs.sh [--dry-run] [--worker=0|N|all] [--lines=100] [--no-follow] [--name=RUN]
#
# Shows the log of the current job (~/$STATE_DIR/current.log, the last one tpu/run.sh started)
# on worker 0 (process 0 prints the progress lines and writes metrics), following it until
# Ctrl-C; Ctrl-C ends only the tail, never the job.
#   --worker=N|all   another worker, or all of them interleaved (to find the host that hangs or
#                    crashed)
#   --lines=N        lines of history to show first (default 100)
#   --no-follow      print and exit
#   --name=RUN       that run's log (~/$LOG_DIR/RUN/worker*.log) instead of the current one
#   --dry-run        print the gcloud command instead of running it
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

workers=0
lines=100
follow=1
name=""
while (($#)); do
  if common_flag "$1"; then
    shift
    continue
  fi
  case "$1" in
    --worker=*) workers="${1#*=}" ;;
    --lines=*) lines="${1#*=}" ;;
    --no-follow) follow=0 ;;
    --name=*) name="${1#*=}" ;;
    *) die "unknown argument '$1' (see $SCRIPT_NAME --help)." ;;
  esac
  shift
done
[[ "$lines" =~ ^[0-9]+$ ]] || die "--lines=$lines must be a number."
[[ -z "$name" || "$name" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ ]] || die "--name=$name is not a run name."

load_config
require TPU_NAME ZONE PROJECT
if [[ -n "$name" ]]; then
  log="$(shell_quote "$LOG_DIR/$name")/worker*.log"
else
  log="$(shell_quote "$STATE_DIR/current.log")"
fi
tail_flags="-n $lines"
if ((follow)); then tail_flags+=" -F"; fi
on_workers "$workers" "if ! ls $log >/dev/null 2>&1; then echo \"\$(hostname): no log $log \
(start a job with tpu/run.sh)\" >&2; exit 1; fi; tail $tail_flags $log"
