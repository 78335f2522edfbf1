"""Many small OT problems between padded sets of vectors, in one jitted, memory-bounded call.

OTCCLIP compares an image's patch tokens with a caption's word tokens (N² pairs of 50 × 77 sets
for a batch of N) and COLA compares augmented views of an image with each class's descriptions
(1 × K pairs of V × M sets). Sets are padded to a static size; padding gets weight 0 and
carries no mass (and no NaN).

:func:`set_ot` solves one pair with a fixed number of iterations (under ``vmap`` a tolerance
loop runs until the slowest problem converges, so fixed iterations are the right choice);
:func:`indexed_set_ot` and :func:`pairwise_set_ot` lift it to lists of pairs with ``vmap`` inside
a ``lax.map`` over chunks of ``chunk_size`` pairs, so peak memory is
``O(chunk_size · n · m)`` whatever the number of pairs.

Two solver paths (``solver``):

* ``"ott"``: ott-jax ``Sinkhorn`` on a ``Geometry`` with ``min_iterations == max_iterations``
  (a ``lax.scan``), log-domain (``lse_mode=True``) or kernel mode.
* ``"kernel"``: a hand-written kernel-mode loop: the kernel ``exp(-(C - β)/ε)`` of the cost
  shifted by its column minima (:func:`clipjax.ot.plans.shifted_cost`) is computed once
  and each iteration is two mat-vecs. ott's kernel mode recomputes ``exp(-C/ε)`` at every
  application; ``docs/benchmarks/ot.md`` measures the difference, and
  ``tests/ot/test_batched.py`` checks this path against ott and POT. Where the shifted range
  exceeds :func:`clipjax.ot.plans.kernel_range_limit` (≈ 79 in float32) the kernel would
  underflow and converge to a wrong plan, so the problem is solved in the log domain (ott,
  ``lse_mode=True``) instead and ``log_domain`` says so. The batched functions decide per
  ``lax.map`` chunk (one kernel-mode chunk, or the whole chunk in the log domain), so only one
  branch runs; :func:`fixed_sinkhorn` decides per problem (under a user's ``vmap`` both
  branches then run and are selected, with no NaN in either value or gradient).
"""

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from clipjax.ot.costs import cosine_cost, solve_dtype, sqeuclidean_cost
from clipjax.ot.plans import kernel_range_ok, ott_call, shifted_cost

__all__ = [
  "SetOTResult",
  "fixed_sinkhorn",
  "fixed_sinkhorn_batch",
  "indexed_set_ot",
  "pairwise_set_ot",
  "set_ot",
]

Solver = Literal["ott", "kernel"]
SetCost = Literal["cosine", "sqeuclidean"]
_COSTS = {"cosine": cosine_cost, "sqeuclidean": sqeuclidean_cost}


class SetOTResult(NamedTuple):
  """OT between sets: one entry per problem (scalars for :func:`set_ot`).

  Attributes:
    cost: transport cost ``<P, C>`` (OTCCLIP's d_OT; COLA scores use ``-cost``).
    marginal_error: ``|P1 - a|_1 + |Pᵀ1 - b|_1`` after the fixed iterations (weights are
      normalised first, so this is a total-variation error); aggregate with ``max`` for logs.
    plan: [n, m] plan from :func:`set_ot`; ``None`` from the batched functions.
    log_domain: bool per problem: solved in the log domain (``solver="ott"`` with
      ``lse_mode=True``, or ``solver="kernel"`` handing over because its kernel would underflow).
  """

  cost: jax.Array
  marginal_error: jax.Array
  plan: jax.Array | None = None
  log_domain: jax.Array | None = None


def _normalize(w_k: jax.Array) -> jax.Array:
  total = jnp.sum(w_k)
  return w_k / jnp.where(total > 0, total, 1.0)


def _safe_div(w_k: jax.Array, s_k: jax.Array) -> jax.Array:
  # Zero weight (padding) → scaling 0; an underflowed kernel row → scaling w (finite, and the
  # resulting marginal error is reported instead of a NaN).
  return jnp.where(w_k > 0, w_k / jnp.where(s_k > 0, s_k, 1.0), 0.0)


