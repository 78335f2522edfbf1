"""End-to-end trainer tests: outputs, resume, SIGKILL/SIGTERM, NaN guard, config refusal."""

import gc
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
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
    with pytest.raises(metrics.NonFiniteError, match=r"loss.*at steps 3\.\.4"):
      train_task.run(c, str(tmp_path))
  finally:
    del methods_lib.REGISTRY["_nan_after_3"]
  ck = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_every=1)
  assert ck.all_steps() == [2]
  ck.close()
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(_params(tmp_path)))
  assert not (tmp_path / "summary.json").exists()


def _nan_update_after(n):
  """A method whose loss stays finite while its gradient is NaN from step n + 1 on."""

  def factory():
    def loss(emb, mstate, rng):
      del rng
      m = jnp.mean(emb.zimg)
      # sqrt(|m - m|) is 0 with a 0/0 derivative; `cond` keeps it out of the earlier steps.
      value = jax.lax.cond(
        mstate["count"] >= n, lambda m: m + jnp.sqrt(jnp.abs(m - m)), lambda m: m, m
      )
      return value, {}, {"count": mstate["count"] + 1}

    return Method(loss=loss, init=lambda _: {"count": jnp.zeros((), jnp.int32)})

  return factory


def test_non_finite_update_with_finite_loss_is_never_saved(tmp_path):
  methods_lib.REGISTRY["_nan_update_after_2"] = _nan_update_after(2)
  try:
    c = _config()
    c.method.name = "_nan_update_after_2"
    c.checkpoint.every_steps = 1
    c.checkpoint.max_to_keep = 2
    with pytest.raises(metrics.NonFiniteError, match=r"optimizer state.*at step 3.*steps \[1, 2\]"):
      train_task.run(c, str(tmp_path))
  finally:
    del methods_lib.REGISTRY["_nan_update_after_2"]
  events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [e["step"] for e in events] == [1, 2] and np.isfinite(events[-1]["loss"])
  assert checkpointing.saved_steps(str(tmp_path / "checkpoints")) == [1, 2]
  for step in (1, 2):  # restore_params verifies checksums and finiteness
    checkpointing.restore_params(str(tmp_path / "checkpoints"), step)


def _events(workdir):
  """metrics.jsonl (strict JSON) without the wall-clock rates, which differ between runs."""
  text = (workdir / "metrics.jsonl").read_text()
  events = [json.loads(x, parse_constant=pytest.fail) for x in text.splitlines()]
  return [{k: v for k, v in e.items() if not k.endswith("_per_s")} for e in events]


def _corrupt_data_files(workdir, step, n=256):
  """Flips up to `n` bytes in the middle of every OCDBT data file of a checkpoint step.

  Every file, not only the largest: which file holds which arrays varies from run to run
  (concurrent writes), and a flip in only one file could miss every byte the restore reads.
  """
  files = sorted((workdir / "checkpoints" / str(step) / "state").glob("ocdbt.process_*/d/*"))
  assert files, f"no OCDBT data files in step {step}"
  for path in files:
    data = bytearray(path.read_bytes())
    k = min(n, len(data) // 2)
    mid = len(data) // 2
    data[mid : mid + k] = bytes(255 - b for b in data[mid : mid + k])
    path.write_bytes(bytes(data))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupted_checkpoint_and_lost_eval_on_resume(tmp_path, capsys):
  c = _config()
  c.eval.datasets = {"shapes": {"name": "synthetic", "split": "test", "seed": 0}}
  c.eval.every_steps = 2
  c.eval.max_examples = 16
  summary = train_task.run(c, str(tmp_path))
  params4 = _params(tmp_path)
  first = _events(tmp_path)
  assert [(e["step"], e["kind"]) for e in first] == [
    (1, "train"),
    (2, "train"),
    (2, "eval"),
    (3, "train"),
    (4, "train"),
    (4, "eval"),
  ]
  # Flipped bytes in the newest checkpoint: detected, step 2 used, steps 3-4 trained again.
  _corrupt_data_files(tmp_path, 4)
  capsys.readouterr()
  again = train_task.run(c, str(tmp_path))
  gc.collect()  # orbax's orphaned reads of the rejected step warn now, under the filter
  err = capsys.readouterr().err
  # (a checksum mismatch, or a read error where the bytes hit orbax's own metadata)
  assert "checkpoint step 4: " in err and "Resuming from step 2" in err
  assert (tmp_path / "checkpoints" / "rejected" / "4").is_dir()
  for a, b in zip(jax.tree.leaves(params4), jax.tree.leaves(_params(tmp_path)), strict=True):
    np.testing.assert_array_equal(a, b)
  events = _events(tmp_path)
  assert [(e["step"], e["kind"]) for e in events] == [(e["step"], e["kind"]) for e in first]
  assert events == first  # bit-exact resume: the same numbers, each step once
  # Killed after checkpoint 4 committed, before its evaluation was written: run it on resume.
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events[:-1]))
  final = train_task.run(c, str(tmp_path))
  assert _events(tmp_path) == first
  shown = sorted(k for k in summary if k.startswith("shapes/") and not k.endswith("_per_s"))
  assert shown and metrics.dumps([final[k] for k in shown]) == metrics.dumps(
    [summary[k] for k in shown]
  )
  assert metrics.dumps([again[k] for k in shown]) == metrics.dumps([summary[k] for k in shown])


