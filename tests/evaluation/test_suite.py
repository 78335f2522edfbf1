"""The evaluation suite: wiring against a direct computation, TFDS, selective, ASR, linear probe."""

import os

import jax
import numpy as np
import pytest

import clipjax.model as model_lib
from clipjax.data import registry
from clipjax.data.tokenizer import Tokenizer
from clipjax.evaluation import suite, zeroshot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
SPEC = {"name": "synthetic", "split": "test", "seed": 0}


def test_zeroshot_matches_direct_computation():
  model = model_lib.create("tiny", jax.random.key(1), **{"text.context_length": 32})
  out = suite.evaluate_datasets(
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


def test_tfds_dataset_through_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  model = model_lib.create("tiny", jax.random.key(0), **{"text.context_length": 32})
  spec = {"name": "tfds", "tfds_name": "mnist", "split": "test", "skip_decoding": False}
  with tfds.testing.mock_data(num_examples=20):
    out = suite.evaluate_datasets(
      model, model.params, {"mnist": spec}, image_size=32, context_length=32, batch_size=16,
      max_examples=20,
    )  # fmt: skip
  assert out["mnist/n"] == 20
  assert out["mnist/zeroshot/label/acc1/chance"] == pytest.approx(0.1)


def _classifier(weights_cd, logit_scale=10.0):
  c = weights_cd.shape[0]
  return zeroshot.ZeroShotClassifier(
    weights_cd, [str(i) for i in range(c)], ["{}"], logit_scale
  )  # fmt: skip


def test_selective_msp_matches_risk_coverage_and_partial_ot_oracle():
  rng = np.random.default_rng(0)
  weights_cd = np.eye(4, 8, dtype=np.float32)
  zimg_nd = rng.normal(size=(60, 8)).astype(np.float32)
  zimg_nd /= np.linalg.norm(zimg_nd, axis=1, keepdims=True)
  labels_n = rng.integers(0, 4, 60)
  clf = _classifier(weights_cd)
  opts = {"coverages": [0.5, 0.8], "partial_ot_epsilon": 0.05, "curve_points": 4}
  got, curves = suite.selective_metrics(zimg_nd, labels_n, clf, selectors=["msp"], **opts)
  logits = 10.0 * zimg_nd @ weights_cd.T
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  # By hand: the error rate among the k most confident images, k = ceil(s n), and its mean.
  wrong_k = (probs.argmax(1) != labels_n)[np.argsort(-probs.max(1), kind="stable")]
  risk_k = np.cumsum(wrong_k) / np.arange(1, 61)
  assert got == {
    "msp/risk@0.5": pytest.approx(risk_k[29]),
    "msp/risk@0.8": pytest.approx(risk_k[47]),
    "msp/aurc": pytest.approx(risk_k.mean()),
  }
  assert len(curves["msp"]["coverage"]) == 60
  # Oracle: images next to their class embedding, balanced classes: no error at any coverage,
  # and partial OT selects the asked share of the images.
  labels_n = np.arange(40) % 4
  near_nd = weights_cd[labels_n] + 0.05 * rng.normal(size=(40, 8)).astype(np.float32)
  near_nd /= np.linalg.norm(near_nd, axis=1, keepdims=True)
  got, curves = suite.selective_metrics(
    near_nd, labels_n, clf, selectors=["msp", "partial_ot"], **opts
  )
  assert got["partial_ot/risk@0.5"] == 0.0 and got["partial_ot/risk@0.8"] == 0.0
  assert got["msp/aurc"] == 0.0
  np.testing.assert_allclose(curves["partial_ot"]["coverage"], [0.25, 0.5, 0.75, 0.8, 1.0])
  with pytest.raises(ValueError, match="each must be one of"):
    suite.selective_metrics(near_nd, labels_n, clf, selectors=["entropy"], **opts)
  with pytest.raises(ValueError, match=r"coverages must lie in \(0, 1\]"):
    suite.selective_metrics(near_nd, labels_n, clf, selectors=["msp"], **{**opts, "coverages": [0]})


def _direct_preds(model, images_nhwc, ls, tok):
  zimg = np.asarray(model.encode_image(model.params, images_nhwc).emb)
  prompts = [t.format(c) for c in ls.classnames for t in ls.templates]
  ztxt = np.asarray(model.encode_text(model.params, tok(prompts)).emb)
  w = ztxt.reshape(len(ls.classnames), len(ls.templates), -1).mean(1)
  return np.argmax(zimg @ w.T, axis=1)


def test_attack_success_rate_and_linear_probe_match_direct_computation():
  model = model_lib.create("tiny", jax.random.key(1), **{"text.context_length": 32})
  tok = Tokenizer(context_length=32)
  poison = {
    "name": "synthetic", "split": "train", "seed": 0, "num_examples": 200,
    "corrupt": {"kind": "poison", "label_set": "colour+shape", "num_targets": 4,
                "captions_per_target": 2},
  }  # fmt: skip
  backdoor = {**SPEC, "corrupt": {"kind": "backdoor", "fraction": 0.1, "label_set": "colour",
                                  "target_class": 0}}  # fmt: skip
  probe = {"label_sets": ["colour"], "max_train": 120, "k_shots": [2], "l2_grid": [1e-4, 1e-2],
           "max_iter": 200}  # fmt: skip
  kw = {"image_size": 32, "context_length": 32, "batch_size": 16, "max_examples": 24}
  with pytest.raises(ValueError, match="'b' is evaluated on split 'test', the same as"):
    suite.evaluate_datasets(
      model, model.params, {"b": backdoor}, **kw, linear_probe={"train_split": "test"}
    )
  out = suite.evaluate_datasets(
    model, model.params, {"p": poison, "b": backdoor}, **kw, linear_probe=probe
  )
  # Poison: the target images, classified as their adversarial class.
  src = registry.build_source(poison, 32)
  asr_src = src.asr_source()
  images = np.stack([asr_src[i]["image"] for i in range(4)]).astype(np.float32) / 255.0
  pred = _direct_preds(model, images, asr_src.label_sets["colour+shape"], tok)
  targets = src.poison_targets
  assert out["p/asr/colour+shape/asr"] == np.mean(pred == [t["target_label"] for t in targets])
  assert out["p/asr/colour+shape/target_to_true"] == np.mean(
    pred == [t["true_label"] for t in targets]
  )
  assert out["p/asr/colour+shape/n"] == 4
  assert out["p/n"] == 24  # clean metrics on the test split the targets come from
  # Backdoor: the evaluated images outside the target class, triggered.
  bd = registry.build_source(backdoor, 32)
  clean = [bd.source[i] for i in range(24)]
  off = [ex for ex in clean if ex["labels"]["colour"] != 0]
  trig = np.stack([bd.apply_trigger(ex["image"]) for ex in off]).astype(np.float32) / 255.0
  pred = _direct_preds(model, trig, bd.label_sets["colour"], tok)
  assert out["b/asr/colour/n"] == len(off)
  assert out["b/asr/colour/asr"] == pytest.approx(np.mean(pred == 0), abs=1e-9)
  # Linear probe on the train split: colour is linearly readable even from a random tower.
  assert out["b/linear_probe/colour/n_train"] == 120
  assert out["b/linear_probe/colour/acc1"] > 0.4 > 2 * out["b/linear_probe/colour/acc1/chance"]
  assert out["b/linear_probe/colour/2shot/n_train"] == 12
  assert "b/linear_probe/shape/acc1" not in out
