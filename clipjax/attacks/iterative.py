"""FGSM, PGD and MIM in pixel space [0, 1].

* FGSM: Goodfellow, Shlens, Szegedy, ICLR 2015 (arXiv:1412.6572): one step of size ε along the
  steepest-ascent direction (sign of the gradient for ℓ∞, normalised gradient for ℓ2).
* PGD: Madry et al., ICLR 2018 (arXiv:1706.06083): random start in the ε-ball, then `steps`
  steepest-ascent steps of size `step_size`, each projected onto the ε-ball ∩ [0, 1].
* MIM (MI-FGSM): Dong et al., CVPR 2018 (arXiv:1710.06081): g ← μ·g + ∇/‖∇‖₁, step along g.

Each step is one forward+backward pass over the whole batch. When the objective reports
success (see `losses.py`), the returned example is the latest iterate at which the attack
succeeded, otherwise the last iterate; more steps can therefore never make an evaluated
example robust again.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from clipjax.attacks import core
from clipjax.attacks.eot import Stochastic

__all__ = ["fgsm", "mim", "pgd"]


def _check(x_bhwc, eps, steps, norm):
  core.check_norm(norm)
  if x_bhwc.ndim != 4:
    raise ValueError(f"attack pixels must be [b, h, w, c], got shape {x_bhwc.shape}")
  if isinstance(eps, (int, float)) and eps < 0:
    raise ValueError(f"attack eps must be >= 0, got {eps}")
  if steps is not None and steps < 1:
    raise ValueError(f"attack steps must be >= 1, got {steps}")


@functools.partial(jax.jit, static_argnames=("loss_fn", "norm"))
def fgsm(
  loss_fn: Callable | Stochastic,
  x_bhwc: jax.Array,
  labels,
  *,
  eps: float,
  norm: str = "linf",
  key: jax.Array | None = None,
) -> jax.Array:
  """Fast Gradient Sign Method (one step of size ε from the clean image).

  Args:
    loss_fn: objective to maximise, `loss_fn(x_bhwc, labels) -> loss_b [or (loss_b, success_b)]`.
    x_bhwc: clean images in [0, 1].
    labels: pytree of per-example labels passed to `loss_fn`.
    eps: radius in pixel units.
    norm: "linf" or "l2".
    key: needed only for a `Stochastic` (EOT) objective.

  Returns:
    x_adv_bhwc within the ε-ball around `x_bhwc` and in [0, 1].
  """
  _check(x_bhwc, eps, None, norm)
  _, _, grad_bhwc = core.evaluate(loss_fn, x_bhwc, labels, key)

  def step(x_hwc, g_hwc):
    return core.project(x_hwc + eps * core.steepest_direction(g_hwc, norm), x_hwc, eps, norm)

  return jax.vmap(step)(x_bhwc, grad_bhwc)


def _iterate(loss_fn, x_bhwc, labels, x_init_bhwc, key, steps, update, aux_init):
  """Runs `steps` updates `update(x, grad, aux) -> (x, aux)` with success tracking."""
  has_success = isinstance(
    jax.eval_shape(lambda x: core.forward(loss_fn, x, labels, key)[1], x_bhwc), jax.ShapeDtypeStruct
  )

  def body(_, carry):
    x, aux, x_succ, any_succ, key = carry
    key, sub = core.next_key(loss_fn, key)
    _, success_b, grad_bhwc = core.evaluate(loss_fn, x, labels, sub)
    if has_success:
      x_succ = core.select_b(success_b, x, x_succ)
      any_succ = any_succ | success_b
    x, aux = update(x, grad_bhwc, aux)
    return x, aux, x_succ, any_succ, key

  any_init = jnp.zeros(x_bhwc.shape[:1], bool)
  x, _, x_succ, any_succ, key = jax.lax.fori_loop(
    0, steps, body, (x_init_bhwc, aux_init, x_init_bhwc, any_init, key)
  )
  if not has_success:
    return x
  _, sub = core.next_key(loss_fn, key)
  _, success_b = core.forward(loss_fn, x, labels, sub)
  return core.select_b(success_b | ~any_succ, x, x_succ)


@functools.partial(jax.jit, static_argnames=("loss_fn", "steps", "norm", "random_start"))
def pgd(
  loss_fn: Callable | Stochastic,
  x_bhwc: jax.Array,
  labels,
  *,
  eps: float,
  step_size: float,
  steps: int,
  norm: str = "linf",
  random_start: bool = True,
  key: jax.Array | None = None,
) -> jax.Array:
  """Projected Gradient Descent (ascent on the loss), Madry et al. 2018.

  Args:
    loss_fn: objective to maximise, `loss_fn(x_bhwc, labels) -> loss_b [or (loss_b, success_b)]`.
    x_bhwc: clean images in [0, 1].
    labels: pytree of per-example labels passed to `loss_fn`.
    eps: radius in pixel units (e.g. 1/255).
    step_size: step in pixel units (ℓ∞: per coordinate; ℓ2: Euclidean length).
    steps: number of gradient steps (each one forward+backward).
    norm: "linf" or "l2".
    random_start: start from a uniform sample of the ε-ball (needs `key`).
    key: PRNG key for the random start and for `Stochastic` objectives.

  Returns:
    x_adv_bhwc within the ε-ball around `x_bhwc` and in [0, 1].
  """
  _check(x_bhwc, eps, steps, norm)
  if random_start:
    if key is None:
      raise ValueError("pgd: random_start=True needs a `key`")
    key, k0 = jax.random.split(key)
    x_init = core.random_start(k0, x_bhwc, eps, norm)
  else:
    x_init = x_bhwc

  def step(x_adv_hwc, g_hwc, x_hwc):
    moved = x_adv_hwc + step_size * core.steepest_direction(g_hwc, norm)
    return core.project(moved, x_hwc, eps, norm)

  def update(x, grad, aux):
    return jax.vmap(step)(x, grad, x_bhwc), aux

  return _iterate(loss_fn, x_bhwc, labels, x_init, key, steps, update, ())


@functools.partial(jax.jit, static_argnames=("loss_fn", "steps", "norm"))
def mim(
  loss_fn: Callable | Stochastic,
  x_bhwc: jax.Array,
  labels,
  *,
  eps: float,
  step_size: float,
  steps: int,
  decay: float = 1.0,
  norm: str = "linf",
  key: jax.Array | None = None,
) -> jax.Array:
  """Momentum Iterative Method (MI-FGSM), Dong et al. 2018, from the clean image.

  Args:
    loss_fn: objective to maximise, `loss_fn(x_bhwc, labels) -> loss_b [or (loss_b, success_b)]`.
    x_bhwc: clean images in [0, 1].
    labels: pytree of per-example labels passed to `loss_fn`.
    eps: radius in pixel units.
    step_size: step in pixel units (the paper uses ε / steps).
    steps: number of gradient steps.
    decay: momentum factor μ (1.0 in the paper).
    norm: "linf" or "l2".
    key: needed only for a `Stochastic` (EOT) objective.

  Returns:
    x_adv_bhwc within the ε-ball around `x_bhwc` and in [0, 1].
  """
  _check(x_bhwc, eps, steps, norm)

  def step(x_adv_hwc, g_hwc, m_hwc, x_hwc):
    m_hwc = decay * m_hwc + g_hwc / jnp.maximum(jnp.sum(jnp.abs(g_hwc)), 1e-12)
    moved = x_adv_hwc + step_size * core.steepest_direction(m_hwc, norm)
    return core.project(moved, x_hwc, eps, norm), m_hwc

  def update(x, grad, m):
    return jax.vmap(step)(x, grad, m, x_bhwc)

  return _iterate(loss_fn, x_bhwc, labels, x_bhwc, key, steps, update, jnp.zeros_like(x_bhwc))
