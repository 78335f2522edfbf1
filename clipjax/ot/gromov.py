"""Entropic Gromov-Wasserstein and fused GW through ott-jax (``QuadraticProblem``, 'sqeucl').

OT-CLIP's FGW loss/inference and HOT-CLIP's structure-aware alignment compare two sets through
their intra-set cost matrices (``cost_x_nn``, ``cost_y_mm``) and optionally a cross cost
``cost_xy_nm``. The objective solved here is ott's:

  ``min_P  ½ Σ_ijkl (Cx_ik - Cy_jl)² P_ij P_kl + λ <Cxy, P> + ε KL(P | a bᵀ)``,

with ``P1 = a``, ``Pᵀ1 = b``. Conversions from POT (tested in ``tests/ot/test_gromov.py``):
POT's entropic GW at ``ε_pot`` is ott's at ``ε = ε_pot / 2``; POT's FGW
``(1-α) <M, P> + α Σ (Cx - Cy)² P P`` with entropy ``ε_pot`` is ott's with
``λ = (1-α)/(2α)`` and ``ε = ε_pot/(2α)`` (:func:`fgw_params_from_pot`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.quadratic import quadratic_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn
from ott.solvers.quadratic import gromov_wasserstein as ott_gw

from clipjax.ot.costs import solve_dtype
from clipjax.ot.plans import ott_call

__all__ = ["GWResult", "fgw_params_from_pot", "gromov_wasserstein", "gw_epsilon_from_pot"]

_HIGHEST = jax.lax.Precision.HIGHEST


class GWResult(NamedTuple):
  """Solution and diagnostics of an entropic (fused) GW problem.

  Attributes:
    plan: [n, m] coupling.
    gw_cost: ``½ Σ (Cx_ik - Cy_jl)² P_ij P_kl`` at the returned plan.
    linear_cost: ``<Cxy, P>`` (0 when there is no cross cost).
    objective: ``gw_cost + fused_penalty * linear_cost`` (unregularised ott objective).
    converged: bool, ott's outer convergence flag and all inner Sinkhorn solves converged and
      the plan is finite. ott documents this flag as indicative only; check ``marginal_error``.
    n_iters: int32, outer (linearisation) iterations run.
    marginal_error: ``|P1 - a|_1 + |Pᵀ1 - b|_1``.
  """

  plan: jax.Array
  gw_cost: jax.Array
  linear_cost: jax.Array
  objective: jax.Array
  converged: jax.Array
  n_iters: jax.Array
  marginal_error: jax.Array

  def diagnostics(self, prefix: str = "gw") -> dict[str, jax.Array]:
    """Scalar diagnostics for ``metrics.jsonl`` (jit-compatible arrays)."""
    return {
      f"{prefix}/converged": self.converged.astype(jnp.float32),
      f"{prefix}/n_iters": self.n_iters,
      f"{prefix}/marginal_error": self.marginal_error,
      f"{prefix}/objective": self.objective,
    }


def gw_epsilon_from_pot(epsilon_pot: float) -> float:
  """ott ε of POT's ``entropic_gromov_wasserstein(..., epsilon=epsilon_pot)``: half of it."""
  return 0.5 * float(epsilon_pot)


def fgw_params_from_pot(alpha: float, epsilon_pot: float) -> tuple[float, float]:
  """``(fused_penalty, epsilon)`` for ott matching POT's entropic FGW at ``(alpha, epsilon)``.

  POT minimises ``(1-α)<M,P> + α GW(P) - ε_pot H(P)`` with ``GW = Σ (Cx-Cy)² P P``; dividing
  by ``2α`` gives ott's objective with ``λ = (1-α)/(2α)`` and ``ε = ε_pot/(2α)``.
  """
  if not 0.0 < alpha <= 1.0:
    raise ValueError(f"alpha must be in (0, 1], got {alpha}")
  return (1.0 - alpha) / (2.0 * alpha), float(epsilon_pot) / (2.0 * alpha)


