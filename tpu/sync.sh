#!/usr/bin/env bash
# Usage: tpu/sync.sh [--dry-run] [--force] [--git=COMMIT [--git-url=URL]]
#
# Puts the code on every worker of $TPU_NAME at ~/$REMOTE_DIR (the same tree on all of them).
#   (default)       copy this checkout: the files git knows (tracked, plus untracked ones that are
#                   not ignored, uncommitted edits included) are staged locally and sent with
#                   gcloud ... scp --recurse --worker=all into a fresh ~/$REMOTE_DIR
#   --git=COMMIT    instead, each worker clones $GIT_URL (default: this checkout's origin;
#                   --git-url=URL overrides) and checks out COMMIT (a sha, or a ref resolved here
#                   to its sha, e.g. --git=HEAD). The commit must be pushed; a private repo needs
#                   credentials on the workers.
#   --force         sync even while a clipjax job runs on a worker (it would lose its code dir)
#   --dry-run       print the gcloud commands instead of running them
# Then: tpu/setup.sh (needed again only when pyproject.toml changed).
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

force=0
commit=""
git_url_flag=""
while (($#)); do
  if common_flag "$1"; then
    shift
    continue
  fi
  case "$1" in
    --force) force=1 ;;
    --git=*) commit="${1#*=}" ;;
    --git-url=*) git_url_flag="${1#*=}" ;;
    *) die "unknown argument '$1' (see $SCRIPT_NAME --help)." ;;
  esac
  shift
done
if [[ -n "$git_url_flag" && -z "$commit" ]]; then die "--git-url needs --git=COMMIT."; fi

load_config
require TPU_NAME ZONE PROJECT

# Refuses (per worker) while our job runs there, unless --force.
running_check=":"
if ((!force)); then
  pid_file="$(shell_quote "$STATE_DIR/job.pid")"
  running_check="if [ -f $pid_file ] && read -r pid _ <$pid_file && kill -0 \"\$pid\" 2>/dev/null; \
then echo \"\$(hostname): a clipjax job is running (tpu/stop.sh first, or \
tpu/sync.sh --force)\" >&2; exit 1; fi"
fi

if [[ -n "$commit" ]]; then
  url="${git_url_flag:-$GIT_URL}"
  if [[ -z "$url" ]]; then
    url="$(git -C "$REPO_DIR" remote get-url origin 2>/dev/null)" ||
      die "GIT_URL not set and this checkout has no 'origin' remote: pass --git-url=URL."
  fi
  if sha="$(git -C "$REPO_DIR" rev-parse --verify --quiet "$commit^{commit}" 2>/dev/null)"; then
    if [[ -z "$(git -C "$REPO_DIR" branch -r --contains "$sha" 2>/dev/null)" ]]; then
      echo "$SCRIPT_NAME: warning: $sha is on no remote-tracking branch here; push it first." >&2
    fi
  elif [[ "$commit" =~ ^[0-9a-f]{40}$ ]]; then
    sha="$commit"
  else
    die "--git=$commit is not a commit of this checkout; pass a full 40-hex sha."
  fi
  q_dir="$(shell_quote "$REMOTE_DIR")"
  q_url="$(shell_quote "$url")"
  on_workers all "set -e; $running_check
if [ -d $q_dir/.git ]; then git -C $q_dir remote set-url origin $q_url; \
git -C $q_dir fetch --quiet origin; else rm -rf $q_dir; git clone --quiet $q_url $q_dir; fi
git -C $q_dir checkout --quiet --force --detach $sha
echo \"\$(hostname): $REMOTE_DIR at \$(git -C $q_dir rev-parse --short HEAD)\""
  exit 0
fi

# Default: stage the files git knows into STAGE/<basename of REMOTE_DIR>, then scp --recurse.
name="$(basename "$REMOTE_DIR")"
parent="$(dirname "$REMOTE_DIR")"
if ((DRY_RUN)); then
  stage="/tmp/clipjax-sync.XXXXXX"
  echo "# stage the files of $REPO_DIR listed by git ls-files -co --exclude-standard in $stage/$name"
else
  git -C "$REPO_DIR" rev-parse --git-dir >/dev/null 2>&1 ||
    die "$REPO_DIR is not a git checkout; use --git=COMMIT."
  stage="$(mktemp -d /tmp/clipjax-sync.XXXXXX)"
  trap 'rm -rf "$stage"' EXIT
  mkdir "$stage/$name"
  (
    cd "$REPO_DIR"
    git ls-files -z -co --exclude-standard |
      while IFS= read -r -d '' f; do
        # Deleted-but-tracked files are listed too; tpu/env.sh is local configuration.
        if [[ (-e "$f" || -L "$f") && "$f" != tpu/env.sh ]]; then printf '%s\0' "$f"; fi
      done |
      tar --null -T - -cf - | tar -xf - -C "$stage/$name"
  )
  echo "$SCRIPT_NAME: staged $(find "$stage/$name" -type f | wc -l) files" >&2
fi
on_workers all "set -e; $running_check; rm -rf $(shell_quote "$REMOTE_DIR"); \
mkdir -p $(shell_quote "$parent")"
run_cmd gcloud compute tpus tpu-vm scp --recurse --compress "$stage/$name" "$TPU_NAME:$parent/" \
  --worker=all --zone="$ZONE" --project="$PROJECT"
