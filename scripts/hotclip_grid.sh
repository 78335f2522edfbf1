#!/usr/bin/env bash
# HOT-CLIP small-scale reproduction: an |A| x |T| grid of TeCoA submodels fine-tuned from a
# trained base CLIP workdir, then fusion + evaluation (task hotclip_fuse).
#
# Usage: scripts/hotclip_grid.sh BASE [ROOT] [ATTACKS] [PROMPTS] [FT_STEPS]
#   e.g. scripts/hotclip_grid.sh /tmp/qs/full4 /tmp/hotclip/g fgsm+pgd+mim 3 150
# BASE is a trained clipjax workdir (e.g. a finished `configs/quickstart.py` run). Writes
# ROOT_<attack>_<prompt> (submodels; a finished one is skipped on re-runs) and ROOT_fused
# (summary.json, results.md). Wall seconds per run are appended to ROOT_times.tsv.
# Extra flags: SUB_ARGS (every submodel run, e.g. "--config.optim.lr=3e-4"), FUSE_CFG (config
# arguments appended to the fuse config, e.g. ",fusions=average,submodels=False"), FUSE_ARGS (fuse
# flags); the interpreter in PY (e.g. "nice -n 19 python").
set -euo pipefail
BASE=${1:?usage: scripts/hotclip_grid.sh BASE [ROOT] [ATTACKS] [PROMPTS] [FT_STEPS]}
ROOT=${2:-/tmp/hot}
ATTACKS=${3:-fgsm+pgd+mim}
PROMPTS=${4:-3}
FT_STEPS=${5:-150}
PY=${PY:-python}
SUB_ARGS=${SUB_ARGS:-}
FUSE_CFG=${FUSE_CFG:-}
FUSE_ARGS=${FUSE_ARGS:-}

timed() {  # timed NAME CMD...: runs CMD, appends "NAME<TAB>wall seconds" to ROOT_times.tsv
  local name=$1 start end
  shift
  start=$(date +%s.%N)
  "$@"
  end=$(date +%s.%N)
  printf '%s\t%.1f\t%s\n' "$name" "$(echo "$end - $start" | bc)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    >>"${ROOT}_times.tsv"
}

for attack in ${ATTACKS//+/ }; do
  for ((t = 0; t < PROMPTS; t++)); do
    wd="${ROOT}_${attack}_${t}"
    if grep -qs '"finished": true' "$wd/summary.json"; then
      echo "skip $wd (finished)"
      continue
    fi
    # shellcheck disable=SC2086  # SUB_ARGS is a list of flags
    timed "sub_${attack}_${t}" $PY -m clipjax.main \
      --config "configs/hotclip_submodel.py:attack=$attack,prompt=$t,init=$BASE" \
      --config.total_steps="$FT_STEPS" --config.checkpoint.every_steps="$FT_STEPS" \
      --config.eval.every_steps="$FT_STEPS" --config.seed="$t" --workdir "$wd" $SUB_ARGS
  done
done
# shellcheck disable=SC2086  # FUSE_ARGS is a list of flags
timed fuse $PY -m clipjax.main \
  --config "configs/hotclip_fuse.py:root=$ROOT,attacks=$ATTACKS,prompts=$PROMPTS$FUSE_CFG" \
  --config.base="$BASE" --workdir "${ROOT}_fused" $FUSE_ARGS
