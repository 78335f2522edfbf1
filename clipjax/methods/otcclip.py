"""OTCCLIP (Zhang et al., EMNLP 2025): poisoning-robust CLIP pre-training by OT re-matching.

Paper: "Pre-training CLIP against Data Poisoning with Optimal Transport-based Matching and
Alignment" (arXiv 2509.18717). No public code exists; only the abstract and summaries
(shared/METHODS.md §4). Everything marked *[reconstructed]* is a clipjax choice and a field of
:class:`OTCConfig` (set explicitly in ``configs/otcclip.py``). The RoCLIP-style and
SafeCLIP-style baselines live in ``roclip.py`` and ``safeclip.py``; the pool, bank, cadence,
matching diagnostics and augmentations shared with RoCLIP in ``rematching.py``.

Fine-grained OT distance (:func:`fine_grained_ot`). For an image with projected patch tokens
``x_n`` and a caption with projected word tokens ``y_m``, ``d_OT = <P*, 1 − cos(x_n, y_m)>`` with
entropic Sinkhorn (fixed iterations, :mod:`clipjax.ot.batched`) and uniform weights over valid
tokens; padding weighs 0. *[reconstructed]* ``exclude_sos`` drops the start token (no content,
identical for every caption); ``exclude_eot`` drops the pooled end token.

Caption re-assignment (``matching``) *[reconstructed]*: ``"ot"`` shortlists each image's top
``shortlist_k`` pool captions by global cosine and re-ranks them by ``match_alpha · cos −
(1 − match_alpha) · d_OT`` (``match_alpha=0``: pure OT); ``"global"`` takes the global-cosine
nearest neighbour (RoCLIP's rule, the attribution ablation on the same pool and losses);
``"none"`` never re-matches. Pool, bank, enqueue policy and cadence: ``rematching.py``.

Loss (one function per term): ``L = clip_weight · L_CLIP(image, re-matched caption) +
inter_weight · L_inter + intra_weight · L_intra``.

* :func:`inter_loss` *[reconstructed]*: symmetric InfoNCE over logits ``−d_OT(image_i,
  caption_j) / inter_temperature`` between the first ``inter_batch`` images (0: all) and their
  training captions (inter_batch² OT problems).
* :func:`intra_loss` *[reconstructed]*: OT between the token sets of two views of each image
  (and of each caption). ``intra_mode``:

  - ``"divergence"`` (default): the debiased distance ``d(x, x') − ½ d(x, x) − ½ d(x', x')``
    (the Sinkhorn-divergence construction on d_OT). It vanishes when the views agree whatever
    the token geometry, and its self terms reward spread-out tokens, so it does not drive an
    item's tokens together.
  - ``"distance"``: ``d(x, x')`` alone. The entropic plan spreads mass over all token pairs, so
    ``d(x, x') > 0`` for two identical but diverse sets and the loss is minimised by collapsing
    all tokens of an item to one direction; only the CLIP loss opposes it
    (``tests/methods/test_otcclip.py`` shows the collapse).
  - ``"contrastive"``: InfoNCE over ``−d_OT / inter_temperature`` between the two views (other
    items are negatives; within-item collapse is not penalised either).

  Second views come from ``rematching.two_view_forward``: a random translation of at most
  ``aug_shift`` pixels with brightness/contrast jitter ``aug_jitter`` (no flips or crops: the
  synthetic captions name positions) and token dropout ``token_dropout``.

OT gradients: the loss terms differentiate through the unrolled Sinkhorn iterations
(``grad="unroll"``); re-matching scores use detached features. Logged every step: the
``remat/*`` diagnostics (``rematching.match_diagnostics``), ``ot/d_own``, ``ot/d_matched``,
``ot/marginal_error_max``, ``ot/inter_gap`` and the loss terms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp

from clipjax import losses
from clipjax.methods import rematching
from clipjax.methods.base import Embeddings, Method
from clipjax.ot import batched

__all__ = [
  "INTRA_MODES",
  "MATCHINGS",
  "METHODS",
  "OTCConfig",
  "build",
  "fine_grained_ot",
  "inter_loss",
  "intra_loss",
  "otcclip",
  "token_diversity",
]

MATCHINGS = ("ot", "global", "none")
INTRA_MODES = ("divergence", "distance", "contrastive")


@dataclasses.dataclass(frozen=True)
class OTCConfig:
  """OTCCLIP's hyper-parameters (module docstring); configs set every field explicitly.

  Attributes:
    matching: ``"ot"`` (OTCCLIP), ``"global"`` (nearest neighbour by global cosine) or
      ``"none"``.
    pool: ``"batch"``, ``"bank"`` or ``"bank+batch"`` (``rematching.POOLS``).
    bank_size: FIFO bank slots (>= the global batch when a bank is used).
    context_length: caption token length (the bank's token sets).
    enqueue: ``"matching"`` (only on re-matching steps, RoCLIP) or ``"always"``.
    shortlist_k: captions re-ranked by OT per image.
    match_alpha: weight of the global cosine in the OT re-ranking score.
    match_start, match_period, match_duration: the re-matching cadence in steps.
    ot_epsilon, ot_iters, ot_solver, ot_chunk: Sinkhorn of :func:`fine_grained_ot`.
    exclude_sos, exclude_eot: drop the start / end token from caption token sets.
    clip_weight: weight of the CLIP loss on re-matched pairs.
    inter_weight, inter_temperature, inter_batch: :func:`inter_loss`.
    intra_weight, intra_mode: :func:`intra_loss`.
    aug_shift, aug_jitter, token_dropout: augmentations (``rematching``).
    cross_aug: train on augmented pairs (RoCLIP's ``--cross_aug``; ``rematching``).
    truth_labels: label sets sent by the trainer (``config.data.train_labels``) that define an
      equivalent caption in the diagnostics.
  """

  matching: Literal["ot", "global", "none"] = "ot"
  pool: str = "bank+batch"
  bank_size: int = 1024
  context_length: int = 16
  enqueue: Literal["matching", "always"] = "always"
  shortlist_k: int = 8
  match_alpha: float = 0.5
  match_start: int = 0
  match_period: int = 1
  match_duration: int = 1
  ot_epsilon: float = 0.05
  ot_iters: int = 30
  ot_solver: str = "kernel"
  ot_chunk: int = 4096
  exclude_sos: bool = True
  exclude_eot: bool = False
  clip_weight: float = 1.0
  inter_weight: float = 0.1
  inter_temperature: float = 0.05
  inter_batch: int = 32
  intra_weight: float = 0.1
  intra_mode: Literal["divergence", "distance", "contrastive"] = "divergence"
  aug_shift: int = 2
  aug_jitter: float = 0.1
  token_dropout: float = 0.1
  cross_aug: bool = False
  truth_labels: tuple[str, ...] = ()

  def __post_init__(self):
    problems = []
    if self.matching not in MATCHINGS:
      problems.append(f"matching must be one of {MATCHINGS}, got {self.matching!r}")
    if self.pool not in rematching.POOLS:
      problems.append(f"pool must be one of {rematching.POOLS}, got {self.pool!r}")
    if self.enqueue not in rematching.ENQUEUE:
      problems.append(f"enqueue must be one of {rematching.ENQUEUE}, got {self.enqueue!r}")
    if self.uses_bank and self.bank_size < 1:
      problems.append(f"pool={self.pool!r} needs bank_size >= 1, got {self.bank_size}")
    if self.intra_mode not in INTRA_MODES:
      problems.append(f"intra_mode must be one of {INTRA_MODES}, got {self.intra_mode!r}")
    if not 0.0 <= self.match_alpha <= 1.0:
      problems.append(f"match_alpha must be in [0, 1], got {self.match_alpha}")
    if self.shortlist_k < 1:
      problems.append(f"shortlist_k must be >= 1, got {self.shortlist_k}")
    for name in ("clip_weight", "inter_weight", "intra_weight", "token_dropout", "aug_jitter"):
      if getattr(self, name) < 0:
        problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
    if problems:
      raise ValueError("Invalid OTCConfig: " + "; ".join(problems))
    rematching.check_cadence(self.match_period, self.match_duration)

  @property
  def uses_bank(self) -> bool:
    return self.pool != "batch"

  @property
  def needs_tokens(self) -> bool:
    return self.matching == "ot" or self.inter_weight > 0 or self.intra_weight > 0

  @property
  def ot_kwargs(self) -> dict[str, Any]:
    return dict(
      epsilon=self.ot_epsilon,
      num_iters=self.ot_iters,
      solver=self.ot_solver,
      chunk_size=self.ot_chunk,
    )

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> OTCConfig:
    """From `config.method.kwargs`; unknown keys are an error naming them."""
    d = dict(d)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"unknown OTCCLIP options {unknown}; valid: {sorted(fields)}")
    if "truth_labels" in d:
      d["truth_labels"] = tuple(d["truth_labels"])
    return cls(**d)


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


def _ot_infonce(x, wx, y, wy, *, temperature: float, ot_kwargs) -> tuple[jax.Array, jax.Array]:
  d_ab = fine_grained_ot(x, wx, y, wy, grad="unroll", **ot_kwargs).cost
  i2t_b, t2i_b = losses.infonce(-d_ab / temperature)
  return jnp.mean(i2t_b + t2i_b) / 2, d_ab


def inter_loss(
  img_tokens_bnd, wimg_bn, txt_tokens_bld, wtxt_bl, cfg: OTCConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_inter: InfoNCE over ``−d_OT / inter_temperature`` between images and training captions.

  Args:
    img_tokens_bnd: [b, n, d] patch tokens; wimg_bn: [b, n] weights.
    txt_tokens_bld: [b, L, d] token sets of each image's training caption; wtxt_bl: weights.
    cfg: :class:`OTCConfig`.

  Returns:
    `(loss, aux)` with ``ot/inter_gap`` (mean off-diagonal minus mean diagonal d_OT).
  """
  b = img_tokens_bnd.shape[0]
  m = b if cfg.inter_batch <= 0 else min(cfg.inter_batch, b)
  value, d_ab = _ot_infonce(
    img_tokens_bnd[:m], wimg_bn[:m], txt_tokens_bld[:m], wtxt_bl[:m],
    temperature=cfg.inter_temperature, ot_kwargs=cfg.ot_kwargs,
  )  # fmt: skip
  return value, {"ot/inter_gap": jnp.mean(d_ab) - jnp.mean(jnp.diagonal(d_ab))}


def _intra_one(x, wx, x2, wx2, cfg: OTCConfig) -> jax.Array:
  """One modality's intra term between views ``x`` and ``x2`` ([b, n, d] with weights)."""
  if cfg.intra_mode == "contrastive":
    return _ot_infonce(x, wx, x2, wx2, temperature=cfg.inter_temperature, ot_kwargs=cfg.ot_kwargs)[
      0
    ]
  ar = jnp.arange(x.shape[0])
  d = lambda p, wp, q, wq: fine_grained_ot(p, wp, q, wq, ar, ar, grad="unroll", **cfg.ot_kwargs)
  cross_b = d(x, wx, x2, wx2).cost
  if cfg.intra_mode == "distance":
    return jnp.mean(cross_b)
  self_b = d(x, wx, x, wx).cost
  self2_b = d(x2, wx2, x2, wx2).cost
  return jnp.mean(cross_b - 0.5 * self_b - 0.5 * self2_b)


def intra_loss(emb: Embeddings, wimg_bn, wtxt_bl, cfg: OTCConfig) -> tuple[jax.Array, dict]:
  """L_intra: image view ↔ image view plus caption view ↔ caption view (``cfg.intra_mode``).

  Returns:
    `(loss, aux)` with the two modalities' terms.
  """
  ex = emb.extras or {}
  if "img_tokens2" not in ex:
    raise ValueError("intra_weight > 0 needs the two-view forward (extras['img_tokens2'])")
  wtxt2 = rematching.text_weights(
    ex["txt_mask2"], exclude_sos=cfg.exclude_sos, exclude_eot=cfg.exclude_eot
  )
  l_img = _intra_one(emb.img_tokens, wimg_bn, ex["img_tokens2"], wimg_bn, cfg)
  l_txt = _intra_one(emb.txt_tokens, wtxt_bl, ex["txt_tokens2"], wtxt2, cfg)
  return l_img + l_txt, {"loss_intra_img": l_img, "loss_intra_txt": l_txt}


def token_diversity(tokens_bnd: jax.Array, w_bn: jax.Array | None = None) -> jax.Array:
  """Mean over items of the weighted mean pairwise cosine distance among an item's tokens.

  0 when every item's tokens point in one direction (collapse).
  """
  x = tokens_bnd / jnp.maximum(jnp.linalg.norm(tokens_bnd, axis=-1, keepdims=True), 1e-12)
  w = jnp.ones(tokens_bnd.shape[:2], jnp.float32) if w_bn is None else w_bn
  ww_bnn = w[:, :, None] * w[:, None, :] * (1.0 - jnp.eye(x.shape[1]))[None]
  dist_bnn = 1.0 - jnp.einsum("bnd,bmd->bnm", x, x)
  return jnp.mean(jnp.sum(ww_bnn * dist_bnn, (1, 2)) / jnp.maximum(jnp.sum(ww_bnn, (1, 2)), 1.0))


def build(cfg: OTCConfig) -> Method:
  """The re-matching method of ``cfg`` (OTCCLIP, its ablations and the RoCLIP-style baseline)."""
  sg = jax.lax.stop_gradient
  bank_tokens = cfg.uses_bank and cfg.needs_tokens

  def init(embed_dim: int) -> dict:
    if not cfg.uses_bank:
      return {"step": jnp.zeros((), jnp.int32)}
    shape = (cfg.context_length, embed_dim) if bank_tokens else None
    return rematching.init_bank(
      cfg.bank_size, embed_dim, num_labels=len(cfg.truth_labels), tokens_shape=shape
    )

  def loss(emb: Embeddings, mstate, rng):
    del rng
    b = emb.zimg.shape[0]
    step = mstate["step"]
    truth = rematching.batch_truth(emb.batch, b, cfg.truth_labels)
    wimg_bn = wtxt_bl = None
    if cfg.needs_tokens:
      if emb.img_tokens is None or emb.txt_tokens is None or emb.txt_mask is None:
        raise ValueError("otcclip needs Embeddings.img_tokens/txt_tokens/txt_mask")
      if bank_tokens and emb.txt_tokens.shape[1] != cfg.context_length:
        raise ValueError(
          f"otcclip: context_length={cfg.context_length} but txt_tokens have length "
          f"{emb.txt_tokens.shape[1]} (set it to config.data.context_length)"
        )
      wimg_bn = jnp.ones(emb.img_tokens.shape[:2], jnp.float32)
      wtxt_bl = rematching.text_weights(
        emb.txt_mask, exclude_sos=cfg.exclude_sos, exclude_eot=cfg.exclude_eot
      )
    # Pool = [bank (detached); batch (with gradient)]; image i's own caption sits at offset + i.
    # A bank-only pool (RoCLIP) marks the batch entries unusable for matching.
    own_b = (cfg.bank_size if cfg.uses_bank else 0) + jnp.arange(b)
    z_pd = emb.ztxt
    valid_p = jnp.full((b,), cfg.pool != "bank")
    pool_truth = dict(truth)
    tok_pld, tw_pl = emb.txt_tokens, wtxt_bl
    if cfg.uses_bank:
      z_pd = jnp.concatenate([sg(mstate["bank_z"]), z_pd], 0)
      valid_p = jnp.concatenate([mstate["bank_valid"], valid_p], 0)
      pool_truth = {
        k: jnp.concatenate([mstate[f"bank_{k}"], truth[k]], 0)
        for k in ("index", "poisoned", "labels")
      }
      if bank_tokens:
        tok_pld = jnp.concatenate([sg(mstate["bank_tokens"]), tok_pld], 0)
        tw_pl = jnp.concatenate([mstate["bank_tw"], tw_pl], 0)

    active = rematching.cadence(
      step,
      match_start=cfg.match_start,
      match_period=cfg.match_period,
      match_duration=cfg.match_duration,
    )
    if cfg.matching == "none":
      active = jnp.zeros((), bool)
    ot_fn = None
    if cfg.matching == "ot":

      def ot_fn(ia_k, ib_k):
        return fine_grained_ot(
          sg(emb.img_tokens), wimg_bn, sg(tok_pld), tw_pl, ia_k, ib_k,
          grad="stop_gradient", **cfg.ot_kwargs,
        ).cost  # fmt: skip

    def rematch_fn(fn):
      choice, d = rematching.rematch(
        sg(emb.zimg), sg(z_pd), valid_p,
        shortlist_k=cfg.shortlist_k, match_alpha=cfg.match_alpha, ot_fn=fn,
      )  # fmt: skip
      ok = valid_p[choice]  # an empty pool (unfilled bank) keeps the own caption
      return jnp.where(ok, choice, own_b), jnp.where(ok, d, 0.0)

    def do_match(_):
      choice, d = rematch_fn(ot_fn)
      # The global-cosine nearest neighbour on the same pool, for the paired diagnostics.
      nearest = choice if ot_fn is None else rematch_fn(None)[0]
      return choice, d, nearest

    def keep_own(_):
      return own_b, jnp.zeros((b,), jnp.float32), own_b

    choice_b, d_match_b, global_b = jax.lax.cond(active, do_match, keep_own, None)
    clip_value, clip_aux = losses.clip_loss(emb.zimg, z_pd[choice_b], emb.logit_scale)
    total = cfg.clip_weight * clip_value
    aux = {"loss_clip": clip_value, "batch_acc_i2t": clip_aux["batch_acc_i2t"]}
    aux.update(rematching.match_diagnostics(choice_b, global_b, own_b, truth, pool_truth, active))
    if cfg.matching == "ot":
      own_res = fine_grained_ot(
        sg(emb.img_tokens), wimg_bn, sg(emb.txt_tokens), wtxt_bl,
        jnp.arange(b), jnp.arange(b), grad="stop_gradient", **cfg.ot_kwargs,
      )  # fmt: skip
      aux["ot/d_own"] = jnp.mean(own_res.cost)
      aux["ot/d_matched"] = active.astype(jnp.float32) * jnp.mean(d_match_b)
      aux["ot/marginal_error_max"] = jnp.max(own_res.marginal_error)
    if cfg.inter_weight > 0:
      # Training captions' token sets: batch captions carry gradient, bank ones do not.
      l_inter, inter_aux = inter_loss(
        emb.img_tokens, wimg_bn, tok_pld[choice_b], tw_pl[choice_b], cfg
      )
      total = total + cfg.inter_weight * l_inter
      aux.update(inter_aux, loss_inter=l_inter)
    if cfg.intra_weight > 0:
      l_intra, intra_aux = intra_loss(emb, wimg_bn, wtxt_bl, cfg)
      total = total + cfg.intra_weight * l_intra
      aux.update(intra_aux)
    if cfg.needs_tokens:
      aux["tokens/diversity_img"] = token_diversity(sg(emb.img_tokens))
      aux["tokens/diversity_txt"] = token_diversity(sg(emb.txt_tokens), wtxt_bl)
    new_state = dict(mstate, step=step + 1)
    if cfg.uses_bank:
      entries = {
        "bank_z": sg(emb.ztxt),
        "bank_index": truth["index"],
        "bank_poisoned": truth["poisoned"],
        "bank_labels": truth["labels"],
      }
      if bank_tokens:
        entries.update(bank_tokens=sg(emb.txt_tokens), bank_tw=wtxt_bl)
      write = active if cfg.enqueue == "matching" else jnp.ones((), bool)
      new_state = rematching.enqueue(new_state, entries, write)
    return total, aux, new_state

  forward = None
  if cfg.intra_weight > 0 or cfg.cross_aug:
    forward = rematching.two_view_forward(
      second_view=cfg.intra_weight > 0,
      cross_aug=cfg.cross_aug,
      aug_shift=cfg.aug_shift,
      aug_jitter=cfg.aug_jitter,
      token_dropout_rate=cfg.token_dropout,
    )
  return Method(loss=loss, init=init, needs_tokens=cfg.needs_tokens, forward=forward)


def otcclip(**kwargs: Any) -> Method:
  """OTCCLIP from `config.method.kwargs` (the fields of :class:`OTCConfig`)."""
  return build(OTCConfig.from_dict(kwargs))


METHODS: dict[str, Callable[..., Method]] = {"otcclip": otcclip}