def test_bad_records_reported_on_console_and_in_summary(tmp_path, capsys):
  from PIL import Image

  rows = [b"path,caption"]
  for i in range(20):
    Image.fromarray(np.full((40, 40, 3), 10 * i, np.uint8)).save(tmp_path / f"{i}.png")
    rows.append(f"{i}.png,a picture of shade {i}".encode())
  rows.insert(6, b"3.png,caf\xe9 au lait")  # Latin-1: not UTF-8
  (tmp_path / "caps.csv").write_bytes(b"\n".join(rows) + b"\n")
  c = _config()
  c.data.train = {"name": "folder", "table": str(tmp_path / "caps.csv")}
  c.data.max_bad_fraction = 0.1
  c.total_steps = 3  # 48 examples: the bad record is read in 3 epochs, counted once
  summary = train_task.run(c, str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert re.search(r"data: skipped 1 more bad record\(s\), 1 of \d+ read so far", out)
  assert "caps.csv row 5 (line 7): caption is not valid UTF-8" in out
  report = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
  assert report == summary["data"]
  assert (report["records_seen"], report["bad_records"]) == (21, 1)
  assert report["first_bad"] == [
    {
      "source": f"folder:{tmp_path / 'caps.csv'}",
      "index": 5,
      "reason": f"{tmp_path / 'caps.csv'} row 5 (line 7): caption is not valid UTF-8 "
      "(byte 0xe9 at character 3)",
    }
  ]


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
  "--config.total_steps=12",
  "--config.checkpoint.every_steps=1",
  "--config.log_every_steps=1",
]


