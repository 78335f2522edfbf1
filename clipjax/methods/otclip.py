"""OT-CLIP (Shi, Fan, Yan, ICML 2024): CLIP as inverse OT, the OT loss family, OT inference.

Training (METHODS.md §1.2). For a batch of N pairs build the cost ``C_ij = 1 - cos(img_i, txt_j)``,
solve an OT variant for a coupling ``P(θ)`` of total mass 1 and minimise the KL divergence from the
ground-truth coupling ``P̃ = I/N`` to it::

  KL(P̃ ‖ P) = -(1/N) Σ_i log(N P_ii) + (Σ P - 1)

(the generalised KL; the mass term is 0 for every balanced-row variant and only acts when both
marginals are relaxed). The image→text direction solves on ``C`` (rows = images), text→image on
``Cᵀ``; the loss averages the two. With a single row normalisation the plan is
``softmax_rows(-C/ε)/N`` and the loss is exactly image→text InfoNCE at temperature ε; with
``ε = 1/logit_scale`` both directions give CLIP's symmetric InfoNCE (tested). That single row
normalisation is ``uot`` with ``rho_b = 0`` and one iteration, *not* ``entropic`` with K = 1: a
Sinkhorn iteration is a column update followed by a row update, whose loss differs from InfoNCE
by several per cent (1-9 % on random batches of 64-256 pairs). Variants only change the feasible
set:

* ``entropic``: balanced Sinkhorn (``clipjax.ot.plans.sinkhorn``),
* ``dbot``: column sums boxed in ``[(1-δ)/N, (1+δ)/N]`` (``plans.dbot``),
* ``uot``: KL-relaxed marginals with weights ρ_a, ρ_b (``plans.sinkhorn`` with τ = ρ/(ρ+ε)),
* ``fgw``: fused Gromov-Wasserstein with the square loss on in-batch cosine distances
  ``Dx = 1 - X Xᵀ``, ``Dy = 1 - Y Yᵀ``: ``min <C, P> + (α/2) GW(P) + ε KL(P | abᵀ)`` over the
  balanced couplings, ``GW(P) = ½ Σ_ijkl (Dx_ik - Dy_jl)² P_ij P_kl``. Linearised: ``T`` outer
  steps, each a Sinkhorn solve on ``C + α G(P_{t-1})`` with ``G = ∇GW/2`` (:func:`gw_gradient`).
  With fixed marginals ``(α/2) GW(P) = -(α/2) <Σx P Σy, P> + const`` (``Σ = 1 - D``, the
  similarity form of the paper and its code), so the converged plans are the same; α = 0 is
  entropic OT exactly.
* ``ufgw``: unbalanced FGW, ``min <C, P> + (α/2) GW(P) + ε Σ P (log P - 1) + ρ_a KL(P1 | a)
  + ρ_b KL(Pᵀ1 | b)`` (generalised KLs; ott's unbalanced entropy convention, as in ``uot``),
  solved by the same linearisation with unbalanced Sinkhorn; its fixed points are stationary
  points of this objective and ρ → ∞ gives ``fgw`` (tested). The similarity form is *not* usable
  here: with free marginals ``-<Σx P Σy, P>`` is ``-m²`` times a positive number for a plan of
  mass m, unbounded below, and its linearised steps blow up to NaN; ``GW(P) >= 0`` and ``G >= 0``
  entry-wise, so the mass stays bounded for any α (tested up to α = 10).

Everything is solved on ``C/ε`` with unit entropic weight (identical plans, and ε = 1/logit_scale
stays differentiable). Iterations are unrolled (``grad="unroll"``, the paper's K iterations) or,
for Sinkhorn variants, implicitly differentiated (``grad="implicit"``).

Inference (METHODS.md §1.4), pure functions of image embeddings ``[n, d]`` and class text
embeddings ``[C, d]``, transductive over the n test images: :func:`fgw_zeroshot` (semi-relaxed
FGW, the paper's rule), :func:`fgw_zeroshot_ott` (balanced entropic FGW through ott, reference),
:func:`prior_sinkhorn` (long-tailed, column marginal = label prior) and
:func:`partial_ot_selective` (selective classification by partial OT; its risk–coverage numbers
come from ``clipjax.evaluation.metrics.selective_risk``). :func:`score_fn` adapts
them to ``clipjax.evaluation.zeroshot``'s ``score_fn(zimg_bd, classifier)`` hook.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clipjax import losses
from clipjax.methods.base import Embeddings, Method
from clipjax.ot import gromov, plans

__all__ = [
  "LOSSES",
  "METHODS",
  "fgw_zeroshot",
  "fgw_zeroshot_ott",
  "gw_gradient",
  "kl_to_identity",
  "ot_clip_loss",
  "ot_plan",
  "partial_ot_selective",
  "prior_sinkhorn",
  "score_fn",
]

LOSSES = ("entropic", "dbot", "uot", "fgw", "ufgw")
DIRECTIONS = ("i2t", "t2i", "both")
_TINY = 1e-30


def _tau(rho: float) -> float:
  """τ for a marginal-KL weight ρ on the ε-scaled problem (ε = 1): ρ/(ρ+1); inf → 1, 0 → 0."""
  if rho < 0:
    raise ValueError(f"marginal weight rho must be >= 0 (inf = balanced), got {rho}")
  return 1.0 if math.isinf(rho) else float(rho) / (float(rho) + 1.0)


def _plan_entropy(plan_nm: jax.Array) -> jax.Array:
  p = plan_nm / jnp.maximum(jnp.sum(plan_nm), _TINY)
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, _TINY)), 0.0))


def gw_gradient(dist_x_nn: jax.Array, dist_y_mm: jax.Array, plan_nm: jax.Array) -> jax.Array:
  """Half the gradient of ``GW(P) = ½ Σ_ijkl (Dx_ik - Dy_jl)² P_ij P_kl`` at ``P``.

  ``½ Σ_kl (Dx_ik - Dy_jl)² P_kl = ½ (Dx² p)_i + ½ (Dy² q)_j - (Dx P Dy)_ij`` with ``p = P1``,
  ``q = Pᵀ1`` (``Dx²`` entry-wise): non-negative for any non-negative plan of any mass.

  Args:
    dist_x_nn: [n, n] symmetric row-side distances.
    dist_y_mm: [m, m] symmetric column-side distances.
    plan_nm: [n, m] non-negative plan.

  Returns:
    [n, m] linearised structure cost.
  """
  p_n, q_m = jnp.sum(plan_nm, axis=1), jnp.sum(plan_nm, axis=0)
  quad_n = 0.5 * jnp.einsum("ik,k->i", dist_x_nn**2, p_n)
  quad_m = 0.5 * jnp.einsum("jl,l->j", dist_y_mm**2, q_m)
  cross_nm = jnp.einsum("ik,kl,lj->ij", dist_x_nn, plan_nm, dist_y_mm)
  return quad_n[:, None] + quad_m[None, :] - cross_nm


def ot_plan(
  cost_nn: jax.Array,
  sim_x_nn: jax.Array | None,
  sim_y_nn: jax.Array | None,
  *,
  kind: str,
  num_iters: int,
  grad: str = "unroll",
  threshold: float = 1e-3,
  delta: float = 0.5,
  rho_a: float = float("inf"),
  rho_b: float = float("inf"),
  alpha: float | jax.Array = 0.0,
  outer_iters: int = 1,
) -> plans.OTResult:
  """OT plan of one direction on an ε-scaled cost (entropic weight 1, uniform marginals 1/N).

  Args:
    cost_nn: [N, N] cost already divided by ε (rows = query side).
    sim_x_nn: [N, N] row-side cosine similarities (FGW/UFGW only; distances are ``1 - sim``).
    sim_y_nn: [N, N] column-side cosine similarities (FGW/UFGW only).
    kind: one of `LOSSES`.
    num_iters: Sinkhorn iterations (one = column then row update); exact count when unrolled.
      One iteration is not InfoNCE: that is ``kind="uot"`` with ``rho_b=0`` (a row softmax).
    grad: "unroll" or "implicit" (Sinkhorn variants) — the gradient policy of `plans`.
    threshold: stopping threshold for grad="implicit" (L1 marginal error).
    delta: DBOT relative box half-width.
    rho_a, rho_b: UOT/UFGW marginal KL weights in units of ε (inf = hard constraint, 0 = free).
    alpha: (U)FGW structural weight on this ε-scaled problem, i.e. α/ε (may be a traced array).
    outer_iters: (U)FGW linearisation steps (the first solves without the structure term).

  Returns:
    `plans.OTResult` of the final solve.
  """
  if kind not in LOSSES:
    raise ValueError(f"kind must be one of {LOSSES}, got {kind!r}")
  if grad not in ("unroll", "implicit"):
    raise ValueError(f"grad must be 'unroll' or 'implicit', got {grad!r}")
  if kind == "dbot":
    if grad != "unroll":
      raise ValueError("the dbot loss only supports grad='unroll'")
    return plans.dbot(
      cost_nn,
      delta=delta,
      epsilon=1.0,
      grad="unroll",
      max_iterations=num_iters,
      threshold=threshold,
    )
  balanced = kind in ("entropic", "fgw")
  tau_a, tau_b = (1.0, 1.0) if balanced else (_tau(rho_a), _tau(rho_b))

  def solve(c_nn):
    return plans.sinkhorn(
      c_nn,
      epsilon=1.0,
      grad=grad,
      max_iterations=num_iters,
      threshold=threshold,
      tau_a=tau_a,
      tau_b=tau_b,
    )

  if kind in ("entropic", "uot"):
    return solve(cost_nn)
  if sim_x_nn is None or sim_y_nn is None:
    raise ValueError(f"kind={kind!r} needs sim_x_nn and sim_y_nn")
  if outer_iters < 1:
    raise ValueError(f"outer_iters must be >= 1, got {outer_iters}")
  dist_x_nn, dist_y_nn = 1.0 - sim_x_nn, 1.0 - sim_y_nn
  out = solve(cost_nn)
  for _ in range(outer_iters - 1):
    out = solve(cost_nn + alpha * gw_gradient(dist_x_nn, dist_y_nn, out.plan))
  return out


def kl_to_identity(plan_nn: jax.Array) -> jax.Array:
  """Generalised KL(I/N ‖ P) = -(1/N) Σ log(N P_ii) + ΣP - 1 (0 iff P = I/N)."""
  n = plan_nn.shape[0]
  diag = jnp.diagonal(plan_nn)
  return -jnp.mean(jnp.log(jnp.maximum(n * diag, _TINY))) + jnp.sum(plan_nn) - 1.0


def ot_clip_loss(
  zimg_bd: jax.Array,
  ztxt_bd: jax.Array,
  epsilon: jax.Array | float,
  *,
  kind: str,
  direction: str = "both",
  alpha: float = 0.0,
  **plan_kwargs: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """OT-CLIP loss: KL from the identity coupling to the model's OT plan.

  Args:
    zimg_bd: [N, d] L2-normalised image embeddings.
    ztxt_bd: [N, d] L2-normalised text embeddings (row i pairs with image i).
    epsilon: entropic weight / temperature (a float, or 1/logit_scale as an array).
    kind: one of `LOSSES`.
    direction: "i2t" (rows = images), "t2i" (rows = texts) or "both" (mean of the two).
    alpha: (U)FGW structural weight α (on the cost scale; passed to :func:`ot_plan` as α/ε).
    **plan_kwargs: forwarded to :func:`ot_plan`.

  Returns:
    `(loss, aux)`; aux holds per-direction loss and diagnostics (converged, n_iters,
    marginal_error, plan entropy, diagonal mass, in-batch top-1 of the plan).
  """
  if direction not in DIRECTIONS:
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
  if zimg_bd.ndim != 2 or zimg_bd.shape != ztxt_bd.shape:
    raise ValueError(
      f"zimg_bd and ztxt_bd must both be [N, d], got {zimg_bd.shape}, {ztxt_bd.shape}"
    )
  zi = zimg_bd.astype(jnp.float32)
  zt = ztxt_bd.astype(jnp.float32)
  inv_eps = 1.0 / jnp.asarray(epsilon, jnp.float32)
  sim_nn = jnp.einsum("id,jd->ij", zi, zt)
  cost_nn = (1.0 - sim_nn) * inv_eps
  sx_nn = sy_nn = None
  if kind in ("fgw", "ufgw"):
    sx_nn = jnp.einsum("id,jd->ij", zi, zi)
    sy_nn = jnp.einsum("id,jd->ij", zt, zt)
  dirs = ("i2t", "t2i") if direction == "both" else (direction,)
  total, aux = 0.0, {}
  labels = jnp.arange(cost_nn.shape[0])
  for d in dirs:
    c_nn = cost_nn if d == "i2t" else cost_nn.T
    sa, sb = (sx_nn, sy_nn) if d == "i2t" else (sy_nn, sx_nn)
    # The structural term is divided by ε like the cost.
    out = ot_plan(c_nn, sa, sb, kind=kind, alpha=alpha * inv_eps, **plan_kwargs)
    value = kl_to_identity(out.plan)
    total = total + value / len(dirs)
    aux.update(
      {
        f"loss_{d}": value,
        f"ot_{d}/converged": out.converged.astype(jnp.float32),
        f"ot_{d}/n_iters": out.n_iters,
        f"ot_{d}/marginal_error": out.marginal_error,
        f"ot_{d}/entropy": _plan_entropy(out.plan),
        f"ot_{d}/diag_mass": jnp.sum(jnp.diagonal(out.plan)),
        f"ot_{d}/mass": out.mass,
        f"ot_{d}/batch_acc": jnp.mean(jnp.argmax(out.plan, axis=1) == labels),
      }
    )
  return total, aux


def _otclip(
  *,
  loss: str,
  temperature: str,
  epsilon: float,
  num_iters: int,
  grad: str,
  direction: str,
  ot_weight: float,
  infonce_weight: float,
  threshold: float = 1e-3,
  delta: float = 0.5,
  rho_a: float = float("inf"),
  rho_b: float = float("inf"),
  alpha: float = 0.0,
  outer_iters: int = 1,
) -> Method:
  """Builds an OT-CLIP training method.

  Args:
    loss: one of `LOSSES`.
    temperature: "fixed" (ε = `epsilon`) or "logit_scale" (ε = 1/logit_scale, learned).
    epsilon: the fixed ε (paper code: 0.01); ignored with temperature="logit_scale".
    num_iters: Sinkhorn iterations K (paper code: 5). One iteration is a column update
      followed by a row update, so ``loss="entropic"`` with K = 1 is *not* InfoNCE; the
      one-row-normalisation limit (exactly InfoNCE at temperature ε) is ``loss="uot"`` with
      ``rho_b=0``, K = 1.
    grad: "unroll" or "implicit".
    direction: "i2t", "t2i" or "both".
    ot_weight: weight of the OT loss.
    infonce_weight: weight of CLIP's symmetric InfoNCE added to it (the authors' recipe sums).
    alpha: (U)FGW structural weight α on the cost scale (the problem solved is
      ``<C, P> + (α/2) GW(P) + ε KL(P | abᵀ)`` [+ marginal KL terms], see the module docstring).
    threshold, delta, rho_a, rho_b, outer_iters: see :func:`ot_plan`.
  """
  if loss not in LOSSES:
    raise ValueError(f"method kwarg loss must be one of {LOSSES}, got {loss!r}")
  if temperature not in ("fixed", "logit_scale"):
    raise ValueError(f"temperature must be 'fixed' or 'logit_scale', got {temperature!r}")
  if temperature == "fixed" and not epsilon > 0:
    raise ValueError(f"epsilon must be > 0, got {epsilon}")
  if num_iters < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}")
  plan_kwargs = dict(
    num_iters=int(num_iters),
    grad=grad,
    threshold=float(threshold),
    delta=float(delta),
    rho_a=float(rho_a),
    rho_b=float(rho_b),
    alpha=float(alpha),
    outer_iters=int(outer_iters),
  )

  def loss_fn(emb: Embeddings, mstate, rng):
    del rng
    eps = 1.0 / emb.logit_scale if temperature == "logit_scale" else float(epsilon)
    ot_value, aux = ot_clip_loss(
      emb.zimg, emb.ztxt, eps, kind=loss, direction=direction, **plan_kwargs
    )
    value = ot_weight * ot_value
    aux["loss_ot"] = ot_value
    aux["ot_epsilon"] = jnp.asarray(eps, jnp.float32)
    if infonce_weight:
      nce, nce_aux = losses.clip_loss(emb.zimg, emb.ztxt, emb.logit_scale)
      value = value + infonce_weight * nce
      aux["loss_infonce"] = nce
      aux["batch_acc_i2t"] = nce_aux["batch_acc_i2t"]
    return value, aux, mstate

  return Method(loss=loss_fn, init=lambda _: {})


METHODS: dict[str, Callable[..., Method]] = {"otclip": _otclip}


# --- inference --------------------------------------------------------------------------------


def _check_emb(zimg_nd, ztxt_cd) -> tuple[jax.Array, jax.Array]:
  zimg_nd = jnp.asarray(zimg_nd, jnp.float32)
  ztxt_cd = jnp.asarray(ztxt_cd, jnp.float32)
  if zimg_nd.ndim != 2 or ztxt_cd.ndim != 2 or zimg_nd.shape[1] != ztxt_cd.shape[1]:
    raise ValueError(
      f"need zimg_nd [n, d] and ztxt_cd [C, d] with the same d, got {zimg_nd.shape}, "
      f"{ztxt_cd.shape}"
    )
  return zimg_nd, ztxt_cd


def fgw_zeroshot(
  zimg_nd, ztxt_cd, *, alpha1: float, alpha2: float, epsilon: float, num_iters: int
) -> jax.Array:
  """Transductive FGW zero-shot scores (the paper's ``fgwi_softmax`` rule).

  ``C = 1 - X Tᵀ``, ``Σ1 = X Xᵀ``, ``Σ2 = T Tᵀ``; ``num_iters`` times ``C ← C - α1α2 Σ1 P Σ2``
  with ``P = softmax_rows(-C/ε)`` (`plans.fgw_semirelaxed_softmax`).

  Returns:
    [n, C] row-stochastic plan; the prediction is its row argmax (num_iters=0: plain zero-shot).
  """
  x, t = _check_emb(zimg_nd, ztxt_cd)
  return plans.fgw_semirelaxed_softmax(
    1.0 - x @ t.T,
    x @ x.T,
    t @ t.T,
    alpha1=alpha1,
    alpha2=alpha2,
    epsilon=epsilon,
    num_iters=num_iters,
  )


def fgw_zeroshot_ott(
  zimg_nd,
  ztxt_cd,
  prior_c=None,
  *,
  fused_penalty: float,
  epsilon: float,
  max_iterations: int = 20,
  sinkhorn_max_iterations: int = 500,
) -> jax.Array:
  """Reference: balanced entropic fused GW through ott (rows 1/n, columns `prior_c`).

  Structure costs are the cosine distances ``1 - X Xᵀ`` and ``1 - T Tᵀ``; the cross cost is
  ``1 - X Tᵀ`` with weight `fused_penalty` (ott's convention, `clipjax.ot.gromov`).

  Returns:
    [n, C] plan scaled by n (rows sum to ~1).
  """
  x, t = _check_emb(zimg_nd, ztxt_cd)
  n, c = x.shape[0], t.shape[0]
  b_c = jnp.full((c,), 1.0 / c) if prior_c is None else _check_prior(prior_c, c)
  out = gromov.gromov_wasserstein(
    1.0 - x @ x.T,
    1.0 - t @ t.T,
    None,
    b_c,
    cost_xy_nm=1.0 - x @ t.T,
    fused_penalty=fused_penalty,
    epsilon=epsilon,
    max_iterations=max_iterations,
    threshold=1e-4,
    sinkhorn_max_iterations=sinkhorn_max_iterations,
    sinkhorn_threshold=1e-4,
  )
  return n * out.plan


def _check_prior(prior_c, num_classes: int) -> jax.Array:
  prior_c = jnp.asarray(prior_c, jnp.float32)
  if prior_c.shape != (num_classes,):
    raise ValueError(f"prior_c must have shape ({num_classes},), got {prior_c.shape}")
  if not bool(jnp.all(prior_c >= 0)) or not float(jnp.sum(prior_c)) > 0:
    raise ValueError("prior_c must be non-negative with a positive sum")
  return prior_c / jnp.sum(prior_c)


def prior_sinkhorn(
  zimg_nd,
  ztxt_cd,
  prior_c=None,
  *,
  epsilon: float,
  max_iterations: int = 1000,
  threshold: float = 1e-4,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Long-tailed zero-shot: balanced Sinkhorn with row marginal 1/n and column marginal π.

  Args:
    zimg_nd: [n, d] L2-normalised test image embeddings.
    ztxt_cd: [C, d] L2-normalised class embeddings.
    prior_c: [C] label prior π (normalised here); None = uniform (balanced Sinkhorn).
    epsilon: entropic ε on the cosine cost ``1 - X Tᵀ`` (CLIP's temperature ~ 0.01).
    max_iterations, threshold: Sinkhorn stopping rule.

  Returns:
    `(scores_nc, diagnostics)`: n·P (rows sum to 1; predictions = row argmax) and the solver's
    diagnostics.
  """
  x, t = _check_emb(zimg_nd, ztxt_cd)
  n, c = x.shape[0], t.shape[0]
  b_c = None if prior_c is None else _check_prior(prior_c, c)
  # Kernel mode (the fast forward solver); it hands over to the log domain by itself where
  # (max C - min C)/ε is out of its float range (e.g. ε = 0.01 on a wide cosine spread).
  out = plans.kernel_sinkhorn(
    1.0 - x @ t.T,
    None,
    b_c,
    epsilon=epsilon,
    max_iterations=max_iterations,
    threshold=threshold,
  )
  return n * out.plan, out.diagnostics("ot")


def partial_ot_selective(
  zimg_nd,
  ztxt_cd,
  *,
  coverage: float,
  epsilon: float,
  prior_c=None,
  max_iterations: int = 2000,
  threshold: float = 1e-4,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Selective classification by entropic partial OT: transport only a mass fraction s.

  Rows have capacity 1/n, classes capacity π_c (uniform if `prior_c` is None), and total mass
  ``s = coverage`` is moved; the ⌈s·n⌉ images that send the most mass are selected.

  Returns:
    `(pred_n, confidence_n, selected_n)`: argmax of each plan row, the row's transported mass
    times n (in [0, 1]) and a bool mask of the selected images.
  """
  x, t = _check_emb(zimg_nd, ztxt_cd)
  n, c = x.shape[0], t.shape[0]
  if not 0.0 < coverage <= 1.0:
    raise ValueError(f"coverage must be in (0, 1], got {coverage}")
  b_c = None if prior_c is None else _check_prior(prior_c, c)
  out = plans.partial_ot(
    1.0 - x @ t.T,
    None,
    b_c,
    mass=coverage * (1.0 - 1e-6),
    epsilon=epsilon,
    grad="stop_gradient",
    max_iterations=max_iterations,
    threshold=threshold,
  )
  conf_n = n * jnp.sum(out.plan, axis=1)
  k = max(1, math.ceil(coverage * n))
  selected = jnp.zeros((n,), bool).at[jnp.argsort(-conf_n)[:k]].set(True)
  return jnp.argmax(out.plan, axis=1), conf_n, selected


def score_fn(rule: str, **kwargs: Any) -> Callable[[Any, Any], np.ndarray]:
  """Adapter to `clipjax.evaluation.zeroshot`'s ``score_fn(zimg_bd, classifier) -> scores_bc``.

  Args:
    rule: "fgw" (:func:`fgw_zeroshot`), "fgw_ott" (:func:`fgw_zeroshot_ott`), "prior"
      (:func:`prior_sinkhorn`; pass `prior_c`) or "argmax" (cosine similarities).
    **kwargs: that function's keyword arguments.

  Returns:
    A callable using ``classifier.weights_cd`` as the class embeddings.
  """
  rules = {
    "argmax": lambda z, t: z @ t.T,
    "fgw": lambda z, t: fgw_zeroshot(z, t, **kwargs),
    "fgw_ott": lambda z, t: fgw_zeroshot_ott(z, t, **kwargs),
    "prior": lambda z, t: prior_sinkhorn(z, t, **kwargs)[0],
  }
  if rule not in rules:
    raise ValueError(f"rule must be one of {sorted(rules)}, got {rule!r}")
  fn = rules[rule]
  return lambda zimg_bd, classifier: np.asarray(
    fn(jnp.asarray(zimg_bd, jnp.float32), jnp.asarray(classifier.weights_cd, jnp.float32))
  )
