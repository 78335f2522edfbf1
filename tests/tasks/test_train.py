"""End-to-end trainer tests: outputs, resume, SIGKILL/SIGTERM, NaN guard, config refusal."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from clipjax import checkpointing, metrics
from clipjax import methods as methods_lib
from clipjax.methods.base import Method
from clipjax.tasks import train as train_task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config():
  sys.path.insert(0, REPO)
  from configs import quickstart

  c = quickstart.get_config("smoke")
  c.eval.datasets = {}
  return c


def _cli(workdir, *overrides):
  return [
    sys.executable,
    "-m",
    "clipjax.main",
    "--config",
    os.path.join(REPO, "configs/quickstart.py:smoke"),
    "--workdir",
    str(workdir),
    "--config.eval.datasets={}",
    *overrides,
  ]


def _params(workdir):
  return jax.device_get(checkpointing.restore_params(os.path.join(workdir, "checkpoints")))


def test_run_writes_outputs_and_resumes(tmp_path):
  c = _config()
  c.total_steps = 5  # not a multiple of checkpoint.every_steps: the last step is still saved
  summary = train_task.run(c, str(tmp_path))
  assert summary["finished"] and summary["step"] == c.total_steps
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["total_steps"] == c.total_steps
  events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert events and all("step" in e for e in events)
  assert [e["step"] for e in events if e.get("kind") == "train"] == list(
    range(1, c.total_steps + 1)
  )
  assert all(np.isfinite(e["loss"]) for e in events if e.get("kind") == "train")
  assert json.loads((tmp_path / "summary.json").read_text())["step"] == c.total_steps
  ck = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_every=1)
  assert ck.latest_step() == c.total_steps
  ck.close()
  # Same command again: resumes at the end and does not train further.
  again = train_task.run(c, str(tmp_path))
  assert again["step"] == c.total_steps


def test_incompatible_config_is_refused(tmp_path):
  c = _config()
  train_task.run(c, str(tmp_path))
  c.optim.lr = 0.5
  with pytest.raises(ValueError, match=r"optim\.lr: 0\.001 -> 0\.5"):
    train_task.run(c, str(tmp_path))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  def factory():
    def loss(emb, mstate, rng):
      del rng
      value = jax.numpy.where(mstate["count"] >= 3, jax.numpy.nan, jax.numpy.mean(emb.zimg))
      return value, {}, {"count": mstate["count"] + 1}

    return Method(loss=loss, init=lambda _: {"count": jax.numpy.zeros((), jax.numpy.int32)})

  methods_lib.REGISTRY["_nan_after_3"] = factory
  try:
    c = _config()
    c.method.name = "_nan_after_3"
    c.checkpoint.every_steps = 2
    c.log_every_steps = 100
    with pytest.raises(metrics.NonFiniteError, match="step 4"):
      train_task.run(c, str(tmp_path))
  finally:
    del methods_lib.REGISTRY["_nan_after_3"]
  ck = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_every=1)
  assert ck.all_steps() == [2]
  ck.close()
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(_params(tmp_path)))
  assert not (tmp_path / "summary.json").exists()


def _wait_for_step(workdir, step, proc, timeout=300):
  ckpt = os.path.join(workdir, "checkpoints")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if os.path.isdir(ckpt):
      done = [int(d) for d in os.listdir(ckpt) if d.isdigit()]
      if done and max(done) >= step:
        return
    if proc.poll() is not None:
      raise AssertionError(f"process exited ({proc.returncode}) before step {step}")
    time.sleep(0.02)
  raise AssertionError(f"no checkpoint >= {step} after {timeout}s")


LONG = [
  "--config.total_steps=30",
  "--config.checkpoint.every_steps=1",
  "--config.log_every_steps=1",
]


@pytest.mark.slow
def test_sigkill_then_restart_is_bit_identical(tmp_path):
  ref, killed = tmp_path / "ref", tmp_path / "killed"
  subprocess.run(_cli(ref, *LONG), check=True, capture_output=True, timeout=600)
  proc = subprocess.Popen(_cli(killed, *LONG), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_step(killed, random.Random(0).randint(2, 8), proc)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(timeout=60) == -signal.SIGKILL
  out = subprocess.run(_cli(killed, *LONG), check=True, capture_output=True, text=True, timeout=600)
  assert "Resumed from" in out.stdout
  for a, b in zip(jax.tree.leaves(_params(ref)), jax.tree.leaves(_params(killed)), strict=True):
    np.testing.assert_array_equal(a, b)
  assert json.loads((killed / "summary.json").read_text())["finished"]


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
  proc = subprocess.Popen(
    _cli(tmp_path, *LONG), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  _wait_for_step(tmp_path, 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "Preemption requested" in out
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert not summary["finished"] and summary["step"] < 30
  ck = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_every=1)
  assert ck.latest_step() == summary["step"]
  ck.close()
