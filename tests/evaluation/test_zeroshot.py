"""Zero-shot classifier: template ensembling, oracle accuracy, OT score hooks, padding."""

import numpy as np
import pytest

from clipjax.evaluation import (
  ZeroShotClassifier,
  build_classifier,
  evaluate_classifier,
  evaluate_zeroshot,
)

D = 16
CLASSES = ["cat", "dog", "car", "tree"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "{}"]


def text_side(seed=0):
  """Stand-in text tower: embedding of "template(class)" = class vector + template vector."""
  rng = np.random.default_rng(seed)
  class_vec = rng.normal(size=(len(CLASSES), D))
  template_vec = 0.5 * rng.normal(size=(len(TEMPLATES), D))
  lookup = {t.format(c): (i, j) for i, c in enumerate(CLASSES) for j, t in enumerate(TEMPLATES)}
  calls = []

  def tokenize(texts):
    return np.array([lookup[t] for t in texts], np.int32)

  def encode_text(ids_bl):
    calls.append(ids_bl.shape[0])
    return 3.0 * (class_vec[ids_bl[:, 0]] + template_vec[ids_bl[:, 1]])

  return tokenize, encode_text, class_vec, template_vec, calls


def normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_template_ensembling_is_mean_of_normalised_then_renormalised():
  tokenize, encode_text, class_vec, template_vec, calls = text_side()
  clf = build_classifier(encode_text, tokenize, CLASSES, TEMPLATES, batch_size=5)
  expected = normalize(normalize(class_vec[:, None, :] + template_vec[None, :, :]).mean(axis=1))
  np.testing.assert_allclose(clf.weights_cd, expected, rtol=1e-5, atol=1e-6)
  assert calls == [5, 5, 5]  # 12 prompts in fixed-size chunks, the last one padded
  assert clf.num_classes == 4 and clf.classnames == tuple(CLASSES)
  one = build_classifier(encode_text, tokenize, CLASSES, TEMPLATES[:1])
  np.testing.assert_allclose(one.weights_cd, normalize(class_vec + template_vec[0]), atol=1e-6)
  with pytest.raises(ValueError, match="exactly one"):
    build_classifier(encode_text, tokenize, CLASSES, ["no placeholder"])


def oracle_batches(clf, labels, batch_size, pad_to):
  """Images whose embedding is exactly their class weight; padded rows are garbage."""
  batches = []
  for start in range(0, len(labels), batch_size):
    y = labels[start : start + batch_size]
    b = len(y)
    emb = clf.weights_cd[y]
    valid = np.ones(pad_to, bool)
    if b < pad_to:
      emb = np.concatenate([emb, np.ones((pad_to - b, D))])
      y = np.concatenate([y, np.full(pad_to - b, -7)])
      valid[b:] = False
    image = emb.reshape(pad_to, 2, 2, 4).astype(np.float32)
    batches.append({"image": image, "labels": {"kind": y}, "valid": valid})
  return batches


def encode_image(pixels_bhwc):
  return pixels_bhwc.reshape(pixels_bhwc.shape[0], -1)


def test_oracle_accuracy_known_and_padding_ignored():
  tokenize, encode_text, *_ = text_side()
  clf = build_classifier(encode_text, tokenize, CLASSES, TEMPLATES)
  labels = np.arange(10) % 4
  batches = oracle_batches(clf, labels, batch_size=4, pad_to=4)
  got = evaluate_zeroshot(encode_image, clf, batches, label_key="labels/kind")
  assert got["acc1"] == 1.0 and got["n"] == 10 and got["mean_per_class_recall"] == 1.0
  wrong = labels.copy()
  wrong[[0, 5]] = (wrong[[0, 5]] + 1) % 4  # two images now carry another class's embedding
  batches = oracle_batches(clf, wrong, batch_size=4, pad_to=4)
  for b, start in zip(batches, range(0, 10, 4)):
    b["labels"]["kind"][: min(4, 10 - start)] = labels[start : start + 4]
  got = evaluate_zeroshot(encode_image, clf, batches, label_key="labels/kind", top_k=(1, 2))
  assert got["acc1"] == pytest.approx(0.8)
  with pytest.raises(KeyError, match="'label'"):
    evaluate_zeroshot(encode_image, clf, batches)


