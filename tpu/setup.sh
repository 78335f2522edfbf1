#!/usr/bin/env bash
# Usage: tpu/setup.sh [--dry-run] [--force]
#
# On every worker of $TPU_NAME: creates the virtual environment ~/$VENV_DIR (Python
# $PYTHON_VERSION; the TPU images ship 3.10, so it comes from uv when the image lacks it) and
# runs pip install -e "~/$REMOTE_DIR[$PIP_EXTRAS]". Idempotent: an existing venv is kept and pip
# runs again only when pyproject.toml or PIP_EXTRAS changed (--force: always). Then checks that
# jax and libtpu import metadata is there. Run tpu/sync.sh first.
#   --dry-run   print the gcloud command instead of running it
#
# Worker side (what the ssh command runs): bash ~/$REMOTE_DIR/tpu/setup.sh --on-worker, with
# VENV_DIR, PYTHON_VERSION, PIP_EXTRAS and FORCE from the environment.
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

if [[ "${1:-}" == --on-worker ]]; then
  on_worker
  exit 0
fi

force=0
while (($#)); do
  if common_flag "$1"; then
    shift
    continue
  fi
  case "$1" in
    --force) force=1 ;;
    *) die "unknown argument '$1' (see $SCRIPT_NAME --help)." ;;
  esac
  shift
done

load_config
require TPU_NAME ZONE PROJECT
on_workers all "$(shell_quote env VENV_DIR="$VENV_DIR" PYTHON_VERSION="$PYTHON_VERSION" \
  PIP_EXTRAS="$PIP_EXTRAS" FORCE="$force" bash "$REMOTE_DIR/tpu/setup.sh" --on-worker)"
