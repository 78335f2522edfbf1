"""Gradients over the numerics grid: finite everywhere, or refused with a clear error.

Grid: ε ∈ {1e-3, 1e-2, 1}, float32/bfloat16 embeddings, random / identical / collapsed
embeddings, N ∈ {1, 8}. Before these fixes, ``sinkhorn(grad="implicit")`` crashed the step
inside lineax at ε ≤ 1e-2 (and for every N = 1), OT-CLIP's implicit ``uot`` loss returned a NaN
gradient at ε = 1e-3 with ``converged = 1``, the batched kernel solver a NaN gradient at
ε = 1e-3, and ``gromov_wasserstein`` a deep lax error. Each case is one jitted function
``vmap``-ed over the 9 (ε, embedding) points, so the grid costs one compile per (N, dtype).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import ot as cot
from clipjax.methods import otclip

EPSILONS = (1e-3, 1e-2, 1.0)
KINDS = ("random", "identical", "collapsed")
GRID = [(n, dt) for n in (1, 8) for dt in (jnp.float32, jnp.bfloat16)]


def _embeddings(kind, n, d=16, seed=0):
  rng = np.random.default_rng(seed)
  if kind == "random":
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  elif kind == "identical":
    x = rng.normal(size=(n, d))
    y = x.copy()
  else:  # collapsed: every embedding (nearly) the same vector
    x = np.repeat(rng.normal(size=(1, d)), n, 0) + 1e-4 * rng.normal(size=(n, d))
    y = x.copy()
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  return x, y


def _grid(n, dtype):
  """[9] epsilons and [9, n, d] embeddings in ``dtype``, one entry per (ε, kind)."""
  pts = list(itertools.product(EPSILONS, KINDS))
  xs, ys = zip(*(_embeddings(k, n) for _, k in pts), strict=True)
  eps = jnp.asarray([e for e, _ in pts], jnp.float32)
  return eps, jnp.asarray(np.stack(xs), dtype), jnp.asarray(np.stack(ys), dtype), pts


def _check_finite(value_and_grad, n, dtype):
  eps, x, y, pts = _grid(n, dtype)
  (value, aux), grad = jax.jit(jax.vmap(value_and_grad))(eps, x, y)
  for i, pt in enumerate(pts):
    assert bool(jnp.isfinite(value[i])), (pt, n, dtype)
    assert bool(jnp.all(jnp.isfinite(grad[i].astype(jnp.float32)))), (pt, n, dtype)
  return aux, pts


@pytest.mark.parametrize(("n", "dtype"), GRID)
def test_implicit_sinkhorn_gradient_of_a_plan_function_is_finite(n, dtype):
  w = jnp.asarray(np.random.default_rng(1).normal(size=(n, n)), jnp.float32)

  def loss(eps, x, y):
    r = cot.sinkhorn(
      cot.cosine_cost(x, y), epsilon=eps, grad="implicit", max_iterations=1000, threshold=1e-3
    )
    return jnp.sum(r.plan * w), r

  aux, pts = _check_finite(jax.value_and_grad(loss, argnums=1, has_aux=True), n, dtype)
  # The forward result is a solution (or says it is not): rows of a converged plan are exact.
  rows_err = jnp.sum(jnp.abs(jnp.sum(aux.plan, 2) - 1.0 / n), 1)
  for i, pt in enumerate(pts):
    if bool(aux.converged[i]):
      assert float(rows_err[i]) < 1e-3 + float(aux.marginal_error[i]), pt


@pytest.mark.parametrize(("n", "dtype"), GRID)
@pytest.mark.parametrize("kind", ["entropic", "uot"])
def test_otclip_implicit_losses_have_finite_gradients_and_report_underflow(kind, n, dtype):
  kw = dict(rho_a=1.0, rho_b=1.0) if kind == "uot" else {}

  def loss(eps, x, y):
    value, aux = otclip.ot_clip_loss(x, y, eps, kind=kind, num_iters=100, grad="implicit", **kw)
    return value, aux

  aux, pts = _check_finite(jax.value_and_grad(loss, argnums=1, has_aux=True), n, dtype)
  for i, pt in enumerate(pts):
    # A plan whose mass underflowed to 0 is not a solution and must not claim convergence.
    for d in ("i2t", "t2i"):
      if float(aux[f"ot_{d}/mass"][i]) == 0.0:
        assert float(aux[f"ot_{d}/converged"][i]) == 0.0, (pt, d)


@pytest.mark.parametrize(("n", "dtype"), GRID)
def test_batched_kernel_solver_unrolled_gradient_is_finite(n, dtype):
  def loss(eps, x, y):
    r = cot.set_ot(
      x, y, jnp.ones(n), jnp.ones(n), epsilon=eps, num_iters=50, solver="kernel", grad="unroll"
    )
    return r.cost, r

  aux, pts = _check_finite(jax.value_and_grad(loss, argnums=1, has_aux=True), n, dtype)
  for i, (eps, kind) in enumerate(pts):
    # Distinct embeddings at ε = 1e-3 span ≫ 79 ε: the kernel hands over to the log domain.
    if eps == 1e-3 and kind != "collapsed" and n > 1:
      assert bool(aux.log_domain[i]), (eps, kind)


@pytest.mark.parametrize("n", [1, 8])
def test_gromov_wasserstein_refuses_reverse_mode_with_a_clear_error(n):
  eps, x, y, pts = _grid(n, jnp.float32)

  def objective(eps, x, y):
    return cot.gromov_wasserstein(
      cot.cosine_cost(x, x),
      cot.cosine_cost(y, y),
      epsilon=eps,
      max_iterations=20,
      threshold=1e-3,
      sinkhorn_max_iterations=200,
      sinkhorn_threshold=1e-3,
    ).objective

  values = jax.vmap(objective)(eps, x, y)
  assert bool(jnp.all(jnp.isfinite(values)))
  with pytest.raises(ValueError, match="no reverse-mode gradient"):
    jax.grad(objective, argnums=1)(eps[0], x[0], y[0])
