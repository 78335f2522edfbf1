"""The eval task: wiring against a direct computation, workdir and imported checkpoints, TFDS."""

import gzip
import json
import os
import sys

import jax
import ml_collections as mlc
import numpy as np
import pytest

import clipjax.model as model_lib
from clipjax.data import registry
from clipjax.data.tokenizer import Tokenizer
from clipjax.evaluation import task
from clipjax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
SPEC = {"name": "synthetic", "split": "test", "seed": 0}


def _eval_config(checkpoint, **kw):
  sys.path.insert(0, REPO)
  from configs import eval as eval_config

  c = eval_config.get_config("smoke")
  c.checkpoint = str(checkpoint)
  c.datasets = {"shapes": SPEC}
  c.robustness.attacks = []
  for k, v in kw.items():
    c[k] = v
  return c


def test_zeroshot_matches_direct_computation():
  model = model_lib.create("tiny", jax.random.key(1), **{"text.context_length": 32})
  out = task.evaluate_datasets(
    model,
    model.params,
    {"s": SPEC},
    image_size=32,
    context_length=32,
    batch_size=16,
    max_examples=40,
  )
  src = registry.build_source(SPEC, 32)
  tok = Tokenizer(context_length=32)
  ls = src.label_sets["colour"]
  images = np.stack([src[i]["image"] for i in range(40)]).astype(np.float32) / 255.0
  labels = np.array([src[i]["labels"]["colour"] for i in range(40)])
  zimg = np.asarray(model.encode_image(model.params, images).emb)
  prompts = [t.format(c) for c in ls.classnames for t in ls.templates]
  ztxt = np.asarray(model.encode_text(model.params, tok(prompts)).emb)
  w = ztxt.reshape(len(ls.classnames), len(ls.templates), -1).mean(1)
  w /= np.linalg.norm(w, axis=1, keepdims=True)
  acc = np.mean(np.argmax(zimg @ w.T, axis=1) == labels)
  assert out["s/zeroshot/colour/acc1"] == pytest.approx(acc, abs=1e-9)
  assert out["s/n"] == 40
  assert out["s/zeroshot/colour/acc1/chance"] == pytest.approx(1 / len(ls.classnames))


def test_eval_cli_on_trained_workdir(tmp_path):
  sys.path.insert(0, REPO)
  from configs import quickstart

  c = quickstart.get_config("smoke")
  c.eval.datasets = {}
  loop.run(c, str(tmp_path / "run"))
  ec = _eval_config(tmp_path / "run")
  ec.robustness.attacks = [
    {"name": "pgd", "eps": 0.0, "step_size": 1 / 255, "steps": 2, "label": "eps0"},
    {"name": "pgd", "eps": 0.5, "step_size": 0.1, "steps": 2, "label": "eps_big"},
  ]
  metrics = task.run(ec, str(tmp_path / "eval"))
  summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
  assert summary["shapes/n"] == 48
  assert 0.0 <= metrics["shapes/zeroshot/shape/acc1"] <= 1.0
  assert "| shapes/zeroshot/shape/acc1 |" in (tmp_path / "eval" / "results.md").read_text()
  # ε = 0 changes nothing; ε = 0.5 (half the pixel range) breaks every prediction.
  prefix = "shapes/robust/shape"
  assert metrics[f"{prefix}/eps0/robust_acc"] == metrics[f"{prefix}/clean_acc"]
  assert metrics[f"{prefix}/eps_big/robust_acc"] <= 0.1
  assert metrics[f"{prefix}/worst_case/robust_acc"] <= metrics[f"{prefix}/eps0/robust_acc"]


def _first_merges(n, path):
  """A CLIP-format merges file holding the first `n` merges of OpenAI's vocabulary."""
  vocab = os.path.join(REPO, "clipjax", "data", "bpe_simple_vocab_16e6.txt.gz")
  with gzip.open(vocab, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")[: n + 1]
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return str(path)


def test_eval_cli_on_imported_hf_checkpoint(tmp_path):
  ckpt = os.path.join(FIXTURES, "parity", "hf")
  # The default OpenAI vocabulary does not fit the fixture's 1000-token text tower.
  with pytest.raises(ValueError, match="does not fit the model's text tower"):
    task.run(_eval_config(ckpt), str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()
  # 512 byte symbols + 486 merges + sot/eot = the fixture's 1000 tokens, eot = 999.
  merges = _first_merges(486, tmp_path / "m.txt.gz")
  assert Tokenizer(merges).eot_id == 999
  metrics = task.run(_eval_config(ckpt, tokenizer=str(merges)), str(tmp_path / "eval"))
  assert metrics["shapes/n"] == 48
  assert all(np.isfinite(v) for k, v in metrics.items() if k.endswith("acc1"))


def test_tfds_dataset_through_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  model = model_lib.create("tiny", jax.random.key(0), **{"text.context_length": 32})
  spec = {"name": "tfds", "tfds_name": "mnist", "split": "test", "skip_decoding": False}
  with tfds.testing.mock_data(num_examples=20):
    out = task.evaluate_datasets(
      model, model.params, {"mnist": spec}, image_size=32, context_length=32, batch_size=16,
      max_examples=20,
    )  # fmt: skip
  assert out["mnist/n"] == 20
  assert out["mnist/zeroshot/label/acc1/chance"] == pytest.approx(0.1)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="config.checkpoint is empty"):
    task.run(mlc.ConfigDict({"checkpoint": ""}), str(tmp_path))
