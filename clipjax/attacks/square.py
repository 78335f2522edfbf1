"""Square Attack (ℓ∞), a score-based black-box attack: random search over square patches.

Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020 (arXiv:1912.00049), Algorithm 1 with the ℓ∞ sampling of
Sec. 3.1. It only queries the objective's value (no gradients), which makes it the standard check
for gradient masking: a defence that looks robust to white-box gradient attacks but not to Square
is masking its gradients.

* Init: vertical stripes, every column of every channel shifted by ±ε (uniform random sign).
* Step i (one query): a square window of side `s = round(sqrt(p_i · h · w))` (clipped to
  [1, h − 1]) at a uniformly random position; inside it every channel of the perturbation is set
  to a fresh ±ε (redrawn while the window would not change); the candidate is kept iff it
  strictly increases the objective (best-so-far search, so the objective never decreases).
* p schedule (the paper's piecewise-constant halving, rescaled to the query budget): with
  r = ⌊10000 · i / n_queries⌋, p_i = p_init / 2^k where k counts the thresholds
  10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 that r exceeds.
* Examples the objective reports as successful (see `losses.py`) stop querying.

Deviation: window positions are uniform over all (h − s + 1)² placements; the reference code
samples the corner in [0, h − s) and so never moves the last pixel row and column, which matters
on the 32–48 px images clipjax tests with.

The objective is *maximised* (clipjax's convention): the paper's margin loss
`z_y − max_{j≠y} z_j` minimised is `losses.margin_objective` maximised. A `Stochastic` objective
gets a fresh key per query (a black-box attacker querying a randomised defence sees a new draw
each time; average draws with `eot` if wanted).
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.attacks import core
from clipjax.attacks.eot import Stochastic

__all__ = ["SquareResult", "square", "square_p", "square_search"]

_THRESHOLDS = np.array([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000], np.int32)
_MAX_REDRAWS = 16


class SquareResult(NamedTuple):
  """Output of :func:`square_search`.

  Attributes:
    x_adv_bhwc: best point found per example (within the ε-ball and [0, 1]).
    loss_b: objective at `x_adv_bhwc` (as evaluated when it was accepted).
    success_b: whether the objective reported success at `x_adv_bhwc` (False without a flag).
    queries_b: objective evaluations spent per example (init included).
    best_qb: [n_queries, b] best-so-far objective after each query (NaN after the search stopped).
  """

  x_adv_bhwc: jax.Array
  loss_b: jax.Array
  success_b: jax.Array
  queries_b: jax.Array
  best_qb: jax.Array


def square_p(p_init, i, n_queries: int) -> jax.Array:
  """Fraction of pixels changed at query `i` (0-based update index) of a budget `n_queries`."""
  r = jnp.floor(10000.0 * jnp.asarray(i, jnp.float32) / n_queries).astype(jnp.int32)
  halvings = jnp.sum(r > jnp.asarray(_THRESHOLDS))
  return p_init / jnp.exp2(halvings.astype(jnp.float32))


def _check(x_bhwc, eps, n_queries, norm):
  if norm != "linf":
    raise ValueError(f"square: only norm='linf' is implemented, got {norm!r}")
  if x_bhwc.ndim != 4:
    raise ValueError(f"attack pixels must be [b, h, w, c], got shape {x_bhwc.shape}")
  if min(x_bhwc.shape[1:3]) < 2:
    raise ValueError(f"square needs images of at least 2x2 pixels, got shape {x_bhwc.shape}")
  if isinstance(eps, (int, float)) and eps < 0:
    raise ValueError(f"attack eps must be >= 0, got {eps}")
  if n_queries < 1:
    raise ValueError(f"square: n_queries must be >= 1, got {n_queries}")


@functools.partial(jax.jit, static_argnames=("loss_fn", "n_queries", "norm"))
def square_search(
  loss_fn: Callable | Stochastic,
  x_bhwc: jax.Array,
  labels,
  *,
  eps: float,
  n_queries: int,
  p_init: float,
  key: jax.Array,
  norm: str = "linf",
) -> SquareResult:
  """Square Attack with its search diagnostics (see the module docstring).

  Runs as one `lax.while_loop` over queries (stopping early once every example succeeded), with
  every example of the batch advanced by one query per iteration.

  Args:
    loss_fn: objective to maximise, `loss_fn(x_bhwc, labels) -> loss_b [or (loss_b, success_b)]`
      (the paper: `margin_objective(logits_fn)`); only its values are used.
    x_bhwc: clean images in [0, 1].
    labels: pytree of per-example labels passed to `loss_fn`.
    eps: ℓ∞ radius in pixel units.
    n_queries: query budget per example, the stripes init included (paper: 10000; AutoAttack's
      standard version: 5000).
    p_init: initial fraction of pixels per window (paper ℓ∞ ImageNet: 0.05; AutoAttack: 0.8).
    key: PRNG key (init, windows, signs and `Stochastic` draws).
    norm: only "linf".

  Returns:
    :class:`SquareResult`.
  """
  _check(x_bhwc, eps, n_queries, norm)
  b, h, w, c = x_bhwc.shape
  dtype = x_bhwc.dtype
  k_init, k_loop = jax.random.split(key)
  k_stripes, k_eval0 = jax.random.split(k_init)
  stripes = jax.random.rademacher(k_stripes, (b, 1, w, c), dtype)
  x0 = jnp.clip(x_bhwc + eps * stripes, 0.0, 1.0)
  _, k_eval0 = core.next_key(loss_fn, k_eval0)
  loss0, succ0 = core.forward(loss_fn, x0, labels, k_eval0)
  has_success = succ0 is not None
  succ0 = jnp.zeros((b,), bool) if succ0 is None else succ0.astype(bool)
  best0 = jnp.full((n_queries, b), jnp.nan, jnp.float32).at[0].set(loss0)
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]

  def cond(carry):
    i, _, _, succ, _, _ = carry
    return (i < n_queries) & ~jnp.all(succ)

  def body(carry):
    i, x_best, loss_best, succ, queries, best_qb = carry
    k_pos, k_sign, k_eval = jax.random.split(jax.random.fold_in(k_loop, i), 3)
    p = square_p(p_init, i - 1, n_queries)
    s = jnp.clip(jnp.round(jnp.sqrt(p * h * w)), 1, min(h, w) - 1).astype(jnp.int32)
    k_r, k_c = jax.random.split(k_pos)
    r0 = jax.random.randint(k_r, (b,), 0, h - s + 1)[:, None, None]
    c0 = jax.random.randint(k_c, (b,), 0, w - s + 1)[:, None, None]
    win_bhw1 = ((rows >= r0) & (rows < r0 + s) & (cols >= c0) & (cols < c0 + s))[..., None]

    def candidate(signs_b11c):
      x_new = jnp.where(win_bhw1, jnp.clip(x_bhwc + eps * signs_b11c, 0.0, 1.0), x_best)
      changed_b = jnp.any(jnp.abs(x_new - x_best) >= 1e-7, axis=(1, 2, 3))
      return x_new, changed_b

    def redraw_cond(rc):
      t, _, changed_b, _ = rc
      return (t < _MAX_REDRAWS) & ~jnp.all(changed_b)

    def redraw(rc):
      t, signs, changed_b, k = rc
      k, sub = jax.random.split(k)
      fresh = jax.random.rademacher(sub, signs.shape, dtype)
      signs = core.select_b(changed_b, signs, fresh)
      return t + 1, signs, candidate(signs)[1], k

    k_sign, k_first = jax.random.split(k_sign)
    signs = jax.random.rademacher(k_first, (b, 1, 1, c), dtype)
    _, signs, _, _ = jax.lax.while_loop(
      redraw_cond, redraw, (0, signs, candidate(signs)[1], k_sign)
    )
    x_new, _ = candidate(signs)
    _, k_eval = core.next_key(loss_fn, k_eval)
    loss_new, succ_new = core.forward(loss_fn, x_new, labels, k_eval)
    active = ~succ
    improved = active & (loss_new > loss_best)
    x_best = core.select_b(improved, x_new, x_best)
    loss_best = jnp.where(improved, loss_new, loss_best)
    if has_success:
      succ = jnp.where(improved, succ_new.astype(bool), succ)
    queries = queries + active.astype(jnp.int32)
    best_qb = best_qb.at[i].set(loss_best)
    return i + 1, x_best, loss_best, succ, queries, best_qb

  init = (jnp.asarray(1, jnp.int32), x0, loss0, succ0, jnp.ones((b,), jnp.int32), best0)
  _, x_best, loss_best, succ, queries, best_qb = jax.lax.while_loop(cond, body, init)
  return SquareResult(x_best, loss_best, succ, queries, best_qb)


def square(
  loss_fn: Callable | Stochastic,
  x_bhwc: jax.Array,
  labels,
  *,
  eps: float,
  n_queries: int,
  p_init: float,
  key: jax.Array,
  norm: str = "linf",
) -> jax.Array:
  """Square Attack; returns x_adv_bhwc (see :func:`square_search` for the arguments)."""
  return square_search(
    loss_fn, x_bhwc, labels, eps=eps, n_queries=n_queries, p_init=p_init, key=key, norm=norm
  ).x_adv_bhwc
