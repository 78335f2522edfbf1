#!/usr/bin/env bash
# Usage: tpu/setup.sh [--dry-run] [--force] [--no-mount]
#
# On every worker of $TPU_NAME: creates the virtual environment ~/$VENV_DIR (Python
# $PYTHON_VERSION; the TPU images ship 3.10, so it comes from uv when the image lacks it), runs
# pip install -e "~/$REMOTE_DIR[$PIP_EXTRAS]" and checks that clipjax, jax and libtpu are
# installed. Then mounts gs://$BUCKET read-only at ~/$GCS_MOUNT with gcsfuse (installed with
# apt if missing): array_record shards are read through this mount, since the array_record
# reader opens local files only. Idempotent: an existing venv is kept, pip runs again only when
# pyproject.toml or PIP_EXTRAS changed (--force: always), a mounted bucket is left alone.
# Run tpu/sync.sh first; run this again after a VM restart (the mount does not survive it).
#   --no-mount   skip the gcsfuse mount
#   --dry-run    print the gcloud command instead of running it
#
# Worker side (what the ssh command runs): bash ~/$REMOTE_DIR/tpu/setup.sh --on-worker, with
# VENV_DIR, PYTHON_VERSION, PIP_EXTRAS, FORCE, BUCKET, GCS_MOUNT, GCSFUSE_FLAGS from the
# environment (an empty BUCKET: no mount).
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Prints a python (>= 3.11) interpreter that can create venvs, or nothing.
find_python() {
  local py
  for py in "python$PYTHON_VERSION" python3; do
    if command -v "$py" >/dev/null &&
      "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$py"
      return
    fi
  done
}

ensure_uv() {
  if command -v uv >/dev/null; then
    command -v uv
    return
  fi
  if [[ ! -x "$HOME/.local/bin/uv" ]]; then
    echo "$(hostname): installing uv" >&2
    python3 -m pip install --user --quiet uv >&2 ||
      curl -LsSf https://astral.sh/uv/install.sh | sh >&2
  fi
  echo "$HOME/.local/bin/uv"
}

on_worker() {
  local venv py stamp want
  venv="$(abs_path "$VENV_DIR")"
  if [[ ! -x "$venv/bin/python" ]]; then
    rm -rf "$venv"
    py="$(find_python)"
    if [[ -n "$py" ]]; then
      echo "$(hostname): creating $venv with $py" >&2
      "$py" -m venv "$venv" || rm -rf "$venv" # Ubuntu without python3-venv: fall back to uv
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
      echo "$(hostname): creating $venv with uv (Python $PYTHON_VERSION)" >&2
      "$(ensure_uv)" venv --quiet --seed --python "$PYTHON_VERSION" "$venv"
    fi
  fi
  stamp="$venv/.clipjax-install"
  want="$(sha256sum <"$REPO_DIR/pyproject.toml" | cut -d' ' -f1) extras=$PIP_EXTRAS"
  if [[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$(hostname): $venv is up to date" >&2
  else
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e "$REPO_DIR${PIP_EXTRAS:+[$PIP_EXTRAS]}"
    echo "$want" >"$stamp"
  fi
  # Metadata only: importing jax here would grab the TPU, which a running job may hold.
  "$venv/bin/python" - "$PIP_EXTRAS" <<'EOF'
import importlib.metadata as md
import socket
import sys

need = ["clipjax", "jax", "jaxlib"] + (["libtpu"] if "tpu" in sys.argv[1].split(",") else [])
found, missing = {}, []
for name in need:
  try:
    found[name] = md.version(name)
  except md.PackageNotFoundError:
    missing.append(name)
print(socket.gethostname(), " ".join(f"{k}={v}" for k, v in found.items()))
if missing:
  sys.exit(
    f"{socket.gethostname()}: {', '.join(missing)} not installed; for libtpu, pyproject.toml needs"
    ' the extra tpu = ["jax[tpu]..."] (pip warns "does not provide the extra")'
  )
EOF
}

install_gcsfuse() {
  local repo
  repo="gcsfuse-$(lsb_release -c -s)"
  echo "$(hostname): installing gcsfuse ($repo)" >&2
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
    sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt $repo main" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
}

mount_bucket() {
  local mnt flags=()
  mnt="$(abs_path "$GCS_MOUNT")"
  if mountpoint -q "$mnt"; then
    echo "$(hostname): gs://$BUCKET already mounted at $mnt" >&2
    return
  fi
  command -v gcsfuse >/dev/null || install_gcsfuse
  mkdir -p "$mnt"
  read -r -a flags <<<"${GCSFUSE_FLAGS:-}"
  gcsfuse --implicit-dirs -o ro "${flags[@]}" "$BUCKET" "$mnt"
  echo "$(hostname): gs://$BUCKET mounted read-only at $mnt" >&2
}

if [[ "${1:-}" == --on-worker ]]; then
  config_defaults
  on_worker
  if [[ -n "${BUCKET:-}" ]]; then mount_bucket; fi
  exit 0
fi

force=0
mount=1
while (($#)); do
  if common_flag "$1"; then
    shift
    continue
  fi
  case "$1" in
    --force) force=1 ;;
    --no-mount) mount=0 ;;
    *) die "unknown argument '$1' (see $SCRIPT_NAME --help)." ;;
  esac
  shift
done

load_config
require TPU_NAME ZONE PROJECT
mount_bucket_name=""
if ((mount)); then
  require BUCKET
  mount_bucket_name="$BUCKET"
fi
on_workers all "$(shell_quote env VENV_DIR="$VENV_DIR" PYTHON_VERSION="$PYTHON_VERSION" \
  PIP_EXTRAS="$PIP_EXTRAS" FORCE="$force" BUCKET="$mount_bucket_name" GCS_MOUNT="$GCS_MOUNT" \
  GCSFUSE_FLAGS="$GCSFUSE_FLAGS" bash "$REMOTE_DIR/tpu/setup.sh" --on-worker)"