def _kernel_sinkhorn(shifted_nm, valid_nm, a_n, b_m, epsilon, num_iters):
  k_nm = jnp.where(valid_nm, jnp.exp(-shifted_nm / epsilon), 0.0)
  hi = jax.lax.Precision.HIGHEST

  def body(_, uv):
    u_n, _ = uv
    v_m = _safe_div(b_m, jnp.dot(u_n, k_nm, precision=hi))
    u_n = _safe_div(a_n, jnp.dot(k_nm, v_m, precision=hi))
    return u_n, v_m

  init = (jnp.where(a_n > 0, 1.0, 0.0).astype(a_n.dtype), jnp.zeros_like(b_m))
  u_n, v_m = jax.lax.fori_loop(0, num_iters, body, init)
  return u_n[:, None] * k_nm * v_m[None, :]


def _ott_sinkhorn(cost_nm, a_n, b_m, epsilon, num_iters, lse_mode):
  solver = ott_sinkhorn.Sinkhorn(
    lse_mode=lse_mode,
    threshold=0.0,
    inner_iterations=1,
    min_iterations=num_iters,
    max_iterations=num_iters,
    implicit_diff=None,
  )

  def solve(c_nm, a_n, b_m, eps):
    geom = geometry.Geometry(cost_matrix=c_nm, epsilon=eps)
    return solver(linear_problem.LinearProblem(geom, a=a_n, b=b_m)).matrix

  plan_nm = ott_call(solve, cost_nm, a_n, b_m, jnp.asarray(epsilon, cost_nm.dtype))
  if lse_mode:
    return plan_nm
  # Kernel mode: potentials of zero-weight entries are -inf; the plan is 0 there.
  return jnp.where((a_n[:, None] > 0) & (b_m[None, :] > 0), plan_nm, 0.0)


def fixed_sinkhorn(
  cost_nm: jax.Array,
  a_n: jax.Array,
  b_m: jax.Array,
  *,
  epsilon: float,
  num_iters: int,
  solver: Solver,
  grad: Literal["stop_gradient", "unroll"],
  lse_mode: bool = True,
) -> SetOTResult:
  """Entropic OT on a precomputed cost with a fixed number of iterations (vmap-friendly).

  The per-problem building block of this module; ``jax.vmap`` it over a batch of costs (e.g.
  COLA's per-class projected costs).

  Args:
    cost_nm: [n, m] cost (float32 or bfloat16; solved in float32).
    a_n: [n] non-negative weights, 0 on padding (normalised to sum 1 here).
    b_m: [m] weights, 0 on padding.
    epsilon: entropic regularisation (absolute).
    num_iters: Sinkhorn iterations (column then row update each).
    solver: ``"kernel"`` (hand-written, fastest on CPU; hands over to the log domain where its
      kernel would underflow, see the module docstring) or ``"ott"``.
    grad: ``"stop_gradient"`` or ``"unroll"`` (backprop through the iterations).
    lse_mode: for ``solver="ott"`` only: log-domain (True) or kernel mode.

  Returns:
    :class:`SetOTResult` with scalar ``cost``, ``marginal_error``, ``log_domain`` and the
    [n, m] ``plan``.
  """
  _check_fixed(cost_nm, a_n, b_m, solver, grad, num_iters)
  cost_nm, a_n, b_m = _prepare(cost_nm, a_n, b_m, grad)
  if solver == "ott":
    plan_nm = _ott_sinkhorn(cost_nm, a_n, b_m, epsilon, num_iters, lse_mode)
    return _result(cost_nm, a_n, b_m, plan_nm, jnp.asarray(lse_mode))
  shifted_nm, _, valid_nm = shifted_cost(cost_nm, a_n, b_m)
  ok = kernel_range_ok(shifted_nm, epsilon)
  # Under a user's vmap the cond becomes a select and both branches run: each branch gets a
  # harmless input where it is not the one selected, so neither puts a NaN into the gradient.
  safe_nm = jnp.where(ok, shifted_nm, 0.0)
  plan_nm = jax.lax.cond(
    ok,
    lambda: _kernel_sinkhorn(safe_nm, valid_nm, a_n, b_m, epsilon, num_iters),
    lambda: _ott_sinkhorn(cost_nm, a_n, b_m, epsilon, num_iters, True),
  )
  return _result(cost_nm, a_n, b_m, plan_nm, jnp.logical_not(ok))


def _check_fixed(cost_nm, a_n, b_m, solver, grad, num_iters) -> None:
  if solver not in ("ott", "kernel"):
    raise ValueError(f"solver must be 'ott' or 'kernel', got {solver!r}")
  if grad not in ("stop_gradient", "unroll"):
    raise ValueError(f"grad must be 'stop_gradient' or 'unroll', got {grad!r}")
  if int(num_iters) < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}")
  if cost_nm.ndim != 2 or a_n.shape != cost_nm.shape[:1] or b_m.shape != cost_nm.shape[1:]:
    raise ValueError(
      f"expected cost_nm [n, m] with a_n [n], b_m [m]; got {cost_nm.shape}, {a_n.shape}, "
      f"{b_m.shape}"
    )


