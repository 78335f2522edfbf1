"""COLA: training-free test-time defence by cross-modality OT alignment (inference only).

Zhu, Zhu, Wang, Zhao, Zhang, "Enhancing CLIP Robustness via Cross-Modality Alignment",
NeurIPS 2025 (arXiv:2510.24038). No public code exists; the algorithm below is reconstructed from
the paper summary (shared/METHODS.md §3.2) with the missing details borrowed from AWT
(MCG-NJU/AWT, NeurIPS 2024, the same "augmented views + descriptions + entropy weights + OT"
pipeline; §3.3). Every reconstructed choice is a field of :class:`ColaConfig`.

Pipeline for K classes, M text features per class, N views per image:

1. Text side (once per dataset): per class, M L2-normalised text features ``z_km`` (templates
   and, optionally, class descriptions, see :func:`class_prompts`). The SVD of all valid class
   text features ``Z = [z_km] ∈ R^{d × K·M}`` gives the top-C left singular vectors ``U_C``
   (C = ``num_components`` capped by ``min(d, #features)``); ``Π(x) = U_C U_Cᵀ x``
   (no centring: the paper states none) — :func:`build_text`.
2. Image side: view 0 is a centre crop (``centre_crop`` = 1 keeps the image itself: clipjax
   test images are already at model resolution), views 1..N-1 are random-resized crops with
   optional horizontal flips (torchvision's RandomResizedCrop recipe as in AWT), bilinear
   resampling with ``jax.image.scale_and_translate`` so that the views are differentiable in the
   pixels (adaptive attacks) and deterministic given the PRNG key — :func:`make_views`.
3. Cost per class: ``C_k(n, m) = 1 - cos(Π x_n, z_km)`` (image side projected, text side not,
   as in the paper's ``C^Π``).
4. Marginals (``marginals="entropy"``, AWT's recipe): view weights ``a_n = softmax_n(-H(p_n)/τ)``
   with ``p_n = softmax_k`` of the view's description-averaged logits; description weights per
   class ``b_km = softmax_m(-H(q_km)/τ)`` where ``q_km`` is view 0's description-averaged logit
   vector with entry k replaced by description m's logit. Logits are ``logit_scale · cos`` on
   the same (projected) features as the cost (AWT has no projection; using Π there too is our
   choice). ``marginals="uniform"`` is the ablation.
5. Entropic OT per (image, class) with :func:`clipjax.ot.fixed_sinkhorn_batch` (ε = 0.1, 100
   kernel-mode iterations, AWT; log domain where the kernel would underflow), score
   ``logit_scale · (1 - <P_k, C_k>)`` (AWT's ``Σ P · 100 cos``; argmax of the score = argmin
   of the OT cost since the plan has mass 1).

Ablations: ``projection=False`` (plain cosine cost), ``use_ot=False`` (views + mean of the
description-averaged logits over views), ``marginals="uniform"``. With one view, one template,
no projection and uniform marginals the score is the ordinary zero-shot logit.

Gradients (for adaptive attacks): ``ot_grad="unroll"`` backpropagates through the Sinkhorn
iterations, the entropy weights and the views (the exact gradient of the computed scores);
``"envelope"`` keeps the plan constant (the envelope-theorem gradient ``P ⊙ ∂C``, a BPDA-style
surrogate). Predictions are the same under both.

COLA trains nothing, so ``METHODS`` registers no training method; the classifier is evaluated by
``clipjax.evaluation.cola_protocol`` (run on a checkpoint by the config task ``cola_eval``).
"""

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.methods.base import Method
from clipjax.ot import fixed_sinkhorn_batch

__all__ = [
  "METHODS",
  "ColaConfig",
  "ColaOutput",
  "ColaText",
  "build_text",
  "class_prompts",
  "cola_classifier",
  "cola_scores",
  "load_descriptions",
  "make_views",
  "project",
]

METHODS: dict[str, Callable[..., Method]] = {}
"""COLA is inference-only: no training method is registered."""

