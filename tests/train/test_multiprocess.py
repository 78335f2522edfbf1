"""Two processes over loopback: a few sharded train steps, a checkpoint, and a resume."""

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, total_steps):
  port = _free_port()
  procs = []
  for i in range(2):
    env = {
      **os.environ,
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
      "CLIPJAX_NUM_PROCESSES": "2",
      "CLIPJAX_PROCESS_ID": str(i),
      "JAX_PLATFORMS": "cpu",
    }
    cmd = [
      sys.executable, "-m", "clipjax.main",
      "--config", os.path.join(REPO, "configs/quickstart.py:smoke"),
      "--workdir", str(workdir),
      "--config.distributed=on",
      "--config.eval.datasets={}",
      f"--config.total_steps={total_steps}",
      "--config.checkpoint.every_steps=2",
    ]  # fmt: skip
    procs.append(
      subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    outs.append(out)
  return outs


@pytest.mark.multiprocess
def test_two_processes_train_checkpoint_and_resume(tmp_path):
  outs = _launch(tmp_path, 4)
  assert "step 4/4" in outs[0]
  assert "step 4/4" not in outs[1]  # only process 0 prints and writes metrics
  ckpt = tmp_path / "checkpoints" / "4"
  assert sorted(p.name for p in (ckpt / "data_iter").glob("process_*")) == [
    "process_0-of-2.json",
    "process_1-of-2.json",
  ]
  events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [e["step"] for e in events if e.get("kind") == "train"] == [1, 2, 3, 4]
  # The same command again: both processes restore state and data iterators at step 4.
  outs = _launch(tmp_path, 4)
  assert "Resumed from" in outs[0] and "at step 4" in outs[0]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["finished"] and summary["step"] == 4