def _interrupt_at_step_3(workdir, sig):
  """Runs the long CLI, sends `sig` once step 3 is logged; checks one save and a clean exit."""
  proc = subprocess.Popen(
    _cli(workdir, *LONG), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  _wait_for_step(workdir, 3, proc)
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert f"Preemption requested ({signal.Signals(sig).name})" in out
  summary = json.loads((workdir / "summary.json").read_text())
  assert not summary["finished"]
  assert checkpointing.saved_steps(str(workdir / "checkpoints"))[-1] == summary["step"]
  return summary


@pytest.mark.slow
def test_sigkill_and_sigterm_then_restart_are_bit_identical(tmp_path):
  ref, killed, termed = tmp_path / "ref", tmp_path / "killed", tmp_path / "termed"
  subprocess.run(_cli(ref, *LONG), check=True, capture_output=True, timeout=600)
  # SIGKILL right after a checkpoint commits (often during the next step's save or log write).
  proc = subprocess.Popen(_cli(killed, *LONG), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_step(killed, random.Random(0).randint(2, 8), proc)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(timeout=60) == -signal.SIGKILL
  out = subprocess.run(_cli(killed, *LONG), check=True, capture_output=True, text=True, timeout=600)
  assert "Resumed from" in out.stdout
  # SIGTERM: saves the step it is at and exits 0; the restart resumes from there.
  summary = _interrupt_at_step_3(termed, signal.SIGTERM)
  assert summary["step"] < 12
  subprocess.run(_cli(termed, *LONG), check=True, capture_output=True, timeout=600)
  for workdir in (killed, termed):
    for a, b in zip(jax.tree.leaves(_params(ref)), jax.tree.leaves(_params(workdir)), strict=True):
      np.testing.assert_array_equal(a, b)
    assert _events(workdir) == _events(ref)  # each step once, with the same numbers
    assert json.loads((workdir / "summary.json").read_text())["finished"]


@pytest.mark.slow
def test_sigterm_after_a_non_finite_update_saves_nothing(tmp_path):
  args = ["--config.total_steps=1000", "--config.optim.lr=inf", "--config.log_every_steps=1000"]
  proc = subprocess.Popen(
    _cli(tmp_path, *args, "--config.checkpoint.every_steps=1000"),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  lines = []
  for line in proc.stdout:  # the first update (lr=inf) already made the parameters NaN
    lines.append(line)
    if line.startswith("First step"):
      break
  proc.send_signal(signal.SIGTERM)
  out = "".join(lines) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 1, out
  assert re.search(
    r"NonFiniteError: Non-finite parameters, optimizer state or update at steps? 1\b", out
  )
  assert checkpointing.saved_steps(str(tmp_path / "checkpoints")) == []
  assert not (tmp_path / "summary.json").exists()


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
  _interrupt_at_step_3(tmp_path, signal.SIGINT)


def test_second_ctrl_c_exits_at_once(monkeypatch):
  before = signal.getsignal(signal.SIGINT)  # pytest-xdist workers start with SIG_IGN
  flag = checkpointing.PreemptionFlag(distributed=False)
  exits = []
  monkeypatch.setattr(checkpointing.os, "_exit", exits.append)
  try:
    signal.raise_signal(signal.SIGINT)
    assert flag.requested == "SIGINT" and not exits  # the first asks for a save
    signal.raise_signal(signal.SIGINT)
    assert exits == [128 + signal.SIGINT]  # the second does not wait for it
  finally:
    flag.restore_handler()
  assert signal.getsignal(signal.SIGINT) == before


def test_init_from_a_clipjax_run_keeps_its_tokenizer_and_a_misfit_is_refused(tmp_path):
  c = _config()
  c.total_steps = 2
  assert c.data.tokenizer == "clipjax:worlds"
  train_task.run(c, str(tmp_path / "a"))
  # A fine-tune from run a with data.tokenizer = "" trains with a's tokenizer and records it.
  ft = _config()
  ft.total_steps = 1
  ft.data.tokenizer = ""
  ft.model.init_checkpoint = str(tmp_path / "a")
  train_task.run(ft, str(tmp_path / "b"))
  saved = json.loads((tmp_path / "b" / "config.json").read_text())
  assert saved["data"]["tokenizer"] == "clipjax:worlds"
  # OpenAI's 49,408-id tokenizer for the 757-id model: refused, naming the key, before any
  # file is written.
  bad = _config()
  bad.data.tokenizer = os.path.join(REPO, "clipjax/data/bpe_simple_vocab_16e6.txt.gz")
  with pytest.raises(ValueError, match=r"data.tokenizer=.*vocabulary 49408.*vocabulary 757"):
    train_task.run(bad, str(tmp_path / "c"))
  assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_model_reinit_redraws_only_the_named_parameters(tmp_path):
  """model.reinit: the named leaves come from a fresh draw, every other leaf from the checkpoint;
  it needs an init checkpoint, and a pattern that names nothing is an error."""
  from clipjax import runs
  from clipjax import tree as tree_lib
  from clipjax.model import create

  model = create("tiny", jax.random.key(0), **{"vision.image_size": 32})
  cfg = {"model": {"name": "tiny", "overrides": {}}, "data": {"image_size": 32,
         "context_length": model.config.text.context_length}}  # fmt: skip
  init = runs.save_params_workdir(model.params, cfg, str(tmp_path / "init"))
  spec = {"name": "tiny", "init_checkpoint": init, "reinit": [r"visual/.*"]}
  ctx = model.config.text.context_length
  got = runs.build_model(spec, 32, ctx, jax.random.key(1))
  fresh = model.init_params(jax.random.key(1))
  old, new, drawn = (
    dict(tree_lib.flatten_with_names(p)) for p in (model.params, got.params, fresh)
  )
  for name, leaf in new.items():
    want = drawn[name] if name.startswith("visual/") else old[name]
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(want), err_msg=name)
  assert not np.array_equal(new["visual/conv1/kernel"], old["visual/conv1/kernel"])
  with pytest.raises(ValueError, match="needs a model.init_checkpoint"):
    runs.build_model({**spec, "init_checkpoint": ""}, 32, ctx, jax.random.key(1))
  with pytest.raises(ValueError, match="matched no parameter"):
    runs.build_model({**spec, "reinit": ["vision/.*"]}, 32, ctx, jax.random.key(1))
