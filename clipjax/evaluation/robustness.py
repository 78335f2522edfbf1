"""Robust accuracy under pixel-space attacks, and attack success rates of poisoning/backdoors.

`robust_accuracy` runs each configured attack (see `clipjax.attacks.build_attack`) on every
batch, checks that every adversarial image lies in its ε-ball and in [0, 1], and reports clean
accuracy, robust accuracy per attack and under the per-example worst case over all attacks
(an example counts as robust only if it is classified correctly clean and under every attack).
`zeroshot_robustness` does it for a zero-shot head on an image encoder, as one flat row.

Attack success rates (ASR), with the ground truth kept by `clipjax.data.corrupt`:

* targeted poisoning (RoCLIP protocol): fraction of the poisoned target images classified as the
  adversary's class;
* backdoor: fraction of triggered images whose true class is not the target class that are
  classified as the target class.
"""

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.attacks import Stochastic, build_attack
from clipjax.evaluation.common import get_field, valid_mask

__all__ = [
  "attack_success_rate",
  "backdoor_success_rate",
  "poisoning_success_rate",
  "robust_accuracy",
  "zeroshot_robustness",
]


def _check_perturbation(x_adv, x, eps, norm, name, batch_index):
  x_adv, x = np.asarray(x_adv, np.float64), np.asarray(x, np.float64)
  if x_adv.min() < 0.0 or x_adv.max() > 1.0:
    raise AssertionError(f"attack {name!r}, batch {batch_index}: pixels left [0, 1]")
  delta = (x_adv - x).reshape(x.shape[0], -1)
  size = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
  worst = int(np.argmax(size))
  if size[worst] > eps * (1 + 1e-5) + 1e-6:
    raise AssertionError(
      f"attack {name!r}, batch {batch_index}, example {worst}: {norm} perturbation "
      f"{size[worst]:.3g} exceeds eps={eps:.3g}"
    )


