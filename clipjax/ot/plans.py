"""Entropic OT plans with explicit ε, explicit gradient policy and diagnostics.

Every function here solves one OT problem on a precomputed [n, m] cost (see
:mod:`clipjax.ot.costs`) and returns an :class:`OTResult` whose diagnostics (``converged``,
``n_iters``, ``marginal_error``) are arrays, usable inside ``jit`` and loggable as metrics.

Which paper uses what:

* :func:`kernel_sinkhorn` — balanced entropic OT by kernel-mode Sinkhorn on a precomputed,
  shifted kernel, to a tolerance: the fastest forward solver on CPU (inference, targets,
  benchmarks); no gradients. Where the kernel would underflow it hands over to the log-domain
  solver by itself and says so (``OTResult.log_domain``).
* :func:`sinkhorn` — balanced/unbalanced/masked entropic OT through ott-jax
  (geometry → ``LinearProblem`` → ``Sinkhorn``). OT-CLIP's entropic and unbalanced losses
  (K unrolled iterations), its long-tailed inference (column marginal = label prior), NCU's
  masked plan with an extra negative column (stop-gradient targets), HOT-CLIP's fusion maps.
* :func:`dbot` — OT-CLIP's box-constrained ("DBOT") loss: rows sum to ``a``, column sums are
  kept in ``[(1-δ) b, (1+δ) b]``.
* :func:`partial_ot` — OT-CLIP's selective classification: only a mass fraction is moved.
* :func:`fgw_semirelaxed_softmax` — OT-CLIP's transductive FGW zero-shot inference.

ott has no box-constrained or total-mass-constrained marginals, so :func:`dbot` and
:func:`partial_ot` use a small hand-written log-domain dual coordinate ascent (Sinkhorn whose
marginal steps are KL projections onto boxes); it is tested against POT, linear programs and the
KKT conditions in ``tests/ot``.

Gradient policy (``grad``), always explicit:

* ``"stop_gradient"``: the plan is a constant (NCU's targets); iterations stop at ``threshold``.
* ``"implicit"``: implicit differentiation of the optimality conditions (ott's ``ImplicitDiff``);
  iterations stop at ``threshold``. The linear system is solved by conjugate gradients on the
  normal equations; where that breaks down (a zero right-hand side, a singular system at small ε
  or for a 1 × 1 problem) it falls back to a dense minimum-norm least-squares solve (systems of
  ≤ 64 unknowns), and else to 0 (the gradient with the potentials held fixed) — never a crash or
  a NaN (``tests/ot/test_numerics_grid.py``).
* ``"unroll"``: exactly ``max_iterations`` iterations, differentiated by backpropagation
  through the loop (OT-CLIP's training losses, K = 5 in the reference code).

One iteration is one column update followed by one row update (ott's order), so after any
number of iterations the rows of a balanced plan are exact and the column error is what remains.
"""

import functools
import math
import warnings
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import acceleration, implicit_differentiation
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from clipjax.ot.costs import solve_dtype

__all__ = [
  "GRAD_POLICIES",
  "OTResult",
  "dbot",
  "fgw_semirelaxed_softmax",
  "kernel_range_limit",
  "kernel_range_ok",
  "kernel_sinkhorn",
  "partial_ot",
  "shifted_cost",
  "sinkhorn",
  "tau_from_rho",
]

GradPolicy = Literal["stop_gradient", "implicit", "unroll"]
GRAD_POLICIES = ("stop_gradient", "implicit", "unroll")

# Added to the cost of forbidden entries, in units of ε: exp(-1e5) is exactly 0 in float32, so
# forbidden entries carry no mass inside the solver; the returned plan is also multiplied by the
# mask so that the zeros are exact whatever the potentials.
_FORBIDDEN_PENALTY = 1e5


class OTResult(NamedTuple):
  """Solution and diagnostics of one entropic OT problem.

  Attributes:
    plan: [n, m] transport plan (float32; float64 for float64 inputs under x64).
    f: [n] row dual potential (``-inf`` where a row has zero weight).
    g: [m] column dual potential.
    transport_cost: ``<plan, cost>`` (the unregularised transport cost).
    reg_ot_cost: the regularised objective of the problem solved, at the returned plan.
      Balanced (:func:`sinkhorn` with ``tau_a = tau_b = 1``, :func:`kernel_sinkhorn`):
      ``<P, C> + ε KL(P | a bᵀ)`` (ott's). Unbalanced (either τ < 1): the objective of POT's
      ``sinkhorn_unbalanced(reg_type='entropy')``, ``<P, C> + ε Σ P (log P - 1)
      + ρ_a KL(P1 | a) + ρ_b KL(Pᵀ1 | b)`` with ``ρ = ε τ/(1 - τ)`` and the generalised
      ``KL(x | y) = Σ x log(x/y) - x + y`` (a balanced side contributes nothing). Box solvers:
      ``<P, C> + ε Σ P (log P - 1)``. Its gradient in ``C`` is the plan (envelope theorem) for
      every gradient policy once the solver has converged.
    converged: bool, whether the solver's stopping criterion was met at the last check, the
      plan is finite and (:func:`sinkhorn`) no row or column with positive weight has
      underflowed to zero mass.
    n_iters: int32, iterations run (a multiple of ``inner_iterations`` for tolerance loops).
    marginal_error: L1 violation of the hard marginal constraints of the problem as posed
      (balanced sides ``|P1 - a|_1``; boxes: distance of each marginal to the bound its
      potential says is active, i.e. feasibility plus complementary slackness; partial OT:
      plus ``|ΣP - mass|``). Relaxed (unbalanced) sides contribute nothing.
    mass: total transported mass ``ΣP``.
    log_domain: bool, whether the plan came from a log-domain solver (always for the ott
      solvers with ``lse_mode=True`` and the box solvers; for :func:`kernel_sinkhorn`, whether it
      handed over because its kernel would underflow).
  """

  plan: jax.Array
  f: jax.Array
  g: jax.Array
  transport_cost: jax.Array
  reg_ot_cost: jax.Array
  converged: jax.Array
  n_iters: jax.Array
  marginal_error: jax.Array
  mass: jax.Array
  log_domain: jax.Array

  def diagnostics(self, prefix: str = "ot") -> dict[str, jax.Array]:
    """Scalar diagnostics for ``metrics.jsonl`` (jit-compatible arrays)."""
    return {
      f"{prefix}/converged": self.converged.astype(jnp.float32),
      f"{prefix}/n_iters": self.n_iters,
      f"{prefix}/marginal_error": self.marginal_error,
      f"{prefix}/transport_cost": self.transport_cost,
      f"{prefix}/mass": self.mass,
      f"{prefix}/log_domain": self.log_domain.astype(jnp.float32),
    }


