"""Run directories: no task destroys another's run, failed starts leave nothing, resume rules."""

import hashlib
import json
import os
import sys

import pytest

from clipjax import checkpointing, runs
from clipjax import methods as methods_lib
from clipjax import model as model_lib
from clipjax.methods.base import Method
from clipjax.tasks import cola_eval, hotclip_fuse
from clipjax.tasks import eval as eval_task
from clipjax.tasks import train as train_task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(name, arg="smoke"):
  sys.path.insert(0, REPO)
  import importlib

  return importlib.import_module(f"configs.{name}").get_config(arg)


def _train_config():
  c = _config("quickstart")
  c.eval.datasets = {}
  return c


def _snapshot(root):
  """Every file under `root`: size, content hash and modification time."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      with open(p, "rb") as fh:
        digest = hashlib.sha1(fh.read()).hexdigest()
      out[os.path.relpath(p, root)] = (os.path.getsize(p), digest, os.stat(p).st_mtime_ns)
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wdir = tmp_path_factory.mktemp("trained") / "run"
  train_task.run(_train_config(), str(wdir))
  return wdir


def _eval_config(checkpoint):
  c = _config("eval")
  c.checkpoint = str(checkpoint)
  return c


def _fuse_config(workdir):
  c = _config("hotclip_fuse", "smoke")
  c.workdirs = [[str(workdir)]]
  return c


def _cola_config(checkpoint):
  c = _config("cola")
  c.model.init_checkpoint = str(checkpoint)
  return c


@pytest.mark.parametrize(
  "task, make_config",
  [
    (eval_task, _eval_config),
    (cola_eval, _cola_config),
    (hotclip_fuse, _fuse_config),
  ],
  ids=["eval", "cola_eval", "hotclip_fuse"],
)
def test_another_task_on_a_training_run_refuses_and_changes_nothing(trained, task, make_config):
  before = _snapshot(trained)
  assert "summary.json" in before and "config.json" in before
  # The new user's mistake: the run itself as both the checkpoint and the output directory.
  with pytest.raises(ValueError, match=r"holds the results of a 'train' run.*another --workdir"):
    task.run(make_config(trained), str(trained))
  assert _snapshot(trained) == before
  model_lib.load(str(trained))  # still loads


def test_training_into_an_eval_run_refuses_and_changes_nothing(tmp_path):
  wdir = tmp_path / "eval"
  wdir.mkdir()
  runs.write_json(wdir / "config.json", {"task": "eval", "checkpoint": "x"})
  runs.write_json(wdir / "summary.json", {"task": "eval", "shapes/n": 4})
  before = _snapshot(wdir)
  with pytest.raises(ValueError, match=r"'eval' run \(summary.json\).*'train' run"):
    train_task.run(_train_config(), str(wdir))
  assert _snapshot(wdir) == before


def test_same_task_other_config_is_refused_with_the_differences(tmp_path):
  wdir = tmp_path / "eval"
  wdir.mkdir()
  old = json.loads(_eval_config("a").to_json_best_effort())
  runs.write_json(wdir / "config.json", {**old, "task": "eval"})
  runs.write_json(wdir / "summary.json", {"task": "eval"})
  before = _snapshot(wdir)
  with pytest.raises(ValueError, match=r"checkpoint: 'a' -> 'b'"):
    eval_task.run(_eval_config("b"), str(wdir))
  assert _snapshot(wdir) == before


def test_results_without_config_json_are_refused(tmp_path):
  (tmp_path / "summary.json").write_text("{}")
  with pytest.raises(ValueError, match="no config.json"):
    runs.open_run(str(tmp_path), _train_config(), task="train")


def test_truncated_config_json_names_the_file(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "config.json").write_text('{"task": "train", "seed"')
  with pytest.raises(ValueError, match=r"config\.json is not valid JSON.*cut short"):
    runs.open_run(str(tmp_path), _train_config(), task="train")
  with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
    runs.read_run_config(str(tmp_path))


def test_failed_start_leaves_no_trace_and_does_not_block_the_fix(tmp_path, capsys):
  wdir = tmp_path / "run"
  bad = _train_config()
  bad.method.name = "otclipp"
  with pytest.raises(ValueError, match="otclipp"):
    train_task.run(bad, str(wdir))
  assert not wdir.exists()
  bad = _train_config()
  bad.data.train = {"name": "folder", "table": str(tmp_path / "missing.csv")}
  with pytest.raises(FileNotFoundError, match="missing.csv"):
    train_task.run(bad, str(wdir))
  assert not wdir.exists()

  # A start that fails after config.json is written (here: in the first step) saves no
  # checkpoint, so the corrected command in the same directory is not a refused resume.
  def factory():
    def loss(emb, mstate, rng):
      raise ValueError("broken loss")

    return Method(loss=loss, init=lambda _: {})

  methods_lib.REGISTRY["_broken"] = factory
  try:
    bad = _train_config()
    bad.method.name = "_broken"
    with pytest.raises(ValueError, match="broken loss"):
      train_task.run(bad, str(wdir))
  finally:
    del methods_lib.REGISTRY["_broken"]
  assert runs.read_run_config(str(wdir))["method"]["name"] == "_broken"
  assert not checkpointing.saved_steps(str(wdir / "checkpoints"))
  capsys.readouterr()
  c = _train_config()
  c.total_steps = 2
  assert train_task.run(c, str(wdir))["finished"]
  assert "saved nothing: replaced" in capsys.readouterr().out
  assert runs.read_run_config(str(wdir))["method"]["name"] == "clip"


def test_resume_may_extend_total_steps_and_change_cadence(tmp_path, capsys):
  c = _train_config()
  c.total_steps = 4
  train_task.run(c, str(tmp_path))
  capsys.readouterr()
  c.total_steps = 6
  c.log_every_steps = 3
  c.eval.every_steps = 3
  summary = train_task.run(c, str(tmp_path))
  out = capsys.readouterr().out
  assert summary["finished"] and summary["step"] == 6
  assert "Resumed from" in out and "at step 4" in out
  assert "total_steps 4 -> 6: the learning-rate schedule" in out
  assert "log_every_steps: 1 -> 3" in out
  events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  # Logged every step up to 4, then every 3rd step or at a checkpoint (every 2nd): 6 only.
  assert [e["step"] for e in events if e.get("kind") == "train"] == [1, 2, 3, 4, 6]
  assert json.loads((tmp_path / "summary.json").read_text())["task"] == "train"
  # Shrinking below the saved step, or changing what the run is, is refused.
  c.total_steps = 5
  with pytest.raises(ValueError, match="checkpoint at step 6"):
    train_task.run(c, str(tmp_path))
  c.total_steps = 8
  c.optim.lr = 0.5
  with pytest.raises(ValueError, match=r"optim\.lr: 0\.001 -> 0\.5"):
    train_task.run(c, str(tmp_path))


def test_config_json_is_replaced_atomically(tmp_path, monkeypatch):
  path = tmp_path / "config.json"
  runs.write_json(path, {"a": 1})

  def boom(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(type(runs.epath.Path(path)), "replace", boom)
  with pytest.raises(OSError, match="disk full"):
    runs.write_json(path, {"a": 2})
  assert json.loads(path.read_text()) == {"a": 1}