def robust_accuracy(
  logits_fn: Callable | Stochastic,
  batches: Iterable[Mapping[str, Any]],
  attacks: Sequence[Mapping[str, Any]],
  *,
  key: jax.Array,
  label_key: str = "label",
  max_examples: int | None = None,
  attack_logits_fn: Callable | Stochastic | None = None,
  progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
  """Clean and robust accuracy of a classifier under a list of attacks.

  Args:
    logits_fn: `logits_fn(pixels_bhwc in [0, 1]) -> logits_bc`, e.g.
      `lambda x: classifier.logits(encode_image(x))`; or `Stochastic(fn(pixels, key))` for a
      randomised defence (predictions then use one fresh draw, gradients average `eot_draws`).
    batches: dicts with `image` [b, h, w, 3] in [0, 1], the label field and optional `valid`.
    attacks: attack specs, e.g. `[{"name": "pgd", "eps": 1/255, "step_size": 1/255,
      "steps": 10}]`; names must be unique (a spec may set "label" to rename it).
    key: PRNG key (folded with the batch index, so results do not depend on batching order).
    label_key: label field (e.g. "label" or "labels/shape").
    max_examples: stop after this many valid examples (RobustVLM evaluates 1000 per dataset).
    attack_logits_fn: the model the attacks differentiate, if not `logits_fn` (transfer /
      non-adaptive evaluation, e.g. COLA's protocol attacks the undefended CLIP and evaluates the
      defence); None = adaptive white-box attacks on `logits_fn` itself.
    progress: called with the number of examples done after every batch (e.g.
      `clipjax.metrics.StageProgress.update`).

  Returns:
    dict with `n`, `clean_acc`, `robust_acc` (worst case over attacks), `attacks` (one entry per
    attack: `spec` with all defaults, `robust_acc`, `success_rate` on clean-correct examples),
    `per_example` (`clean_correct` [n], `success` {name: [n]}, `robust` [n]), `adaptive`
    (whether the attacks saw `logits_fn`), `seconds` and `examples_per_second`.
  """
  if not attacks:
    raise ValueError("robust_accuracy needs at least one attack spec")
  built = []
  for spec in attacks:
    spec = dict(spec)
    label = spec.pop("label", None) or spec.get("name")
    fn, full = build_attack(spec, logits_fn if attack_logits_fn is None else attack_logits_fn)
    built.append((label, jax.jit(fn), full))
  names = [b[0] for b in built]
  if len(set(names)) != len(names):
    raise ValueError(f"attack names must be unique (set 'label' to rename): {names}")

  if isinstance(logits_fn, Stochastic):
    predict = jax.jit(lambda x, k: jnp.argmax(logits_fn.fn(x, k), axis=1))
  else:
    predict = jax.jit(lambda x, k: jnp.argmax(logits_fn(x), axis=1))

  clean, success = [], {name: [] for name in names}
  seen = 0
  start = time.perf_counter()
  for i, batch in enumerate(batches):
    if max_examples is not None and seen >= max_examples:
      break
    x = np.asarray(get_field(batch, "image"), np.float32)
    y = np.asarray(get_field(batch, label_key)).astype(np.int32)
    keep = valid_mask(batch, x.shape[0])
    if max_examples is not None:
      keep &= np.cumsum(keep) <= max_examples - seen
    k_batch = jax.random.fold_in(key, i)
    k_clean, k_attacks = jax.random.split(k_batch)
    clean_b = np.asarray(predict(x, k_clean)) == y
    clean.append(clean_b[keep])
    for j, (name, fn, full) in enumerate(built):
      k_att, k_eval = jax.random.split(jax.random.fold_in(k_attacks, j))
      x_adv = np.asarray(fn(x, y, k_att))
      _check_perturbation(x_adv[keep], x[keep], full["eps"], full["norm"], name, i)
      fooled = np.asarray(predict(x_adv, k_eval)) != y
      success[name].append(fooled[keep])
    seen += int(keep.sum())
    if progress is not None:
      progress(seen)
  if not clean:
    raise ValueError("no batches to evaluate (empty iterable)")
  clean_n = np.concatenate(clean)
  success_n = {name: np.concatenate(v) for name, v in success.items()}
  robust_n = clean_n.copy()
  for s in success_n.values():
    robust_n &= ~s
  n = int(clean_n.size)
  per_attack = []
  for name, _, full in built:
    s = success_n[name]
    per_attack.append(
      {
        "label": name,
        "spec": full,
        "robust_acc": float(np.mean(clean_n & ~s)),
        "success_rate": float(np.mean(s[clean_n])) if clean_n.any() else float("nan"),
      }
    )
  seconds = time.perf_counter() - start
  return {
    "n": n,
    "clean_acc": float(np.mean(clean_n)),
    "robust_acc": float(np.mean(robust_n)),
    "attacks": per_attack,
    "per_example": {"clean_correct": clean_n, "success": success_n, "robust": robust_n},
    "adaptive": attack_logits_fn is None,
    "seconds": seconds,
    "examples_per_second": n / seconds,
  }


def zeroshot_robustness(
  encode_image: Callable[[jax.Array], jax.Array],
  batches: Iterable[Mapping[str, Any]],
  weights_cd: jax.Array,
  logit_scale: float,
  attacks: Sequence[Mapping[str, Any]],
  *,
  key: jax.Array,
  label_key: str,
  max_examples: int | None = None,
) -> dict[str, Any]:
  """`robust_accuracy` of the zero-shot classifier `logit_scale · encode_image(x) @ weights_cdᵀ`.

  Args:
    encode_image: `pixels_bhwc in [0, 1] -> emb_bd` (L2-normalised, differentiable).
    batches, attacks, key, label_key, max_examples: as in `robust_accuracy`.
    weights_cd: [c, d] class embeddings (`zeroshot.build_classifier(...).weights_cd`).
    logit_scale: multiplies the cosine similarities.

  Returns:
    `n`, `clean_acc`, `robust_acc_worst` (per-example worst case over the attacks),
    `robust_acc/<attack label>` per attack and `eval_seconds`.
  """
  res = robust_accuracy(
    lambda x: logit_scale * (encode_image(x) @ weights_cd.T),
    batches,
    attacks,
    key=key,
    label_key=label_key,
    max_examples=max_examples,
  )
  out = {"n": res["n"], "clean_acc": res["clean_acc"], "robust_acc_worst": res["robust_acc"]}
  for a in res["attacks"]:
    out[f"robust_acc/{a['label']}"] = a["robust_acc"]
  out["eval_seconds"] = res["seconds"]
  return out


def attack_success_rate(
  preds_n: np.ndarray, adversary_labels_n: np.ndarray, mask_n: np.ndarray | None = None
) -> dict[str, float]:
  """Fraction of (masked) examples predicted as the adversary's label.

  Returns:
    `{"asr": ..., "n": ...}` (asr is NaN when no example is selected).
  """
  preds_n, adv_n = np.asarray(preds_n), np.asarray(adversary_labels_n)
  if preds_n.shape != adv_n.shape or preds_n.ndim != 1:
    raise ValueError(f"preds {preds_n.shape} and adversary labels {adv_n.shape} must be [n]")
  mask_n = np.ones(preds_n.shape, bool) if mask_n is None else np.asarray(mask_n, bool)
  if mask_n.shape != preds_n.shape:
    raise ValueError(f"mask {mask_n.shape} must match preds {preds_n.shape}")
  n = int(mask_n.sum())
  asr = float(np.mean(preds_n[mask_n] == adv_n[mask_n])) if n else float("nan")
  return {"asr": asr, "n": n}


def poisoning_success_rate(
  preds_n: np.ndarray, adversary_labels_n: np.ndarray, is_poisoned_target_n: np.ndarray
) -> dict[str, float]:
  """Targeted poisoning ASR: poisoned target images classified as the adversary's class."""
  return attack_success_rate(preds_n, adversary_labels_n, is_poisoned_target_n)


def backdoor_success_rate(
  preds_n: np.ndarray,
  true_labels_n: np.ndarray,
  target_class: int,
  is_triggered_n: np.ndarray | None = None,
) -> dict[str, float]:
  """Backdoor ASR: triggered images not of the target class classified as the target class.

  Args:
    preds_n: predictions on the (triggered) images.
    true_labels_n: the images' true classes (those of the target class are excluded).
    target_class: the backdoor's target class.
    is_triggered_n: which images carry the trigger (None = all).
  """
  true_n = np.asarray(true_labels_n)
  mask_n = true_n != target_class
  if is_triggered_n is not None:
    mask_n &= np.asarray(is_triggered_n, bool)
  return attack_success_rate(preds_n, np.full(true_n.shape, target_class), mask_n)
