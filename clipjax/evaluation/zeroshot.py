"""Zero-shot classification (Radford et al., ICML 2021, arXiv:2103.00020, Sec. 3.1.4).

A `ZeroShotClassifier` holds one L2-normalised text embedding per class, built by template
ensembling as in OpenAI's notebook: embed every "template(classname)" prompt, L2-normalise, average
over templates, renormalise. Logits are `logit_scale · zimg @ weightsᵀ` (OpenAI: 100).

`ensemble="posterior"` keeps every prompt's embedding instead and scores a class by the log of
the probability mass of its prompts under a softmax over all prompts at `logit_scale`:
`logsumexp_t(logit_scale · zimg · e_ct) − log T`. With prompts that are full descriptions of one
class each (the shapes world's `label_templates="captions"`: every caption of the class), this is
the class posterior implied by CLIP's image→text probabilities, and an image is judged by the
captions it matches best rather than by one averaged direction (docs/results.md, "Prompt sets").
`weights_cd` stays the averaged directions, which OT inference methods read.

OT inference methods (OT-CLIP's FGW/prior matching, COLA's per-class OT) replace the argmax by
passing `score_fn(zimg_nd, classifier) -> scores_nc` to `evaluate_zeroshot`; transductive ones
see a whole chunk of test embeddings at once (`score_chunk`, reported with the metrics).
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.evaluation.common import l2_normalize, map_batches
from clipjax.evaluation.metrics import classification_metrics

__all__ = [
  "ZeroShotClassifier",
  "build_classifier",
  "encode_texts",
  "evaluate_classifier",
  "evaluate_zeroshot",
  "zeroshot_scores",
]


class ZeroShotClassifier(NamedTuple):
  """Class text weights for zero-shot classification.

  Attributes:
    weights_cd: [C, d] L2-normalised template-ensembled class embeddings.
    classnames: the C class names, in label order.
    templates: the templates that were ensembled.
    logit_scale: multiplier of the cosine similarities (OpenAI CLIP: 100).
    ensemble: "mean" (CLIP's averaged class directions) or "posterior" (module docstring).
    prompts_ctd: [C, T, d] L2-normalised prompt embeddings ("posterior" only, else None).
  """

  weights_cd: np.ndarray
  classnames: tuple[str, ...]
  templates: tuple[str, ...]
  logit_scale: float = 100.0
  ensemble: str = "mean"
  prompts_ctd: np.ndarray | None = None

  @property
  def num_classes(self) -> int:
    return self.weights_cd.shape[0]

  def logits(self, zimg_bd):
    """`logit_scale · zimg_bd @ weights_cdᵀ` -> [b, C]; zimg_bd should be L2-normalised.

    Works on numpy and JAX arrays (jit-able, differentiable w.r.t. zimg_bd). With
    `ensemble="posterior"`: `logsumexp_t(logit_scale · zimg_bd · e_ct) − log T` instead.
    """
    if self.ensemble == "posterior":
      s_bct = self.logit_scale * jnp.einsum("bd,ctd->bct", zimg_bd, self.prompts_ctd)
      return jax.nn.logsumexp(s_bct, axis=-1) - np.log(self.prompts_ctd.shape[1])
    return self.logit_scale * (zimg_bd @ self.weights_cd.T)

  def predict(self, zimg_bd):
    """Argmax class per row -> [b]."""
    return self.logits(zimg_bd).argmax(axis=-1)


def encode_texts(
  encode_text: Callable[[np.ndarray], Any],
  tokenize: Callable[[list[str]], np.ndarray],
  texts: Sequence[str],
  *,
  batch_size: int = 256,
) -> np.ndarray:
  """Embeds texts in fixed-size chunks (the last one padded, so a jitted encoder compiles once).

  Returns:
    [n, d] float32 L2-normalised embeddings.
  """
  texts = list(texts)
  if not texts:
    raise ValueError("encode_texts: no texts")
  outs = []
  for start in range(0, len(texts), batch_size):
    chunk = texts[start : start + batch_size]
    n_real = len(chunk)
    chunk = chunk + [chunk[-1]] * (min(batch_size, len(texts)) - n_real)
    ids = np.asarray(tokenize(chunk))
    if ids.ndim != 2 or ids.shape[0] != len(chunk):
      raise ValueError(f"tokenize returned shape {ids.shape} for {len(chunk)} texts")
    emb = np.asarray(encode_text(ids), np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(chunk):
      raise ValueError(f"encode_text returned shape {emb.shape} for {len(chunk)} token rows")
    outs.append(emb[:n_real])
  return l2_normalize(np.concatenate(outs))


def build_classifier(
  encode_text: Callable[[np.ndarray], Any],
  tokenize: Callable[[list[str]], np.ndarray],
  classnames: Sequence[str],
  templates: Sequence[str],
  *,
  logit_scale: float = 100.0,
  batch_size: int = 256,
  ensemble: str = "mean",
) -> ZeroShotClassifier:
  """Builds the template-ensembled zero-shot classifier.

  Args:
    encode_text: `encode_text(ids_bl) -> emb_bd` (normalised or not; renormalised here).
    tokenize: `tokenize(list_of_str) -> int [n, L]`.
    classnames: class names in label order.
    templates: strings with one "{}" for the class name.
    logit_scale: multiplier of cosine similarities in `logits`.
    batch_size: texts per `encode_text` call.
    ensemble: "mean" (average the prompts' directions) or "posterior" (score a class by its
      prompts' softmax mass; module docstring).

  Returns:
    ZeroShotClassifier with weights [C, d].
  """
  if ensemble not in ("mean", "posterior"):
    raise ValueError(f"ensemble must be 'mean' or 'posterior', got {ensemble!r}")
  classnames, templates = tuple(classnames), tuple(templates)
  if not classnames or not templates:
    raise ValueError(f"need classnames and templates, got {len(classnames)} and {len(templates)}")
  for t in templates:
    if t.count("{}") != 1:
      raise ValueError(f"template {t!r} must contain exactly one '{{}}'")
  prompts = [t.format(c) for c in classnames for t in templates]
  emb_ctd = encode_texts(encode_text, tokenize, prompts, batch_size=batch_size).reshape(
    len(classnames), len(templates), -1
  )
  weights_cd = l2_normalize(emb_ctd.mean(axis=1))
  prompts_ctd = emb_ctd if ensemble == "posterior" else None
  return ZeroShotClassifier(
    weights_cd, classnames, templates, float(logit_scale), ensemble, prompts_ctd
  )


ScoreFn = Callable[[np.ndarray, ZeroShotClassifier], Any]


def zeroshot_scores(
  zimg_nd: np.ndarray,
  classifier: ZeroShotClassifier,
  *,
  score_fn: ScoreFn | None = None,
  score_chunk: int | None = None,
) -> np.ndarray:
  """Class scores for image embeddings: logits by default, or an OT inference method.

  Args:
    zimg_nd: [n, d] image embeddings (L2-normalised here).
    classifier: the text side.
    score_fn: `score_fn(zimg_bd, classifier) -> scores_bc` (higher is better); None = logits.
    score_chunk: rows per `score_fn` call; None = all n at once (transductive methods see the
      whole test set). The final chunk may be smaller.

  Returns:
    [n, C] float32 scores.
  """
  zimg_nd = l2_normalize(zimg_nd)
  if zimg_nd.shape[1] != classifier.weights_cd.shape[1]:
    raise ValueError(
      f"image embedding dim {zimg_nd.shape[1]} != text embedding dim "
      f"{classifier.weights_cd.shape[1]}"
    )
  fn = score_fn if score_fn is not None else (lambda z, clf: clf.logits(z))
  step = score_chunk or zimg_nd.shape[0]
  outs = []
  for start in range(0, zimg_nd.shape[0], step):
    chunk = zimg_nd[start : start + step]
    out = np.asarray(fn(chunk, classifier), np.float32)
    if out.shape != (chunk.shape[0], classifier.num_classes):
      raise ValueError(
        f"score_fn returned shape {out.shape}, expected {(chunk.shape[0], classifier.num_classes)}"
      )
    outs.append(out)
  return np.concatenate(outs)


def evaluate_zeroshot(
  encode_image: Callable[[np.ndarray], Any],
  classifier: ZeroShotClassifier,
  batches: Iterable[Mapping[str, Any]],
  *,
  label_key: str = "label",
  score_fn: ScoreFn | None = None,
  score_chunk: int | None = None,
  top_k: Sequence[int] = (1, 5),
  class_subsets: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
  """Zero-shot classification metrics over an iterable of batches.

  Args:
    encode_image: `encode_image(pixels_bhwc in [0, 1]) -> emb_bd`.
    classifier: from `build_classifier`.
    batches: dicts with `image`, the label field and optional `valid`.
    label_key: label field, e.g. "label" or "labels/shape" (nested).
    score_fn: optional replacement of the argmax classifier (see `zeroshot_scores`).
    score_chunk: rows per `score_fn` call (None = whole test set).
    top_k: top-k accuracies to report.
    class_subsets: e.g. {"held_out": LabelSet.held_out} for separate reports.

  Returns:
    dict with `acc1`, `acc5`, `mean_per_class_recall`, `n`, `num_classes`, `score_chunk`.
  """
  zimg_nd, labels_n = map_batches(encode_image, batches, label_key=label_key)
  scores_nc = zeroshot_scores(zimg_nd, classifier, score_fn=score_fn, score_chunk=score_chunk)
  out = classification_metrics(scores_nc, labels_n, top_k=top_k, class_subsets=class_subsets)
  out.update(num_classes=classifier.num_classes, score_chunk=score_chunk)
  return out


def evaluate_classifier(
  scores_fn: Callable[[np.ndarray], Any],
  batches: Iterable[Mapping[str, Any]],
  *,
  label_key: str = "label",
  top_k: Sequence[int] = (1, 5),
  class_subsets: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
  """Classification metrics of any pixel-level classifier `scores_fn(pixels_bhwc) -> scores_bc`.

  For test-time defences that need the image itself (COLA's augmented views); the text side is
  whatever `scores_fn` closes over.
  """
  scores_nc, labels_n = map_batches(scores_fn, batches, label_key=label_key)
  return classification_metrics(scores_nc, labels_n, top_k=top_k, class_subsets=class_subsets)
