"""Shared pieces of the pixel-space attacks: norms, per-example steps and projections.

All attacks work on images `x_bhwc` in [0, 1] (before CLIP's mean/std normalisation) with
radius `eps` in the same pixel units (e.g. 1/255). Per-example functions take one image
`x_hwc` and are lifted to batches with `jax.vmap`.

An attack objective is `loss_fn(pixels_bhwc, labels) -> loss_b`, or `-> (loss_b, success_b)`
when the caller can tell whether an example is already adversarial (see `losses.py`). Attacks
always *maximise* the loss; targeted objectives are negated where they are built. `labels` may
be any pytree of per-example arrays. A `Stochastic` objective (see `eot.py`) also takes a key.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from clipjax.attacks.eot import Stochastic, eot_value_and_grad

__all__ = [
  "NORMS",
  "check_norm",
  "evaluate",
  "forward",
  "next_key",
  "project",
  "random_start",
  "select_b",
  "steepest_direction",
]

NORMS = ("linf", "l2")
_TINY = 1e-12


def check_norm(norm: str) -> None:
  """Raises a clear error for an unknown threat model."""
  if norm not in NORMS:
    raise ValueError(f"attack norm must be one of {NORMS}, got {norm!r}")


def _l2(v_hwc: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(v_hwc)))


def steepest_direction(g_hwc: jax.Array, norm: str) -> jax.Array:
  """Unit-norm steepest-ascent direction for one example: sign(g) (ℓ∞) or g/‖g‖₂ (ℓ2)."""
  if norm == "linf":
    return jnp.sign(g_hwc)
  return g_hwc / jnp.maximum(_l2(g_hwc), _TINY)


def project(x_adv_hwc: jax.Array, x_hwc: jax.Array, eps, norm: str) -> jax.Array:
  """Projects one example onto the ε-ball around `x_hwc` intersected with [0, 1].

  For both norms the box clip after the ball projection cannot leave the ball: x is in the box,
  so clipping only moves each coordinate of the perturbation towards zero.
  """
  delta = x_adv_hwc - x_hwc
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  else:
    delta = delta * jnp.minimum(1.0, eps / jnp.maximum(_l2(delta), _TINY))
  return jnp.clip(x_hwc + delta, 0.0, 1.0)


def random_start(key: jax.Array, x_bhwc: jax.Array, eps, norm: str) -> jax.Array:
  """Uniform samples from the ε-balls (ℓ∞ cube or ℓ2 ball) around a batch, clipped to [0, 1].

  The noise for the whole batch is drawn in one call (cheaper to compile than one per example).
  """
  b, n = x_bhwc.shape[0], x_bhwc[0].size
  if norm == "linf":
    delta = jax.random.uniform(key, x_bhwc.shape, x_bhwc.dtype, -1.0, 1.0) * eps
  else:
    k_dir, k_rad = jax.random.split(key)
    direction = jax.random.normal(k_dir, x_bhwc.shape, x_bhwc.dtype)
    norm_b = jnp.sqrt(jnp.sum(jnp.square(direction), axis=(1, 2, 3)))
    radius_b = eps * jax.random.uniform(k_rad, (b,), x_bhwc.dtype) ** (1.0 / n)
    delta = direction * (radius_b / jnp.maximum(norm_b, _TINY))[:, None, None, None]
  return jnp.clip(x_bhwc + delta, 0.0, 1.0)


def next_key(loss_fn, key: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
  """Splits a fresh key for one objective evaluation, only when the objective is random.

  Deterministic objectives skip the split, which keeps PRNG code out of the compiled loop.
  """
  if key is None or not isinstance(loss_fn, Stochastic):
    return key, None
  key, sub = jax.random.split(key)
  return key, sub


def evaluate(
  loss_fn: Callable | Stochastic, x_bhwc: jax.Array, labels, key: jax.Array | None
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
  """One forward+backward pass of the objective over the batch.

  The gradient of the summed loss is the per-example gradient as long as examples do not
  interact in the model (true for CLIP encoders); batch-coupled (transductive) defences get the
  gradient of the batch objective, which is what an adaptive attacker would use.

  Args:
    loss_fn: objective (plain or `Stochastic`).
    x_bhwc: current pixels.
    labels: pytree of per-example labels passed through to `loss_fn`.
    key: required for a `Stochastic` objective, ignored otherwise.

  Returns:
    `(loss_b, success_b or None, grad_bhwc)`.
  """
  if isinstance(loss_fn, Stochastic):
    if key is None:
      raise ValueError("a Stochastic (EOT) objective needs the attack's `key` argument")
    if loss_fn.draw is not None:
      # EOT: one draw's forward+backward at a time (memory independent of the draw count).
      return eot_value_and_grad(loss_fn, x_bhwc, labels, key)
    fn = lambda x: loss_fn.fn(x, labels, key)
  else:
    fn = lambda x: loss_fn(x, labels)

  def total(x):
    out = fn(x)
    loss_b = out[0] if isinstance(out, tuple) else out
    return jnp.sum(loss_b.astype(jnp.float32)), out

  (_, out), grad_bhwc = jax.value_and_grad(total, has_aux=True)(x_bhwc)
  loss_b, success_b = out if isinstance(out, tuple) else (out, None)
  if loss_b.shape != x_bhwc.shape[:1]:
    raise ValueError(
      f"attack loss_fn must return a per-example loss of shape {x_bhwc.shape[:1]}, "
      f"got {loss_b.shape}"
    )
  return loss_b.astype(jnp.float32), success_b, grad_bhwc


def forward(
  loss_fn: Callable | Stochastic, x_bhwc: jax.Array, labels, key: jax.Array | None
) -> tuple[jax.Array, jax.Array | None]:
  """Objective value without the gradient: `(loss_b, success_b or None)`."""
  if isinstance(loss_fn, Stochastic):
    if key is None:
      raise ValueError("a Stochastic (EOT) objective needs the attack's `key` argument")
    out = loss_fn.fn(x_bhwc, labels, key)
  else:
    out = loss_fn(x_bhwc, labels)
  loss_b, success_b = out if isinstance(out, tuple) else (out, None)
  return loss_b.astype(jnp.float32), success_b


def select_b(mask_b: jax.Array, a_b, b_b):
  """Per-example `where` for arrays with a leading batch axis."""
  mask = mask_b.reshape(mask_b.shape + (1,) * (a_b.ndim - 1))
  return jnp.where(mask, a_b, b_b)