def _prepare(cost_nm, a_n, b_m, grad):
  cost_nm = solve_dtype(cost_nm)
  a_n = _normalize(solve_dtype(a_n).astype(cost_nm.dtype))
  b_m = _normalize(solve_dtype(b_m).astype(cost_nm.dtype))
  if grad == "stop_gradient":
    return jax.lax.stop_gradient((cost_nm, a_n, b_m))
  # Padding must not receive gradient (ott's plan has tiny nonzero cotangents there).
  valid_nm = (a_n[:, None] > 0) & (b_m[None, :] > 0)
  return jnp.where(valid_nm, cost_nm, jax.lax.stop_gradient(cost_nm)), a_n, b_m


def _result(cost_nm, a_n, b_m, plan_nm, log_domain) -> SetOTResult:
  err = jnp.sum(jnp.abs(jnp.sum(plan_nm, 1) - a_n)) + jnp.sum(jnp.abs(jnp.sum(plan_nm, 0) - b_m))
  return SetOTResult(
    cost=jnp.sum(plan_nm * cost_nm), marginal_error=err, plan=plan_nm, log_domain=log_domain
  )


def fixed_sinkhorn_batch(
  cost_knm: jax.Array,
  a_kn: jax.Array,
  b_km: jax.Array,
  *,
  epsilon: float,
  num_iters: int,
  solver: Solver,
  grad: Literal["stop_gradient", "unroll"],
  lse_mode: bool = True,
) -> SetOTResult:
  """:func:`fixed_sinkhorn` over a leading axis of k problems, with one solver decision for all.

  With ``solver="kernel"``, if every problem's shifted kernel is representable the k problems
  are solved in kernel mode, otherwise all of them in the log domain (a real ``lax.cond``: only
  one branch runs, unlike ``vmap(fixed_sinkhorn)``).

  Args:
    cost_knm: [k, n, m] costs.
    a_kn: [k, n] weights (0 on padding).
    b_km: [k, m] weights.
    epsilon, num_iters, solver, grad, lse_mode: as in :func:`fixed_sinkhorn`.

  Returns:
    :class:`SetOTResult` with [k] ``cost``, ``marginal_error``, ``log_domain`` and [k, n, m]
    ``plan``.
  """
  if (
    cost_knm.ndim != 3
    or a_kn.shape != cost_knm.shape[:2]
    or b_km.shape
    != (
      cost_knm.shape[0],
      cost_knm.shape[2],
    )
  ):
    raise ValueError(
      f"expected cost_knm [k, n, m] with a_kn [k, n], b_km [k, m]; got {cost_knm.shape}, "
      f"{a_kn.shape}, {b_km.shape}"
    )
  _check_fixed(cost_knm[0], a_kn[0], b_km[0], solver, grad, num_iters)
  cost_knm, a_kn, b_km = jax.vmap(functools.partial(_prepare, grad=grad))(cost_knm, a_kn, b_km)
  k = cost_knm.shape[0]

  def ott_path(mode):
    plan = jax.vmap(lambda c, a, b: _ott_sinkhorn(c, a, b, epsilon, num_iters, mode))
    return plan(cost_knm, a_kn, b_km)

  if solver == "ott":
    plan_knm, log_domain = ott_path(lse_mode), jnp.full((k,), lse_mode)
  else:
    shifted_knm, _, valid_knm = jax.vmap(shifted_cost)(cost_knm, a_kn, b_km)
    ok = jnp.all(jax.vmap(kernel_range_ok, in_axes=(0, None))(shifted_knm, epsilon))
    kernel = jax.vmap(lambda s, v, a, b: _kernel_sinkhorn(s, v, a, b, epsilon, num_iters))
    plan_knm = jax.lax.cond(
      ok, lambda: kernel(shifted_knm, valid_knm, a_kn, b_km), lambda: ott_path(True)
    )
    log_domain = jnp.full((k,), jnp.logical_not(ok))
  return jax.vmap(_result)(cost_knm, a_kn, b_km, plan_knm, log_domain)


