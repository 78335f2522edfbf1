"""Attack objectives built from a classifier `logits_fn(pixels_bhwc) -> logits_bc`.

Each builder returns `loss_fn(pixels_bhwc, labels) -> (loss_b, success_b)`, oriented so that the
attack *maximises* it, with `success_b` telling whether the example is already adversarial.

* CE and CW-margin: untargeted (labels = true class) or targeted (labels = adversary's class).
* DLR (Croce & Hein, ICML 2020, arXiv:2003.01690, Eq. 5) and its targeted variant (Eq. 6), as in
  AutoAttack: untargeted DLR = −(z_y − max_{j≠y} z_j)/(z_π1 − z_π3);
  targeted DLR = −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2), with π sorting logits decreasingly.
  For targeted DLR `labels = (y_b, target_b)` and success means misclassified (AutoAttack's
  robust-accuracy convention).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
  "ce_objective",
  "dlr_objective",
  "dlr_targeted_objective",
  "margin_objective",
]

_DLR_TINY = 1e-12


def _check_logits(logits_bc: jax.Array, labels_b: jax.Array, min_classes: int, name: str):
  if logits_bc.ndim != 2:
    raise ValueError(f"{name}: logits_fn must return [b, C] logits, got shape {logits_bc.shape}")
  if logits_bc.shape[1] < min_classes:
    raise ValueError(f"{name} needs at least {min_classes} classes, got {logits_bc.shape[1]}")
  if labels_b.shape != logits_bc.shape[:1]:
    raise ValueError(f"{name}: labels shape {labels_b.shape} != batch {logits_bc.shape[:1]}")


def _take(logits_bc, labels_b):
  return jnp.take_along_axis(logits_bc, labels_b[:, None], axis=1)[:, 0]


def _max_other(logits_bc, labels_b):
  other = jnp.where(jax.nn.one_hot(labels_b, logits_bc.shape[1], dtype=bool), -jnp.inf, logits_bc)
  return jnp.max(other, axis=1)


def ce_objective(logits_fn: Callable, *, targeted: bool = False) -> Callable:
  """Cross-entropy objective: CE(z, y) untargeted, −CE(z, t) targeted."""

  def loss_fn(pixels_bhwc, labels_b):
    logits_bc = logits_fn(pixels_bhwc).astype(jnp.float32)
    _check_logits(logits_bc, labels_b, 2, "ce_objective")
    ce_b = -_take(jax.nn.log_softmax(logits_bc, axis=1), labels_b)
    pred_b = jnp.argmax(logits_bc, axis=1)
    if targeted:
      return -ce_b, pred_b == labels_b
    return ce_b, pred_b != labels_b

  return loss_fn


def margin_objective(logits_fn: Callable, *, targeted: bool = False) -> Callable:
  """Carlini–Wagner logit margin: max_{j≠y} z_j − z_y untargeted, z_t − max_{j≠t} z_j targeted."""

  def loss_fn(pixels_bhwc, labels_b):
    logits_bc = logits_fn(pixels_bhwc).astype(jnp.float32)
    _check_logits(logits_bc, labels_b, 2, "margin_objective")
    margin_b = _max_other(logits_bc, labels_b) - _take(logits_bc, labels_b)
    pred_b = jnp.argmax(logits_bc, axis=1)
    if targeted:
      return -margin_b, pred_b == labels_b
    return margin_b, pred_b != labels_b

  return loss_fn


def dlr_objective(logits_fn: Callable) -> Callable:
  """Untargeted Difference-of-Logits-Ratio loss (needs C >= 3)."""

  def loss_fn(pixels_bhwc, labels_b):
    logits_bc = logits_fn(pixels_bhwc).astype(jnp.float32)
    _check_logits(logits_bc, labels_b, 3, "dlr_objective")
    sorted_bc = jnp.sort(logits_bc, axis=1)
    denom_b = sorted_bc[:, -1] - sorted_bc[:, -3] + _DLR_TINY
    loss_b = -(_take(logits_bc, labels_b) - _max_other(logits_bc, labels_b)) / denom_b
    return loss_b, jnp.argmax(logits_bc, axis=1) != labels_b

  return loss_fn


def dlr_targeted_objective(logits_fn: Callable) -> Callable:
  """Targeted DLR loss; `labels = (y_b, target_b)` (needs C >= 4)."""

  def loss_fn(pixels_bhwc, labels):
    y_b, target_b = labels
    logits_bc = logits_fn(pixels_bhwc).astype(jnp.float32)
    _check_logits(logits_bc, y_b, 4, "dlr_targeted_objective")
    sorted_bc = jnp.sort(logits_bc, axis=1)
    denom_b = sorted_bc[:, -1] - 0.5 * (sorted_bc[:, -3] + sorted_bc[:, -4]) + _DLR_TINY
    loss_b = -(_take(logits_bc, y_b) - _take(logits_bc, target_b)) / denom_b
    return loss_b, jnp.argmax(logits_bc, axis=1) != y_b

  return loss_fn