def _gw_term(cx_nn, cy_mm, plan_nm) -> jax.Array:
  # ½ Σ (Cx_ik - Cy_jl)² P_ij P_kl = ½ [p'Cx²p + q'Cy²q] - <Cx P Cy, P>, p = P1, q = Pᵀ1.
  p_n, q_m = jnp.sum(plan_nm, 1), jnp.sum(plan_nm, 0)
  quad = jnp.dot(p_n, jnp.dot(cx_nn**2, p_n, precision=_HIGHEST), precision=_HIGHEST)
  quad = quad + jnp.dot(q_m, jnp.dot(cy_mm**2, q_m, precision=_HIGHEST), precision=_HIGHEST)
  cross = jnp.sum(jnp.einsum("ik,kl,jl->ij", cx_nn, plan_nm, cy_mm, precision=_HIGHEST) * plan_nm)
  return 0.5 * quad - cross


def gromov_wasserstein(
  cost_x_nn: jax.Array,
  cost_y_mm: jax.Array,
  a_n: jax.Array | None = None,
  b_m: jax.Array | None = None,
  *,
  cost_xy_nm: jax.Array | None = None,
  fused_penalty: float | None = None,
  epsilon: float,
  max_iterations: int,
  threshold: float,
  sinkhorn_max_iterations: int,
  sinkhorn_threshold: float,
  min_iterations: int = 5,
) -> GWResult:
  """Entropic (fused) Gromov-Wasserstein via ott's ``GromovWasserstein`` with the 'sqeucl' loss.

  Not differentiable: ott 0.6.0 runs the outer loop in ``lax.while_loop``, which has no
  reverse-mode derivative, so ``jax.grad`` through this function raises a ``ValueError`` naming
  it as soon as the backward pass is traced (and forward mode is refused too). For a training
  loss, OT-CLIP unrolls a few linearised Sinkhorn steps instead (the ``fgw`` loss of
  :mod:`clipjax.methods.otclip`, or :func:`clipjax.ot.plans.fgw_semirelaxed_softmax`).

  Args:
    cost_x_nn: [n, n] intra-set cost of the first set (e.g. cosine distances of images).
    cost_y_mm: [m, m] intra-set cost of the second set.
    a_n: [n] weights (default 1/n).
    b_m: [m] weights (default 1/m).
    cost_xy_nm: optional [n, m] cross cost; given, the problem is fused GW.
    fused_penalty: λ, weight of ``<Cxy, P>``; required iff ``cost_xy_nm`` is given.
    epsilon: entropic regularisation in ott's convention (see :func:`gw_epsilon_from_pot`).
    max_iterations: cap on outer linearisation iterations.
    threshold: outer stopping threshold (change of the linearised cost, ott's criterion).
    sinkhorn_max_iterations: cap on each inner Sinkhorn solve.
    sinkhorn_threshold: L1 marginal error of each inner solve.
    min_iterations: minimum outer iterations (ott's default 5).

  Returns:
    :class:`GWResult`.
  """
  cx_nn = solve_dtype(cost_x_nn)
  cy_mm = solve_dtype(cost_y_mm)
  n, m = cx_nn.shape[0], cy_mm.shape[0]
  if cx_nn.shape != (n, n) or cy_mm.shape != (m, m):
    raise ValueError(f"cost_x_nn and cost_y_mm must be square, got {cx_nn.shape}, {cy_mm.shape}")
  if (cost_xy_nm is None) != (fused_penalty is None):
    raise ValueError("cost_xy_nm and fused_penalty must be given together (fused GW) or not")
  a_n = jnp.full((n,), 1.0 / n, cx_nn.dtype) if a_n is None else solve_dtype(a_n)
  b_m = jnp.full((m,), 1.0 / m, cx_nn.dtype) if b_m is None else solve_dtype(b_m)
  if a_n.shape != (n,) or b_m.shape != (m,):
    raise ValueError(f"a_n must be ({n},) and b_m ({m},), got {a_n.shape}, {b_m.shape}")
  lam = 1.0
  if cost_xy_nm is not None:
    if cost_xy_nm.shape != (n, m):
      raise ValueError(f"cost_xy_nm must have shape {(n, m)}, got {cost_xy_nm.shape}")
    cost_xy_nm = solve_dtype(cost_xy_nm)
    lam = float(fused_penalty)
  core = functools.partial(
    _gw_core,
    fused_penalty=lam,
    max_iterations=int(max_iterations),
    min_iterations=min(int(min_iterations), int(max_iterations)),
    sinkhorn_max_iterations=int(sinkhorn_max_iterations),
  )
  args = (
    cx_nn,
    cy_mm,
    cost_xy_nm,
    a_n,
    b_m,
    jnp.asarray(epsilon, cx_nn.dtype),
    jnp.asarray(threshold, cx_nn.dtype),
    jnp.asarray(sinkhorn_threshold, cx_nn.dtype),
  )
  return _no_reverse_mode(core, *args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _no_reverse_mode(fn, *xs):
  return fn(*xs)


def _no_reverse_mode_fwd(fn, *xs):
  return fn(*xs), None


def _no_reverse_mode_bwd(fn, res, ct):
  raise ValueError(
    "gromov_wasserstein has no reverse-mode gradient (ott's GW outer loop is a "
    "lax.while_loop); for a differentiable FGW loss use the unrolled 'fgw' loss of "
    "clipjax.methods.otclip or clipjax.ot.plans.fgw_semirelaxed_softmax"
  )


_no_reverse_mode.defvjp(_no_reverse_mode_fwd, _no_reverse_mode_bwd)


@functools.partial(
  jax.jit,
  static_argnames=(
    "fused_penalty",
    "max_iterations",
    "min_iterations",
    "sinkhorn_max_iterations",
  ),
)
def _gw_core(
  cx_nn,
  cy_mm,
  cost_xy_nm,
  a_n,
  b_m,
  epsilon,
  threshold,
  sinkhorn_threshold,
  *,
  fused_penalty,
  max_iterations,
  min_iterations,
  sinkhorn_max_iterations,
) -> GWResult:
  lam = fused_penalty

  def solve(cx_nn, cy_mm, cxy_nm, a_n, b_m, eps, thr, sk_thr):
    geom_xy = None if cxy_nm is None else geometry.Geometry(cost_matrix=cxy_nm, epsilon=eps)
    prob = quadratic_problem.QuadraticProblem(
      geometry.Geometry(cost_matrix=cx_nn, epsilon=eps),
      geometry.Geometry(cost_matrix=cy_mm, epsilon=eps),
      geom_xy,
      fused_penalty=lam,
      a=a_n,
      b=b_m,
      loss="sqeucl",
    )
    linear = ott_sinkhorn.Sinkhorn(threshold=sk_thr, max_iterations=sinkhorn_max_iterations)
    solver = ott_gw.GromovWasserstein(
      linear_solver=linear,
      epsilon=eps,
      threshold=thr,
      min_iterations=min_iterations,
      max_iterations=max_iterations,
    )
    out = solver(prob)
    return out.matrix, out.costs, out.linear_convergence, out.converged

  plan_nm, costs_k, lin_conv_k, out_converged = ott_call(
    solve, cx_nn, cy_mm, cost_xy_nm, a_n, b_m, epsilon, threshold, sinkhorn_threshold
  )
  gw = _gw_term(cx_nn, cy_mm, plan_nm)
  lin = jnp.zeros((), cx_nn.dtype) if cost_xy_nm is None else jnp.sum(plan_nm * cost_xy_nm)
  err = jnp.sum(jnp.abs(jnp.sum(plan_nm, 1) - a_n)) + jnp.sum(jnp.abs(jnp.sum(plan_nm, 0) - b_m))
  n_iters = jnp.sum(costs_k != -1).astype(jnp.int32)
  ran_k = jnp.arange(lin_conv_k.shape[0]) < n_iters
  converged = out_converged & jnp.all(jnp.where(ran_k, lin_conv_k, True))
  return GWResult(
    plan=plan_nm,
    gw_cost=gw,
    linear_cost=lin,
    objective=gw + lam * lin,
    converged=jnp.logical_and(converged, jnp.isfinite(err)),
    n_iters=n_iters,
    marginal_error=err,
  )