_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class ColaConfig:
  """COLA hyper-parameters (hashable: a static argument under ``jit``).

  Defaults are the reconstructed paper/AWT values (shared/METHODS.md §3.2–3.3); configs should
  set every field explicitly.

  Attributes:
    num_views: N, views per image including the centre view (paper: saturates beyond 5; AWT 51).
    crop_scale: RandomResizedCrop area fraction range (torchvision/AWT default (0.08, 1)).
    crop_ratio: RandomResizedCrop aspect-ratio range (torchvision default (3/4, 4/3)).
    flip: random horizontal flips of the random views (AWT: p = 0.5).
    centre_crop: side fraction of view 0's centre crop (1.0 = the image itself).
    num_components: C, principal text directions kept (paper: 256, capped by the features).
    projection: use Π in the cost and the weights (False: the "no projection" ablation).
    use_ot: OT scores (False: the "views + mean logits" ablation).
    marginals: ``"entropy"`` (AWT importance weights) or ``"uniform"`` (ablation).
    weight_temperature: τ of the entropy weights (AWT: 0.5).
    epsilon: entropic regularisation on the cosine cost (AWT: 0.1).
    num_iters: Sinkhorn iterations (AWT: at most 100; fixed here, vmap-friendly).
    ot_grad: ``"unroll"`` (exact gradient) or ``"envelope"`` (plan held constant).
    logit_scale: multiplier of cosines in the logits and scores (OpenAI CLIP/AWT: 100).
  """

  num_views: int = 8
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  flip: bool = True
  centre_crop: float = 1.0
  num_components: int = 256
  projection: bool = True
  use_ot: bool = True
  marginals: Literal["entropy", "uniform"] = "entropy"
  weight_temperature: float = 0.5
  epsilon: float = 0.1
  num_iters: int = 100
  ot_grad: Literal["unroll", "envelope"] = "unroll"
  logit_scale: float = 100.0

  def __post_init__(self):
    problems = []
    if self.num_views < 1:
      problems.append(f"num_views must be >= 1, got {self.num_views}")
    lo, hi = self.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
      problems.append(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
    rlo, rhi = self.crop_ratio
    if not 0.0 < rlo <= rhi:
      problems.append(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
    if not 0.0 < self.centre_crop <= 1.0:
      problems.append(f"centre_crop must be in (0, 1], got {self.centre_crop}")
    if self.num_components < 1:
      problems.append(f"num_components must be >= 1, got {self.num_components}")
    if self.marginals not in ("entropy", "uniform"):
      problems.append(f"marginals must be 'entropy' or 'uniform', got {self.marginals!r}")
    if self.ot_grad not in ("unroll", "envelope"):
      problems.append(f"ot_grad must be 'unroll' or 'envelope', got {self.ot_grad!r}")
    if not self.weight_temperature > 0:
      problems.append(f"weight_temperature must be > 0, got {self.weight_temperature}")
    if not self.epsilon > 0:
      problems.append(f"epsilon must be > 0, got {self.epsilon}")
    if self.num_iters < 1:
      problems.append(f"num_iters must be >= 1, got {self.num_iters}")
    if problems:
      raise ValueError("Invalid ColaConfig: " + "; ".join(problems))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ColaConfig":
    """From a config mapping; unknown keys are an error naming them."""
    d = dict(d)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"unknown COLA options {unknown}; valid: {sorted(fields)}")
    for k in ("crop_scale", "crop_ratio"):
      if k in d:
        d[k] = tuple(float(v) for v in d[k])
    return cls(**d)


class ColaText(NamedTuple):
  """COLA's text side.

  Attributes:
    z_kmd: [K, M, d] L2-normalised text features (padding rows are zero).
    mask_km: [K, M] bool, valid features (classes may have different numbers of descriptions).
    basis_dc: [d, C] orthonormal top-C left singular vectors of the valid features.
  """

  z_kmd: jax.Array
  mask_km: jax.Array
  basis_dc: jax.Array


class ColaOutput(NamedTuple):
  """Scores and diagnostics of :func:`cola_scores`.

  Attributes:
    scores_bk: [B, K] class scores (higher is better; logit scale).
    marginal_error_bk: [B, K] Sinkhorn L1 marginal error (zeros when ``use_ot=False``).
    view_weights_bn: [B, N] view marginals.
  """

  scores_bk: jax.Array
  marginal_error_bk: jax.Array
  view_weights_bn: jax.Array


def load_descriptions(path: str | os.PathLike, classnames: Sequence[str]) -> dict[str, list[str]]:
  """Reads class descriptions from a JSON file ``{"classname": ["description", ...], ...}``.

  Classes missing from the file get no descriptions; keys that are not class names are an error
  (they are almost always a typo or the wrong label set).

  Raises:
    ValueError: naming the file and the offending key or value.
  """
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object classname -> list of strings")
  unknown = sorted(set(data) - set(classnames))
  if unknown:
    raise ValueError(f"{path}: keys {unknown} are not class names; classes: {list(classnames)}")
  out = {}
  for name, descs in data.items():
    if not isinstance(descs, list) or not all(isinstance(s, str) and s for s in descs):
      raise ValueError(f"{path}: entry {name!r} must be a list of non-empty strings")
    out[name] = list(descs)
  return out


def class_prompts(
  classnames: Sequence[str],
  templates: Sequence[str],
  descriptions: Mapping[str, Sequence[str]] | None = None,
  *,
  max_descriptions: int | None = None,
) -> list[list[str]]:
  """Per class: every ``template(classname)`` then ``"{templates[0](classname)} {description}"``.

  AWT formats a description as the class prompt followed by the description; we use the first
  template as that prompt.

  Args:
    classnames: K class names.
    templates: strings with one "{}".
    descriptions: optional classname -> descriptions (see :func:`load_descriptions`).
    max_descriptions: keep at most this many descriptions per class (paper: 50 saturates).

  Returns:
    K lists of prompts (lengths may differ).
  """
  if not classnames or not templates:
    raise ValueError(f"need classnames and templates, got {len(classnames)} and {len(templates)}")
  for t in templates:
    if t.count("{}") != 1:
      raise ValueError(f"template {t!r} must contain exactly one '{{}}'")
  out = []
  for c in classnames:
    prompts = [t.format(c) for t in templates]
    descs = list((descriptions or {}).get(c, ()))[:max_descriptions]
    prompts += [f"{templates[0].format(c)} {d}" for d in descs]
    out.append(prompts)
  return out


def build_text(
  z_kmd: jax.Array | np.ndarray, mask_km: jax.Array | np.ndarray | None, num_components: int
) -> ColaText:
  """Normalises the class text features and computes the projection basis (SVD).

  Args:
    z_kmd: [K, M, d] text features (normalised here; padding rows are zeroed).
    mask_km: [K, M] bool valid features, or None (all valid).
    num_components: C; capped by ``min(d, number of valid features)``.

  Returns:
    :class:`ColaText`.
  """
  z_kmd = jnp.asarray(z_kmd, jnp.float32)
  if z_kmd.ndim != 3:
    raise ValueError(f"z_kmd must be [K, M, d], got shape {z_kmd.shape}")
  k, m, d = z_kmd.shape
  mask_km = jnp.ones((k, m), bool) if mask_km is None else jnp.asarray(mask_km, bool)
  if mask_km.shape != (k, m):
    raise ValueError(f"mask_km must have shape {(k, m)}, got {mask_km.shape}")
  if not bool(jnp.all(jnp.any(mask_km, axis=1))):
    empty = np.flatnonzero(~np.asarray(jnp.any(mask_km, axis=1))).tolist()
    raise ValueError(f"classes {empty} have no valid text feature")
  norm = jnp.linalg.norm(z_kmd, axis=-1, keepdims=True)
  z_kmd = jnp.where(mask_km[..., None], z_kmd / jnp.maximum(norm, 1e-12), 0.0)
  n_valid = int(jnp.sum(mask_km))
  c = min(int(num_components), d, n_valid)
  # Left singular vectors of Z = z_fdᵀ (d × F); padding columns are zero and change nothing.
  u_dd, _, _ = jnp.linalg.svd(z_kmd.reshape(k * m, d).T, full_matrices=False)
  return ColaText(z_kmd=z_kmd, mask_km=mask_km, basis_dc=u_dd[:, :c])


def project(x_nd: jax.Array, basis_dc: jax.Array) -> jax.Array:
  """``Π(x) = U_C U_Cᵀ x`` row-wise -> [n, d]."""
  return jnp.einsum("nc,dc->nd", jnp.einsum("nd,dc->nc", x_nd, basis_dc, precision=_HI), basis_dc)


def _crop(x_hwc: jax.Array, y0, x0, h, w) -> jax.Array:
  """Bilinear resample of the box [y0, y0+h) × [x0, x0+w) (pixel units) to the image size."""
  size_h, size_w = x_hwc.shape[:2]
  scale = jnp.stack([size_h / h, size_w / w])
  translation = -jnp.stack([y0, x0]) * scale
  return jax.image.scale_and_translate(
    x_hwc, x_hwc.shape, (0, 1), scale, translation, method="linear", antialias=True
  )


def _random_view(x_hwc: jax.Array, key: jax.Array, cfg: ColaConfig) -> jax.Array:
  # torchvision RandomResizedCrop samples (area, log-ratio) and retries until the box fits; we
  # clip the box sides to the image instead (one draw, no data-dependent loop).
  size_h, size_w = x_hwc.shape[:2]
  k_area, k_ratio, k_y, k_x, k_flip = jax.random.split(key, 5)
  area = jax.random.uniform(k_area, (), minval=cfg.crop_scale[0], maxval=cfg.crop_scale[1])
  log_r = jax.random.uniform(
    k_ratio, (), minval=np.log(cfg.crop_ratio[0]), maxval=np.log(cfg.crop_ratio[1])
  )
  ratio = jnp.exp(log_r)
  h = jnp.minimum(jnp.sqrt(area / ratio), 1.0) * size_h
  w = jnp.minimum(jnp.sqrt(area * ratio), 1.0) * size_w
  y0 = jax.random.uniform(k_y, ()) * (size_h - h)
  x0 = jax.random.uniform(k_x, ()) * (size_w - w)
  view = _crop(x_hwc, y0, x0, h, w)
  if cfg.flip:
    view = jnp.where(jax.random.bernoulli(k_flip), view[:, ::-1], view)
  return view


def make_views(pixels_bhwc: jax.Array, key: jax.Array, cfg: ColaConfig) -> jax.Array:
  """N views per image: a centre crop, then random-resized crops (+ flips).

  Differentiable in the pixels; deterministic given ``key`` (each image gets its own crops,
  drawn from ``fold_in(key, image index)``).

  Args:
    pixels_bhwc: [B, H, W, 3] images in [0, 1].
    key: PRNG key.
    cfg: :class:`ColaConfig`.

  Returns:
    [B, N, H, W, 3] views in [0, 1].
  """
  if pixels_bhwc.ndim != 4:
    raise ValueError(f"pixels_bhwc must be [B, H, W, C], got shape {pixels_bhwc.shape}")
  b, size_h, size_w, _ = pixels_bhwc.shape
  if cfg.centre_crop == 1.0:
    centre_bhwc = pixels_bhwc
  else:
    h, w = cfg.centre_crop * size_h, cfg.centre_crop * size_w
    centre_bhwc = jax.vmap(
      lambda x: _crop(x, (size_h - h) / 2, (size_w - w) / 2, jnp.asarray(h), jnp.asarray(w))
    )(pixels_bhwc)
  if cfg.num_views == 1:
    return centre_bhwc[:, None]
  keys_b = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))

  def per_image(x_hwc, k):
    keys_v = jax.random.split(k, cfg.num_views - 1)
    return jax.vmap(lambda kk: _random_view(x_hwc, kk, cfg))(keys_v)

  rand_bvhwc = jax.vmap(per_image)(pixels_bhwc, keys_b)
  views = jnp.concatenate([centre_bhwc[:, None], rand_bvhwc], axis=1)
  return jnp.clip(views, 0.0, 1.0)