def tau_from_rho(rho: float, epsilon: float) -> float:
  """ott's unbalancedness ``τ = ρ / (ρ + ε)`` for a marginal KL penalty weight ``ρ``.

  With this τ, :func:`sinkhorn` solves ``min <P,C> + ε Σ P (log P - 1) + ρ KL(P1|a) +
  ρ KL(Pᵀ1|b)`` (entropy relative to the all-ones measure, generalised KL on the marginals): the
  problem of POT ``sinkhorn_unbalanced(reg=ε, reg_m=ρ, reg_type='entropy')``, plan and objective
  (tested in ``tests/ot/test_plans.py``).
  """
  if rho <= 0 or epsilon <= 0:
    raise ValueError(f"rho and epsilon must be > 0, got rho={rho}, epsilon={epsilon}")
  return float(rho) / (float(rho) + float(epsilon))


def _check_cost(cost_nm: jax.Array) -> jax.Array:
  if cost_nm.ndim != 2:
    raise ValueError(f"cost_nm must be [n, m], got shape {cost_nm.shape}")
  return solve_dtype(cost_nm)


def _marginal(w: jax.Array | None, size: int, name: str, dtype) -> jax.Array:
  if w is None:
    return jnp.full((size,), 1.0 / size, dtype)
  if jnp.shape(w) != (size,):
    raise ValueError(f"{name} must have shape ({size},) to match the cost, got {jnp.shape(w)}")
  return solve_dtype(w).astype(dtype)


def _check_grad(grad: str, allowed: tuple[str, ...] = GRAD_POLICIES) -> None:
  if grad not in allowed:
    raise ValueError(f"grad must be one of {allowed}, got {grad!r}")


def _check_iters(max_iterations: int, threshold: float) -> None:
  if int(max_iterations) < 1:
    raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
  if not threshold > 0:
    raise ValueError(f"threshold must be > 0, got {threshold}")


def _l1(x: jax.Array) -> jax.Array:
  return jnp.sum(jnp.abs(x))


def sinkhorn(
  cost_nm: jax.Array,
  a_n: jax.Array | None = None,
  b_m: jax.Array | None = None,
  *,
  epsilon: float | jax.Array,
  grad: GradPolicy,
  max_iterations: int,
  threshold: float,
  tau_a: float = 1.0,
  tau_b: float = 1.0,
  mask_nm: jax.Array | None = None,
  min_iterations: int = 0,
  inner_iterations: int = 10,
  lse_mode: bool = True,
  anderson_memory: int = 0,
  momentum: float = 1.0,
) -> OTResult:
  """Entropic OT through ott-jax's ``Sinkhorn`` with explicit ε and gradient policy.

  Solves ``min_P <P, C> + ε KL(P | a bᵀ)`` with ``P1 = a``, ``Pᵀ1 = b`` (balanced), or, when
  ``tau_a``/``tau_b`` < 1, ``min_P <P, C> + ε Σ P (log P - 1) + ρ_a KL(P1 | a) + ρ_b KL(Pᵀ1 | b)``
  (``τ = ρ/(ρ+ε)``, see :func:`tau_from_rho`; a side with ``τ = 1`` stays a hard constraint and
  ``τ = 0`` drops it entirely, so ``tau_b=0`` with one iteration gives the row softmax
  ``a_i softmax(-C_i/ε)``). The entropy's reference measure is a·bᵀ in the balanced case and
  the all-ones measure in the unbalanced one: these are the problems ott's iterations solve
  (the balanced plan does not depend on the reference; the unbalanced one does).

  Args:
    cost_nm: [n, m] cost, float32 or bfloat16 (solved in float32).
    a_n: [n] row weights (default uniform 1/n). Zero weights are allowed (padding).
    b_m: [m] column weights (default uniform 1/m).
    epsilon: entropic regularisation, absolute (never ott's std-relative default).
    grad: ``"stop_gradient"``, ``"implicit"`` or ``"unroll"`` (see module docstring).
    max_iterations: iteration cap; with ``grad="unroll"`` exactly this many are run.
    threshold: L1 marginal error (ott's criterion; relative potential change when both sides
      are unbalanced) below which the solver stops and reports ``converged``.
    tau_a: row unbalancedness in [0, 1] (Python float; 1 = balanced).
    tau_b: column unbalancedness in [0, 1].
    mask_nm: optional [n, m] bool, ``True`` = allowed. Forbidden entries get exactly 0 mass
      (NCU). Rows/columns with positive weight must keep an allowed entry (else infeasible,
      reported through ``converged`` and ``marginal_error``).
    min_iterations: run at least this many; ``min_iterations == max_iterations`` runs a
      fixed-length ``lax.scan`` (the right choice under ``vmap``).
    inner_iterations: the error is checked every this many iterations (ott default 10).
    lse_mode: log-domain updates (stable). ott's kernel mode has no underflow guard: it is only
      safe when ``(max C - min C)/ε`` is below ~80 in float32 (prefer :func:`kernel_sinkhorn`).
    anderson_memory: Anderson acceleration memory (0 = off); not with ``grad="unroll"``.
    momentum: constant over-relaxation weight in (0, 2) (1 = none); not with ``grad="unroll"``.

  Returns:
    :class:`OTResult`.
  """
  _check_grad(grad)
  _check_iters(max_iterations, threshold)
  cost_nm = _check_cost(cost_nm)
  n, m = cost_nm.shape
  a_n = _marginal(a_n, n, "a_n", cost_nm.dtype)
  b_m = _marginal(b_m, m, "b_m", cost_nm.dtype)
  for name, tau in (("tau_a", tau_a), ("tau_b", tau_b)):
    if isinstance(tau, jax.Array) or not 0.0 <= tau <= 1.0:
      raise ValueError(f"{name} must be a Python float in [0, 1], got {tau!r}")
  if grad == "unroll" and (anderson_memory or momentum != 1.0):
    raise ValueError("Anderson/momentum acceleration cannot be unrolled; use grad='implicit'")

  if mask_nm is not None and mask_nm.shape != (n, m):
    raise ValueError(f"mask_nm must have shape {(n, m)}, got {mask_nm.shape}")
  return _sinkhorn_core(
    cost_nm,
    a_n,
    b_m,
    mask_nm,
    jnp.asarray(epsilon, cost_nm.dtype),
    jnp.asarray(threshold, cost_nm.dtype),
    grad=grad,
    max_iterations=int(max_iterations),
    tau_a=float(tau_a),
    tau_b=float(tau_b),
    min_iterations=int(min_iterations),
    inner_iterations=int(inner_iterations),
    lse_mode=bool(lse_mode),
    anderson_memory=int(anderson_memory),
    momentum=float(momentum),
  )


