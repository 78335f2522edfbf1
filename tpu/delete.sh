#!/usr/bin/env bash
# Usage: tpu/delete.sh [--dry-run] [--queued] [--yes]
#
# Deletes the TPU VM $TPU_NAME (billing stops; its disks, venv and logs are gone, while
# checkpoints and metrics on gs://$BUCKET stay).
#   --queued    delete the queued resource $QR_NAME together with its node (use this when the
#               slice came from tpu/create.sh --queued; deleting only the node leaves the
#               queued resource behind)
#   --yes       do not ask for confirmation (gcloud --quiet)
#   --dry-run   print the gcloud command instead of running it
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

queued=0
quiet=()
while (($#)); do
  if common_flag "$1"; then
    shift
    continue
  fi
  case "$1" in
    --queued) queued=1 ;;
    --yes) quiet=(--quiet) ;;
    *) die "unknown argument '$1' (see $SCRIPT_NAME --help)." ;;
  esac
  shift
done

load_config
require TPU_NAME ZONE PROJECT
if ((queued)); then
  run_cmd gcloud compute tpus queued-resources delete "$QR_NAME" --zone="$ZONE" \
    --project="$PROJECT" --force "${quiet[@]}"
else
  tpu_gcloud delete "${quiet[@]}"
fi