def test_score_fn_replaces_argmax_and_sees_chunks():
  tokenize, encode_text, *_ = text_side()
  clf = build_classifier(encode_text, tokenize, CLASSES, TEMPLATES)
  labels = np.arange(10) % 4
  batches = oracle_batches(clf, labels, batch_size=5, pad_to=5)
  seen = []

  def shifted(zimg_bd, classifier):
    seen.append(zimg_bd.shape[0])
    return np.roll(classifier.logits(zimg_bd), 1, axis=1)  # predicts class y + 1

  got = evaluate_zeroshot(
    encode_image, clf, batches, label_key="labels/kind", score_fn=shifted, score_chunk=4
  )
  assert got["acc1"] == 0.0 and np.isnan(got["acc5"]) and got["score_chunk"] == 4
  assert seen == [4, 4, 2]
  got = evaluate_zeroshot(encode_image, clf, batches, label_key="labels/kind", score_fn=shifted)
  assert seen[-1] == 10
  pixel_level = evaluate_classifier(
    lambda x: shifted(encode_image(x), clf), batches, label_key="labels/kind"
  )
  assert pixel_level["acc1"] == 0.0 and pixel_level["n"] == 10


def test_classifier_logits_scale_and_jax_compat():
  import jax.numpy as jnp

  w = normalize(np.eye(3, D))
  clf = ZeroShotClassifier(w, ("a", "b", "c"), ("{}",), 100.0)
  z = jnp.asarray(w[[2, 0]])
  np.testing.assert_allclose(clf.logits(z), 100.0 * np.eye(3)[[2, 0]], atol=1e-5)
  np.testing.assert_array_equal(clf.predict(z), [2, 0])


def test_posterior_ensemble_is_the_class_share_of_the_prompt_softmax():
  """ensemble="posterior": log of a class's prompts' mass under a softmax over all prompts
  (minus log T); one template reduces it to the mean rule; jit- and grad-able."""
  import jax
  import jax.numpy as jnp
  from scipy.special import logsumexp, softmax

  tokenize, encode_text, class_vec, template_vec, _ = text_side(3)
  post = build_classifier(encode_text, tokenize, CLASSES, TEMPLATES, ensemble="posterior")
  mean = build_classifier(encode_text, tokenize, CLASSES, TEMPLATES)
  np.testing.assert_allclose(post.weights_cd, mean.weights_cd, atol=1e-7)
  prompts = normalize(class_vec[:, None, :] + template_vec[None, :, :])  # [C, T, d]
  np.testing.assert_allclose(post.prompts_ctd, prompts, atol=1e-6)
  z = normalize(np.random.default_rng(0).normal(size=(6, D)))
  s = post.logit_scale * np.einsum("bd,ctd->bct", z, prompts)
  want = logsumexp(s, axis=-1) - np.log(len(TEMPLATES))
  np.testing.assert_allclose(np.asarray(post.logits(z)), want, rtol=1e-5, atol=1e-4)
  # The softmax over classes of these logits is the prompts' probability mass per class.
  mass = softmax(s.reshape(6, -1), axis=1).reshape(s.shape).sum(-1)
  np.testing.assert_allclose(softmax(np.asarray(post.logits(z)), axis=1), mass, atol=1e-5)
  one = build_classifier(encode_text, tokenize, CLASSES, TEMPLATES[:1], ensemble="posterior")
  base = build_classifier(encode_text, tokenize, CLASSES, TEMPLATES[:1])
  np.testing.assert_allclose(np.asarray(one.logits(z)), base.logits(z), rtol=1e-5, atol=1e-4)
  g = jax.jit(jax.grad(lambda x: post.logits(x)[:, 0].sum()))(jnp.asarray(z, jnp.float32))
  assert g.shape == z.shape and np.isfinite(np.asarray(g)).all()
  with pytest.raises(ValueError, match="ensemble"):
    build_classifier(encode_text, tokenize, CLASSES, TEMPLATES, ensemble="max")