# Materialising the implicit system applies it to every basis vector: memory ∝ size²·(n + m),
# compiled in even when the fallback is not taken, so only small systems get the dense solve.
_LSTSQ_MAX_SIZE = 64


class _GuardedNormalCG(lx.AbstractLinearSolver):
  """Implicit-differentiation linear solver that returns a finite answer or a least-squares one.

  ott solves the (Schur complement of the) Hessian of the dual for the cotangent of the
  potentials with lineax's ``NormalCG``, which returns NaN — and lineax then raises inside the
  jitted step — when the right-hand side is exactly 0 (a 1 × 1 problem, or a plan that has
  become a permutation at small ε) or the system is numerically singular. This solver runs the
  same conjugate gradients on the normal equations with the right-hand side scaled to unit norm
  (exact: the system is linear), and where that fails or is not finite, the minimum-norm
  least-squares solution of the materialised system (``jnp.linalg.lstsq``, only for systems of
  at most 64 unknowns: materialising costs memory ∝ size²·(n + m)). Otherwise, or if that too
  is non-finite, it returns 0, i.e. the gradient with the potentials held fixed. ott builds it
  as ``nonsym_solver(rtol=, atol=)``.
  """

  rtol: float
  atol: float

  def _inner(self):
    return lx.Normal(lx.CG(rtol=self.rtol, atol=self.atol))

  def init(self, operator, options: dict[str, Any]):
    return self._inner().init(operator, options), operator

  def compute(self, state, vector, options: dict[str, Any]):
    inner_state, operator = state
    scale = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(vector)))
    safe = jnp.where(scale > 0, scale, 1.0)
    sol, result, stats = self._inner().compute(
      inner_state, jax.tree.map(lambda x: x / safe, vector), options
    )
    sol = jax.tree.map(lambda x: x * safe, sol)
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(sol)]))
    cg_ok = (result == lx.RESULTS.successful) & finite

    flat, unravel = ravel_pytree(vector)

    def fallback():
      if flat.size > _LSTSQ_MAX_SIZE:
        return jax.tree.map(jnp.zeros_like, sol)
      x = jnp.linalg.lstsq(operator.as_matrix(), flat)[0]
      return unravel(jnp.where(jnp.all(jnp.isfinite(x)), x, 0.0))

    sol = jax.lax.cond(scale > 0, lambda: jax.lax.cond(cg_ok, lambda: sol, fallback), lambda: sol)
    sol = jax.tree.map(lambda x: jnp.where(scale > 0, x, 0.0), sol)
    return sol, lx.RESULTS.successful, stats

  def transpose(self, state, options: dict[str, Any]):
    inner_state, operator = state
    inner_t, options_t = self._inner().transpose(inner_state, options)
    return (inner_t, operator.transpose()), options_t

  def conj(self, state, options: dict[str, Any]):
    inner_state, operator = state
    inner_c, options_c = self._inner().conj(inner_state, options)
    return (inner_c, lx.conj(operator)), options_c

  def assume_full_rank(self):
    return False


def ott_call(fn, *args):
  """``fn(*args)`` with implicit rank promotion allowed, in the forward and backward pass.

  ott's internals broadcast implicitly (e.g. ``sinkhorn.marginal_error``), while clipjax's
  tests run with ``jax_numpy_rank_promotion='raise'``; ott's implicit-diff backward pass also
  emits lineax's ``NormalCG`` deprecation warning, silenced here. A context manager alone
  would not cover the backward pass (custom VJPs are traced when the caller differentiates),
  so the VJP is built and applied inside the context here.

  Non-finite cotangent entries are replaced by 0: ott's implicit backward pass divides by the
  plan's marginals (its ``ε log`` preconditioner), which is NaN where a row or column of the
  plan has underflowed to 0 in float32 (e.g. unbalanced OT at ε = 1e-3). The solvers report
  such a plan as not converged (:func:`sinkhorn`), so the step is flagged rather than crashed
  or poisoned with NaN.

  Args:
    fn: function of arrays only.
    *args: array arguments.

  Returns:
    ``fn(*args)``.
  """

  @jax.custom_vjp
  def call(*xs):
    with jax.numpy_rank_promotion("allow"):
      return fn(*xs)

  def fwd(*xs):
    with jax.numpy_rank_promotion("allow"):
      out, vjp_fn = jax.vjp(fn, *xs)
    return out, vjp_fn

  def bwd(vjp_fn, ct):
    with jax.numpy_rank_promotion("allow"), warnings.catch_warnings():
      # ott 0.6.0's default implicit-diff linear solver is lineax's deprecated `NormalCG`; the
      # warning is not actionable here and pytest's filterwarnings=error would fail on it.
      warnings.filterwarnings("ignore", r"`NormalCG", DeprecationWarning)
      return jax.tree.map(lambda c: jnp.where(jnp.isfinite(c), c, 0.0), vjp_fn(ct))

  call.defvjp(fwd, bwd)
  return call(*args)


