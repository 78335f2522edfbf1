"""Linear probe: multinomial logistic regression on frozen features (CLIP paper, Sec. 3.2).

The objective is `mean_i CE(W x_i + b, y_i) + (l2 / 2)·‖W‖²` (bias unpenalised), minimised
with L-BFGS (`optax.lbfgs` with its zoom line search), full batch on the default device; rows
are zero-weight padded to a power of two so that a sweep compiles once per size bucket. This
equals scikit-learn's `LogisticRegression(C=1 / (l2·n))` objective divided by `C·n`. `l2` is
chosen on a validation split from `l2_grid` (CLIP swept sklearn's C over 10^-6..10^6; here the
grid is explicit), then the probe is refit on train + validation. `few_shot_indices` draws k
examples per class, deterministically by seed.
"""

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

__all__ = [
  "LogisticModel",
  "few_shot_indices",
  "fit_logistic",
  "linear_probe",
  "split_train_val",
]


class LogisticModel(NamedTuple):
  """A fitted multinomial logistic regression.

  Attributes:
    w_dc: [d, C] weights.
    b_c: [C] bias.
    l2: regularisation strength it was fitted with.
    converged: whether the gradient norm fell below `tol` within `max_iter` iterations.
    n_iters: L-BFGS iterations used.
  """

  w_dc: np.ndarray
  b_c: np.ndarray
  l2: float
  converged: bool
  n_iters: int

  def logits(self, x_nd: np.ndarray) -> np.ndarray:
    return np.asarray(x_nd, np.float32) @ self.w_dc + self.b_c[None, :]

  def predict_proba(self, x_nd: np.ndarray) -> np.ndarray:
    return np.asarray(jax.nn.softmax(self.logits(x_nd), axis=1))

  def predict(self, x_nd: np.ndarray) -> np.ndarray:
    return np.argmax(self.logits(x_nd), axis=1)


def _objective(params, x_nd, onehot_nc, weight_n, l2):
  logits_nc = x_nd @ params["w"] + params["b"][None, :]
  ce_n = -jnp.sum(onehot_nc * jax.nn.log_softmax(logits_nc, axis=1), axis=1)
  ce = jnp.sum(weight_n * ce_n) / jnp.sum(weight_n)
  return ce + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))


