"""The eval task: a trained workdir and an imported checkpoint end to end, clear errors."""

import gzip
import json
import os
import sys

import ml_collections as mlc
import numpy as np
import pytest

from clipjax.data.tokenizer import Tokenizer
from clipjax.tasks import eval as eval_task
from clipjax.tasks import train as train_task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
SPEC = {"name": "synthetic", "split": "test", "seed": 0}


def _eval_config(checkpoint, **kw):
  sys.path.insert(0, REPO)
  from configs import eval as eval_config

  c = eval_config.get_config("smoke")
  c.checkpoint = str(checkpoint)
  c.datasets = {"shapes": SPEC}
  c.robustness.attacks = "none"
  for k, v in kw.items():
    c[k] = v
  return c


def test_eval_cli_on_trained_workdir(tmp_path):
  sys.path.insert(0, REPO)
  from configs import quickstart

  c = quickstart.get_config("smoke")
  c.eval.datasets = {}
  train_task.run(c, str(tmp_path / "run"))
  ec = _eval_config(tmp_path / "run")
  ec.robustness.label_set = "shape"
  ec.robustness.attacks = (
    "pgd:eps=0,step_size=1/255,steps=2,label=eps0;pgd:eps=0.5,step_size=0.1,steps=2,label=eps_big"
  )
  metrics = eval_task.run(ec, str(tmp_path / "eval"))
  summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
  assert summary["shapes/n"] == 48
  assert 0.0 <= metrics["shapes/zeroshot/shape/acc1"] <= 1.0
  assert "| shapes/zeroshot/shape/acc1 |" in (tmp_path / "eval" / "results.md").read_text()
  # ε = 0 changes nothing; ε = 0.5 (half the pixel range) breaks every prediction.
  prefix = "shapes/robust/shape"
  assert metrics[f"{prefix}/eps0/robust_acc"] == metrics[f"{prefix}/clean_acc"]
  assert metrics[f"{prefix}/eps_big/robust_acc"] <= 0.1
  assert metrics[f"{prefix}/worst_case/robust_acc"] <= metrics[f"{prefix}/eps0/robust_acc"]
  assert metrics[f"{prefix}/eps_big/eps"] == 0.5
  # Selective classification (on by default) and the figures next to summary.json.
  assert 0.0 <= metrics["shapes/selective/shape/msp/risk@0.5"] <= 1.0
  curve = summary["curves"]["shapes/selective/shape/msp"]
  assert curve["coverage"][-1] == 1.0
  assert curve["risk"][-1] == pytest.approx(1.0 - metrics["shapes/zeroshot/shape/acc1"])
  assert summary["attacks"]["eps_big"]["eps"] == 0.5
  for name in (
    "robustness_shapes_shape",
    "risk_coverage_shapes",
    "pca_shapes",
    "similarity_shapes",
  ):
    with open(tmp_path / "eval" / f"{name}.png", "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _first_merges(n, path):
  """A CLIP-format merges file holding the first `n` merges of OpenAI's vocabulary."""
  vocab = os.path.join(REPO, "clipjax", "data", "bpe_simple_vocab_16e6.txt.gz")
  with gzip.open(vocab, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")[: n + 1]
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return str(path)


def test_eval_cli_on_imported_hf_checkpoint(tmp_path, monkeypatch):
  ckpt = os.path.join(FIXTURES, "parity", "hf")
  # The default OpenAI vocabulary does not fit the fixture's 1000-token text tower.
  with pytest.raises(ValueError, match="does not fit the model's text tower"):
    eval_task.run(_eval_config(ckpt), str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()
  # 512 byte symbols + 486 merges + sot/eot = the fixture's 1000 tokens, eot = 999.
  merges = _first_merges(486, tmp_path / "m.txt.gz")
  assert Tokenizer(merges).eot_id == 999
  # Without matplotlib the figures are skipped (with a logged message), the rest is written.
  find_spec = eval_task.importlib.util.find_spec
  monkeypatch.setattr(
    eval_task.importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else
    find_spec(name, *a),
  )  # fmt: skip
  metrics = eval_task.run(_eval_config(ckpt, tokenizer=str(merges)), str(tmp_path / "eval"))
  assert metrics["shapes/n"] == 48
  assert all(np.isfinite(v) for k, v in metrics.items() if k.endswith("acc1"))
  assert (tmp_path / "eval" / "summary.json").exists()
  assert not list((tmp_path / "eval").glob("*.png"))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="config.checkpoint is empty"):
    eval_task.run(mlc.ConfigDict({"checkpoint": ""}), str(tmp_path))


def _folder_dataset(root, n=12):
  """Solid red / green / blue images with a `label` column (the user's own label set)."""
  from PIL import Image

  root.mkdir()
  colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
  rows = ["path,caption,label"]
  for i in range(n):
    name = list(colours)[i % 3]
    Image.new("RGB", (40 + i, 36), colours[name]).save(root / f"{i}.png")
    rows.append(f"{i}.png,a {name} square,{name}")
  (root / "test.csv").write_text("\n".join(rows) + "\n")
  return root / "test.csv"


def _cli(argv):
  """The config as `python -m clipjax.main` parses `argv` (tests/core/test_docs.py's parser)."""
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file(
    "config", None, "", flag_values=fv, lock_config=True, sys_argv=["main", *argv]
  )
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(["main", *argv])
  return holder.value


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_folder_dataset_with_its_own_labels_and_attacks_from_the_command_line(
  tmp_path, monkeypatch, capsys
):
  table = _folder_dataset(tmp_path / "mine")
  merges = _first_merges(486, tmp_path / "m.txt.gz")
  monkeypatch.chdir(REPO)
  argv = [
    "--config=configs/eval.py:smoke",
    f"--config.checkpoint={FIXTURES}/parity/openai.safetensors",
    f"--config.tokenizer={merges}",
    f"--config.datasets={{'mine': {{'name': 'folder', 'table': '{table}'}}}}",
    "--config.robustness.attacks=pgd:eps=4/255,steps=2;fgsm:eps=1/255",
    "--config.plots=False",
    f"--workdir={tmp_path / 'eval'}",
  ]
  config = _cli(argv)
  metrics = eval_task.run(config, str(tmp_path / "eval"))
  out = capsys.readouterr().out
  assert metrics["mine/n"] == 12 and "mine/zeroshot/label/acc1" in metrics
  assert metrics["mine/zeroshot/label/acc1/chance"] == pytest.approx(1 / 3)
  for label in ("pgd2@4", "fgsm@1"):
    assert 0.0 <= metrics[f"mine/robust/label/{label}/robust_acc"] <= 1.0
  # Progress with ETA per stage, and every stage in metrics.jsonl as it finished.
  assert "embed eval dataset 'mine': 0/" in out and "attack mine/label (2 attacks): 0/12" in out
  assert "ETA" in out or "done in" in out
  lines = (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()
  events = [json.loads(line) for line in lines]
  assert [e["stage"] for e in events] == ["clean", "robustness"]
  summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
  assert summary["finished"] and summary["attacks"]["pgd2@4"]["step_size"] == pytest.approx(
    2.5 * 4 / 255 / 2
  )


def test_bad_config_fails_before_any_work_and_parts_are_saved(tmp_path, monkeypatch):
  table = _folder_dataset(tmp_path / "mine", n=6)
  merges = _first_merges(486, tmp_path / "m.txt.gz")
  ckpt = os.path.join(FIXTURES, "parity", "openai.safetensors")
  c = _eval_config(ckpt, tokenizer=merges, plots=False)
  c.datasets = {"mine": {"name": "folder", "table": str(table)}}
  for attacks, label_set, match in (
    ("pgd:eps=4/255", "", "missing required fields"),
    ("fgsm:eps=1/255", "shape", r"robustness.label_set 'shape' is not a label set of \['mine'\]"),
  ):
    c.robustness.attacks, c.robustness.label_set = attacks, label_set
    with pytest.raises(ValueError, match=match):
      eval_task.run(c, str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
  # An attack stage that dies keeps the clean metrics already computed.
  c.robustness.attacks, c.robustness.label_set = "fgsm:eps=1/255", ""

  def boom(*args, **kwargs):
    raise RuntimeError("killed during the attacks")

  monkeypatch.setattr(eval_task, "evaluate_robustness", boom)
  with pytest.raises(RuntimeError, match="killed"):
    eval_task.run(c, str(tmp_path / "partial"))
  summary = json.loads((tmp_path / "partial" / "summary.json").read_text())
  assert summary["finished"] is False and summary["mine/n"] == 6