@functools.partial(
  jax.jit,
  static_argnames=(
    "grad",
    "max_iterations",
    "tau_a",
    "tau_b",
    "min_iterations",
    "inner_iterations",
    "lse_mode",
    "anderson_memory",
    "momentum",
  ),
)
def _sinkhorn_core(
  cost_nm,
  a_n,
  b_m,
  mask_nm,
  epsilon,
  threshold,
  *,
  grad,
  max_iterations,
  tau_a,
  tau_b,
  min_iterations,
  inner_iterations,
  lse_mode,
  anderson_memory,
  momentum,
) -> OTResult:
  if grad == "stop_gradient":
    cost_nm, a_n, b_m, epsilon = jax.lax.stop_gradient((cost_nm, a_n, b_m, epsilon))
  if mask_nm is not None:
    solve_cost_nm = cost_nm + jnp.where(mask_nm, 0.0, _FORBIDDEN_PENALTY * epsilon)
  else:
    solve_cost_nm = cost_nm
  if grad == "unroll":
    # One block of exactly max_iterations. With min == max ott runs a scan, and backprop through
    # a scan of several `inner_iterations` blocks returns wrong gradients in ott 0.6.0 (measured
    # against finite differences in tests/ot/test_plans.py); a single block is correct.
    min_iterations = inner_iterations = max_iterations
    implicit = None
  else:
    implicit = None
    if grad == "implicit":
      implicit = implicit_differentiation.ImplicitDiff(
        solver_kwargs={"nonsym_solver": _GuardedNormalCG}
      )

  def solve(c_nm, a_n, b_m, eps, thr):
    solver = ott_sinkhorn.Sinkhorn(
      lse_mode=lse_mode,
      threshold=thr,
      inner_iterations=inner_iterations,
      min_iterations=min_iterations,
      max_iterations=max_iterations,
      implicit_diff=implicit,
      anderson=(
        acceleration.AndersonAcceleration(memory=anderson_memory) if anderson_memory else None
      ),
      momentum=acceleration.Momentum(value=momentum) if momentum != 1.0 else None,
    )
    geom = geometry.Geometry(cost_matrix=c_nm, epsilon=eps)
    out = solver(linear_problem.LinearProblem(geom, a=a_n, b=b_m, tau_a=tau_a, tau_b=tau_b))
    return out.matrix, out.f, out.g, out.reg_ot_cost, out.converged, out.n_iters

  plan_nm, f_n, g_m, reg_cost, converged, n_iters = ott_call(
    solve, solve_cost_nm, a_n, b_m, epsilon, threshold
  )
  if mask_nm is not None:
    plan_nm = jnp.where(mask_nm, plan_nm, 0.0)
  row_n, col_m = jnp.sum(plan_nm, axis=1), jnp.sum(plan_nm, axis=0)
  # A row or column with positive weight and no mass is not representable (its entries
  # underflowed): not a solution, whatever ott's criterion says (unbalanced OT at tiny ε).
  representable = jnp.all(jnp.where(a_n > 0, row_n > 0, True)) & jnp.all(
    jnp.where(b_m > 0, col_m > 0, True)
  )
  err = jnp.zeros((), cost_nm.dtype)
  if tau_a == 1.0:
    err = err + _l1(row_n - a_n)
  if tau_b == 1.0:
    err = err + _l1(col_m - b_m)
  mass = jnp.sum(row_n)
  transport = jnp.sum(plan_nm * cost_nm)
  if tau_a < 1.0 or tau_b < 1.0:
    # ott 0.6.0's unbalanced `reg_ot_cost` is the dual value of the problem with reference
    # measure a·bᵀ, evaluated at potentials of the problem its iterations solve (reference 1·1ᵀ):
    # the objective of neither. The primal objective of the solved problem at the returned plan
    # is that of POT's reg_type='entropy', and its derivative in C is the plan at convergence.
    reg_cost = (
      transport
      + epsilon * jnp.sum(_xlogy(plan_nm, plan_nm) - plan_nm)
      + _marginal_penalty(row_n, a_n, tau_a, epsilon)
      + _marginal_penalty(col_m, b_m, tau_b, epsilon)
    )
  return OTResult(
    plan=plan_nm,
    f=f_n,
    g=g_m,
    transport_cost=transport,
    reg_ot_cost=reg_cost,
    converged=converged & jnp.isfinite(err + mass) & representable,
    n_iters=jnp.asarray(n_iters, jnp.int32),
    marginal_error=err,
    mass=mass,
    log_domain=jnp.asarray(lse_mode),
  )


def _xlogy(x: jax.Array, y: jax.Array) -> jax.Array:
  # x log y with 0 log 0 = 0, and no NaN in the gradient where x = 0 (double where).
  pos = x > 0
  return jnp.where(pos, x * jnp.log(jnp.where(pos, y, 1.0)), 0.0)


def _marginal_penalty(p_k: jax.Array, w_k: jax.Array, tau: float, epsilon) -> jax.Array:
  """``ρ KL(p | w)`` (generalised) with ``ρ = ε τ/(1 - τ)``; 0 for a hard (τ = 1) or free side."""
  if tau >= 1.0 or tau <= 0.0:
    return jnp.zeros((), p_k.dtype)
  pos = w_k > 0
  kl = jnp.sum(_xlogy(p_k, p_k) - _xlogy(p_k, jnp.where(pos, w_k, 1.0)) - p_k + w_k)
  return epsilon * tau / (1.0 - tau) * kl


