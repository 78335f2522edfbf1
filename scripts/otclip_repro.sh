#!/bin/bash
# OT-CLIP small-scale reproduction driver (docs/results/otclip.md): trains the small CLIP of
# configs/otclip.py with each loss and seed, sequentially, then runs the OT inference on it.
#
# usage: scripts/otclip_repro.sh ROOT LOSS:SEED [LOSS:SEED ...]
#   e.g. nice -n 19 scripts/otclip_repro.sh /tmp/otclip_repro infonce:1 entropic:1 fgw:1
# Each run goes to ROOT/<loss>_s<seed> (skipped when it already holds otclip_infer.json); its
# training wall/user/sys seconds are appended to ROOT/times.tsv. Then:
#   python scripts/otclip_repro.py table ROOT
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
STEPS=${STEPS:-300}
ROOT=$1
shift
mkdir -p "$ROOT"
for item in "$@"; do
  loss=${item%%:*}
  seed=${item##*:}
  wd="$ROOT/${loss}_s${seed}"
  if [ -f "$wd/otclip_infer.json" ]; then
    echo "skip $wd"
    continue
  fi
  rm -rf "$wd"
  /usr/bin/time -o "$wd.time" -f "%e	%U	%S" "$PY" -m clipjax.main \
    --config "configs/otclip.py:loss=$loss,small,steps=$STEPS,seed=$seed" --workdir "$wd" \
    > "$wd.log" 2>&1
  printf '%s\t%s\t%s\t%s\t%s\n' "$loss" "$seed" "$STEPS" "$(cat "$wd.time")" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$ROOT/times.tsv"
  "$PY" scripts/otclip_repro.py infer "$wd" > "$wd.infer.log" 2>&1
  echo "$(date -u +%H:%M:%S) done $wd"
done
