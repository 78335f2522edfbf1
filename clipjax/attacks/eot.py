"""Adaptive-attack wrappers: EOT for randomised defences and BPDA for non-differentiable steps.

* EOT (Expectation over Transformation; Athalye, Carlini, Wagner, ICML 2018, arXiv:1802.00420):
  the attack ascends the gradient of the loss averaged over R random draws of the defence.
* BPDA (Backward Pass Differentiable Approximation; same paper): the forward pass runs the true,
  possibly non-differentiable step, the backward pass differentiates a smooth approximation
  (the identity by default, i.e. the straight-through estimator).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Stochastic", "bpda", "eot", "eot_value_and_grad"]


class Stochastic(NamedTuple):
  """A randomised attack objective.

  Attributes:
    fn: `fn(pixels_bhwc, labels, key) -> loss_b` or `-> (loss_b, success_b)`. Attacks pass a
      fresh key at every gradient evaluation.
    draw: for an EOT objective (built by `eot`), the one-draw objective that `fn` averages;
      attacks then take gradients with `eot_value_and_grad` (one draw at a time). None: `fn`
      is differentiated directly.
    draws: number of draws `fn` averages (1 when `draw` is None).
  """

  fn: Callable
  draw: Callable | None = None
  draws: int = 1


def eot(fn: Callable, draws: int) -> Stochastic:
  """Averages a randomised objective over `draws` independent draws (EOT).

  The gradient of the returned objective is the mean of the per-draw gradients. The attacks
  compute it with `eot_value_and_grad`, which accumulates one draw's gradient at a time, so their
  memory does not grow with `draws`. (Differentiating `fn` directly goes through `jax.lax.map`
  and keeps every draw's residuals: memory linear in `draws`.)

  Args:
    fn: `fn(pixels_bhwc, labels, key) -> loss_b` or `-> (loss_b, success_b)`, the defended
      model's objective for one random draw (e.g. one set of COLA views).
    draws: number of draws R >= 1.

  Returns:
    A `Stochastic` objective whose loss is the mean over draws and whose success flag is the
    majority vote over draws (success in at least half of them).
  """
  if draws < 1:
    raise ValueError(f"eot: draws must be >= 1, got {draws}")

  def averaged(pixels_bhwc, labels, key):
    keys_r = jax.random.split(key, draws)
    out = jax.lax.map(lambda k: fn(pixels_bhwc, labels, k), keys_r)
    if isinstance(out, tuple):
      loss_rb, success_rb = out
      frac_b = jnp.mean(success_rb.astype(jnp.float32), axis=0)
      return jnp.mean(loss_rb, axis=0), frac_b >= 0.5
    return jnp.mean(out, axis=0)

  return Stochastic(averaged, fn, draws)


def eot_value_and_grad(
  objective: Stochastic, pixels_bhwc: jax.Array, labels, key: jax.Array
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
  """Value and gradient of an EOT objective, accumulated one draw at a time.

  Uses the same draws as `objective.fn(pixels_bhwc, labels, key)` (keys `split(key, draws)`), so
  the loss, the success vote and the gradient equal those of `objective.fn`; but each draw's
  forward+backward runs inside the body of a `jax.lax.scan` whose carry holds only the running
  sums, so the residuals of one draw are live at a time.

  Args:
    objective: built by `eot` (`objective.draw` is set).
    pixels_bhwc: [b, h, w, c] current pixels.
    labels: pytree of per-example labels.
    key: PRNG key of this evaluation.

  Returns:
    `(loss_b, success_b or None, grad_bhwc)`: mean loss over draws, majority-vote success and
    the mean over draws of the gradient of the summed loss.
  """
  if objective.draw is None:
    raise ValueError("eot_value_and_grad needs an objective built by eot(...)")
  draws, draw = objective.draws, objective.draw
  keys_r = jax.random.split(key, draws)

  def one(x, k):
    out = draw(x, labels, k)
    loss_b = out[0] if isinstance(out, tuple) else out
    return jnp.sum(loss_b.astype(jnp.float32)), out

  shape = jax.eval_shape(lambda k: draw(pixels_bhwc, labels, k), keys_r[0])
  has_success = isinstance(shape, tuple)
  b = pixels_bhwc.shape[0]
  loss_shape = (shape[0] if has_success else shape).shape
  if loss_shape != (b,):
    raise ValueError(
      f"attack loss_fn must return a per-example loss of shape {(b,)}, got {loss_shape}"
    )

  def body(carry, k):
    loss_sum, success_sum, grad_sum = carry
    (_, out), grad = jax.value_and_grad(one, has_aux=True)(pixels_bhwc, k)
    loss_b = (out[0] if has_success else out).astype(jnp.float32)
    if has_success:
      success_sum = success_sum + out[1].astype(jnp.float32)
    return (loss_sum + loss_b, success_sum, grad_sum + grad), None

  init = (
    jnp.zeros((b,), jnp.float32),
    jnp.zeros((b,), jnp.float32),
    jnp.zeros_like(pixels_bhwc),
  )
  (loss_sum, success_sum, grad_sum), _ = jax.lax.scan(body, init, keys_r)
  success_b = success_sum / draws >= 0.5 if has_success else None
  return loss_sum / draws, success_b, grad_sum / draws


def bpda(fn: Callable, approx: Callable | None = None) -> Callable:
  """Straight-through wrapper: forward value of `fn`, gradient of `approx` (default identity).

  Args:
    fn: the true (possibly non-differentiable) function, e.g. quantisation or an inner solver.
    approx: a differentiable function with the same output shape that approximates `fn`;
      None means the identity (requires `fn` to preserve shape).

  Returns:
    `g` with `g(x) == fn(x)` in value and `jax.grad` flowing through `approx`.
  """
  approx = approx if approx is not None else (lambda x: x)

  def wrapped(x):
    smooth = approx(x)
    return smooth + jax.lax.stop_gradient(fn(x) - smooth)

  return wrapped