def kernel_sinkhorn(
  cost_nm: jax.Array,
  a_n: jax.Array | None = None,
  b_m: jax.Array | None = None,
  *,
  epsilon: float | jax.Array,
  max_iterations: int,
  threshold: float,
  inner_iterations: int = 10,
  mask_nm: jax.Array | None = None,
) -> OTResult:
  """Balanced entropic OT by kernel-mode Sinkhorn on a precomputed kernel, to an L1 tolerance.

  Solves the problem of :func:`sinkhorn` (balanced, ``tau_a = tau_b = 1``) with the scaling
  form ``P = diag(u) K diag(v)``, ``K = exp(-(C - min C)/ε)`` computed once: each iteration is
  two matrix-vector products, against ott's kernel mode, which rebuilds ``exp(-C/ε)`` at every
  application, and its log-domain mode, which needs two ``logsumexp`` passes over [n, m] per
  iteration. ``docs/benchmarks/ot.md`` compares them with POT. The solution is a constant
  (stop-gradient); use :func:`sinkhorn` for gradients or unbalanced marginals.

  Underflow guard. The kernel is built on the cost shifted by its column minima β
  (:func:`shifted_cost`: same iterates, every column keeps an entry 1). If the shifted range
  ``max(C - β)/ε`` exceeds
  :func:`kernel_range_limit` (≈ 79 in float32, ≈ 640 in float64), small kernel entries would
  round to 0 and kernel mode would solve a different problem — converging, with a tiny
  reported error, to a wrong plan (in float32 from a range of ≈ 88). Then, and also if a
  scaling leaves the normal float range, the problem is solved by the log-domain solver
  (:func:`sinkhorn`, ``lse_mode=True``) instead, and ``log_domain`` is True in the result.
  Both branches are compiled; only one runs.

  Args:
    cost_nm: [n, m] cost, float32 or bfloat16 (solved in float32).
    a_n: [n] row weights (default uniform 1/n); zero weights (padding) get no mass.
    b_m: [m] column weights (default uniform 1/m).
    epsilon: entropic regularisation, absolute.
    max_iterations: iteration cap.
    threshold: L1 marginal error below which the solver stops and reports ``converged``
      (checked every ``inner_iterations``; rows are exact after each iteration, so this is the
      column error ``|Pᵀ1 - b|_1``).
    inner_iterations: iterations between error checks (each check costs one extra mat-vec).
    mask_nm: optional [n, m] bool, ``True`` = allowed; forbidden entries get exactly 0 mass
      (a 0 in the kernel) and do not count in the range check. As in :func:`sinkhorn`.

  Returns:
    :class:`OTResult`; ``f = ε log u`` and ``g = ε log v + β`` (``-inf`` on zero weights),
    ``reg_ot_cost = <P, C> + ε KL(P | a bᵀ)`` as for :func:`sinkhorn`.
  """
  _check_iters(max_iterations, threshold)
  if int(inner_iterations) < 1:
    raise ValueError(f"inner_iterations must be >= 1, got {inner_iterations}")
  cost_nm = _check_cost(cost_nm)
  n, m = cost_nm.shape
  a_n = _marginal(a_n, n, "a_n", cost_nm.dtype)
  b_m = _marginal(b_m, m, "b_m", cost_nm.dtype)
  if mask_nm is not None and mask_nm.shape != (n, m):
    raise ValueError(f"mask_nm must have shape {(n, m)}, got {mask_nm.shape}")
  return _kernel_core(
    cost_nm,
    a_n,
    b_m,
    mask_nm,
    jnp.asarray(epsilon, cost_nm.dtype),
    jnp.asarray(threshold, cost_nm.dtype),
    max_iterations=int(max_iterations),
    inner_iterations=int(inner_iterations),
  )


def _scale(w_k: jax.Array, s_k: jax.Array) -> jax.Array:
  # w / s, with 0 for zero weights and a finite value (and a reported error) where s underflows.
  return jnp.where(w_k > 0, w_k / jnp.where(s_k > 0, s_k, 1.0), 0.0)


def kernel_range_limit(dtype) -> float:
  """Largest ``(C - β)/ε`` at which a kernel-mode solver is trusted in ``dtype``.

  ``exp(-x)`` leaves the normal range at ``x = -log(tiny)`` (87.3 in float32, 708 in float64);
  10 % is kept in reserve for the scalings, whose range grows with that of the kernel.
  """
  return -0.9 * math.log(float(jnp.finfo(dtype).tiny))


def shifted_cost(
  cost_nm: jax.Array, a_n: jax.Array, b_m: jax.Array, mask_nm: jax.Array | None = None
):
  """Cost shifted by its column minima over the entries with positive weight on both sides.

  A kernel-mode Sinkhorn started from ``u = 1`` (ott's ``f = 0``) produces exactly the same
  plans on ``C - β`` as on ``C`` — the first column update absorbs ``exp(β/ε)`` into ``v`` —
  while every column of the shifted kernel keeps an entry 1, so the float range is spent on
  the spread within columns rather than on their offsets. (A row shift would change the
  iterates for a fixed initialisation.)

  Args:
    cost_nm: [n, m] cost.
    a_n: [n] row weights (0 = padding).
    b_m: [m] column weights.
    mask_nm: optional [n, m] bool, ``False`` = forbidden (not valid).

  Returns:
    ``(shifted_nm, beta_m, valid_nm)``: ``shifted = C - β ≥ 0`` on valid entries (0 elsewhere),
    the shift (0 on padding; a constant for autodiff) and the [n, m] bool mask of valid entries.
  """
  valid_nm = (a_n[:, None] > 0) & (b_m[None, :] > 0)
  if mask_nm is not None:
    valid_nm = valid_nm & mask_nm
  beta_m = jnp.min(jnp.where(valid_nm, jax.lax.stop_gradient(cost_nm), jnp.inf), axis=0)
  beta_m = jnp.where(jnp.isfinite(beta_m), beta_m, 0.0)
  return jnp.where(valid_nm, cost_nm - beta_m[None, :], 0.0), beta_m, valid_nm


