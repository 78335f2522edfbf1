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

__all__ = ["Stochastic", "bpda", "eot"]


class Stochastic(NamedTuple):
  """A randomised attack objective.

  Attributes:
    fn: `fn(pixels_bhwc, labels, key) -> loss_b` or `-> (loss_b, success_b)`. Attacks pass a
      fresh key at every gradient evaluation.
  """

  fn: Callable


def eot(fn: Callable, draws: int) -> Stochastic:
  """Averages a randomised objective over `draws` independent draws (EOT).

  The gradient of the returned objective is the mean of the per-draw gradients. Draws run
  sequentially (`jax.lax.map`), so memory does not grow with `draws`.

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

  return Stochastic(averaged)


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
