"""OTCCLIP (Zhang et al., EMNLP 2025): poisoning-robust CLIP pre-training by OT re-matching.

Paper: "Pre-training CLIP against Data Poisoning with Optimal Transport-based Matching and
Alignment" (arXiv 2509.18717). No public code exists; only the abstract and summaries
(shared/METHODS.md §4). Everything below marked *[reconstructed]* is a clipjax choice, and
each is a keyword argument of the factories (set explicitly in ``configs/otcclip.py``).

Registered methods:

* ``otcclip``: fine-grained OT caption re-assignment + inter/intra-modality OT alignment.
* ``roclip``: RoCLIP-style (Yang et al., NeurIPS 2023) global nearest-neighbour re-matching from
  a FIFO text memory bank, on an epoch cadence (the baseline OTCCLIP improves on).
* ``safeclip``: SafeCLIP-style (Yang et al., ICML 2024) unimodal warm-up, then a per-batch
  2-component GMM safe/risky split: CLIP loss on safe pairs, unimodal contrastive on risky.

Fine-grained OT distance. For an image with projected patch tokens ``x_n`` and a caption with
projected word tokens ``y_m``, ``d_OT = <P*, 1 - cos(x_p, y_w)>`` with entropic Sinkhorn
(fixed iterations, :mod:`clipjax.ot.batched`) and uniform weights over valid tokens; padding
weighs 0. *[reconstructed]* ``exclude_sos`` (default True) drops the start token (it carries no
content and is identical for every caption); ``exclude_eot`` (default False) keeps the pooled
end token. Many (image, caption) pairs are solved at once with ``indexed_set_ot`` (shortlist,
intra) and ``pairwise_set_ot`` (inter-modality contrastive matrix).

Caption re-assignment *[reconstructed]*. Caption pool (``pool``): ``"batch"`` (the global
batch), ``"bank"`` (a FIFO memory bank of past text features queried before the current batch
is enqueued, as RoCLIP) or ``"bank+batch"``. For each image, the top ``shortlist_k`` captions
by global cosine are re-ranked by ``score = match_alpha · cos − (1 − match_alpha) · d_OT``
(``match_alpha=0``: pure OT) and the best one becomes the image's caption for the CLIP loss.
Bank entries are detached (RoCLIP); batch captions keep their gradient. The bank stores
fixed-size arrays: global embeddings [K, d], projected token sets [K, L, d] with masks, and
each entry's example index and poison flag (for the diagnostics). Re-matching runs on a step
cadence kept in the method state: active when ``step >= match_start`` and
``(step − match_start) % match_period < match_duration`` (RoCLIP: break_epoch = 2, i.e.
``match_period = 2·E, match_duration = E`` for E steps per epoch).

Losses (otcclip): ``L = L_CLIP(image, re-matched caption) + inter_weight · L_inter +
intra_weight · L_intra``.

* ``L_inter`` *[reconstructed]*: symmetric InfoNCE over logits ``−d_OT(image_i, caption_j) /
  inter_temperature`` between the batch's images and their (re-matched) captions; computed on
  the first ``inter_batch`` rows (0: whole batch) since it solves inter_batch² problems.
* ``L_intra`` *[reconstructed]*: OT between the patch sets of two views of an image and between
  the token sets of two views of a caption. ``intra_mode="distance"`` averages the matched
  distances; ``"contrastive"`` uses the same InfoNCE as ``L_inter`` between the views.
  The second views come from this module's ``forward``: the image gets a random translation of
  at most ``aug_shift`` pixels (edge padding) and a brightness/contrast jitter of
  ``aug_jitter`` (no flips or crops: the synthetic captions name positions); the caption gets
  token dropout (each word token between start and end dropped with ``token_dropout``
  probability, the rest compacted) — a cheap stand-in for the EDA augmentation of RoCLIP's
  ``--cross_aug``.

OT gradients: the losses differentiate through the unrolled Sinkhorn iterations
(``grad="unroll"``); the re-matching scores are computed on detached features.

Logged (aux, every step; re-matching entries are 0 on inactive steps, see ``remat/active``):
``remat/acc_clean`` (clean images whose re-matched caption is their own pair's: the known clean
pairing), ``remat/poison_keep`` (poisoned images matched to a poisoned pair's caption),
``remat/poison_own`` (… to their own poisoned caption), ``remat/clean_to_poison``,
``remat/changed``, ``remat/n_poisoned``; OT diagnostics ``ot/d_matched``, ``ot/d_own``,
``ot/marginal_error_max``; the loss terms. Ground truth comes from ``batch["index"]`` and
``batch["is_poisoned"] | batch["is_backdoor"]`` (both count as poisoned; absent: every pair
counts as clean). Note that a clean image can also be re-assigned a *different* caption of
identical content (templated data), which counts as a miss in ``acc_clean``.

SafeCLIP *[reconstructed from DomJamb/SafeCLIP]*: steps ``< unimodal_steps``: unimodal InfoNCE
(image view 1 ↔ view 2, caption ↔ token-dropped caption, global embeddings); then
``clip_warmup_steps`` of plain CLIP; then per batch a 2-component 1-D GMM (``gmm_iters`` EM
steps) on the detached pair cosines; the ``safe_fraction`` pairs with the highest clean
posterior (``safe_fraction = min(safe_max, safe_init + safe_growth · epochs since the first
split)``, epoch length ``steps_per_epoch``) get the CLIP loss restricted to safe pairs, the
others the unimodal loss. The official method fits the GMM once per epoch over the whole
dataset and uses a nearest-neighbour bank for the unimodal loss; both are simplified here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from clipjax import losses
from clipjax.methods.base import Embeddings, Method
from clipjax.ot import batched

__all__ = [
  "METHODS",
  "augment_images",
  "fine_grained_ot",
  "gmm_clean_posterior",
  "otcclip",
  "rematch",
  "roclip",
  "safeclip",
  "token_dropout",
]

POOLS = ("batch", "bank", "bank+batch")
INTRA_MODES = ("distance", "contrastive")


def _model_params(params: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in params.items() if k != "method"}


def _l2(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def text_weights(mask_bl: jax.Array, *, exclude_sos: bool, exclude_eot: bool) -> jax.Array:
  """Uniform (unnormalised) weights over a caption's valid tokens, 0 on padding.

  Args:
    mask_bl: [b, L] bool, valid tokens (start to end token inclusive).
    exclude_sos: drop position 0.
    exclude_eot: drop the last valid position.

  Returns:
    [b, L] float32 weights in {0, 1}.
  """
  w = mask_bl.astype(jnp.float32)
  pos_l = jnp.arange(mask_bl.shape[1])
  if exclude_sos:
    w = w * (pos_l[None, :] > 0)
  if exclude_eot:
    last_b = jnp.sum(mask_bl, axis=1) - 1
    w = w * (pos_l[None, :] != last_b[:, None])
  return w


def fine_grained_ot(
  x_and: jax.Array,
  wx_an: jax.Array,
  y_bmd: jax.Array,
  wy_bm: jax.Array,
  ia_k: jax.Array | None = None,
  ib_k: jax.Array | None = None,
  *,
  epsilon: float,
  num_iters: int,
  solver: str,
  chunk_size: int,
  grad: str,
) -> batched.SetOTResult:
  """OTCCLIP's d_OT between token sets with the cosine cost.

  With ``ia_k``/``ib_k``: the k pairs ``(x[ia_k], y[ib_k])`` (``indexed_set_ot``), result [k];
  without: all A×B pairs (``pairwise_set_ot``), result [A, B].

  Args:
    x_and: [A, n, d] first sets (e.g. patch tokens); need not be normalised.
    wx_an: [A, n] weights, 0 on padding.
    y_bmd: [B, m, d] second sets (e.g. word tokens).
    wy_bm: [B, m] weights, 0 on padding.
    ia_k, ib_k: optional [k] int indices.
    epsilon, num_iters, solver, chunk_size, grad: as in :mod:`clipjax.ot.batched`.
  """
  kw = dict(
    chunk_size=chunk_size,
    epsilon=epsilon,
    num_iters=num_iters,
    solver=solver,
    grad=grad,
    cost="cosine",
  )
  if ia_k is None:
    return batched.pairwise_set_ot(x_and, wx_an, y_bmd, wy_bm, **kw)
  return batched.indexed_set_ot(x_and, wx_an, y_bmd, wy_bm, ia_k, ib_k, **kw)


def _symmetric_ce(logits_bb: jax.Array) -> jax.Array:
  labels = jnp.arange(logits_bb.shape[0])
  i2t = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits_bb, 1), labels[:, None], 1))
  t2i = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits_bb, 0), labels[None, :], 0))
  return (i2t + t2i) / 2


# ----------------------------------------------------------------------------- augmentations


def augment_images(
  rng: jax.Array, images_bhwc: jax.Array, *, shift: int, jitter: float
) -> jax.Array:
  """A second view: random translation (edge padding) and brightness/contrast jitter.

  Args:
    rng: PRNG key.
    images_bhwc: [b, h, w, 3] pixels in [0, 1].
    shift: largest translation in pixels per axis (0: none).
    jitter: brightness offset and contrast factor drawn from ±jitter (0: none).

  Returns:
    [b, h, w, 3] in [0, 1].
  """
  b, h, w, _ = images_bhwc.shape
  k_shift, k_bright, k_con = jax.random.split(rng, 3)
  out = images_bhwc
  if shift > 0:
    padded = jnp.pad(out, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    offs_b2 = jax.random.randint(k_shift, (b, 2), 0, 2 * shift + 1)

    def crop(img, off):
      return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    out = jax.vmap(crop)(padded, offs_b2)
  if jitter > 0:
    bright_b = jax.random.uniform(k_bright, (b, 1, 1, 1), minval=-jitter, maxval=jitter)
    con_b = 1.0 + jax.random.uniform(k_con, (b, 1, 1, 1), minval=-jitter, maxval=jitter)
    mean_b = jnp.mean(out, axis=(1, 2, 3), keepdims=True)
    out = (out - mean_b) * con_b + mean_b + bright_b
  return jnp.clip(out, 0.0, 1.0)


def token_dropout(rng: jax.Array, ids_bl: jax.Array, *, rate: float, eot_id: int) -> jax.Array:
  """Drops each word token (strictly between start and end token) with probability `rate`.

  Kept tokens are moved left in order and the tail is zero-padded, so the end token stays the
  first `eot_id` (where the text tower pools).

  Args:
    rng: PRNG key.
    ids_bl: [b, L] int token ids, start token first.
    rate: drop probability in [0, 1).
    eot_id: end-of-text token id.

  Returns:
    [b, L] ids of the same dtype.
  """
  b, length = ids_bl.shape
  is_eot = ids_bl == eot_id
  eot_b = jnp.where(jnp.any(is_eot, 1), jnp.argmax(is_eot, 1), length - 1)
  pos_l = jnp.arange(length)
  droppable = (pos_l[None, :] > 0) & (pos_l[None, :] < eot_b[:, None])
  drop = droppable & (jax.random.uniform(rng, (b, length)) < rate)
  keep = (pos_l[None, :] <= eot_b[:, None]) & ~drop
  order = jnp.argsort(~keep, axis=1, stable=True)
  out = jnp.take_along_axis(ids_bl, order, axis=1)
  n_keep = jnp.sum(keep, axis=1)
  return jnp.where(pos_l[None, :] < n_keep[:, None], out, jnp.zeros_like(out))


def _two_view_forward(*, aug_shift: int, aug_jitter: float, token_dropout_rate: float):
  """`Method.forward` encoding the batch plus a second image view and a second caption view."""

  def forward(model, params, batch, rng):
    p = _model_params(params)
    images, ids = batch["image"], batch["ids"]
    b = images.shape[0]
    k_img, k_txt = jax.random.split(rng)
    img2 = augment_images(k_img, images, shift=aug_shift, jitter=aug_jitter)
    ids2 = token_dropout(k_txt, ids, rate=token_dropout_rate, eot_id=model.config.text.eot_id)
    img = model.encode_image(p, jnp.concatenate([images, img2], 0))
    txt = model.encode_text(p, jnp.concatenate([ids, ids2], 0))
    return Embeddings(
      zimg=img.emb[:b],
      ztxt=txt.emb[:b],
      logit_scale=model.logit_scale(p),
      logit_bias=p.get("logit_bias"),
      img_tokens=img.tokens[:b],
      txt_tokens=txt.tokens[:b],
      txt_mask=txt.mask[:b],
      batch=batch,
      extras={
        "zimg2": img.emb[b:],
        "ztxt2": txt.emb[b:],
        "img_tokens2": img.tokens[b:],
        "txt_tokens2": txt.tokens[b:],
        "txt_mask2": txt.mask[b:],
      },
    )

  return forward


# ----------------------------------------------------------------------------- re-matching


def _cadence(step, *, match_start: int, match_period: int, match_duration: int) -> jax.Array:
  return (step >= match_start) & ((step - match_start) % match_period < match_duration)


def rematch(
  zimg_bd: jax.Array,
  zpool_pd: jax.Array,
  valid_p: jax.Array,
  *,
  shortlist_k: int,
  match_alpha: float,
  ot_fn: Callable[[jax.Array, jax.Array], jax.Array] | None,
) -> tuple[jax.Array, jax.Array]:
  """Re-assigns each image a caption of the pool (all inputs detached by the caller).

  Args:
    zimg_bd: [b, d] L2-normalised image embeddings.
    zpool_pd: [P, d] L2-normalised caption embeddings of the pool.
    valid_p: [P] bool, usable pool entries (an unfilled bank slot is not).
    shortlist_k: captions shortlisted per image by global cosine.
    match_alpha: weight of the global cosine in the re-ranking score (1: global only).
    ot_fn: ``ot_fn(ia_k, ib_k) -> d_OT [k]`` for image/pool index pairs, or None (global
      nearest neighbour, RoCLIP).

  Returns:
    ``(choice_b, d_b)``: pool index of each image's new caption, and its d_OT (0 without OT).
  """
  sim_bp = zimg_bd @ zpool_pd.T
  sim_bp = jnp.where(valid_p[None, :], sim_bp, -jnp.inf)
  b = zimg_bd.shape[0]
  if ot_fn is None:
    return jnp.argmax(sim_bp, axis=1), jnp.zeros((b,), jnp.float32)
  k = min(shortlist_k, zpool_pd.shape[0])
  top_bk, cand_bk = jax.lax.top_k(sim_bp, k)
  ia_k = jnp.repeat(jnp.arange(b), k)
  d_bk = ot_fn(ia_k, cand_bk.reshape(-1)).reshape(b, k)
  score_bk = match_alpha * top_bk - (1.0 - match_alpha) * d_bk
  score_bk = jnp.where(jnp.isfinite(top_bk), score_bk, -jnp.inf)
  best_b = jnp.argmax(score_bk, axis=1)
  choice_b = jnp.take_along_axis(cand_bk, best_b[:, None], 1)[:, 0]
  return choice_b, jnp.take_along_axis(d_bk, best_b[:, None], 1)[:, 0]


def _init_bank(bank_size: int, embed_dim: int, tokens_shape: tuple[int, int] | None) -> dict:
  state = {
    "step": jnp.zeros((), jnp.int32),
    "ptr": jnp.zeros((), jnp.int32),
    "bank_z": jnp.zeros((bank_size, embed_dim), jnp.float32),
    "bank_valid": jnp.zeros((bank_size,), bool),
    "bank_index": jnp.full((bank_size,), -1, jnp.int32),
    "bank_poisoned": jnp.zeros((bank_size,), bool),
  }
  if tokens_shape is not None:
    length = tokens_shape[0]
    state["bank_tokens"] = jnp.zeros((bank_size, length, embed_dim), jnp.float32)
    state["bank_tw"] = jnp.zeros((bank_size, length), jnp.float32)
  return state


def _flags(batch: dict | None, b: int) -> tuple[jax.Array, jax.Array]:
  batch = batch or {}
  index_b = batch.get("index", jnp.arange(b)).astype(jnp.int32)
  none_b = jnp.zeros((b,), bool)
  poisoned_b = batch.get("is_poisoned", none_b).astype(bool)
  poisoned_b = poisoned_b | batch.get("is_backdoor", none_b).astype(bool)
  return index_b, poisoned_b


def _masked_mean(x_b: jax.Array, m_b: jax.Array) -> jax.Array:
  m = m_b.astype(jnp.float32)
  return jnp.sum(x_b * m) / jnp.maximum(jnp.sum(m), 1.0)


def _build_rematching(
  *,
  fine_grained: bool,
  pool: str,
  bank_size: int,
  context_length: int,
  shortlist_k: int,
  match_alpha: float,
  match_start: int,
  match_period: int,
  match_duration: int,
  ot_epsilon: float,
  ot_iters: int,
  ot_solver: str,
  ot_chunk: int,
  exclude_sos: bool,
  exclude_eot: bool,
  inter_weight: float,
  inter_temperature: float,
  inter_batch: int,
  intra_weight: float,
  intra_mode: str,
  aug_shift: int,
  aug_jitter: float,
  token_dropout_rate: float,
) -> Method:
  if pool not in POOLS:
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
  if intra_mode not in INTRA_MODES:
    raise ValueError(f"intra_mode must be one of {INTRA_MODES}, got {intra_mode!r}")
  uses_bank = pool != "batch"
  if uses_bank and bank_size < 1:
    raise ValueError(f"pool={pool!r} needs bank_size >= 1, got {bank_size}")
  if match_period < 1 or not 0 <= match_duration <= match_period:
    raise ValueError(
      f"need match_period >= 1 and 0 <= match_duration <= match_period, got "
      f"{match_period}, {match_duration}"
    )
  if not 0.0 <= match_alpha <= 1.0:
    raise ValueError(f"match_alpha must be in [0, 1], got {match_alpha}")
  if shortlist_k < 1:
    raise ValueError(f"shortlist_k must be >= 1, got {shortlist_k}")
  needs_tokens = fine_grained or inter_weight > 0 or intra_weight > 0
  two_views = intra_weight > 0
  bank_tokens = uses_bank and needs_tokens
  ot_kw = dict(epsilon=ot_epsilon, num_iters=ot_iters, solver=ot_solver, chunk_size=ot_chunk)

  def init(embed_dim: int) -> dict:
    if not uses_bank:
      return {"step": jnp.zeros((), jnp.int32)}
    return _init_bank(bank_size, embed_dim, (context_length, embed_dim) if bank_tokens else None)

  def ot_contrastive(x, wx, y, wy):
    d_ab = fine_grained_ot(x, wx, y, wy, grad="unroll", **ot_kw).cost
    return _symmetric_ce(-d_ab / inter_temperature), d_ab

  def loss(emb: Embeddings, mstate, rng):
    del rng
    b = emb.zimg.shape[0]
    step = mstate["step"]
    index_b, poisoned_b = _flags(emb.batch, b)
    sg = jax.lax.stop_gradient
    if uses_bank and b > bank_size:
      raise ValueError(f"bank_size={bank_size} must be >= the global batch size {b}")
    if needs_tokens:
      if emb.img_tokens is None or emb.txt_tokens is None or emb.txt_mask is None:
        raise ValueError("otcclip needs Embeddings.img_tokens/txt_tokens/txt_mask")
      if bank_tokens and emb.txt_tokens.shape[1] != context_length:
        raise ValueError(
          f"otcclip: context_length={context_length} but txt_tokens have length "
          f"{emb.txt_tokens.shape[1]} (set it to config.data.context_length)"
        )
      wimg_bn = jnp.ones(emb.img_tokens.shape[:2], jnp.float32)
      wtxt_bl = text_weights(emb.txt_mask, exclude_sos=exclude_sos, exclude_eot=exclude_eot)
    # Pool = [bank (detached); batch (with gradient)]; image i's own caption sits at offset + i.
    # A bank-only pool (RoCLIP) marks the batch entries unusable for matching.
    offset = bank_size if uses_bank else 0
    own_b = offset + jnp.arange(b)
    batch_valid_b = jnp.full((b,), pool != "bank")
    z_pd, valid_p, idx_p, poi_p = emb.ztxt, batch_valid_b, index_b, poisoned_b
    tok_pld = emb.txt_tokens if needs_tokens else None
    tw_pl = wtxt_bl if needs_tokens else None
    if uses_bank:
      z_pd = jnp.concatenate([sg(mstate["bank_z"]), z_pd], 0)
      valid_p = jnp.concatenate([mstate["bank_valid"], valid_p], 0)
      idx_p = jnp.concatenate([mstate["bank_index"], idx_p], 0)
      poi_p = jnp.concatenate([mstate["bank_poisoned"], poi_p], 0)
      if bank_tokens:
        tok_pld = jnp.concatenate([sg(mstate["bank_tokens"]), tok_pld], 0)
        tw_pl = jnp.concatenate([mstate["bank_tw"], tw_pl], 0)

    active = _cadence(
      step, match_start=match_start, match_period=match_period, match_duration=match_duration
    )
    ot_fn = None
    if fine_grained:

      def ot_fn(ia_k, ib_k):
        return fine_grained_ot(
          sg(emb.img_tokens), wimg_bn, sg(tok_pld), tw_pl, ia_k, ib_k,
          grad="stop_gradient", **ot_kw,
        ).cost  # fmt: skip

    def do_match(_):
      choice, d = rematch(
        sg(emb.zimg), sg(z_pd), valid_p,
        shortlist_k=shortlist_k, match_alpha=match_alpha, ot_fn=ot_fn,
      )  # fmt: skip
      ok = valid_p[choice]  # an empty pool (unfilled bank) keeps the own caption
      return jnp.where(ok, choice, own_b), jnp.where(ok, d, 0.0)

    def keep_own(_):
      return own_b, jnp.zeros((b,), jnp.float32)

    choice_b, d_match_b = jax.lax.cond(active, do_match, keep_own, None)
    ztrain_bd = z_pd[choice_b]
    clip_value, clip_aux = losses.clip_loss(emb.zimg, ztrain_bd, emb.logit_scale)
    total = clip_value
    act = active.astype(jnp.float32)
    clean_b = ~poisoned_b
    same_b = idx_p[choice_b] == index_b
    aux = {
      "loss_clip": clip_value,
      "batch_acc_i2t": clip_aux["batch_acc_i2t"],
      "remat/active": act,
      "remat/acc_clean": act * _masked_mean(same_b.astype(jnp.float32), clean_b),
      "remat/poison_keep": act * _masked_mean(poi_p[choice_b].astype(jnp.float32), poisoned_b),
      "remat/poison_own": act * _masked_mean(same_b.astype(jnp.float32), poisoned_b),
      "remat/clean_to_poison": act * _masked_mean(poi_p[choice_b].astype(jnp.float32), clean_b),
      "remat/changed": act * jnp.mean((choice_b != own_b).astype(jnp.float32)),
      "remat/n_poisoned": jnp.sum(poisoned_b.astype(jnp.float32)),
    }
    if fine_grained:
      own_res = fine_grained_ot(
        sg(emb.img_tokens), wimg_bn, sg(emb.txt_tokens), wtxt_bl,
        jnp.arange(b), jnp.arange(b), grad="stop_gradient", **ot_kw,
      )  # fmt: skip
      aux["ot/d_own"] = jnp.mean(own_res.cost)
      aux["ot/d_matched"] = act * jnp.mean(d_match_b)
      aux["ot/marginal_error_max"] = jnp.max(own_res.marginal_error)
    if inter_weight > 0:
      m = b if inter_batch <= 0 else min(inter_batch, b)
      # Training captions' token sets: batch captions carry gradient, bank ones do not.
      tok_bld, tw_bl = tok_pld[choice_b], tw_pl[choice_b]
      l_inter, d_ab = ot_contrastive(emb.img_tokens[:m], wimg_bn[:m], tok_bld[:m], tw_bl[:m])
      total = total + inter_weight * l_inter
      aux["loss_inter"] = l_inter
      aux["ot/inter_gap"] = jnp.mean(d_ab) - jnp.mean(jnp.diagonal(d_ab))
    if intra_weight > 0:
      ex = emb.extras or {}
      if "img_tokens2" not in ex:
        raise ValueError("intra_weight > 0 needs the two-view forward (extras['img_tokens2'])")
      wtxt2 = text_weights(ex["txt_mask2"], exclude_sos=exclude_sos, exclude_eot=exclude_eot)
      if intra_mode == "distance":
        ar = jnp.arange(b)
        kw = dict(grad="unroll", **ot_kw)
        d_img = fine_grained_ot(emb.img_tokens, wimg_bn, ex["img_tokens2"], wimg_bn, ar, ar, **kw)
        d_txt = fine_grained_ot(emb.txt_tokens, wtxt_bl, ex["txt_tokens2"], wtxt2, ar, ar, **kw)
        l_img, l_txt = jnp.mean(d_img.cost), jnp.mean(d_txt.cost)
      else:
        l_img, _ = ot_contrastive(emb.img_tokens, wimg_bn, ex["img_tokens2"], wimg_bn)
        l_txt, _ = ot_contrastive(emb.txt_tokens, wtxt_bl, ex["txt_tokens2"], wtxt2)
      l_intra = l_img + l_txt
      total = total + intra_weight * l_intra
      aux["loss_intra_img"] = l_img
      aux["loss_intra_txt"] = l_txt
    new_state = dict(mstate, step=step + 1)
    if uses_bank:
      slots_b = (mstate["ptr"] + jnp.arange(b)) % bank_size
      new_state["bank_z"] = mstate["bank_z"].at[slots_b].set(sg(emb.ztxt))
      new_state["bank_valid"] = mstate["bank_valid"].at[slots_b].set(True)
      new_state["bank_index"] = mstate["bank_index"].at[slots_b].set(index_b)
      new_state["bank_poisoned"] = mstate["bank_poisoned"].at[slots_b].set(poisoned_b)
      new_state["ptr"] = (mstate["ptr"] + b) % bank_size
      if bank_tokens:
        new_state["bank_tokens"] = mstate["bank_tokens"].at[slots_b].set(sg(emb.txt_tokens))
        new_state["bank_tw"] = mstate["bank_tw"].at[slots_b].set(wtxt_bl)
    return total, aux, new_state

  forward = (
    _two_view_forward(
      aug_shift=aug_shift, aug_jitter=aug_jitter, token_dropout_rate=token_dropout_rate
    )
    if two_views
    else None
  )
  return Method(loss=loss, init=init, needs_tokens=needs_tokens, forward=forward)


def otcclip(
  *,
  pool: str,
  bank_size: int,
  context_length: int,
  shortlist_k: int,
  match_alpha: float,
  match_start: int,
  match_period: int,
  match_duration: int,
  ot_epsilon: float,
  ot_iters: int,
  ot_solver: str,
  ot_chunk: int,
  exclude_sos: bool,
  exclude_eot: bool,
  inter_weight: float,
  inter_temperature: float,
  inter_batch: int,
  intra_weight: float,
  intra_mode: str,
  aug_shift: int,
  aug_jitter: float,
  token_dropout: float,
) -> Method:
  """OTCCLIP (see the module docstring for every argument's meaning)."""
  return _build_rematching(
    fine_grained=True,
    pool=pool,
    bank_size=bank_size,
    context_length=context_length,
    shortlist_k=shortlist_k,
    match_alpha=match_alpha,
    match_start=match_start,
    match_period=match_period,
    match_duration=match_duration,
    ot_epsilon=ot_epsilon,
    ot_iters=ot_iters,
    ot_solver=ot_solver,
    ot_chunk=ot_chunk,
    exclude_sos=exclude_sos,
    exclude_eot=exclude_eot,
    inter_weight=inter_weight,
    inter_temperature=inter_temperature,
    inter_batch=inter_batch,
    intra_weight=intra_weight,
    intra_mode=intra_mode,
    aug_shift=aug_shift,
    aug_jitter=aug_jitter,
    token_dropout_rate=token_dropout,
  )


def roclip(
  *,
  pool: str,
  bank_size: int,
  match_start: int,
  match_period: int,
  match_duration: int,
) -> Method:
  """RoCLIP-style global nearest-neighbour re-matching (RoCLIP: pool="bank", bank 21845,
  match_period = 2 epochs, match_duration = 1 epoch)."""
  return _build_rematching(
    fine_grained=False,
    pool=pool,
    bank_size=bank_size,
    context_length=0,
    shortlist_k=1,
    match_alpha=1.0,
    match_start=match_start,
    match_period=match_period,
    match_duration=match_duration,
    ot_epsilon=0.1,
    ot_iters=1,
    ot_solver="kernel",
    ot_chunk=1,
    exclude_sos=True,
    exclude_eot=False,
    inter_weight=0.0,
    inter_temperature=1.0,
    inter_batch=0,
    intra_weight=0.0,
    intra_mode="distance",
    aug_shift=0,
    aug_jitter=0.0,
    token_dropout_rate=0.0,
  )


# ----------------------------------------------------------------------------- SafeCLIP


def gmm_clean_posterior(x_b: jax.Array, *, num_iters: int) -> jax.Array:
  """Posterior of the higher-mean component of a 2-component 1-D GMM fitted by EM.

  Args:
    x_b: [b] scores (pair cosines).
    num_iters: EM iterations (initialised at the lower/upper quartiles).

  Returns:
    [b] probabilities in [0, 1].
  """
  x_b = x_b.astype(jnp.float32)
  mu = jnp.stack([jnp.quantile(x_b, 0.25), jnp.quantile(x_b, 0.75)])
  var = jnp.full((2,), jnp.maximum(jnp.var(x_b), 1e-6))
  pi = jnp.array([0.5, 0.5])

  def resp(mu, var, pi):
    logp_bc = (
      -0.5 * (x_b[:, None] - mu[None, :]) ** 2 / var[None, :]
      - 0.5 * jnp.log(2 * jnp.pi * var[None, :])
      + jnp.log(pi[None, :])
    )
    return jax.nn.softmax(logp_bc, axis=1)

  def body(_, p):
    mu, var, pi = p
    r_bc = resp(mu, var, pi)
    n_c = jnp.sum(r_bc, 0) + 1e-6
    mu = jnp.sum(r_bc * x_b[:, None], 0) / n_c
    var = jnp.maximum(jnp.sum(r_bc * (x_b[:, None] - mu[None, :]) ** 2, 0) / n_c, 1e-6)
    return mu, var, n_c / jnp.sum(n_c)

  mu, var, pi = jax.lax.fori_loop(0, num_iters, body, (mu, var, pi))
  r_bc = resp(mu, var, pi)
  return r_bc[:, jnp.argmax(mu)]


def safeclip(
  *,
  unimodal_steps: int,
  clip_warmup_steps: int,
  steps_per_epoch: int,
  safe_init: float,
  safe_growth: float,
  safe_max: float,
  gmm_iters: int,
  aug_shift: int,
  aug_jitter: float,
  token_dropout: float,
) -> Method:
  """SafeCLIP-style safe/risky split (see the module docstring)."""
  if not 0.0 < safe_init <= 1.0 or not 0.0 < safe_max <= 1.0:
    raise ValueError(f"safe_init and safe_max must be in (0, 1], got {safe_init}, {safe_max}")
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")

  def init(embed_dim: int) -> dict:
    del embed_dim
    return {"step": jnp.zeros((), jnp.int32)}

  def loss(emb: Embeddings, mstate, rng):
    del rng
    ex = emb.extras or {}
    if "zimg2" not in ex:
      raise ValueError("safeclip needs its two-view forward (extras['zimg2'])")
    b = emb.zimg.shape[0]
    step = mstate["step"]
    scale = emb.logit_scale
    _, poisoned_b = _flags(emb.batch, b)

    def infonce_rows(za, zb):
      logits = scale * za @ zb.T
      lab = jnp.arange(b)
      r1 = -jnp.take_along_axis(jax.nn.log_softmax(logits, 1), lab[:, None], 1)[:, 0]
      r2 = -jnp.take_along_axis(jax.nn.log_softmax(logits, 0), lab[None, :], 0)[0]
      return (r1 + r2) / 2

    uni_b = infonce_rows(emb.zimg, ex["zimg2"]) + infonce_rows(emb.ztxt, ex["ztxt2"])
    cos_b = jax.lax.stop_gradient(jnp.sum(emb.zimg * emb.ztxt, 1))
    post_b = gmm_clean_posterior(cos_b, num_iters=gmm_iters)
    split_start = unimodal_steps + clip_warmup_steps
    epochs = jnp.maximum(step - split_start, 0) // steps_per_epoch
    frac = jnp.minimum(safe_max, safe_init + safe_growth * epochs.astype(jnp.float32))
    n_safe = jnp.maximum(jnp.round(frac * b).astype(jnp.int32), 1)
    rank_b = jnp.argsort(jnp.argsort(-post_b))
    phase = jnp.where(step < unimodal_steps, 0, jnp.where(step < split_start, 1, 2))
    safe_b = jnp.where(phase == 2, rank_b < n_safe, phase == 1)
    # CLIP loss among safe pairs only (risky rows/columns removed from the softmax).
    logits = scale * emb.zimg @ emb.ztxt.T
    col_mask = jnp.where(safe_b[None, :], logits, -jnp.inf)
    row_mask = jnp.where(safe_b[:, None], logits, -jnp.inf)
    diag = jnp.diagonal(logits)
    lse_i2t = jax.nn.logsumexp(col_mask, axis=1)
    lse_t2i = jax.nn.logsumexp(row_mask, axis=0)
    clip_b = (lse_i2t - diag + lse_t2i - diag) / 2
    safe_f = safe_b.astype(jnp.float32)
    clip_term = jnp.sum(jnp.where(safe_b, clip_b, 0.0)) / jnp.maximum(jnp.sum(safe_f), 1.0)
    uni_term = jnp.sum(jnp.where(safe_b, 0.0, uni_b)) / b
    total = jnp.where(phase == 0, jnp.mean(uni_b), clip_term + uni_term)
    aux = {
      "loss_clip_safe": clip_term,
      "loss_unimodal": jnp.mean(uni_b),
      "safe/fraction": jnp.mean(safe_f),
      "safe/poison_in_safe": _masked_mean(safe_f, poisoned_b),
      "safe/clean_in_safe": _masked_mean(safe_f, ~poisoned_b),
      "remat/n_poisoned": jnp.sum(poisoned_b.astype(jnp.float32)),
    }
    return total, aux, {"step": step + 1}

  forward = _two_view_forward(
    aug_shift=aug_shift, aug_jitter=aug_jitter, token_dropout_rate=token_dropout
  )
  return Method(loss=loss, init=init, needs_tokens=False, forward=forward)


METHODS: dict[str, Callable[..., Method]] = {
  "otcclip": otcclip,
  "roclip": roclip,
  "safeclip": safeclip,
}