def _entropy(logits_xk: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits_xk, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def replaced_entropy(v_bk: jax.Array, w_bkm: jax.Array) -> jax.Array:
  """Entropy of `softmax(v)` with entry k replaced by `w[k, m]`, for every (k, m): [B, K, M].

  AWT's description weights. Materialising every replaced vector costs B·K·M·K (4·10⁸ floats at
  ImageNet's 1000 classes × 51 prompts per image: most of COLA's time beyond its encoder
  passes, scripts/bench_cola.py); this is the same quantity in O(B·K² + B·K·M). With
  `s_k = Σ_{j≠k} exp(v_j − t_k)` and `r_k = Σ_{j≠k} exp(v_j − t_k)(v_j − t_k)`, `t_k` the largest
  other entry, and `c = max(t_k, w)`: `Z = s_k e^{t_k−c} + e^{w−c}` and
  `H = log Z − (e^{t_k−c}(r_k + s_k (t_k − c)) + e^{w−c}(w − c)) / Z` — every exponent ≤ 0 and
  no difference of large sums, so float32 keeps the direct form's accuracy.
  """
  b, k = v_bk.shape
  if k == 1:  # a one-class softmax has zero entropy
    return jnp.zeros(w_bkm.shape, w_bkm.dtype)
  off_kj = ~jnp.eye(k, dtype=bool)
  v_bkj = jnp.broadcast_to(v_bk[:, None, :], (b, k, k))
  t_bk = jnp.max(jnp.where(off_kj[None], v_bkj, -jnp.inf), axis=2)
  d_bkj = jnp.where(off_kj[None], v_bkj - t_bk[..., None], 0.0)
  e_bkj = jnp.where(off_kj[None], jnp.exp(d_bkj), 0.0)
  s_bk = jnp.sum(e_bkj, axis=2)[..., None]
  r_bk = jnp.sum(e_bkj * d_bkj, axis=2)[..., None]
  t_bk = t_bk[..., None]
  c_bkm = jnp.maximum(t_bk, w_bkm)
  e_other = jnp.exp(t_bk - c_bkm)
  e_w = jnp.exp(w_bkm - c_bkm)
  z = s_bk * e_other + e_w
  return jnp.log(z) - (e_other * (r_bk + s_bk * (t_bk - c_bkm)) + e_w * (w_bkm - c_bkm)) / z


def _masked_softmax(x, mask, axis):
  x = jnp.where(mask, x, -jnp.inf)
  return jnp.where(mask, jax.nn.softmax(x, axis=axis), 0.0)


def cola_scores(zviews_bnd: jax.Array, text: ColaText, cfg: ColaConfig) -> ColaOutput:
  """COLA class scores from view embeddings (everything after the image encoder).

  Args:
    zviews_bnd: [B, N, d] view embeddings (view 0 = centre view; normalised here).
    text: from :func:`build_text`.
    cfg: :class:`ColaConfig`.

  Returns:
    :class:`ColaOutput` with [B, K] scores.
  """
  if zviews_bnd.ndim != 3 or zviews_bnd.shape[2] != text.z_kmd.shape[2]:
    raise ValueError(
      f"zviews_bnd must be [B, N, {text.z_kmd.shape[2]}], got shape {zviews_bnd.shape}"
    )
  b, n, d = zviews_bnd.shape
  k, m, _ = text.z_kmd.shape
  x_bnd = zviews_bnd.astype(jnp.float32)
  if cfg.projection:
    x_bnd = project(x_bnd.reshape(b * n, d), text.basis_dc).reshape(b, n, d)
  x_bnd = x_bnd / jnp.maximum(jnp.linalg.norm(x_bnd, axis=-1, keepdims=True), 1e-12)
  cos_bnkm = jnp.einsum("bnd,kmd->bnkm", x_bnd, text.z_kmd, precision=_HI)
  mask_km = text.mask_km
  count_k = jnp.sum(mask_km, axis=1).astype(jnp.float32)
  logit_bnkm = cfg.logit_scale * cos_bnkm
  # Description-averaged logits per view.
  mean_bnk = jnp.sum(jnp.where(mask_km[None, None], logit_bnkm, 0.0), axis=3) / count_k[None, None]

  if cfg.marginals == "entropy":
    a_bn = jax.nn.softmax(-_entropy(mean_bnk) / cfg.weight_temperature, axis=1)
    h_bym = replaced_entropy(mean_bnk[:, 0], logit_bnkm[:, 0])
    b_bkm = _masked_softmax(-h_bym / cfg.weight_temperature, mask_km[None], axis=2)
  else:
    a_bn = jnp.full((b, n), 1.0 / n, jnp.float32)
    b_bkm = jnp.broadcast_to(mask_km / count_k[:, None], (b, k, m))

  if not cfg.use_ot:
    return ColaOutput(
      scores_bk=jnp.mean(mean_bnk, axis=1),
      marginal_error_bk=jnp.zeros((b, k), jnp.float32),
      view_weights_bn=a_bn,
    )

  cost_bknm = 1.0 - cos_bnkm.transpose(0, 2, 1, 3)
  grad = "unroll" if cfg.ot_grad == "unroll" else "stop_gradient"

  # One batch of b·k problems: kernel mode for all, or the log domain for all where a kernel
  # would underflow (a real cond; vmapping fixed_sinkhorn would run both).
  r = fixed_sinkhorn_batch(
    cost_bknm.reshape(b * k, n, m),
    jnp.repeat(a_bn, k, axis=0),
    b_bkm.reshape(b * k, m),
    epsilon=cfg.epsilon,
    num_iters=cfg.num_iters,
    solver="kernel",
    grad=grad,
  )
  # <P, C> on the un-stopped cost: with grad="stop_gradient" the plan is a constant and the
  # gradient is the envelope term P ⊙ ∂C; with "unroll" it is the full gradient.
  ot_bk = jnp.sum(r.plan.reshape(b, k, n, m) * cost_bknm, axis=(2, 3))
  err_bk = r.marginal_error.reshape(b, k)
  return ColaOutput(
    scores_bk=cfg.logit_scale * (1.0 - ot_bk), marginal_error_bk=err_bk, view_weights_bn=a_bn
  )


def cola_classifier(
  encode_image: Callable[[jax.Array], jax.Array], text: ColaText, cfg: ColaConfig
) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The pixel-level COLA classifier ``fn(pixels_bhwc, key) -> scores_bk`` (jit-able).

  One image-encoder pass over all B·N views, then :func:`cola_scores`. Wrap it in
  ``clipjax.attacks.Stochastic`` for EOT attacks; fix ``key`` for deterministic inference.

  Args:
    encode_image: ``encode_image(pixels_bhwc in [0, 1]) -> emb_bd`` (differentiable).
    text: from :func:`build_text`.
    cfg: :class:`ColaConfig`.
  """

  def fn(pixels_bhwc, key):
    views_bnhwc = make_views(pixels_bhwc, key, cfg)
    b, n = views_bnhwc.shape[:2]
    emb = encode_image(views_bnhwc.reshape((b * n,) + views_bnhwc.shape[2:]))
    return cola_scores(emb.reshape(b, n, -1), text, cfg).scores_bk

  return fn
