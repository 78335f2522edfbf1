"""Linear probe: separable oracle, scikit-learn cross-check, few-shot determinism."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from clipjax.evaluation import few_shot_indices, fit_logistic, linear_probe


def blobs(n_per_class, centers, scale, seed):
  rng = np.random.default_rng(seed)
  x = np.concatenate([c + scale * rng.normal(size=(n_per_class, len(c))) for c in centers])
  y = np.repeat(np.arange(len(centers)), n_per_class)
  return x.astype(np.float32), y


def test_matches_sklearn_logistic_regression():
  centers = np.array([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0], [0, 0, 1.0, 0, 0]])
  x, y = blobs(20, centers, 0.8, seed=0)
  c_inv = 0.5
  ref = LogisticRegression(C=c_inv, tol=1e-10, max_iter=10_000).fit(x, y)
  model = fit_logistic(x, y, 3, l2=1.0 / (c_inv * len(y)), tol=1e-6)
  assert model.converged
  np.testing.assert_allclose(model.predict_proba(x), ref.predict_proba(x), atol=2e-4)
  np.testing.assert_array_equal(model.predict(x), ref.predict(x))


def test_separable_data_probe_is_perfect_and_sweeps_on_validation():
  centers = 4.0 * np.eye(3, 5)  # same d and C as above: shares the L-BFGS compilation
  x_tr, y_tr = blobs(30, centers, 0.3, seed=1)
  x_te, y_te = blobs(10, centers, 0.3, seed=2)
  got = linear_probe((x_tr, y_tr), (x_te, y_te), num_classes=3, l2_grid=[1e-4, 1e-2, 1e2], seed=0)
  assert got["acc1"] == 1.0
  assert set(got["val_acc"]) == {1e-4, 1e-2, 1e2}
  assert got["val_acc"][1e-2] == 1.0
  assert got["best_l2"] in (1e-2, 1e2) and got["n_train"] == 90
  few = linear_probe(
    (x_tr, y_tr), (x_te, y_te), num_classes=3, l2_grid=[1e-2], k_shot=5, seed=3,
    val=(x_te, y_te),
  )  # fmt: skip
  assert few["acc1"] == 1.0 and few["n_train"] == 15 + 30


def test_few_shot_indices_deterministic():
  labels = np.concatenate([np.repeat(np.arange(4), 9), np.full(7, 4)])
  a = few_shot_indices(labels, 3, seed=0)
  np.testing.assert_array_equal(a, few_shot_indices(labels, 3, seed=0))
  assert not np.array_equal(a, few_shot_indices(labels, 3, seed=1))
  np.testing.assert_array_equal(np.bincount(labels[a]), [3] * 5)
  with pytest.raises(ValueError, match="class 4 has 7 examples, fewer than k=8"):
    few_shot_indices(labels, 8, seed=0)


def test_iteration_cap_is_reported_and_warned(caplog):
  centers = 4.0 * np.eye(3, 5)
  x_tr, y_tr = blobs(30, centers, 0.3, seed=1)
  with caplog.at_level("WARNING"):
    got = linear_probe((x_tr, y_tr), (x_tr, y_tr), num_classes=3, l2_grid=[1e-4], max_iter=2)
  assert got["hit_iteration_cap"] and not got["converged"] and got["n_iters"] == 2
  assert "iteration cap max_iter=2" in caplog.text
  caplog.clear()
  with caplog.at_level("WARNING"):
    got = linear_probe((x_tr, y_tr), (x_tr, y_tr), num_classes=3, l2_grid=[1e-2])
  assert got["converged"] and not got["hit_iteration_cap"] and "iteration cap" not in caplog.text
