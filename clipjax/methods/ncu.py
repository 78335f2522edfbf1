"""NCU: Noisy Correspondence Unlearning (Han, Wang, Ye, Liu; ICCV 2025), and the GA baseline.

Two stages run by one trainer (`config.stages`), from a pre-trained CLIP:

* `ncu_hn` (stage 1, "hardest negative semantics", Sec. 4.2): m shared learnable prompt vectors
  (`params["method"]["prompts"]`, [m, w]) are spliced after the start token of every caption;
  the text tower then gives the negative text t_i^Neg. Loss on the retained set D_RT only:
  L_HN = λ (L_sep + L_rel) + L_itm (Eq. 3-6). The config freezes the vision tower.
* `ncu_unlearn` (stage 2, Sec. 4.3): extended cost C̄ = 1 - [S | diag(V T^Negᵀ)] ∈ R^{N×(N+1)},
  mask M (Eq. 8), masked entropic OT (Eq. 9, `clipjax.ot.plans.kernel_sinkhorn`, which hands over
  to ott's log-domain solver where its kernel would underflow; no gradient through the plan),
  T = γ Γ̂* + (1-γ) I (Eq. 10), L_UL = L_otr (Eq. 11) + L_sep (Eq. 12). The config freezes the
  prompts.
* `ncu_ga`: the gradient-ascent baseline of Table 4: -L_CLIP on D_FG plus label-smoothed L_CLIP
  on D_RT, with the same forget-set selection.

The forget set D_FG (Sec. 4.1) is recomputed every step over the global batch: the P·N pairs
with the lowest clean confidence ω_i (Eq. 2), computed without gradient; P·N is rounded to the
nearest integer (`forget_count="round"`, the count closest to the paper's "lowest P %") or down
(`"floor"`, the code's `int(P·N)`).

Paper (default) vs. official code (`hhc1997/NCU`, `src/ul_clip.py`), each a kwarg:

* `confidence`: "both" — Eq. 2 averages the image→text and text→image softmax diagonals
  (paper); "i2t" — image→text only (code).
* `relation` (L_rel): "paper" — Eq. 4, Σ_ij (<t_i, t_j^Neg> - <t_j, t_i^Neg>)² / Ñ;
  "code" — Σ_ij (<t_i, t_j> - <t_i^Neg, t_j^Neg>)² / Ñ (Gram matrices of texts and negatives).
  Both vanish when the negatives are a symmetric isometry (a reflection) of the texts.
* `targets`: "paper" — one plan Γ̂*, rescaled by N so that its rows sum to 1 like I's, T of
  Eq. 10, then T^{v2t} = row-normalised T and T^{t2v} = column-normalised T (every target row
  sums to 1), L_otr = mean_i KL(T^{v2t}_i || P^{v2t}_i) + mean_j KL(T^{t2v}_j || P^{t2v}_j) (Eq. 11
  is a sum of the two directions). "code" — γ·(row-normalised plan) + (1-γ)·I for v2t and
  γ·(column-normalised plan)ᵀ + (1-γ)·Iᵀ for t2v, *not* renormalised (the negative text's t2v
  row sums to γ + (1-γ)|D_FG| and a forgotten caption's to γ), and L_otr = ½ (v2t + t2v), as
  PyTorch's `KLDivLoss(batchmean)`. The code solves a second, transposed Sinkhorn problem for
  t2v; its solution is the transpose of the first plan, so one plan is solved here.
* `normalize_cost`: False — C̄ = 1 - cos (paper); True — divided by its maximum (code).
* `sep_on` (L_sep in stage 2): "retained" — Eq. 3 is defined over D_RT (paper); "all" (code).
* Trainable parameters and optimizer state are a config matter (`configs/ncu.py`): stage 1
  trains the prompts and the text tower with the visual encoder frozen (paper; the first term of
  Eq. 5 needs the text tower), the code also the image projection and `logit_scale`; stage 2
  freezes the prompts (paper), the code also the text positional embedding and text blocks 0-4
  of 12.
* Eq. 5 as printed sums log σ(·) (a log-likelihood); the loss here is its negative, -Σ log σ(·),
  which is what the code minimises.

`unlearn` selects the Table 5 ablations: "both" (NCU), "false_negatives" (V3: no forget set in the
OT problem — the negative column gets no mass — soft OT targets for every row) and
"false_positives" (V4: forget rows get γ Γ̂* + (1-γ) I, retained rows the hard I).

Logged (aux): each loss term; `forget/precision`, `forget/recall` against `batch["is_noisy"]`
when the batch carries it, and `forget/noisy_rate` (the precision of a random choice); plan
diagnostics `ot/*`, `plan/masked_mass` (exactly 0), `plan/neg_mass_forget` (share of forget
rows' mass on their negative), `plan/diag_mass_retained`; `sim/text_neg` = mean <t_i, t_i^Neg>.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from clipjax.methods.base import Embeddings, Method, model_params
from clipjax.ot import plans

__all__ = [
  "METHODS",
  "extended_similarity",
  "forget_metrics",
  "ga_loss",
  "hn_loss",
  "itm_loss",
  "ncu_ga",
  "ncu_hn",
  "ncu_unlearn",
  "num_forget",
  "otr_loss",
  "relation_loss",
  "select_forget",
  "sep_loss",
  "unlearn_mask",
  "unlearn_targets",
]

_CONFIDENCE = ("both", "i2t")
_RELATION = ("paper", "code")
_TARGETS = ("paper", "code")
_SEP_ON = ("retained", "all")
_UNLEARN = ("both", "false_negatives", "false_positives")
_FORGET_COUNT = ("round", "floor")


def _check(name: str, value: Any, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_fraction(forget_fraction: float) -> None:
  if not 0.0 <= forget_fraction < 1.0:
    raise ValueError(f"forget_fraction must be in [0, 1), got {forget_fraction}")


def num_forget(forget_fraction: float, n: int, rule: str) -> int:
  """|D_FG| for a batch of n: P·n rounded to nearest ("round", paper) or down ("floor", code)."""
  _check("forget_count", rule, _FORGET_COUNT)
  k = forget_fraction * n
  return int(round(k)) if rule == "round" else int(k)


def _f32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)


def _sim(x_nd: jax.Array, y_md: jax.Array) -> jax.Array:
  return jnp.einsum("id,jd->ij", _f32(x_nd), _f32(y_md))


# --- forget-set selection (Sec. 4.1) -----------------------------------------------------------


def select_forget(
  zimg_nd: jax.Array,
  ztxt_nd: jax.Array,
  logit_scale: jax.Array,
  num_forget: int,
  *,
  confidence: str,
) -> tuple[jax.Array, jax.Array]:
  """The `num_forget` pairs of lowest clean confidence ω (Eq. 2), without gradient.

  Args:
    zimg_nd: [n, d] L2-normalised image embeddings.
    ztxt_nd: [n, d] L2-normalised text embeddings (row i pairs with image i).
    logit_scale: scalar 1/τ.
    num_forget: static number k of pairs to forget, 0 <= k < n.
    confidence: "both" (Eq. 2) or "i2t" (official code).

  Returns:
    `(forget_n, omega_n)`: [n] bool forget-set indicator and [n] confidences.
  """
  _check("confidence", confidence, _CONFIDENCE)
  n = zimg_nd.shape[0]
  if not 0 <= num_forget < n:
    raise ValueError(f"num_forget must be in [0, {n}), got {num_forget}")
  logits_nn = jax.lax.stop_gradient(logit_scale * _sim(zimg_nd, ztxt_nd))
  i2t_n = jnp.diagonal(jax.nn.softmax(logits_nn, axis=1))
  omega_n = i2t_n
  if confidence == "both":
    omega_n = 0.5 * (i2t_n + jnp.diagonal(jax.nn.softmax(logits_nn, axis=0)))
  if num_forget == 0:
    return jnp.zeros((n,), bool), omega_n
  _, idx_k = jax.lax.top_k(-omega_n, num_forget)
  forget_n = jnp.zeros((n,), bool).at[idx_k].set(True)
  return forget_n, omega_n


def forget_metrics(forget_n: jax.Array, batch: dict[str, jax.Array] | None) -> dict[str, jax.Array]:
  """Precision/recall of the forget set against `batch["is_noisy"]` (empty dict without it)."""
  if not batch or "is_noisy" not in batch:
    return {}
  noisy_n = batch["is_noisy"].astype(bool)
  hits = jnp.sum(forget_n & noisy_n).astype(jnp.float32)
  n_forget = jnp.sum(forget_n).astype(jnp.float32)
  n_noisy = jnp.sum(noisy_n).astype(jnp.float32)
  return {
    "forget/precision": jnp.where(n_forget > 0, hits / jnp.maximum(n_forget, 1.0), 0.0),
    "forget/recall": jnp.where(n_noisy > 0, hits / jnp.maximum(n_noisy, 1.0), 1.0),
    "forget/noisy_rate": n_noisy / forget_n.shape[0],
  }


# --- stage 1: hardest negative semantics (Sec. 4.2) ---------------------------------------------


def sep_loss(
  ztxt_nd: jax.Array, zneg_nd: jax.Array, weight_n: jax.Array, *, alpha: float, beta: float
) -> jax.Array:
  """Eq. 3: mean over weighted rows of [α - <t_i, t_i^Neg>]_+ + [<t_i, t_i^Neg> - β]_+.

  Args:
    ztxt_nd: [n, d] text embeddings.
    zneg_nd: [n, d] negative text embeddings.
    weight_n: [n] row weights (1 for D_RT rows); the sum is divided by their total.
    alpha: lower margin (α < β < 0 keeps the cosine in [α, β]).
    beta: upper margin.
  """
  cos_n = jnp.sum(_f32(ztxt_nd) * _f32(zneg_nd), axis=1)
  hinge_n = jax.nn.relu(alpha - cos_n) + jax.nn.relu(cos_n - beta)
  return jnp.sum(weight_n * hinge_n) / jnp.maximum(jnp.sum(weight_n), 1.0)


def relation_loss(
  ztxt_nd: jax.Array, zneg_nd: jax.Array, weight_n: jax.Array, *, relation: str
) -> jax.Array:
  """L_rel over the weighted rows (Eq. 4 for "paper", Gram-matrix form for "code").

  Args:
    ztxt_nd: [n, d] text embeddings.
    zneg_nd: [n, d] negative text embeddings.
    weight_n: [n] row weights (1 for D_RT rows); pairs get w_i w_j, the sum is divided by Σ w.
    relation: "paper" (Σ_ij (<t_i, t_j^Neg> - <t_j, t_i^Neg>)²) or "code"
      (Σ_ij (<t_i, t_j> - <t_i^Neg, t_j^Neg>)²).
  """
  _check("relation", relation, _RELATION)
  if relation == "paper":
    cross_nn = _sim(ztxt_nd, zneg_nd)
    diff_nn = cross_nn - cross_nn.T
  else:
    diff_nn = _sim(ztxt_nd, ztxt_nd) - _sim(zneg_nd, zneg_nd)
  w_nn = weight_n[:, None] * weight_n[None, :]
  return jnp.sum(w_nn * diff_nn**2) / jnp.maximum(jnp.sum(weight_n), 1.0)


def itm_loss(
  zimg_nd: jax.Array,
  ztxt_nd: jax.Array,
  zneg_nd: jax.Array,
  logit_scale: jax.Array,
  weight_n: jax.Array,
) -> jax.Array:
  """Eq. 5 as a loss: sigmoid matching of texts (m_ij) and of negatives (-m_ij) with images.

  -Σ_ij w_i w_j [log σ(m_ij <t_i, v_j>/τ) + log σ(-m_ij <t_i^Neg, v_j>/τ)] / Σ w, with
  m_ij = 1 if i = j else -1 (no bias, as in the paper and the code).
  """
  n = zimg_nd.shape[0]
  m_nn = 2.0 * jnp.eye(n) - 1.0
  pos_nn = logit_scale * _sim(ztxt_nd, zimg_nd)
  neg_nn = logit_scale * _sim(zneg_nd, zimg_nd)
  ll_nn = jax.nn.log_sigmoid(m_nn * pos_nn) + jax.nn.log_sigmoid(-m_nn * neg_nn)
  w_nn = weight_n[:, None] * weight_n[None, :]
  return -jnp.sum(w_nn * ll_nn) / jnp.maximum(jnp.sum(weight_n), 1.0)


def hn_loss(
  zimg_nd: jax.Array,
  ztxt_nd: jax.Array,
  zneg_nd: jax.Array,
  logit_scale: jax.Array,
  retained_n: jax.Array,
  *,
  lam: float,
  alpha: float,
  beta: float,
  relation: str,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 6: L_HN = λ (L_sep + L_rel) + L_itm on the retained rows; returns (loss, terms)."""
  w_n = retained_n.astype(jnp.float32)
  sep = sep_loss(ztxt_nd, zneg_nd, w_n, alpha=alpha, beta=beta)
  rel = relation_loss(ztxt_nd, zneg_nd, w_n, relation=relation)
  itm = itm_loss(zimg_nd, ztxt_nd, zneg_nd, logit_scale, w_n)
  return lam * (sep + rel) + itm, {"loss_sep": sep, "loss_rel": rel, "loss_itm": itm}


