"""Classification metrics with CLIP_benchmark's definitions.

* `acc{k}`: fraction of examples whose label is among the k highest scores; NaN when k exceeds
  the number of classes C (CLIP_benchmark reports `acc5 = NaN` below 5 classes). Ties at the k-th
  score are broken against the example (a tied wrong class ranks above the label), so a
  classifier that scores every class the same is never right; CLIP_benchmark's `torch.topk`
  breaks ties in an unspecified order, and the two agree whenever scores are distinct.
* `mean_per_class_recall`: recall averaged over the classes present in the labels
  (scikit-learn's `balanced_accuracy_score`, which CLIP_benchmark calls).

Selective classification: `risk_coverage_curve` (the error rate among the k most confident
examples, k = 1..n) and `selective_risk` (that risk at given coverages, and its mean, AURC).
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
  "classification_metrics",
  "label_ranks",
  "risk_coverage_curve",
  "selective_risk",
]


def label_ranks(scores_nc: np.ndarray, labels_n: np.ndarray) -> np.ndarray:
  """0-based rank of each label: the number of other classes scoring at least as high."""
  scores_nc = np.asarray(scores_nc)
  labels_n = np.asarray(labels_n)
  if scores_nc.ndim != 2 or labels_n.shape != scores_nc.shape[:1]:
    raise ValueError(f"scores {scores_nc.shape} and labels {labels_n.shape} do not match")
  n, c = scores_nc.shape
  if n and (labels_n.min() < 0 or labels_n.max() >= c):
    bad = int(np.flatnonzero((labels_n < 0) | (labels_n >= c))[0])
    raise ValueError(f"label {labels_n[bad]} at index {bad} is outside [0, {c})")
  own_n = scores_nc[np.arange(n), labels_n]
  return np.sum(scores_nc >= own_n[:, None], axis=1) - 1


def classification_metrics(
  scores_nc: np.ndarray,
  labels_n: np.ndarray,
  *,
  top_k: Sequence[int] = (1, 5),
  class_subsets: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, float]:
  """Top-k accuracies, mean per-class recall and example count.

  Args:
    scores_nc: class scores (logits, similarities or OT plan rows); higher is better.
    labels_n: true classes in [0, C).
    top_k: which top-k accuracies to report (NaN for k > C).
    class_subsets: optional named class lists (e.g. {"seen": [...], "held_out": [...]}); for
      each, `acc1` and `mean_per_class_recall` over examples whose label is in the subset
      (predictions still range over all classes) are added as `"{name}/acc1"` etc.

  Returns:
    dict with `acc{k}`, `mean_per_class_recall`, `n` (and per-subset entries).
  """
  ranks_n = label_ranks(scores_nc, labels_n)
  labels_n = np.asarray(labels_n)
  n_classes = np.asarray(scores_nc).shape[1]
  preds_n = np.argmax(scores_nc, axis=1)

  def block(mask_n):
    if not np.any(mask_n):
      return {
        **{f"acc{k}": float("nan") for k in top_k},
        "mean_per_class_recall": float("nan"),
        "n": 0,
      }
    out = {
      f"acc{k}": float(np.mean(ranks_n[mask_n] < k)) if k <= n_classes else float("nan")
      for k in top_k
    }
    present = np.unique(labels_n[mask_n])
    recalls = [np.mean(preds_n[mask_n & (labels_n == c)] == c) for c in present]
    out["mean_per_class_recall"] = float(np.mean(recalls)) if recalls else float("nan")
    out["n"] = int(np.sum(mask_n))
    return out

  out = block(np.ones(labels_n.shape, bool))
  for name, classes in (class_subsets or {}).items():
    sub = block(np.isin(labels_n, np.asarray(list(classes), np.int64)))
    out.update({f"{name}/{k}": v for k, v in sub.items()})
  return out


def risk_coverage_curve(
  confidence_n: np.ndarray, correct_n: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Selective risk at every coverage: keep the k most confident examples, k = 1..n.

  Ties in confidence keep the input order (stable sort), so the curve is deterministic.

  Args:
    confidence_n: [n] confidence (higher = kept first), e.g. the maximum softmax probability.
    correct_n: [n] bool, whether each prediction is right.

  Returns:
    `(coverage_n, risk_n)`: coverage k/n and the error rate among the k kept, for k = 1..n.
  """
  conf_n = np.asarray(confidence_n, np.float64)
  correct_n = np.asarray(correct_n)
  if conf_n.ndim != 1 or correct_n.shape != conf_n.shape:
    raise ValueError(f"confidence_n {conf_n.shape} and correct_n {correct_n.shape}: need [n] each")
  if conf_n.size == 0:
    raise ValueError("risk_coverage_curve: no examples")
  if not np.all(np.isfinite(conf_n)):
    raise ValueError("confidence_n has non-finite values")
  order = np.argsort(-conf_n, kind="stable")
  err = 1.0 - correct_n[order].astype(np.float64)
  k = np.arange(1, conf_n.size + 1)
  return k / conf_n.size, np.cumsum(err) / k


def selective_risk(
  confidence_n: np.ndarray, correct_n: np.ndarray, coverages: Sequence[float]
) -> dict[str, float]:
  """`risk@{s}`: the error rate among the ⌈s·n⌉ most confident examples, per coverage s in
  (0, 1]; `aurc`: the mean risk over k = 1..n (area under the risk–coverage curve)."""
  if any(not 0.0 < s <= 1.0 for s in coverages):
    raise ValueError(f"coverages must lie in (0, 1], got {list(coverages)}")
  _, risk_n = risk_coverage_curve(confidence_n, correct_n)
  n = risk_n.size
  out = {f"risk@{s:g}": float(risk_n[math.ceil(s * n) - 1]) for s in coverages}
  out["aurc"] = float(risk_n.mean())
  return out