def set_ot(
  x_nd: jax.Array,
  y_md: jax.Array,
  wx_n: jax.Array,
  wy_m: jax.Array,
  *,
  epsilon: float,
  num_iters: int,
  solver: Solver,
  grad: Literal["stop_gradient", "unroll"],
  cost: SetCost = "cosine",
  lse_mode: bool = True,
) -> SetOTResult:
  """Entropic OT between two weighted sets of vectors (:func:`fixed_sinkhorn` on their cost).

  Args:
    x_nd: [n, d] first set (float32 or bfloat16), padded rows allowed.
    y_md: [m, d] second set.
    wx_n: [n] non-negative weights, 0 on padding (normalised to sum 1 here).
    wy_m: [m] weights, 0 on padding.
    epsilon: entropic regularisation (absolute; cosine costs lie in [0, 2]).
    num_iters: Sinkhorn iterations.
    solver: ``"kernel"`` or ``"ott"``.
    grad: ``"stop_gradient"`` or ``"unroll"``.
    cost: ``"cosine"`` (``1 - cos``) or ``"sqeuclidean"``.
    lse_mode: for ``solver="ott"`` only.

  Returns:
    :class:`SetOTResult` with scalar ``cost``, ``marginal_error`` and the [n, m] ``plan``.
  """
  if cost not in _COSTS:
    raise ValueError(f"cost must be one of {sorted(_COSTS)}, got {cost!r}")
  if wx_n.shape != x_nd.shape[:1] or wy_m.shape != y_md.shape[:1]:
    raise ValueError(
      f"weights must match set sizes: x_nd {x_nd.shape} wx_n {wx_n.shape}, "
      f"y_md {y_md.shape} wy_m {wy_m.shape}"
    )
  return fixed_sinkhorn(
    _COSTS[cost](x_nd, y_md),
    wx_n,
    wy_m,
    epsilon=epsilon,
    num_iters=num_iters,
    solver=solver,
    grad=grad,
    lse_mode=lse_mode,
  )


def _check_sets(x_and, wx_an, y_bmd, wy_bm, chunk_size) -> None:
  if x_and.ndim != 3 or y_bmd.ndim != 3 or x_and.shape[2] != y_bmd.shape[2]:
    raise ValueError(
      f"expected x_and [A, n, d] and y_bmd [B, m, d]; got {x_and.shape}, {y_bmd.shape}"
    )
  if wx_an.shape != x_and.shape[:2]:
    raise ValueError(f"wx_an must have shape {x_and.shape[:2]}, got {wx_an.shape}")
  if wy_bm.shape != y_bmd.shape[:2]:
    raise ValueError(f"wy_bm must have shape {y_bmd.shape[:2]}, got {wy_bm.shape}")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