# --- stage 2: unlearning with masked OT (Sec. 4.3) ----------------------------------------------


def extended_similarity(zimg_nd: jax.Array, ztxt_nd: jax.Array, zneg_nd: jax.Array) -> jax.Array:
  """[n, n+1] cosines [S | d] with d_i = <v_i, t_i^Neg> (each image's own negative)."""
  d_n = jnp.sum(_f32(zimg_nd) * _f32(zneg_nd), axis=1)
  return jnp.concatenate([_sim(zimg_nd, ztxt_nd), d_n[:, None]], axis=1)


def unlearn_mask(forget_n: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eq. 8 mask and the identity-like I of Eq. 10, both [n, n+1].

  Returns:
    `(mask_nm, eye_nm)`: mask True = allowed; forget rows lose their own caption, retained rows
    the negative column. I has 1 at (i, i) for retained rows and at (i, n+1) for forget rows.
  """
  n = forget_n.shape[0]
  eye_nn = jnp.eye(n, dtype=bool)
  keep_n = ~forget_n
  mask_nm = jnp.concatenate([~(eye_nn & forget_n[:, None]), forget_n[:, None]], axis=1)
  eye_nm = jnp.concatenate([eye_nn & keep_n[:, None], forget_n[:, None]], axis=1)
  return mask_nm, eye_nm.astype(jnp.float32)


def _safe_normalize(x: jax.Array, axis: int) -> jax.Array:
  total = jnp.sum(x, axis=axis, keepdims=True)
  return jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), 0.0)


def unlearn_targets(
  plan_nm: jax.Array | None,
  eye_nm: jax.Array,
  gamma_n: jax.Array,
  *,
  targets: str,
) -> tuple[jax.Array, jax.Array]:
  """Targets (T^{v2t} [n, n+1], T^{t2v} [n+1, n]) from the plan and I (Eq. 10).

  Args:
    plan_nm: [n, n+1] plan with rows summing to 1/n, or None when every γ is 0.
    eye_nm: [n, n+1] identity-like I.
    gamma_n: [n] per-row γ (γ everywhere for NCU; 0 on retained rows for ablation V4).
    targets: "paper" (normalised T) or "code" (plan normalised, then mixed with I).
  """
  _check("targets", targets, _TARGETS)
  g_n1 = gamma_n[:, None]
  if plan_nm is None:
    plan_nm = jnp.zeros_like(eye_nm)
  if targets == "paper":
    t_nm = g_n1 * plan_nm * plan_nm.shape[0] + (1.0 - g_n1) * eye_nm
    return _safe_normalize(t_nm, 1), _safe_normalize(t_nm, 0).T
  v2t_nm = g_n1 * _safe_normalize(plan_nm, 1) + (1.0 - g_n1) * eye_nm
  t2v_nm = g_n1 * _safe_normalize(plan_nm, 0) + (1.0 - g_n1) * eye_nm
  return v2t_nm, t2v_nm.T


def _kl_rows(target_rk: jax.Array, logp_rk: jax.Array) -> jax.Array:
  """Σ_k t log t - t log p per row (0 log 0 = 0; rows of zeros give 0)."""
  safe_logp = jnp.where(target_rk > 0, logp_rk, 0.0)
  return jnp.sum(jax.scipy.special.xlogy(target_rk, target_rk) - target_rk * safe_logp, axis=1)


def otr_loss(
  logits_nm: jax.Array, v2t_nm: jax.Array, t2v_mn: jax.Array, *, targets: str
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 11: KL of the targets to the row-wise (v2t) and column-wise (t2v) softmax of P.

  Args:
    logits_nm: [n, n+1] scaled similarities s·[S | d].
    v2t_nm: [n, n+1] image→text targets.
    t2v_mn: [n+1, n] text→image targets.
    targets: "paper" (sum of the two means; t2v averaged over the text rows that carry target
      mass, all n+1 of them whenever D_FG is not empty) or "code" (½ of v2t/n + t2v/(n+1)).
  """
  _check("targets", targets, _TARGETS)
  kl_v2t_n = _kl_rows(v2t_nm, jax.nn.log_softmax(logits_nm, axis=1))
  kl_t2v_m = _kl_rows(t2v_mn, jax.nn.log_softmax(logits_nm, axis=0).T)
  v2t = jnp.mean(kl_v2t_n)
  if targets == "paper":
    rows = jnp.sum(jnp.sum(t2v_mn, axis=1) > 0).astype(jnp.float32)
    t2v = jnp.sum(kl_t2v_m) / jnp.maximum(rows, 1.0)
    total = v2t + t2v
  else:
    t2v = jnp.mean(kl_t2v_m)
    total = 0.5 * (v2t + t2v)
  return total, {"loss_v2t": v2t, "loss_t2v": t2v}


# --- methods -----------------------------------------------------------------------------------


def _prompt_params(num_prompts: int, prompt_scale: float):
  if not prompt_scale > 0:
    raise ValueError(f"prompt_scale must be > 0, got {prompt_scale}")

  def init_params(model: Any, rng: jax.Array) -> dict[str, jax.Array]:
    width = model.config.text.width
    if not 0 < num_prompts <= model.config.text.context_length - 2:
      raise ValueError(
        f"num_prompts={num_prompts} must be in [1, context_length - 2 = "
        f"{model.config.text.context_length - 2}]"
      )
    std = 0.02 / prompt_scale  # the spliced prompts prompt_scale * p start at N(0, 0.02²)
    return {"prompts": std * jax.random.normal(rng, (num_prompts, width), jnp.float32)}

  return init_params


def _make_forward(prompt_scale: float):
  def forward(model: Any, params: dict, batch: dict[str, jax.Array], rng: jax.Array):
    del rng
    return _forward(model, params, batch, prompt_scale)

  return forward


def _forward(model: Any, params: dict, batch: dict[str, jax.Array], prompt_scale: float):
  """Both towers plus the negative texts (prompt_scale * prompts spliced after the start token)."""
  if "method" not in params or "prompts" not in params["method"]:
    raise ValueError("NCU needs params['method']['prompts'] (created by Method.init_params).")
  mparams = model_params(params)
  img = model.encode_image(mparams, batch["image"])
  txt = model.encode_text(mparams, batch["ids"])
  neg = model.encode_text(mparams, batch["ids"], prompt_scale * params["method"]["prompts"])
  return Embeddings(
    zimg=img.emb,
    ztxt=txt.emb,
    logit_scale=model.logit_scale(mparams),
    logit_bias=mparams.get("logit_bias"),
    batch=batch,
    extras={"zneg": neg.emb},
  )


def _stateless(_: int) -> dict:
  return {}


def _zneg(emb: Embeddings) -> jax.Array:
  if not emb.extras or "zneg" not in emb.extras:
    raise ValueError("NCU losses need emb.extras['zneg'] (the method's own forward).")
  return emb.extras["zneg"]


def ncu_hn(
  *,
  num_prompts: int = 8,
  prompt_scale: float = 1.0,
  forget_fraction: float = 0.1,
  forget_count: str = "round",
  confidence: str = "both",
  lam: float = 10.0,
  alpha: float = -0.7,
  beta: float = -0.2,
  relation: str = "paper",
) -> Method:
  """Stage 1: learn the hardest-negative prompts (Eq. 6) on the retained set.

  Args:
    num_prompts: m shared prompt vectors (code: 8).
    prompt_scale: the parameters p are spliced as prompt_scale * p (initialised so that the
      spliced vectors are N(0, 0.02²) as in the code): with Adam this multiplies the prompts'
      learning rate by prompt_scale, the only way to give them their own rate (code: lr_HN 3e-4
      vs. 1e-4 for the text tower) under the trainer's single optimizer. 1 = no change.
    forget_fraction: P, share of the global batch put in D_FG (code script: 0.1).
    forget_count: "round" (paper) or "floor" (code's int(P·N)): how P·N becomes |D_FG|.
    confidence: "both" (Eq. 2) or "i2t" (code).
    lam: λ of Eq. 6 (code: 10).
    alpha: lower margin of <t_i, t_i^Neg> (code: -0.7).
    beta: upper margin (code: -0.2).
    relation: "paper" (Eq. 4) or "code" (Gram-matrix difference).
  """
  _check("confidence", confidence, _CONFIDENCE)
  _check("relation", relation, _RELATION)
  _check_fraction(forget_fraction)
  _check("forget_count", forget_count, _FORGET_COUNT)
  if not alpha < beta:
    raise ValueError(f"alpha ({alpha}) must be below beta ({beta})")

  def loss(emb: Embeddings, mstate, rng):
    del rng
    zneg = _zneg(emb)
    k = num_forget(forget_fraction, emb.zimg.shape[0], forget_count)
    forget_n, _ = select_forget(emb.zimg, emb.ztxt, emb.logit_scale, k, confidence=confidence)
    value, aux = hn_loss(
      emb.zimg,
      emb.ztxt,
      zneg,
      emb.logit_scale,
      ~forget_n,
      lam=lam,
      alpha=alpha,
      beta=beta,
      relation=relation,
    )
    aux["sim/text_neg"] = jnp.mean(jnp.sum(emb.ztxt * zneg, axis=1))
    aux.update(forget_metrics(forget_n, emb.batch))
    return value, aux, mstate

  return Method(
    loss=loss,
    init=_stateless,
    forward=_make_forward(prompt_scale),
    init_params=_prompt_params(num_prompts, prompt_scale),
  )


def ncu_unlearn(
  *,
  num_prompts: int = 8,
  prompt_scale: float = 1.0,
  forget_fraction: float = 0.1,
  forget_count: str = "round",
  confidence: str = "both",
  alpha: float = -0.7,
  beta: float = -0.2,
  gamma: float = 0.7,
  epsilon: float = 0.03,
  max_iterations: int = 100,
  threshold: float = 1e-3,
  normalize_cost: bool = False,
  targets: str = "paper",
  sep_on: str = "retained",
  unlearn: str = "both",
) -> Method:
  """Stage 2: unlearn with the hardest-negative-guided masked OT (Eq. 8-12).

  Args:
    num_prompts: m (must match stage 1; the prompts are frozen here by the config).
    prompt_scale: as in `ncu_hn` (must match stage 1).
    forget_fraction: P (code script: 0.1).
    forget_count: "round" (paper) or "floor" (code).
    confidence: "both" (Eq. 2) or "i2t" (code).
    alpha: lower margin of L_sep (Eq. 12 reuses Eq. 3).
    beta: upper margin.
    gamma: γ of Eq. 10 (code: 0.7).
    epsilon: Sinkhorn ε on the (optionally max-normalised) cost (code: 0.03).
    max_iterations: Sinkhorn iteration cap (code: 100).
    threshold: L1 marginal-error tolerance (ott's criterion). The code stops when the row
      potential changes by Σ_i |Δu_i| < 1e-4 (cost units) or after 100 iterations; since
      Σ_i |Δu_i| ≈ ε N |Γ1 - μ|_1, that rule is `threshold = 1e-4 / (ε N)` here (the code-mode
      value of `configs/ncu.py`, which reproduces the official plans' accuracy).
    normalize_cost: divide C̄ by its maximum (code) or not (paper).
    targets: "paper" or "code" (see the module docstring).
    sep_on: L_sep over "retained" rows (paper, Eq. 3) or "all" (code).
    unlearn: "both" (NCU), "false_negatives" (ablation V3) or "false_positives" (V4).
  """
  _check("confidence", confidence, _CONFIDENCE)
  _check("targets", targets, _TARGETS)
  _check("sep_on", sep_on, _SEP_ON)
  _check("unlearn", unlearn, _UNLEARN)
  _check_fraction(forget_fraction)
  _check("forget_count", forget_count, _FORGET_COUNT)
  if not 0.0 <= gamma <= 1.0:
    raise ValueError(f"gamma must be in [0, 1], got {gamma}")

  def loss(emb: Embeddings, mstate, rng):
    del rng
    zneg = _zneg(emb)
    n = emb.zimg.shape[0]
    k = num_forget(forget_fraction, n, forget_count)
    forget_n, _ = select_forget(emb.zimg, emb.ztxt, emb.logit_scale, k, confidence=confidence)
    aux = forget_metrics(forget_n, emb.batch)
    use_forget_n = forget_n if unlearn != "false_negatives" else jnp.zeros_like(forget_n)
    has_forget = k > 0 and unlearn != "false_negatives"
    sim_nm = extended_similarity(emb.zimg, emb.ztxt, zneg)
    mask_nm, eye_nm = unlearn_mask(use_forget_n)
    plan_nm = None
    if gamma > 0.0:
      cost_nm = jax.lax.stop_gradient(1.0 - sim_nm)
      if normalize_cost:
        cost_nm = cost_nm / jnp.max(cost_nm)
      a_n = jnp.full((n,), 1.0 / n)
      if has_forget:
        b_m = jnp.full((n + 1,), 1.0 / (n + 1))
      else:
        b_m = jnp.concatenate([jnp.full((n,), 1.0 / n), jnp.zeros((1,))])
      # Stop-gradient targets: the kernel-mode solver (log domain where out of its range).
      ot = plans.kernel_sinkhorn(
        cost_nm,
        a_n,
        b_m,
        epsilon=epsilon,
        max_iterations=max_iterations,
        threshold=threshold,
        mask_nm=mask_nm,
      )
      plan_nm = ot.plan
      aux.update(ot.diagnostics("ot"))
      rows_n = jnp.maximum(jnp.sum(plan_nm, axis=1), 1e-30)
      fg = use_forget_n.astype(jnp.float32)
      aux["plan/masked_mass"] = jnp.sum(jnp.where(mask_nm, 0.0, plan_nm))
      aux["plan/neg_mass_forget"] = jnp.sum(fg * plan_nm[:, n] / rows_n) / jnp.maximum(
        jnp.sum(fg), 1.0
      )
      aux["plan/diag_mass_retained"] = jnp.sum(
        (1.0 - fg) * jnp.diagonal(plan_nm[:, :n]) / rows_n
      ) / jnp.maximum(jnp.sum(1.0 - fg), 1.0)
    gamma_n = jnp.full((n,), gamma, jnp.float32)
    if unlearn == "false_positives":
      gamma_n = gamma * use_forget_n.astype(jnp.float32)
    v2t_nm, t2v_mn = unlearn_targets(plan_nm, eye_nm, gamma_n, targets=targets)
    otr, terms = otr_loss(emb.logit_scale * sim_nm, v2t_nm, t2v_mn, targets=targets)
    sep_w_n = (~forget_n).astype(jnp.float32) if sep_on == "retained" else jnp.ones((n,))
    sep = sep_loss(emb.ztxt, zneg, sep_w_n, alpha=alpha, beta=beta)
    aux.update(terms)
    aux.update({"loss_otr": otr, "loss_sep": sep})
    aux["sim/text_neg"] = jnp.mean(jnp.sum(emb.ztxt * zneg, axis=1))
    return otr + sep, aux, mstate

  return Method(
    loss=loss,
    init=_stateless,
    forward=_make_forward(prompt_scale),
    init_params=_prompt_params(num_prompts, prompt_scale),
  )


def ga_loss(
  zimg_nd: jax.Array,
  ztxt_nd: jax.Array,
  logit_scale: jax.Array,
  forget_n: jax.Array,
  *,
  label_smoothing: float,
  ascent_weight: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Label-smoothed symmetric InfoNCE on D_RT minus `ascent_weight` × InfoNCE on D_FG.

  Each pair's image→text and text→image cross-entropies run over the whole global batch; the
  retained term averages over D_RT, the ascent term over D_FG (0 when D_FG is empty).
  """
  n = zimg_nd.shape[0]
  logits_nn = logit_scale * _sim(zimg_nd, ztxt_nd)
  eye_nn = jnp.eye(n)
  smooth_nn = (1.0 - label_smoothing) * eye_nn + label_smoothing / n
  lp_i2t = jax.nn.log_softmax(logits_nn, axis=1)
  lp_t2i = jax.nn.log_softmax(logits_nn, axis=0).T
  ce_n = -0.5 * (jnp.diagonal(lp_i2t) + jnp.diagonal(lp_t2i))
  ces_n = -0.5 * (jnp.sum(smooth_nn * lp_i2t, axis=1) + jnp.sum(smooth_nn * lp_t2i, axis=1))
  fg = forget_n.astype(jnp.float32)
  rt = 1.0 - fg
  retained = jnp.sum(rt * ces_n) / jnp.maximum(jnp.sum(rt), 1.0)
  forgotten = jnp.sum(fg * ce_n) / jnp.maximum(jnp.sum(fg), 1.0)
  return retained - ascent_weight * forgotten, {
    "loss_retained": retained,
    "loss_forget": forgotten,
  }


def ncu_ga(
  *,
  forget_fraction: float = 0.1,
  forget_count: str = "round",
  confidence: str = "both",
  label_smoothing: float = 0.1,
  ascent_weight: float = 1.0,
) -> Method:
  """Gradient-ascent baseline (the paper's Table 4): -L_CLIP on D_FG + smoothed L_CLIP on D_RT.

  Args:
    forget_fraction: P, as in NCU (D_FG chosen by the same confidence).
    forget_count: "round" or "floor", as in NCU.
    confidence: "both" or "i2t".
    label_smoothing: smoothing of the retained targets (the paper does not give a value).
    ascent_weight: weight of the ascent term (the paper implies 1).
  """
  _check("confidence", confidence, _CONFIDENCE)
  _check_fraction(forget_fraction)
  _check("forget_count", forget_count, _FORGET_COUNT)

  def loss(emb: Embeddings, mstate, rng):
    del rng
    k = num_forget(forget_fraction, emb.zimg.shape[0], forget_count)
    forget_n, _ = select_forget(emb.zimg, emb.ztxt, emb.logit_scale, k, confidence=confidence)
    value, aux = ga_loss(
      emb.zimg,
      emb.ztxt,
      emb.logit_scale,
      forget_n,
      label_smoothing=label_smoothing,
      ascent_weight=ascent_weight,
    )
    aux.update(forget_metrics(forget_n, emb.batch))
    return value, aux, mstate

  return Method(loss=loss, init=_stateless)


METHODS: dict[str, Callable[..., Method]] = {
  "ncu_hn": ncu_hn,
  "ncu_unlearn": ncu_unlearn,
  "ncu_ga": ncu_ga,
}
