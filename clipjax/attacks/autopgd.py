"""Auto-PGD (APGD), Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020 (arXiv:2003.01690).

Map to the paper (Algorithm 1 and Sec. 3) and AutoAttack's reference implementation:

* step size η⁽⁰⁾ = 2ε; first step plain, then momentum α = 0.75:
  z = P(x⁽ᵏ⁾ + η ∇-direction), x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾)).
* checkpoints w_j = ⌈p_j N⌉ with p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06),
  implemented as AutoAttack does: first window ⌊0.22 N⌋, each next window shorter by ⌊0.03 N⌋,
  never shorter than ⌊0.06 N⌋.
* at a checkpoint η is halved and the iterate restarts from the best point if
  (1) the loss increased in at most ρ = 0.75 of the window's steps, or
  (2) η was not halved at the previous checkpoint and the best loss has not improved since.
* random start: ℓ∞ x + ε·t/‖t‖∞ with t ~ U[−1, 1]; ℓ2 x + ε·t/‖t‖₂ with t ~ N(0, I).
* returned point: an iterate where the attack succeeded if any, else the best-loss iterate.

`apgd_targeted` is APGD-T: targeted DLR against each of the `n_target_classes` highest-scoring
wrong classes of the clean image, keeping per example the first successful run.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.attacks import core
from clipjax.attacks.eot import Stochastic
from clipjax.attacks.losses import dlr_targeted_objective

__all__ = ["apgd", "apgd_checkpoints", "apgd_targeted"]


def apgd_checkpoints(steps: int) -> list[tuple[int, int]]:
  """Iteration indices (0-based) after which APGD checks its step size, and their windows.

  Returns:
    List of (iteration, window_length) pairs, as AutoAttack schedules them.
  """
  window = max(int(0.22 * steps), 1)
  decrement = max(int(0.03 * steps), 1)
  min_window = max(int(0.06 * steps), 1)
  out, it = [], -1
  while it + window < steps:
    it += window
    out.append((it, window))
    window = max(window - decrement, min_window)
  return out


def _l2_b(v_bhwc):
  return jnp.sqrt(jnp.sum(jnp.square(v_bhwc), axis=(1, 2, 3)))


@functools.partial(jax.jit, static_argnames=("loss_fn", "steps", "norm", "rho", "momentum"))
def apgd(
  loss_fn: Callable | Stochastic,
  x_bhwc: jax.Array,
  labels,
  *,
  eps: float,
  steps: int,
  key: jax.Array,
  norm: str = "linf",
  rho: float = 0.75,
  momentum: float = 0.75,
) -> jax.Array:
  """Auto-PGD with AutoAttack's step-size schedule (APGD-CE / APGD-DLR by choice of objective).

  Args:
    loss_fn: objective to maximise, `loss_fn(x_bhwc, labels) -> loss_b [or (loss_b, success_b)]`,
      e.g. `ce_objective(logits_fn)` (APGD-CE) or `dlr_objective(logits_fn)` (APGD-DLR).
    x_bhwc: clean images in [0, 1].
    labels: pytree of per-example labels passed to `loss_fn`.
    eps: radius in pixel units.
    steps: iterations N (100 in AutoAttack); each is one forward+backward.
    key: PRNG key for the random start (and for `Stochastic` objectives).
    norm: "linf" or "l2".
    rho: checkpoint condition-1 threshold ρ.
    momentum: α.

  Returns:
    x_adv_bhwc within the ε-ball around `x_bhwc` and in [0, 1].
  """
  core.check_norm(norm)
  if x_bhwc.ndim != 4:
    raise ValueError(f"apgd: pixels must be [b, h, w, c], got shape {x_bhwc.shape}")
  if steps < 1:
    raise ValueError(f"apgd: steps must be >= 1, got {steps}")
  b = x_bhwc.shape[0]
  checks = apgd_checkpoints(steps)
  is_check_n = np.zeros(steps, bool)
  window_n = np.ones(steps, np.float32)
  for it, window in checks:
    is_check_n[it] = True
    window_n[it] = window
  alpha_n = np.full(steps, momentum, np.float32)
  alpha_n[0] = 1.0

  key, k_init = jax.random.split(key)
  if norm == "linf":
    t = jax.random.uniform(k_init, x_bhwc.shape, x_bhwc.dtype, -1.0, 1.0)
    scale_b = jnp.max(jnp.abs(t), axis=(1, 2, 3))
  else:
    t = jax.random.normal(k_init, x_bhwc.shape, x_bhwc.dtype)
    scale_b = _l2_b(t)
  x0 = jnp.clip(x_bhwc + eps * t / jnp.maximum(scale_b, 1e-12)[:, None, None, None], 0.0, 1.0)
  key, k_eval = core.next_key(loss_fn, key)
  loss0, succ0, grad0 = core.evaluate(loss_fn, x0, labels, k_eval)
  has_success = succ0 is not None
  if not has_success:
    succ0 = jnp.zeros((b,), bool)

  def step(x_adv_hwc, x_prev_hwc, g_hwc, eta, a, x_hwc):
    z = core.project(x_adv_hwc + eta * core.steepest_direction(g_hwc, norm), x_hwc, eps, norm)
    moved = x_adv_hwc + a * (z - x_adv_hwc) + (1.0 - a) * (x_adv_hwc - x_prev_hwc)
    return core.project(moved, x_hwc, eps, norm)

  def body(carry, xs):
    (
      x,
      x_prev,
      grad,
      loss_cur,
      x_best,
      grad_best,
      loss_best,
      eta_b,
      n_inc_b,
      loss_best_last_b,
      reduced_last_b,
      x_succ,
      any_succ,
      key,
    ) = carry
    a, is_check, window = xs
    x_new = jax.vmap(step, in_axes=(0, 0, 0, 0, None, 0))(x, x_prev, grad, eta_b, a, x_bhwc)
    key, sub = core.next_key(loss_fn, key)
    loss_new, succ_new, grad_new = core.evaluate(loss_fn, x_new, labels, sub)
    if has_success:
      x_succ = core.select_b(succ_new, x_new, x_succ)
      any_succ = any_succ | succ_new
    n_inc_b = n_inc_b + (loss_new > loss_cur).astype(jnp.float32)
    improved = loss_new > loss_best
    x_best = core.select_b(improved, x_new, x_best)
    grad_best = core.select_b(improved, grad_new, grad_best)
    loss_best = jnp.where(improved, loss_new, loss_best)

    oscillating = n_inc_b <= window * rho
    stalled = ~reduced_last_b & (loss_best_last_b >= loss_best)
    reduce = is_check & (oscillating | stalled)
    eta_b = jnp.where(reduce, eta_b / 2.0, eta_b)
    x_next = core.select_b(reduce, x_best, x_new)
    grad_next = core.select_b(reduce, grad_best, grad_new)
    reduced_last_b = jnp.where(is_check, reduce, reduced_last_b)
    loss_best_last_b = jnp.where(is_check, loss_best, loss_best_last_b)
    n_inc_b = jnp.where(is_check, 0.0, n_inc_b)
    carry = (
      x_next,
      x,
      grad_next,
      loss_new,
      x_best,
      grad_best,
      loss_best,
      eta_b,
      n_inc_b,
      loss_best_last_b,
      reduced_last_b,
      x_succ,
      any_succ,
      key,
    )
    return carry, None

  init = (
    x0,
    x0,
    grad0,
    loss0,
    x0,
    grad0,
    loss0,
    jnp.full((b,), 2.0 * eps, jnp.float32),
    jnp.zeros((b,), jnp.float32),
    loss0,
    jnp.ones((b,), bool),
    x0,
    succ0,
    key,
  )
  xs = (jnp.asarray(alpha_n), jnp.asarray(is_check_n), jnp.asarray(window_n))
  carry, _ = jax.lax.scan(body, init, xs)
  x_best, x_succ, any_succ = carry[4], carry[11], carry[12]
  return core.select_b(any_succ, x_succ, x_best)


@functools.partial(jax.jit, static_argnames=("logits_fn", "steps", "norm", "n_target_classes"))
def apgd_targeted(
  logits_fn: Callable,
  x_bhwc: jax.Array,
  labels_b: jax.Array,
  *,
  eps: float,
  steps: int,
  key: jax.Array,
  norm: str = "linf",
  n_target_classes: int = 9,
) -> jax.Array:
  """APGD-T: APGD with the targeted DLR loss against the top wrong classes (AutoAttack).

  Args:
    logits_fn: `logits_fn(x_bhwc) -> logits_bc` (C >= 4).
    x_bhwc: clean images in [0, 1].
    labels_b: true classes.
    eps: radius in pixel units.
    steps: iterations per target class.
    key: PRNG key.
    norm: "linf" or "l2".
    n_target_classes: how many target classes to try (clipped to C − 1).

  Returns:
    x_adv_bhwc: per example, the first target run that misclassifies, else the last run's point.
  """
  logits_bc = logits_fn(x_bhwc)
  n_classes = logits_bc.shape[1]
  order_bc = jnp.argsort(-logits_bc, axis=1)
  objective = dlr_targeted_objective(logits_fn)
  x_adv = x_bhwc
  done_b = jnp.zeros(x_bhwc.shape[:1], bool)
  for rank in range(1, min(n_target_classes, n_classes - 1) + 1):
    key, sub = jax.random.split(key)
    target_b = order_bc[:, rank]
    cand = apgd(objective, x_bhwc, (labels_b, target_b), eps=eps, steps=steps, key=sub, norm=norm)
    success_b = jnp.argmax(logits_fn(cand), axis=1) != labels_b
    x_adv = core.select_b(done_b, x_adv, cand)
    done_b = done_b | success_b
  return x_adv