@functools.partial(
  jax.jit,
  static_argnames=("chunk_size", "num_iters", "solver", "grad", "cost", "lse_mode"),
)
def indexed_set_ot(
  x_and: jax.Array,
  wx_an: jax.Array,
  y_bmd: jax.Array,
  wy_bm: jax.Array,
  ia_k: jax.Array,
  ib_k: jax.Array,
  *,
  chunk_size: int,
  epsilon: float,
  num_iters: int,
  solver: Solver,
  grad: Literal["stop_gradient", "unroll"],
  cost: SetCost = "cosine",
  lse_mode: bool = True,
) -> SetOTResult:
  """OT between set pairs ``(x[ia_k], y[ib_k])`` for k pairs (e.g. OTCCLIP's top-K shortlist).

  Args:
    x_and: [A, n, d] first sets (padded).
    wx_an: [A, n] weights (0 on padding).
    y_bmd: [B, m, d] second sets.
    wy_bm: [B, m] weights.
    ia_k: [k] int indices into the first sets.
    ib_k: [k] int indices into the second sets.
    chunk_size: pairs solved together per ``lax.map`` step (memory ∝ chunk_size·n·m).
    epsilon, num_iters, solver, grad, cost, lse_mode: as in :func:`set_ot`.

  Returns:
    :class:`SetOTResult` with [k] ``cost``, ``marginal_error`` and ``log_domain`` (``plan`` is
    None).
  """
  _check_sets(x_and, wx_an, y_bmd, wy_bm, chunk_size)
  if ia_k.shape != ib_k.shape or ia_k.ndim != 1:
    raise ValueError(f"ia_k and ib_k must be equal-length vectors, got {ia_k.shape}, {ib_k.shape}")
  k = ia_k.shape[0]
  chunk = min(chunk_size, k)
  n_chunks = -(-k // chunk)
  pad = n_chunks * chunk - k
  ia_ck = jnp.pad(ia_k, (0, pad)).reshape(n_chunks, chunk)
  ib_ck = jnp.pad(ib_k, (0, pad)).reshape(n_chunks, chunk)

  if cost not in _COSTS:
    raise ValueError(f"cost must be one of {sorted(_COSTS)}, got {cost!r}")
  cost_fn = _COSTS[cost]

  def per_chunk(idx):
    ia, ib = idx
    r = fixed_sinkhorn_batch(
      jax.vmap(cost_fn)(x_and[ia], y_bmd[ib]),
      wx_an[ia],
      wy_bm[ib],
      epsilon=epsilon,
      num_iters=num_iters,
      solver=solver,
      grad=grad,
      lse_mode=lse_mode,
    )
    return r.cost, r.marginal_error, r.log_domain

  cost_ck, err_ck, log_ck = jax.lax.map(per_chunk, (ia_ck, ib_ck))
  return SetOTResult(
    cost=cost_ck.reshape(-1)[:k],
    marginal_error=err_ck.reshape(-1)[:k],
    log_domain=log_ck.reshape(-1)[:k],
  )


@functools.partial(
  jax.jit,
  static_argnames=("chunk_size", "num_iters", "solver", "grad", "cost", "lse_mode"),
)
def pairwise_set_ot(
  x_and: jax.Array,
  wx_an: jax.Array,
  y_bmd: jax.Array,
  wy_bm: jax.Array,
  *,
  chunk_size: int,
  epsilon: float,
  num_iters: int,
  solver: Solver,
  grad: Literal["stop_gradient", "unroll"],
  cost: SetCost = "cosine",
  lse_mode: bool = True,
) -> SetOTResult:
  """OT between every first set and every second set (OTCCLIP's N² matching, COLA's classes).

  Costs of ``r = max(1, chunk_size // B)`` first sets against all B second sets are built with
  one matrix product per ``lax.map`` step, then the r·B problems are solved under ``vmap``.

  Args:
    x_and: [A, n, d] first sets (padded), e.g. patch tokens of A images.
    wx_an: [A, n] weights (0 on padding).
    y_bmd: [B, m, d] second sets, e.g. word tokens of B captions.
    wy_bm: [B, m] weights (0 on padding tokens).
    chunk_size: pairs per ``lax.map`` step (memory ∝ chunk_size·n·m; at least B).
    epsilon, num_iters, solver, grad, cost, lse_mode: as in :func:`set_ot`.

  Returns:
    :class:`SetOTResult` with [A, B] ``cost``, ``marginal_error`` and ``log_domain``.
  """
  _check_sets(x_and, wx_an, y_bmd, wy_bm, chunk_size)
  if cost not in _COSTS:
    raise ValueError(f"cost must be one of {sorted(_COSTS)}, got {cost!r}")
  a, n, d = x_and.shape
  b, m, _ = y_bmd.shape
  rows = max(1, min(a, chunk_size // b))
  n_chunks = -(-a // rows)
  pad = n_chunks * rows - a
  x_crnd = jnp.pad(solve_dtype(x_and), ((0, pad), (0, 0), (0, 0))).reshape(n_chunks, rows, n, d)
  wx_crn = jnp.pad(solve_dtype(wx_an), ((0, pad), (0, 0))).reshape(n_chunks, rows, n)
  cost_fn = _COSTS[cost]

  def per_chunk(args):
    x_rnd, w_rn = args
    # One [r·n, d] x [d, B·m] product for the whole chunk.
    cost_rnbm = cost_fn(x_rnd.reshape(rows * n, d), y_bmd.reshape(b * m, d)).reshape(rows, n, b, m)
    cost_knm = cost_rnbm.transpose(0, 2, 1, 3).reshape(rows * b, n, m)
    r = fixed_sinkhorn_batch(
      cost_knm,
      jnp.repeat(w_rn, b, axis=0),
      jnp.tile(wy_bm, (rows, 1)),
      epsilon=epsilon,
      num_iters=num_iters,
      solver=solver,
      grad=grad,
      lse_mode=lse_mode,
    )
    return r.cost.reshape(rows, b), r.marginal_error.reshape(rows, b), r.log_domain.reshape(rows, b)

  cost_crb, err_crb, log_crb = jax.lax.map(per_chunk, (x_crnd, wx_crn))
  return SetOTResult(
    cost=cost_crb.reshape(-1, b)[:a],
    marginal_error=err_crb.reshape(-1, b)[:a],
    log_domain=log_crb.reshape(-1, b)[:a],
  )
