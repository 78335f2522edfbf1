"""Classification metrics against scikit-learn, ASR definitions (prompts: tests/data)."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score

from clipjax.evaluation import (
  attack_success_rate,
  backdoor_success_rate,
  classification_metrics,
  poisoning_success_rate,
)


def test_metrics_match_sklearn_on_random_predictions():
  rng = np.random.default_rng(0)
  n, c = 300, 12
  scores = rng.normal(size=(n, c))
  labels = rng.integers(0, c - 2, size=n)  # the last two classes never occur as labels
  scores[np.arange(n), labels] += rng.normal(size=n) + 1.0
  got = classification_metrics(scores, labels, top_k=(1, 5))
  assert got["acc1"] == pytest.approx(accuracy_score(labels, scores.argmax(1)))
  assert got["acc5"] == pytest.approx(top_k_accuracy_score(labels, scores, k=5, labels=range(c)))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # sklearn warns about predicted classes absent from labels
    expected = balanced_accuracy_score(labels, scores.argmax(1))
  assert got["mean_per_class_recall"] == pytest.approx(expected)
  assert got["n"] == n


def test_topk_above_class_count_is_nan_ties_and_subsets():
  scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
  labels = np.array([1, 0, 0])
  got = classification_metrics(scores, labels, class_subsets={"a": [0], "b": [1], "none": [2]})
  assert np.isnan(got["acc5"])  # C = 3 < 5: CLIP_benchmark reports NaN
  assert classification_metrics(scores, labels, top_k=(3,))["acc3"] == 1.0
  assert got["acc1"] == pytest.approx(1 / 3)  # the 0.5/0.5 tie counts against the label
  assert got["a/acc1"] == 0.0 and got["a/n"] == 2
  assert got["b/acc1"] == 1.0 and got["b/mean_per_class_recall"] == 1.0
  assert got["none/n"] == 0 and np.isnan(got["none/acc1"])
  with pytest.raises(ValueError, match="label 3 at index 0"):
    classification_metrics(scores, np.array([3, 0, 0]))


def test_attack_success_rates():
  preds = np.array([2, 2, 1, 2, 0, 2])
  adversary = np.array([2, 1, 1, 0, 0, 0])
  assert attack_success_rate(preds, adversary) == {"asr": pytest.approx(0.5), "n": 6}
  poisoned = np.array([True, True, False, False, False, False])
  assert poisoning_success_rate(preds, adversary, poisoned) == {"asr": 0.5, "n": 2}
  true = np.array([0, 1, 2, 0, 1, 2])  # target class 2 examples are excluded
  triggered = np.array([True, False, True, True, True, True])
  assert backdoor_success_rate(preds, true, 2, triggered) == {"asr": pytest.approx(2 / 3), "n": 3}
  assert backdoor_success_rate(preds, true, 2)["n"] == 4
  assert np.isnan(attack_success_rate(preds, adversary, np.zeros(6, bool))["asr"])
