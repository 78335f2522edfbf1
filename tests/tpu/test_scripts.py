"""tpu/*.sh: syntax, shellcheck, the gcloud commands of every --dry-run, config errors, and the
worker-side job control (detached start, PID file, stop) run locally with a fake venv python."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TPU = ROOT / "tpu"
SCRIPTS = sorted(TPU.glob("*.sh"))
EXECUTABLES = ("create", "sync", "setup", "run", "logs", "stop", "delete")

ENV_FILE = """\
TPU_NAME=test-tpu
ZONE=us-central2-b
PROJECT=test-proj
ACCELERATOR_TYPE=v4-32
RUNTIME_VERSION=tpu-ubuntu2204-base
BUCKET=gs://test-bucket/
"""
LOCATION = ["--zone=us-central2-b", "--project=test-proj"]


@pytest.fixture
def env(tmp_path):
  """A clean environment: test env file, throwaway HOME, none of the config variables set."""
  (tmp_path / "env.sh").write_text(ENV_FILE)
  home = tmp_path / "home"
  home.mkdir()
  keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
  e = {k: v for k, v in os.environ.items() if k in keep}
  e.update(TPU_ENV_FILE=str(tmp_path / "env.sh"), HOME=str(home))
  return e


def sh(script: str, *args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
  p = subprocess.run(
    ["bash", str(TPU / f"{script}.sh"), *args],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  if check and p.returncode:
    raise AssertionError(f"{script} {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
  return p


def commands(stdout: str) -> list[list[str]]:
  """The `+ CMD` lines of a dry run (arguments may span lines inside quotes), as argv lists."""
  chunks = re.split(r"(?m)^\+ ", stdout)[1:]
  return [shlex.split(c.split("\n# ")[0]) for c in chunks]


def dry(script: str, *args: str, env: dict) -> list[list[str]]:
  return commands(sh(script, "--dry-run", *args, env=env).stdout)


def remote(argv: list[str]) -> str:
  (cmd,) = [a.removeprefix("--command=") for a in argv if a.startswith("--command=")]
  return cmd


# ---------------------------------------------------------------------------------------------
# Static checks.


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
  assert p.returncode == 0, p.stderr


def test_shellcheck():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck binary not installed")
  files = [str(p.relative_to(ROOT)) for p in SCRIPTS] + ["tpu/env.sh.example"]
  p = subprocess.run(
    ["shellcheck", "-x", *files], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert p.returncode == 0, p.stdout + p.stderr


def test_all_scripts_present_and_executable():
  for name in EXECUTABLES:
    path = TPU / f"{name}.sh"
    assert path.is_file() and os.access(path, os.X_OK), path
    assert "set -euo pipefail" in path.read_text()


@pytest.mark.parametrize("name", EXECUTABLES)
def test_help_is_the_header(name, env):
  out = sh(name, "--help", env=env).stdout
  assert out.startswith(f"Usage: tpu/{name}.sh [--dry-run]")


# ---------------------------------------------------------------------------------------------
# Dry runs print the exact gcloud commands.


def test_create_on_demand_and_spot(env):
  (argv,) = dry("create", env=env)
  assert argv == [
    "gcloud", "compute", "tpus", "tpu-vm", "create", "test-tpu", *LOCATION,
    "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
  ]  # fmt: skip
  (argv,) = dry("create", "--spot", env=env)
  assert argv[-1] == "--spot" and argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] + [
    "test-tpu"
  ]


def test_create_queued_spot_with_extra_flags(env):
  env["CREATE_FLAGS"] = "--service-account=sa@p.iam.gserviceaccount.com --internal-ips"
  argv, describe = dry("create", "--queued", "--spot", "--valid-until=6h", "--wait", env=env)
  assert argv == [
    "gcloud", "compute", "tpus", "queued-resources", "create", "test-tpu-qr", *LOCATION,
    "--node-id=test-tpu", "--accelerator-type=v4-32",
    "--runtime-version=tpu-ubuntu2204-base", "--service-account=sa@p.iam.gserviceaccount.com",
    "--internal-ips", "--spot", "--valid-until-duration=6h",
  ]  # fmt: skip
  assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe"] + [
    "test-tpu-qr"
  ]
  assert "--format=value(state.state)" in describe


def test_delete(env):
  assert dry("delete", env=env) == [
    ["gcloud", "compute", "tpus", "tpu-vm", "delete", "test-tpu", *LOCATION]
  ]
  assert dry("delete", "--queued", "--yes", env=env) == [
    ["gcloud", "compute", "tpus", "queued-resources", "delete", "test-tpu-qr", *LOCATION]
    + ["--force", "--quiet"]
  ]


def test_sync_scp(env):
  ssh, scp = dry("sync", env=env)
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "test-tpu"]
  assert "--worker=all" in ssh and all(f in ssh for f in LOCATION)
  cmd = remote(ssh)
  assert "rm -rf clipjax;" in cmd and ".clipjax-tpu/job.pid" in cmd  # refuses while a job runs
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert {"--recurse", "--worker=all", *LOCATION} <= set(scp)
  assert scp[-5].endswith("/clipjax") and scp[-4] == "test-tpu:./"
  ssh, _ = dry("sync", "--force", env=env)
  assert "job.pid" not in remote(ssh)


def test_sync_git_commit(env):
  sha = "0123456789abcdef0123456789abcdef01234567"
  (ssh,) = dry("sync", f"--git={sha}", "--git-url=https://example.com/c.git", env=env)
  assert "--worker=all" in ssh
  cmd = remote(ssh)
  assert "git clone --quiet https://example.com/c.git clipjax" in cmd
  assert f"checkout --quiet --force --detach {sha}" in cmd


def test_setup(env):
  (ssh,) = dry("setup", env=env)
  assert "--worker=all" in ssh and all(f in ssh for f in LOCATION)
  words = shlex.split(remote(ssh))
  assert words[-2:] == ["clipjax/tpu/setup.sh", "--on-worker"]
  assert {"PIP_EXTRAS=tpu", "BUCKET=test-bucket", "GCS_MOUNT=gcs", "FORCE=0"} <= set(words)
  (ssh,) = dry("setup", "--no-mount", "--force", env=env)
  assert {"BUCKET=", "FORCE=1"} <= set(shlex.split(remote(ssh)))


def test_run_default_workdir_on_gcs(env):
  (ssh,) = dry(
    "run", "--name=b32", "--", "--config", "configs/quickstart.py:smoke",
    '--config.data.train={"name": "array_record", "paths": "/x y"}', env=env,
  )  # fmt: skip
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "test-tpu"]
  assert "--worker=all" in ssh and all(f in ssh for f in LOCATION)
  words = shlex.split(remote(ssh))
  i = words.index("--")
  assert words[i - 3 : i] == ["clipjax/tpu/run.sh", "--on-worker", "--name=b32"]
  assert words[i + 1 :] == [
    "python", "-m", "clipjax.main", "--config", "configs/quickstart.py:smoke",
    '--config.data.train={"name": "array_record", "paths": "/x y"}',
    "--config.distributed=on", "--workdir=gs://test-bucket/clipjax/runs/b32",
  ]  # fmt: skip


def test_run_explicit_workdir_distributed_and_env(env):
  env["EXTRA_ENV"] = "TFDS_DATA_DIR=/home/u/gcs/tfds XLA_FLAGS=--xla_dump_to=/tmp/d"
  (ssh,) = dry(
    "run", "--name=r", "--workdir=gs://other/wd", "--",
    "--config=configs/x.py", "--config.distributed=auto", env=env,
  )  # fmt: skip
  words = shlex.split(remote(ssh))
  assert "EXTRA_ENV=TFDS_DATA_DIR=/home/u/gcs/tfds XLA_FLAGS=--xla_dump_to=/tmp/d" in words
  assert words[-3:] == [
    "--config=configs/x.py",
    "--config.distributed=auto",
    "--workdir=gs://other/wd",
  ]


@pytest.mark.parametrize(
  ("args", "message"),
  [
    (["--", "--config", "c.py"], "--name=RUN is required"),
    (["--name=r"], "no clipjax arguments"),
    (["--name=r", "--", "--config.lr=1"], "need --config"),
    (["--name=r", "--", "--config", "c.py", "--workdir=/tmp/x"], "before '--'"),
    (["--name=r", "--workdir=/tmp/wd", "--", "--config", "c.py"], "must be on gs://"),
    (["--name=a/b", "--", "--config", "c.py"], "--name=a/b"),
    (["--bogus"], "unknown argument '--bogus'"),
  ],
)
def test_run_bad_arguments(env, args, message):
  p = sh("run", "--dry-run", *args, env=env, check=False)
  assert p.returncode != 0 and message in p.stderr and "gcloud" not in p.stdout


def test_stop_and_logs(env):
  (ssh,) = dry("stop", env=env)
  assert "--worker=all" in ssh
  assert shlex.split(remote(ssh))[-3:] == ["clipjax/tpu/stop.sh", "--on-worker", "--grace=300"]
  (ssh,) = dry("stop", "--kill", "--worker=2", "--grace=5", env=env)
  assert "--worker=2" in ssh and remote(ssh).endswith("--on-worker --grace=5 --kill")
  (ssh,) = dry("logs", env=env)
  assert "--worker=0" in ssh and remote(ssh).endswith("tail -n 100 -F .clipjax-tpu/current.log")
  (ssh,) = dry("logs", "--worker=all", "--no-follow", "--lines=5", "--name=b32", env=env)
  assert "--worker=all" in ssh and remote(ssh).endswith("tail -n 5 clipjax-logs/b32/worker*.log")


def test_environment_overrides_env_file(env):
  env.update(TPU_NAME="other-tpu", ZONE="europe-west4-a", BUCKET="b2")
  (argv,) = dry("delete", env=env)
  assert argv[5:8] == ["other-tpu", "--zone=europe-west4-a", "--project=test-proj"]
  (ssh,) = dry("run", "--name=r", "--", "--config", "c.py", env=env)
  assert remote(ssh).endswith("--workdir=gs://b2/clipjax/runs/r")


@pytest.mark.parametrize(
  ("script", "args", "missing"),
  [
    ("create", [], ["ACCELERATOR_TYPE"]),
    ("create", [], ["RUNTIME_VERSION"]),
    ("sync", [], ["TPU_NAME"]),
    ("setup", [], ["BUCKET"]),
    ("run", ["--name=r", "--", "--config", "c.py"], ["BUCKET"]),
    ("delete", [], ["ZONE", "PROJECT"]),
  ],
)
def test_missing_variable_is_named(env, tmp_path, script, args, missing):
  kept = [ln for ln in ENV_FILE.splitlines() if ln.split("=")[0] not in missing]
  (tmp_path / "env.sh").write_text("\n".join(kept) + "\n")
  p = sh(script, "--dry-run", *args, env=env, check=False)
  assert p.returncode == 2 and "gcloud" not in p.stdout
  assert f"{' '.join(missing)} not set" in p.stderr and "env.sh.example" in p.stderr


def test_missing_env_file_and_bad_names(env):
  env["TPU_ENV_FILE"] = "/nonexistent/env.sh"
  p = sh("delete", "--dry-run", env=env, check=False)
  assert p.returncode == 2 and "TPU_ENV_FILE=/nonexistent/env.sh does not exist" in p.stderr
  env.pop("TPU_ENV_FILE")
  env.update(TPU_NAME="Bad_Name", ZONE="z", PROJECT="p")
  assert "not a valid Cloud TPU name" in sh("delete", "--dry-run", env=env, check=False).stderr
  env.update(TPU_NAME="ok", REMOTE_DIR="../etc")
  assert "REMOTE_DIR=../etc must be" in sh("sync", "--dry-run", env=env, check=False).stderr


# ---------------------------------------------------------------------------------------------
# Worker side, run locally: detached start, PID file, refusal, logs, graceful and forced stop.

FAKE_PYTHON = """\
#!/usr/bin/env bash
echo "fake python $*"
echo "FOO=${FOO:-} cwd=$PWD"
if [[ -n "${FAIL:-}" ]]; then echo "boom"; exit 3; fi
if [[ -n "${IGNORE_TERM:-}" ]]; then trap '' TERM; else trap 'echo got SIGTERM; exit 0' TERM; fi
while true; do sleep 0.1; done
"""


@pytest.fixture
def worker(env, tmp_path):
  home = Path(env["HOME"])
  (home / "venv" / "bin").mkdir(parents=True)
  py = home / "venv" / "bin" / "python"
  py.write_text(FAKE_PYTHON)
  py.chmod(0o755)
  env.update(
    VENV_DIR="venv", STATE_DIR=".st", LOG_DIR="logs", WORKER_ID="0", LAUNCH_CHECK_S="1",
    EXTRA_ENV="FOO=bar",
  )  # fmt: skip
  yield env, home
  pid_file = home / ".st" / "job.pid"  # never leave a process behind
  if pid_file.exists():
    pid = int(pid_file.read_text().split()[0])
    with contextlib.suppress(ProcessLookupError):
      if pid != os.getpid() and os.getpgid(pid) == pid:  # only a job that run.sh started
        os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
  stat = Path(f"/proc/{pid}/stat")
  return stat.exists() and stat.read_text().rsplit(") ", 1)[1][0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_worker_run_and_graceful_stop(worker):
  env, home = worker
  args = ["--on-worker", "--name=t1", "--", "python", "-m", "clipjax.main", "--config", "a b.py"]
  out = sh("run", *args, env=env).stdout
  pid, start = (home / ".st" / "job.pid").read_text().split()
  assert f"worker 0: started pid {pid}" in out and _alive(int(pid))
  assert os.getpgid(int(pid)) == int(pid)  # own process group: stop.sh can end all of it
  log = home / "logs" / "t1" / "worker0.log"
  assert os.readlink(home / ".st" / "current.log") == str(log)
  text = log.read_text()
  assert f"{home}/venv/bin/python -m clipjax.main --config 'a b.py'" in text.splitlines()[0]
  assert "fake python -m clipjax.main --config a b.py" in text
  assert f"FOO=bar cwd={ROOT}" in text

  again = sh("run", *args, env=env, check=False)
  assert again.returncode != 0 and f"already running (pid {pid}" in again.stderr

  out = sh("stop", "--on-worker", "--grace=20", env=env).stdout
  assert "SIGTERM" in out and "stopped" in out and "SIGKILL" not in out
  assert not _alive(int(pid)) and not (home / ".st" / "job.pid").exists()
  assert log.read_text().rstrip().endswith("got SIGTERM")
  assert "no clipjax job running" in sh("stop", "--on-worker", env=env).stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_worker_stop_escalates_and_ignores_stale_pid(worker):
  env, home = worker
  env["IGNORE_TERM"] = "1"
  sh("run", "--on-worker", "--name=t2", "--", "python", "-m", "clipjax.main", env=env)
  pid = int((home / ".st" / "job.pid").read_text().split()[0])
  out = sh("stop", "--on-worker", "--grace=1", env=env).stdout
  assert "SIGKILL to its process group" in out and not _alive(pid)

  # A PID file whose start time does not match (recycled PID) is never acted on.
  (home / ".st" / "job.pid").write_text(f"{os.getpid()} 1\n")
  assert "no clipjax job running" in sh("stop", "--on-worker", env=env).stdout
  assert _alive(os.getpid())


def test_worker_run_reports_immediate_failure(worker):
  env, home = worker
  env["FAIL"] = "1"
  p = sh("run", "--on-worker", "--name=t3", "--", "python", "-m", "x", env=env, check=False)
  assert p.returncode == 1 and "exited within 1s" in p.stderr and "boom" in p.stderr
  assert not (home / ".st" / "job.pid").exists()


def test_worker_run_needs_setup(worker):
  env, _ = worker
  env["VENV_DIR"] = "missing-venv"
  p = sh("run", "--on-worker", "--name=t4", "--", "python", "-m", "x", env=env, check=False)
  assert p.returncode == 2 and "missing-venv/bin/python not found: run tpu/setup.sh" in p.stderr


def test_worker_setup_is_idempotent_and_checks_libtpu(env):
  """An up-to-date venv is left alone; a venv without libtpu fails with the cause named."""
  home = Path(env["HOME"])
  venv = home / "venv"
  (venv / "bin").mkdir(parents=True)
  py = venv / "bin" / "python"
  py.write_text(f'#!/usr/bin/env bash\nexec {shlex.quote(sys.executable)} "$@"\n')
  py.chmod(0o755)
  digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
  env.update(VENV_DIR="venv", PYTHON_VERSION="3.11", BUCKET="")
  for extras, ok in (("", True), ("tpu", False)):
    (venv / ".clipjax-install").write_text(f"{digest} extras={extras}\n")
    p = sh("setup", "--on-worker", env={**env, "PIP_EXTRAS": extras}, check=False)
    assert "is up to date" in p.stderr, p.stderr
    if ok:
      assert p.returncode == 0 and re.search(r"clipjax=\S+ jax=\S+ jaxlib=\S+", p.stdout)
    else:
      assert p.returncode != 0 and "libtpu not installed" in p.stderr
      assert 'the extra tpu = ["jax[tpu]..."]' in p.stderr


def test_dry_run_never_calls_gcloud(env, tmp_path):
  """With a gcloud on PATH that records its calls, --dry-run runs none of them."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "calls"
  fake = bin_dir / "gcloud"
  fake.write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\n')
  fake.chmod(0o755)
  env["PATH"] = f"{bin_dir}:{env['PATH']}"
  for name, args in [
    ("create", ["--queued", "--wait"]), ("sync", []), ("setup", []),
    ("run", ["--name=r", "--", "--config", "c.py"]), ("logs", []), ("stop", []), ("delete", []),
  ]:  # fmt: skip
    sh(name, "--dry-run", *args, env=env)
  assert not calls.exists()
  # Without --dry-run the same gcloud is really called, with the printed arguments.
  sh("delete", "--yes", env=env)
  assert calls.read_text().split() == [
    "compute",
    "tpus",
    "tpu-vm",
    "delete",
    "test-tpu",
    *LOCATION,
    "--quiet",
  ]
