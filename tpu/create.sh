#!/usr/bin/env bash
# Usage: tpu/create.sh [--dry-run] [--spot] [--queued [--valid-until=DURATION] [--wait]]
#
# Creates the Cloud TPU VM (single host or pod slice) $TPU_NAME of type $ACCELERATOR_TYPE with
# runtime $RUNTIME_VERSION in $ZONE / $PROJECT.
#   (default)     on-demand:   gcloud compute tpus tpu-vm create
#   --spot        spot capacity (cheaper, preemptible at any time; resume = same run command)
#   --queued      a queued resource $QR_NAME holding node $TPU_NAME (waits for capacity; with
#                 --spot for queued spot capacity); --valid-until=6h gives up after 6 hours;
#                 --wait polls until the resource is ACTIVE
#   --dry-run     print the gcloud commands instead of running them
# Extra create flags (service account, network, ...) come from $CREATE_FLAGS.
# Settings: tpu/env.sh (see tpu/env.sh.example) or the environment.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

spot=0
queued=0
wait_active=0
valid_until=""
while (($#)); do
  if common_flag "$1"; then
    shift
    continue
  fi
  case "$1" in
    --spot) spot=1 ;;
    --queued) queued=1 ;;
    --wait) wait_active=1 ;;
    --valid-until=*) valid_until="${1#*=}" ;;
    *) die "unknown argument '$1' (see $SCRIPT_NAME --help)." ;;
  esac
  shift
done
if ((!queued)) && [[ -n "$valid_until" || "$wait_active" == 1 ]]; then
  die "--valid-until and --wait only apply with --queued."
fi

load_config
require TPU_NAME ZONE PROJECT ACCELERATOR_TYPE RUNTIME_VERSION
read -r -a extra_flags <<<"$CREATE_FLAGS"
if ((spot)); then extra_flags+=(--spot); fi

if ((!queued)); then
  tpu_gcloud create --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    "${extra_flags[@]}"
  exit 0
fi

if [[ -n "$valid_until" ]]; then extra_flags+=(--valid-until-duration="$valid_until"); fi
run_cmd gcloud compute tpus queued-resources create "$QR_NAME" --zone="$ZONE" \
  --project="$PROJECT" --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
  --runtime-version="$RUNTIME_VERSION" "${extra_flags[@]}"
describe=(gcloud compute tpus queued-resources describe "$QR_NAME" --zone="$ZONE"
  --project="$PROJECT" --format='value(state.state)')
if ((!wait_active)); then
  echo "Queued. Watch it with: $(shell_quote "${describe[@]}")  (ACTIVE = ready)" >&2
  exit 0
fi
if ((DRY_RUN)); then
  run_cmd "${describe[@]}"
  exit 0
fi
while true; do
  state="$(run_cmd "${describe[@]}")"
  echo "$(date -u +%H:%M:%SZ) $QR_NAME: $state" >&2
  case "$state" in
    ACTIVE) exit 0 ;;
    FAILED | SUSPENDED | SUSPENDING) die "queued resource $QR_NAME is $state." ;;
  esac
  sleep 60
done
