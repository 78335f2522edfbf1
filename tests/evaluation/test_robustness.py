"""robust_accuracy on a linear classifier with a closed-form ℓ∞ robustness radius."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.attacks import Stochastic
from clipjax.evaluation import robust_accuracy, zeroshot_robustness

H, W, C = 4, 4, 3
D = H * W * C


def batches_of(x, y, size):
  out = []
  for start in range(0, len(y), size):
    xb, yb = x[start : start + size], y[start : start + size]
    valid = np.ones(size, bool)
    if len(yb) < size:
      pad = size - len(yb)
      xb = np.concatenate([xb, np.zeros((pad, H, W, C), np.float32)])
      yb = np.concatenate([yb, np.zeros(pad, np.int32)])
      valid[-pad:] = False
    out.append({"image": xb, "label": yb, "valid": valid})
  return out


def test_robust_accuracy_matches_closed_form_and_is_monotone(linear_two_class):
  logits_fn, x, y, radius, _ = linear_two_class()
  eps_small, eps_large = np.quantile(radius, 0.3), np.quantile(radius, 0.7) + 1e-4
  # Avoid examples sitting exactly at an ε boundary.
  assert np.min(np.abs(radius - eps_small)) > 1e-5 and np.min(np.abs(radius - eps_large)) > 1e-5
  specs = [
    {"name": "fgsm", "eps": float(eps_small), "label": "fgsm-small"},
    {"name": "pgd", "eps": float(eps_large), "step_size": float(eps_large) / 4, "steps": 6},
    {"name": "apgd-ce", "eps": 0.0, "steps": 4},
  ]
  got = robust_accuracy(logits_fn, batches_of(x, y, 5), specs, key=jax.random.key(0, impl="rbg"))
  assert got["n"] == 12 and got["clean_acc"] == 1.0
  per = {a["label"]: a for a in got["attacks"]}
  assert per["fgsm-small"]["robust_acc"] == pytest.approx(np.mean(radius > eps_small))
  assert per["pgd"]["robust_acc"] == pytest.approx(np.mean(radius > eps_large))
  assert per["apgd-ce"]["robust_acc"] == 1.0  # ε = 0 changes nothing
  assert got["robust_acc"] == per["pgd"]["robust_acc"]
  assert per["pgd"]["spec"]["random_start"] is True and per["pgd"]["spec"]["norm"] == "linf"
  np.testing.assert_array_equal(got["per_example"]["robust"], radius > eps_large)
  assert got["per_example"]["success"]["fgsm-small"].shape == (12,)

  capped = robust_accuracy(
    logits_fn, batches_of(x, y, 5), specs[:1], key=jax.random.key(0, impl="rbg"), max_examples=7
  )
  assert capped["n"] == 7


def test_stochastic_defence_and_errors(linear_two_class):
  logits_fn, x, y, radius, _ = linear_two_class(seed=1, n=6)
  noisy = Stochastic(lambda z, key: logits_fn(z) + 1e-3 * jax.random.normal(key, (z.shape[0], 2)))
  spec = {"name": "pgd", "eps": 1.0, "step_size": 0.5, "steps": 3, "eot_draws": 2}
  got = robust_accuracy(noisy, batches_of(x, y, 6), [spec], key=jax.random.key(1, impl="rbg"))
  assert got["clean_acc"] == 1.0 and got["robust_acc"] == 0.0
  # Transfer from an "anti" surrogate (negated weights) only widens the true margin.
  transfer = robust_accuracy(
    logits_fn,
    batches_of(x, y, 6),
    [{"name": "pgd", "eps": 1.0, "step_size": 0.5, "steps": 3}],
    key=jax.random.key(1, impl="rbg"),
    attack_logits_fn=lambda z: -logits_fn(z),
  )
  assert transfer["robust_acc"] == 1.0 and not transfer["adaptive"]
  with pytest.raises(ValueError, match="unique"):
    robust_accuracy(logits_fn, batches_of(x, y, 6), [spec, spec], key=jax.random.key(1))
  with pytest.raises(ValueError, match="at least one attack"):
    robust_accuracy(logits_fn, batches_of(x, y, 6), [], key=jax.random.key(1))


def test_zeroshot_robustness_row_is_the_linear_head_under_attack(linear_two_class):
  _, x, y, radius, w = linear_two_class(seed=1)
  eps = float(np.quantile(radius, 0.5))
  batches = [{**b, "labels": {"shape": b["label"]}} for b in batches_of(x, y, 5)]
  row = zeroshot_robustness(
    lambda px: px.reshape(px.shape[0], D) / 2,
    batches,
    jnp.asarray(np.stack([w, -w])),
    2.0,  # undoes the encoder's 1/2: logits x·w and -x·w
    [{"name": "fgsm", "eps": eps, "label": "fgsm@median"}],
    key=jax.random.key(0),
    label_key="labels/shape",
    max_examples=10,
  )
  assert row["n"] == 10 and row["clean_acc"] == 1.0
  assert row["robust_acc/fgsm@median"] == row["robust_acc_worst"] == np.mean(radius[:10] > eps)
  assert set(row) == {
    "n",
    "clean_acc",
    "robust_acc_worst",
    "robust_acc/fgsm@median",
    "eval_seconds",
  }
