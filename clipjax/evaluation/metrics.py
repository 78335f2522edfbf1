"""Classification metrics with CLIP_benchmark's definitions.

* `acc{k}`: fraction of examples whose label is among the k highest scores; NaN when k exceeds
  the number of classes C (CLIP_benchmark reports `acc5 = NaN` below 5 classes). Ties at the k-th
  score are broken against the example (a tied wrong class ranks above the label), so a
  classifier that scores every class the same is never right; CLIP_benchmark's `torch.topk`
  breaks ties in an unspecified order, and the two agree whenever scores are distinct.
* `mean_per_class_recall`: recall averaged over the classes present in the labels
  (scikit-learn's `balanced_accuracy_score`, which CLIP_benchmark calls).
"""

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["classification_metrics", "label_ranks"]


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