def _bucket(n: int) -> int:
  """Rows after padding: the next power of two (>= 64), so sweeps reuse one compilation."""
  return max(64, 1 << (n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _lbfgs(x_nd, onehot_nc, weight_n, l2, tol, max_iter):
  fun = lambda p: _objective(p, x_nd, onehot_nc, weight_n, l2)
  d, c = x_nd.shape[1], onehot_nc.shape[1]
  params = {"w": jnp.zeros((d, c), jnp.float32), "b": jnp.zeros((c,), jnp.float32)}
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(params, updates), state

  def keep_going(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

  params, state = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
  grad_norm = optax.tree.norm(jax.grad(fun)(params))
  return params, optax.tree.get(state, "count"), grad_norm


def fit_logistic(
  x_nd: np.ndarray,
  y_n: np.ndarray,
  num_classes: int,
  *,
  l2: float,
  max_iter: int = 1000,
  tol: float = 1e-6,
) -> LogisticModel:
  """Fits multinomial logistic regression with L-BFGS.

  Args:
    x_nd: [n, d] features.
    y_n: [n] labels in [0, num_classes).
    num_classes: C.
    l2: weight-decay strength on W (per mean example loss).
    max_iter: L-BFGS iteration cap.
    tol: stop when the gradient norm is below this.

  Returns:
    LogisticModel with convergence diagnostics.
  """
  x_nd = np.asarray(x_nd, np.float32)
  y_n = np.asarray(y_n)
  if x_nd.ndim != 2 or y_n.shape != x_nd.shape[:1]:
    raise ValueError(f"features {x_nd.shape} and labels {y_n.shape} do not match")
  if y_n.size and (y_n.min() < 0 or y_n.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got [{y_n.min()}, {y_n.max()}]")
  n, pad = len(y_n), _bucket(len(y_n)) - len(y_n)
  if n == 0:
    raise ValueError("fit_logistic: no training examples")
  x_pad = np.concatenate([x_nd, np.zeros((pad, x_nd.shape[1]), np.float32)])
  onehot = np.eye(num_classes, dtype=np.float32)[np.concatenate([y_n, np.zeros(pad, int)])]
  weight = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  params, count, grad_norm = _lbfgs(
    jnp.asarray(x_pad),
    jnp.asarray(onehot),
    jnp.asarray(weight),
    jnp.float32(l2),
    jnp.float32(tol),
    max_iter,
  )
  return LogisticModel(
    np.asarray(params["w"]),
    np.asarray(params["b"]),
    float(l2),
    bool(grad_norm < tol),
    int(count),
  )


def few_shot_indices(labels_n: np.ndarray, k: int, seed: int) -> np.ndarray:
  """k indices per class, drawn without replacement, deterministic by seed; sorted.

  Raises:
    ValueError: if a class has fewer than k examples (naming it).
  """
  labels_n = np.asarray(labels_n)
  rng = np.random.default_rng(seed)
  out = []
  for c in np.unique(labels_n):
    idx = np.flatnonzero(labels_n == c)
    if idx.size < k:
      raise ValueError(f"class {c} has {idx.size} examples, fewer than k={k}")
    out.append(rng.choice(idx, size=k, replace=False))
  return np.sort(np.concatenate(out))


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic random split of range(n) into (train, val) index arrays (sorted)."""
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
  perm = np.random.default_rng(seed).permutation(n)
  n_val = max(1, int(round(val_fraction * n)))
  return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def linear_probe(
  train: tuple[np.ndarray, np.ndarray],
  test: tuple[np.ndarray, np.ndarray],
  *,
  num_classes: int,
  l2_grid: Sequence[float],
  val: tuple[np.ndarray, np.ndarray] | None = None,
  val_fraction: float = 0.2,
  k_shot: int | None = None,
  seed: int = 0,
  max_iter: int = 1000,
  tol: float = 1e-6,
) -> dict[str, Any]:
  """Linear-probe accuracy with the weight decay chosen on validation, refit on train + val.

  Args:
    train: (features [n, d], labels [n]).
    test: (features, labels) for the reported accuracy.
    num_classes: C.
    l2_grid: candidate weight-decay strengths.
    val: explicit validation (features, labels); None = split `val_fraction` off train.
    val_fraction: validation share when `val` is None.
    k_shot: if set, train (and the split-off validation) use k examples per class drawn from
      train by `few_shot_indices(seed)`; an explicit `val` is used as given.
    seed: few-shot draw and train/val split.
    max_iter: L-BFGS iterations per fit.
    tol: gradient-norm tolerance.

  Returns:
    dict with `acc1` (test), `best_l2`, `val_acc` per grid value, `converged`, `n_iters`,
    `hit_iteration_cap` (the final fit stopped at `max_iter` before reaching `tol`; also logged
    as a warning, since the accuracy then depends on the cap), `n_train`, `k_shot`.
  """
  x_tr, y_tr = np.asarray(train[0], np.float32), np.asarray(train[1])
  if k_shot is not None:
    idx = few_shot_indices(y_tr, k_shot, seed)
    x_tr, y_tr = x_tr[idx], y_tr[idx]
  if val is None:
    i_tr, i_val = split_train_val(len(y_tr), val_fraction, seed)
    fit_x, fit_y, val_x, val_y = x_tr[i_tr], y_tr[i_tr], x_tr[i_val], y_tr[i_val]
    all_x, all_y = x_tr, y_tr
  else:
    fit_x, fit_y = x_tr, y_tr
    val_x, val_y = np.asarray(val[0], np.float32), np.asarray(val[1])
    all_x, all_y = np.concatenate([x_tr, val_x]), np.concatenate([y_tr, val_y])
  if not len(l2_grid):
    raise ValueError("l2_grid is empty")
  val_acc = {}
  for l2 in l2_grid:
    model = fit_logistic(fit_x, fit_y, num_classes, l2=l2, max_iter=max_iter, tol=tol)
    val_acc[float(l2)] = float(np.mean(model.predict(val_x) == val_y))
  # Ties go to the strongest regularisation (the simplest model).
  best_l2 = max(val_acc, key=lambda l2: (val_acc[l2], l2))
  final = fit_logistic(all_x, all_y, num_classes, l2=best_l2, max_iter=max_iter, tol=tol)
  x_te, y_te = np.asarray(test[0], np.float32), np.asarray(test[1])
  capped = not final.converged and final.n_iters >= max_iter
  if capped:
    logging.warning(
      "linear probe (l2=%g, n=%d%s) stopped at its iteration cap max_iter=%d before the gradient "
      "norm reached tol=%g: its accuracy depends on the cap; raise linear_probe.max_iter",
      best_l2, len(all_y), f", {k_shot}-shot" if k_shot else "", max_iter, tol,
    )  # fmt: skip
  return {
    "acc1": float(np.mean(final.predict(x_te) == y_te)),
    "best_l2": best_l2,
    "val_acc": val_acc,
    "converged": final.converged,
    "n_iters": final.n_iters,
    "hit_iteration_cap": capped,
    "n_train": int(len(all_y)),
    "k_shot": k_shot,
  }
