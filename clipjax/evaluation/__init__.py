"""clipjax.evaluation: zero-shot classification, retrieval, linear probe, robustness.

Evaluators depend only on callables and arrays: `encode_image(pixels_bhwc in [0, 1]) -> emb_bd`,
`encode_text(ids_bl) -> emb_bd`, `tokenize(list[str]) -> int [n, L]`, and iterables of batch
dicts (`image`, labels, `ids`, optional `valid` for padded final batches).
"""

from clipjax.evaluation.common import get_field, map_batches
from clipjax.evaluation.linear_probe import (
  LogisticModel,
  few_shot_indices,
  fit_logistic,
  linear_probe,
  split_train_val,
)
from clipjax.evaluation.metrics import classification_metrics, label_ranks
from clipjax.evaluation.retrieval import (
  RetrievalFeatures,
  evaluate_retrieval,
  extract_retrieval_features,
  recall_at_k,
)
from clipjax.evaluation.robustness import (
  attack_success_rate,
  backdoor_success_rate,
  poisoning_success_rate,
  robust_accuracy,
  zeroshot_robustness,
)
from clipjax.evaluation.zeroshot import (
  ZeroShotClassifier,
  build_classifier,
  encode_texts,
  evaluate_classifier,
  evaluate_zeroshot,
  zeroshot_scores,
)

__all__ = [
  "LogisticModel",
  "RetrievalFeatures",
  "ZeroShotClassifier",
  "attack_success_rate",
  "backdoor_success_rate",
  "build_classifier",
  "classification_metrics",
  "encode_texts",
  "evaluate_classifier",
  "evaluate_retrieval",
  "evaluate_zeroshot",
  "extract_retrieval_features",
  "few_shot_indices",
  "fit_logistic",
  "get_field",
  "label_ranks",
  "linear_probe",
  "map_batches",
  "poisoning_success_rate",
  "recall_at_k",
  "robust_accuracy",
  "split_train_val",
  "zeroshot_robustness",
  "zeroshot_scores",
]