def kernel_range_ok(shifted_nm: jax.Array, epsilon) -> jax.Array:
  """Whether a kernel built on ``shifted_nm`` (from :func:`shifted_cost`) stays representable."""
  return jnp.max(shifted_nm) <= kernel_range_limit(shifted_nm.dtype) * epsilon


@functools.partial(jax.jit, static_argnames=("max_iterations", "inner_iterations"))
def _kernel_core(
  cost_nm, a_n, b_m, mask_nm, epsilon, threshold, *, max_iterations, inner_iterations
):
  cost_nm, a_n, b_m, epsilon = jax.lax.stop_gradient((cost_nm, a_n, b_m, epsilon))
  shifted_nm, beta_m, valid_nm = shifted_cost(cost_nm, a_n, b_m, mask_nm)
  tiny = jnp.finfo(cost_nm.dtype).tiny

  def log_domain():
    return _sinkhorn_core(
      cost_nm,
      a_n,
      b_m,
      mask_nm,
      epsilon,
      threshold,
      grad="stop_gradient",
      max_iterations=max_iterations,
      tau_a=1.0,
      tau_b=1.0,
      min_iterations=0,
      inner_iterations=inner_iterations,
      lse_mode=True,
      anderson_memory=0,
      momentum=1.0,
    )

  def kernel_mode():
    k_nm = jnp.where(valid_nm, jnp.exp(-shifted_nm / epsilon), 0.0)
    n_blocks = -(-max_iterations // inner_iterations)

    def step(_, uv):
      u_n, _ = uv
      v_m = _scale(b_m, u_n @ k_nm)
      return _scale(a_n, k_nm @ v_m), v_m

    def block(state):
      uv, _, it = state
      uv = jax.lax.fori_loop(0, inner_iterations, step, uv)
      u_n, v_m = uv
      return uv, _l1(v_m * (u_n @ k_nm) - b_m), it + 1

    def cond(state):
      _, err, it = state
      return jnp.logical_and(it < n_blocks, jnp.logical_not(err <= threshold))

    init = ((a_n > 0).astype(cost_nm.dtype), jnp.zeros_like(b_m))
    (u_n, v_m), _, it = jax.lax.while_loop(cond, block, (init, jnp.asarray(jnp.inf), 0))
    # Scalings outside the normal range lose their precision (or are 0/inf): not trusted.
    scalings_ok = jnp.all(jnp.where(a_n > 0, (u_n >= tiny) & jnp.isfinite(u_n), True)) & jnp.all(
      jnp.where(b_m > 0, (v_m >= tiny) & jnp.isfinite(v_m), True)
    )
    plan_nm = u_n[:, None] * k_nm * v_m[None, :]
    err = _l1(jnp.sum(plan_nm, 1) - a_n) + _l1(jnp.sum(plan_nm, 0) - b_m)
    with jax.numpy_rank_promotion("allow"):
      f_n = jnp.where(a_n > 0, epsilon * jnp.log(u_n), -jnp.inf)
      g_m = jnp.where(b_m > 0, epsilon * jnp.log(v_m) + beta_m, -jnp.inf)
    ref_nm = a_n[:, None] * b_m[None, :]
    pos_nm = plan_nm > 0
    kl = jnp.sum(
      jnp.where(pos_nm, plan_nm * jnp.log(jnp.where(pos_nm, plan_nm / ref_nm, 1.0)), 0.0)
    )
    transport = jnp.sum(plan_nm * cost_nm)
    mass = jnp.sum(plan_nm)
    out = OTResult(
      plan=plan_nm,
      f=f_n,
      g=g_m,
      transport_cost=transport,
      reg_ot_cost=transport + epsilon * (kl - mass + 1.0),
      converged=jnp.logical_and(err <= threshold, jnp.isfinite(err + mass)),
      n_iters=(it * inner_iterations).astype(jnp.int32),
      marginal_error=err,
      mass=mass,
      log_domain=jnp.asarray(False),
    )
    return jax.lax.cond(scalings_ok, lambda: out, log_domain)

  return jax.lax.cond(kernel_range_ok(shifted_nm, epsilon), kernel_mode, log_domain)


# --- box-constrained marginals: DBOT and partial OT -------------------------------------------


def _lse(x: jax.Array, axis: int) -> jax.Array:
  # Like ott's update: an all -inf slice (zero-weight row/column) gives lse = -inf; the caller
  # maps that to a finite value so that no -inf - (-inf) = NaN appears.
  return jax.nn.logsumexp(x, axis=axis)


def _box_update(lse_k: jax.Array, log_lo_k: jax.Array, log_hi_k: jax.Array, eps) -> jax.Array:
  """Exact dual coordinate maximisation for marginals boxed in [lo, hi].

  The marginal of the current plan along this axis, for potential 0, is ``exp(lse)``. The
  concave one-dimensional dual ``min(lo·φ, hi·φ) - ε e^{φ/ε} e^{lse}`` is maximised at
  ``clip(0, ε(log lo - lse), ε(log hi - lse))``: 0 when the marginal is already in the box,
  otherwise the scaling that moves it to the violated bound (a KL projection).
  """
  lse_k = jnp.where(jnp.isfinite(lse_k), lse_k, 0.0)
  lo_k = eps * (log_lo_k - lse_k)
  hi_k = eps * (log_hi_k - lse_k)
  return jnp.minimum(jnp.maximum(0.0, lo_k), hi_k)


def _box_violation(x_k, lo_k, hi_k, phi_k) -> jax.Array:
  """L1 KKT residual of a boxed marginal ``x`` with potential ``φ``.

  Feasibility alone is not enough: ``φ > 0`` means the lower bound is active, ``φ < 0`` the
  upper one, so the marginal must sit on that bound (complementary slackness); with ``φ = 0``
  it must lie in the box. The residual is the L1 distance to that target.
  """
  target_k = jnp.where(phi_k > 0, lo_k, jnp.where(phi_k < 0, hi_k, jnp.clip(x_k, lo_k, hi_k)))
  return jnp.sum(jnp.abs(x_k - target_k))


@functools.partial(jax.jit, static_argnames=("grad", "max_iterations", "inner_iterations"))
def _box_solve(
  cost_nm,
  row_lo,
  row_hi,
  col_lo,
  col_hi,
  mass,
  *,
  epsilon,
  grad,
  max_iterations,
  threshold,
  inner_iterations,
) -> OTResult:
  """Log-domain dual coordinate ascent for boxed marginals and an optional total mass.

  Solves ``min_P <P, C> + ε Σ P (log P - 1)`` s.t. ``row_lo ≤ P1 ≤ row_hi``,
  ``col_lo ≤ Pᵀ1 ≤ col_hi`` and (if ``mass`` is not None) ``ΣP = mass``, with
  ``P = exp((f_i + g_j + h - C_ij)/ε)``. Each step exactly maximises the (concave) dual over one
  block (g, then f, then h), which converges to the unique optimum (Tseng 2001); this is the
  Bregman/Dykstra scheme of Benamou et al. (2015) written on dual variables.
  """
  eps = epsilon
  log_bounds = [jnp.log(x) for x in (row_lo, row_hi, col_lo, col_hi)]
  log_row_lo, log_row_hi, log_col_lo, log_col_hi = log_bounds
  n, m = cost_nm.shape

  def step(carry):
    f_n, g_m, h = carry
    z_nm = (f_n[:, None] + h - cost_nm) / eps
    g_m = _box_update(_lse(z_nm, 0), log_col_lo, log_col_hi, eps)
    z_nm = (g_m[None, :] + h - cost_nm) / eps
    f_n = _box_update(_lse(z_nm, 1), log_row_lo, log_row_hi, eps)
    if mass is not None:
      lse_all = jax.nn.logsumexp((f_n[:, None] + g_m[None, :] - cost_nm) / eps)
      h = eps * (jnp.log(mass) - lse_all)
    return f_n, g_m, h

  def plan_and_error(carry):
    f_n, g_m, h = carry
    plan_nm = jnp.exp((f_n[:, None] + g_m[None, :] + h - cost_nm) / eps)
    row_n, col_m = jnp.sum(plan_nm, 1), jnp.sum(plan_nm, 0)
    err = _box_violation(row_n, row_lo, row_hi, f_n) + _box_violation(col_m, col_lo, col_hi, g_m)
    if mass is not None:
      err = err + jnp.abs(jnp.sum(plan_nm) - mass)
    return plan_nm, err

  dt = cost_nm.dtype
  init = (jnp.zeros((n,), dt), jnp.zeros((m,), dt), jnp.zeros((), dt))
  if grad == "unroll":
    carry, _ = jax.lax.scan(lambda c, _: (step(c), None), init, None, length=max_iterations)
    n_iters = jnp.asarray(max_iterations, jnp.int32)
    plan_nm, err = plan_and_error(carry)
  else:
    n_blocks = -(-max_iterations // inner_iterations)

    def block(state):
      carry, _, it = state
      carry = jax.lax.fori_loop(0, inner_iterations, lambda _, c: step(c), carry)
      return carry, plan_and_error(carry)[1], it + 1

    def cond(state):
      _, err, it = state
      return jnp.logical_and(it < n_blocks, jnp.logical_not(err <= threshold))

    carry, _, it = jax.lax.while_loop(cond, block, (init, jnp.asarray(jnp.inf), jnp.asarray(0)))
    n_iters = (it * inner_iterations).astype(jnp.int32)
    plan_nm, err = plan_and_error(carry)
  f_n, g_m, h = carry
  transport = jnp.sum(plan_nm * cost_nm)
  ent = jnp.sum(jnp.where(plan_nm > 0, plan_nm * (jnp.log(plan_nm) - 1.0), 0.0))
  total = jnp.sum(plan_nm)
  return OTResult(
    plan=plan_nm,
    f=f_n + h,
    g=g_m,
    transport_cost=transport,
    reg_ot_cost=transport + eps * ent,
    converged=jnp.logical_and(err <= threshold, jnp.isfinite(err + total)),
    n_iters=n_iters,
    marginal_error=err,
    mass=total,
    log_domain=jnp.asarray(True),
  )


def dbot(
  cost_nm: jax.Array,
  a_n: jax.Array | None = None,
  b_m: jax.Array | None = None,
  *,
  delta: float,
  epsilon: float | jax.Array,
  grad: Literal["stop_gradient", "unroll"],
  max_iterations: int,
  threshold: float,
  inner_iterations: int = 10,
) -> OTResult:
  """Box-constrained column marginals (OT-CLIP "DBOT" loss).

  Solves ``min_P <P, C> + ε Σ P (log P - 1)`` with ``P1 = a`` and
  ``(1-δ) b ≤ Pᵀ1 ≤ (1+δ) b``. ``δ = 0`` is balanced OT; a ``δ`` so large that no bound is
  active leaves only the rows constrained (the row softmax ``a_i softmax(-C_i/ε)``). With uniform
  ``b = 1/m`` the columns are boxed in ``[(1-δ)/m, (1+δ)/m]`` — the consistent version of the
  reference code's bounds (METHODS.md §1.3).

  Args:
    cost_nm: [n, m] cost (float32 or bfloat16).
    a_n: [n] row weights (default 1/n).
    b_m: [m] column reference weights (default 1/m).
    delta: relative box half-width, ``≥ 0``.
    epsilon: entropic regularisation.
    grad: ``"stop_gradient"`` (tolerance loop) or ``"unroll"`` (exactly ``max_iterations``).
    max_iterations: iteration cap (exact count when unrolled).
    threshold: L1 constraint violation at which to stop.
    inner_iterations: error check period of the tolerance loop.

  Returns:
    :class:`OTResult` (``f`` includes no mass potential; ``g`` is 0 on columns strictly inside
    the box, > 0 at the lower bound and < 0 at the upper bound).
  """
  _check_grad(grad, ("stop_gradient", "unroll"))
  _check_iters(max_iterations, threshold)
  if delta < 0:
    raise ValueError(f"delta must be >= 0, got {delta}")
  cost_nm = _check_cost(cost_nm)
  n, m = cost_nm.shape
  a_n = _marginal(a_n, n, "a_n", cost_nm.dtype)
  b_m = _marginal(b_m, m, "b_m", cost_nm.dtype)
  if grad == "stop_gradient":
    cost_nm, a_n, b_m, epsilon = jax.lax.stop_gradient((cost_nm, a_n, b_m, epsilon))
  col_lo = jnp.maximum(1.0 - delta, 0.0) * b_m
  col_hi = (1.0 + delta) * b_m
  return _box_solve(
    cost_nm,
    a_n,
    a_n,
    col_lo,
    col_hi,
    None,
    epsilon=epsilon,
    grad=grad,
    max_iterations=max_iterations,
    threshold=threshold,
    inner_iterations=inner_iterations,
  )


def partial_ot(
  cost_nm: jax.Array,
  a_n: jax.Array | None = None,
  b_m: jax.Array | None = None,
  *,
  mass: float | jax.Array,
  epsilon: float | jax.Array,
  grad: Literal["stop_gradient", "unroll"],
  max_iterations: int,
  threshold: float,
  inner_iterations: int = 10,
) -> OTResult:
  """Entropic partial OT: move only ``mass`` (OT-CLIP selective classification).

  Solves ``min_P <P, C> + ε Σ P (log P - 1)`` with ``P1 ≤ a``, ``Pᵀ1 ≤ b``, ``ΣP = mass`` —
  the problem of POT ``ot.partial.entropic_partial_wasserstein(a, b, C, reg=ε, m=mass)``.
  Rows whose mass ``(P1)_i`` is largest are the ones the selective classifier keeps.

  Args:
    cost_nm: [n, m] cost.
    a_n: [n] row capacities (default 1/n).
    b_m: [m] column capacities (default 1/m).
    mass: total mass to transport, ``0 < mass ≤ min(Σa, Σb)`` (a fraction ``s`` of unit mass).
    epsilon: entropic regularisation.
    grad: ``"stop_gradient"`` or ``"unroll"``.
    max_iterations: iteration cap (exact count when unrolled).
    threshold: L1 constraint violation (including ``|ΣP - mass|``) at which to stop.
    inner_iterations: error check period of the tolerance loop.

  Returns:
    :class:`OTResult`; ``f`` includes the mass potential.
  """
  _check_grad(grad, ("stop_gradient", "unroll"))
  _check_iters(max_iterations, threshold)
  if isinstance(mass, int | float) and mass <= 0:
    raise ValueError(f"mass must be > 0, got {mass}")
  cost_nm = _check_cost(cost_nm)
  n, m = cost_nm.shape
  a_n = _marginal(a_n, n, "a_n", cost_nm.dtype)
  b_m = _marginal(b_m, m, "b_m", cost_nm.dtype)
  mass = jnp.asarray(mass, cost_nm.dtype)
  if grad == "stop_gradient":
    cost_nm, a_n, b_m, epsilon, mass = jax.lax.stop_gradient((cost_nm, a_n, b_m, epsilon, mass))
  zeros_n, zeros_m = jnp.zeros_like(a_n), jnp.zeros_like(b_m)
  return _box_solve(
    cost_nm,
    zeros_n,
    a_n,
    zeros_m,
    b_m,
    mass,
    epsilon=epsilon,
    grad=grad,
    max_iterations=max_iterations,
    threshold=threshold,
    inner_iterations=inner_iterations,
  )


def fgw_semirelaxed_softmax(
  cost_nm: jax.Array,
  sim_x_nn: jax.Array,
  sim_y_mm: jax.Array,
  *,
  alpha1: float,
  alpha2: float,
  epsilon: float,
  num_iters: int,
) -> jax.Array:
  """OT-CLIP's transductive FGW inference: unrolled semi-relaxed fused GW with row softmax.

  ``P = softmax_rows(-C/ε)``; then ``num_iters`` times: ``C ← C - α1·α2·Σx P Σy`` (cumulative,
  as in the reference ``fgwi_softmax``) and ``P = softmax_rows(-C/ε)``. Only the row marginal
  is enforced (each test image's row is a distribution over classes); images that are similar
  under ``Σx`` are pushed towards classes that are similar under ``Σy``.

  Args:
    cost_nm: [n, m] cost ``1 - cos(image_i, class_j)`` for a test batch of n images, m classes.
    sim_x_nn: [n, n] image-image similarity ``X Xᵀ``.
    sim_y_mm: [m, m] class-class similarity ``T Tᵀ``.
    alpha1: structural weight α1 (the product α1·α2 scales the update).
    alpha2: structural weight α2.
    epsilon: softmax temperature ε.
    num_iters: number of cost updates (0 gives the plain zero-shot softmax).

  Returns:
    [n, m] row-stochastic plan (rows sum to 1); predictions are its row argmax.
  """
  cost_nm = _check_cost(cost_nm)
  n, m = cost_nm.shape
  if sim_x_nn.shape != (n, n) or sim_y_mm.shape != (m, m):
    raise ValueError(
      f"sim_x_nn must be {(n, n)} and sim_y_mm {(m, m)} for cost {cost_nm.shape}; got "
      f"{sim_x_nn.shape} and {sim_y_mm.shape}"
    )
  sx_nn = solve_dtype(sim_x_nn)
  sy_mm = solve_dtype(sim_y_mm)
  hi = jax.lax.Precision.HIGHEST

  def body(_, c_nm):
    p_nm = jax.nn.softmax(-c_nm / epsilon, axis=1)
    struct_nm = jnp.einsum("ik,kl,lj->ij", sx_nn, p_nm, sy_mm, precision=hi)
    return c_nm - alpha1 * alpha2 * struct_nm

  cost_nm = jax.lax.fori_loop(0, num_iters, body, cost_nm)
  return jax.nn.softmax(-cost_nm / epsilon, axis=1)
