#!/usr/bin/env bash
# HOT-CLIP small-scale reproduction: base CLIP, an |A| x |T| grid of TeCoA submodels, fusion.
#
# Usage: scripts/hotclip_grid.sh [ROOT] [ATTACKS] [PROMPTS] [BASE_STEPS] [FT_STEPS]
#   e.g. scripts/hotclip_grid.sh /tmp/hot fgsm+pgd 2 300 40
# Writes ROOT_base (quickstart), ROOT_<attack>_<prompt> (submodels) and ROOT_fused (results.md).
set -euo pipefail
ROOT=${1:-/tmp/hot}
ATTACKS=${2:-fgsm+pgd+mim}
PROMPTS=${3:-3}
BASE_STEPS=${4:-300}
FT_STEPS=${5:-60}
PY=${PY:-python}

$PY -m clipjax.main --config configs/quickstart.py --workdir "${ROOT}_base" \
  --config.total_steps="$BASE_STEPS"
for attack in ${ATTACKS//+/ }; do
  for ((t = 0; t < PROMPTS; t++)); do
    $PY -m clipjax.main --config "configs/hotclip_submodel.py:attack=$attack,prompt=$t" \
      --config.model.init_checkpoint="${ROOT}_base" --config.total_steps="$FT_STEPS" \
      --config.checkpoint.every_steps="$FT_STEPS" --config.eval.every_steps="$FT_STEPS" \
      --config.seed="$t" --workdir "${ROOT}_${attack}_${t}"
  done
done
$PY -m clipjax.main --config "configs/hotclip_fuse.py:root=$ROOT,attacks=$ATTACKS,prompts=$PROMPTS" \
  --config.base="${ROOT}_base" --workdir "${ROOT}_fused"
