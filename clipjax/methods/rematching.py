"""Caption re-matching shared by OTCCLIP and the RoCLIP-style baseline: pool, bank, cadence,
matching diagnostics and the augmentations of the poisoning-robust methods.

* Pool: ``"batch"`` (the global batch), ``"bank"`` (a FIFO memory bank of past text features,
  queried before the current batch is enqueued, as RoCLIP) or ``"bank+batch"``. Bank entries
  are detached (RoCLIP); batch captions keep their gradient. The bank stores fixed-size arrays:
  global embeddings [K, d], optionally projected token sets [K, L, d] with weights, and each
  entry's example index, poison flag and ground-truth labels (for the diagnostics).
* Enqueue policy (``enqueue``): ``"matching"`` writes the batch's captions into the bank only on
  re-matching steps (RoCLIP's ``text_memory_bank(text_embeds, update=True)`` sits inside its
  ``epoch % break_epoch == 0`` branch); ``"always"`` writes them every step.
* Cadence: re-matching is active when ``step >= match_start`` and ``(step − match_start) %
  match_period < match_duration`` (RoCLIP: break_epoch = 2 over 1-based epochs, i.e.
  ``match_start = E, match_period = 2·E, match_duration = E`` for E steps per epoch).
* Matching (:func:`rematch`): each image gets the pool caption with the highest global cosine
  (RoCLIP), or the best of a top-``shortlist_k`` cosine shortlist re-ranked by a set distance
  (OTCCLIP's fine-grained OT).

Matching diagnostics (:func:`match_diagnostics`, ``remat/*`` in aux, 0 on inactive steps),
from ground truth the batch carries: ``index`` (the example), ``is_poisoned``/``is_backdoor``
(both count as poisoned; absent: every pair is clean) and ``labels/<name>`` (the label sets
named by the method's ``truth_labels``, sent by the trainer for ``config.data.train_labels``).
On the clean images: ``acc_clean`` (the re-matched caption is the image's own), ``acc_equiv``
(it has the own caption's labels in every such label set: an equivalent description; only with
labels), and the same two for the pool's global-cosine nearest neighbour (``acc_clean_global``,
``acc_equiv_global``), computed on the same step and pool so that OT re-ranking and global
matching are compared pair by pair. Also ``poison_keep``, ``poison_own``, ``clean_to_poison``,
``changed``, ``n_poisoned``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from clipjax.methods.base import Embeddings, model_params

__all__ = [
  "ENQUEUE",
  "POOLS",
  "augment_images",
  "batch_truth",
  "cadence",
  "enqueue",
  "init_bank",
  "match_diagnostics",
  "rematch",
  "text_weights",
  "token_dropout",
]

POOLS = ("batch", "bank", "bank+batch")
ENQUEUE = ("matching", "always")


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


# ----------------------------------------------------------------------------- augmentations


def augment_images(
  rng: jax.Array, images_bhwc: jax.Array, *, shift: int, jitter: float
) -> jax.Array:
  """Random translation (edge padding) and brightness/contrast jitter.

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
  first `eot_id` (where the text tower pools). `rng` may be one key, or [b] typed keys
  (``jax.random.key``; one per caption, e.g. folded from the example index for a fixed
  per-caption augmentation).

  Args:
    rng: PRNG key, or [b] typed keys.
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
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.ndim == 1:
    u_bl = jax.vmap(lambda k: jax.random.uniform(k, (length,)))(rng)
  else:
    u_bl = jax.random.uniform(rng, (b, length))
  drop = droppable & (u_bl < rate)
  keep = (pos_l[None, :] <= eot_b[:, None]) & ~drop
  order = jnp.argsort(~keep, axis=1, stable=True)
  out = jnp.take_along_axis(ids_bl, order, axis=1)
  n_keep = jnp.sum(keep, axis=1)
  return jnp.where(pos_l[None, :] < n_keep[:, None], out, jnp.zeros_like(out))


# ----------------------------------------------------------------------------- matching


def cadence(step, *, match_start: int, match_period: int, match_duration: int) -> jax.Array:
  """Whether re-matching is active at `step` (module docstring)."""
  return (step >= match_start) & ((step - match_start) % match_period < match_duration)


def check_cadence(match_period: int, match_duration: int) -> None:
  if match_period < 1 or not 0 <= match_duration <= match_period:
    raise ValueError(
      f"need match_period >= 1 and 0 <= match_duration <= match_period, got "
      f"{match_period}, {match_duration}"
    )


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
    ot_fn: ``ot_fn(ia_k, ib_k) -> d [k]`` set distance for image/pool index pairs, or None
      (global nearest neighbour, RoCLIP).

  Returns:
    ``(choice_b, d_b)``: pool index of each image's new caption, and its distance (0 without
    ``ot_fn``).
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


# ----------------------------------------------------------------------------- bank


def batch_truth(batch: dict | None, b: int, label_names: tuple[str, ...]) -> dict[str, jax.Array]:
  """Ground truth of a batch: ``index`` [b], ``poisoned`` [b] bool, ``labels`` [b, S] int32.

  Args:
    batch: the global batch (``index``, ``is_poisoned``/``is_backdoor``, ``labels/<name>``).
    b: batch size.
    label_names: the S label sets stacked into ``labels`` (each must be in the batch as
      ``labels/<name>``: set ``config.data.train_labels``).
  """
  batch = batch or {}
  none_b = jnp.zeros((b,), bool)
  poisoned_b = batch.get("is_poisoned", none_b).astype(bool)
  poisoned_b = poisoned_b | batch.get("is_backdoor", none_b).astype(bool)
  missing = [n for n in label_names if f"labels/{n}" not in batch]
  if missing:
    raise ValueError(
      f"label sets {missing} are not in the batch (have "
      f"{sorted(k for k in batch if k.startswith('labels/'))}): add them to "
      "config.data.train_labels"
    )
  labels_bs = jnp.stack(
    [batch[f"labels/{n}"].astype(jnp.int32) for n in label_names] or [jnp.zeros((b,), jnp.int32)],
    1,
  )[:, : len(label_names)]
  return {
    "index": batch.get("index", jnp.arange(b)).astype(jnp.int32),
    "poisoned": poisoned_b,
    "labels": labels_bs,
  }


def init_bank(
  bank_size: int, embed_dim: int, *, num_labels: int, tokens_shape: tuple[int, int] | None
) -> dict[str, jax.Array]:
  """An empty FIFO bank (every slot invalid) plus the step counter."""
  state = {
    "step": jnp.zeros((), jnp.int32),
    "ptr": jnp.zeros((), jnp.int32),
    "bank_z": jnp.zeros((bank_size, embed_dim), jnp.float32),
    "bank_valid": jnp.zeros((bank_size,), bool),
    "bank_index": jnp.full((bank_size,), -1, jnp.int32),
    "bank_poisoned": jnp.zeros((bank_size,), bool),
    "bank_labels": jnp.full((bank_size, num_labels), -1, jnp.int32),
  }
  if tokens_shape is not None:
    length, dim = tokens_shape
    state["bank_tokens"] = jnp.zeros((bank_size, length, dim), jnp.float32)
    state["bank_tw"] = jnp.zeros((bank_size, length), jnp.float32)
  return state


def enqueue(mstate: dict, entries: dict[str, jax.Array], write: jax.Array) -> dict:
  """Writes a batch's ``entries`` (bank key → [b, ...] detached values) at the FIFO pointer.

  Args:
    mstate: the bank state (:func:`init_bank`).
    entries: values for ``bank_z``, ``bank_index``, ``bank_poisoned``, ``bank_labels`` and,
      when the bank holds tokens, ``bank_tokens``, ``bank_tw``.
    write: scalar bool; False leaves the bank unchanged (``enqueue="matching"`` off-steps).

  Returns:
    The new state (``step`` unchanged).
  """
  bank_size = mstate["bank_z"].shape[0]
  b = entries["bank_z"].shape[0]
  if b > bank_size:
    raise ValueError(f"bank_size={bank_size} must be >= the global batch size {b}")
  slots_b = (mstate["ptr"] + jnp.arange(b)) % bank_size
  new = dict(mstate)
  for name, value in {**entries, "bank_valid": jnp.ones((b,), bool)}.items():
    new[name] = jnp.where(write, mstate[name].at[slots_b].set(value), mstate[name])
  new["ptr"] = jnp.where(write, (mstate["ptr"] + b) % bank_size, mstate["ptr"])
  return new


def _masked_mean(x_b: jax.Array, m_b: jax.Array) -> jax.Array:
  m = m_b.astype(jnp.float32)
  return jnp.sum(x_b.astype(jnp.float32) * m) / jnp.maximum(jnp.sum(m), 1.0)


def match_diagnostics(
  choice_b: jax.Array,
  global_b: jax.Array,
  own_b: jax.Array,
  truth: dict[str, jax.Array],
  pool_truth: dict[str, jax.Array],
  active: jax.Array,
) -> dict[str, jax.Array]:
  """The ``remat/*`` diagnostics (module docstring).

  Args:
    choice_b: [b] pool index of each image's training caption.
    global_b: [b] pool index of each image's global-cosine nearest neighbour.
    own_b: [b] pool index of each image's own caption.
    truth: :func:`batch_truth` of the batch.
    pool_truth: the same keys for the pool ([P] / [P, S]).
    active: scalar bool, re-matching step.
  """
  act = active.astype(jnp.float32)
  clean_b, poisoned_b = ~truth["poisoned"], truth["poisoned"]
  out = {"remat/active": act}
  for suffix, pick_b in (("", choice_b), ("_global", global_b)):
    same_b = pool_truth["index"][pick_b] == truth["index"]
    out[f"remat/acc_clean{suffix}"] = act * _masked_mean(same_b, clean_b)
    if truth["labels"].shape[1]:
      equiv_b = jnp.all(pool_truth["labels"][pick_b] == truth["labels"], axis=1)
      out[f"remat/acc_equiv{suffix}"] = act * _masked_mean(equiv_b, clean_b)
  same_b = pool_truth["index"][choice_b] == truth["index"]
  picked_poison_b = pool_truth["poisoned"][choice_b]
  out.update(
    {
      "remat/poison_keep": act * _masked_mean(picked_poison_b, poisoned_b),
      "remat/poison_own": act * _masked_mean(same_b, poisoned_b),
      "remat/clean_to_poison": act * _masked_mean(picked_poison_b, clean_b),
      "remat/changed": act * jnp.mean((choice_b != own_b).astype(jnp.float32)),
      "remat/n_poisoned": jnp.sum(poisoned_b.astype(jnp.float32)),
    }
  )
  return out


def two_view_forward(
  *,
  second_view: bool,
  cross_aug: bool,
  aug_shift: int,
  aug_jitter: float,
  token_dropout_rate: float,
) -> Callable[..., Embeddings]:
  """`Method.forward` with the re-matching methods' augmentations.

  * ``cross_aug`` (RoCLIP's ``--cross_aug``): the training pair is an augmented image (fresh each
    step) and an augmented caption that is fixed per example (RoCLIP augments each caption once,
    with EDA, when the dataset is built; here the token-dropout key is folded from the example
    index).
  * ``second_view``: also encodes a second image view and caption view (extras ``zimg2``,
    ``ztxt2``, ``img_tokens2``, ``txt_tokens2``, ``txt_mask2``) for intra-modality/unimodal terms.

  Args:
    second_view: encode the second views.
    cross_aug: train on augmented pairs.
    aug_shift, aug_jitter: :func:`augment_images` parameters.
    token_dropout_rate: :func:`token_dropout` rate.
  """

  def forward(model, params, batch, rng):
    p = model_params(params)
    images, ids = batch["image"], batch["ids"]
    b = images.shape[0]
    k_cross, k_img, k_txt = jax.random.split(rng, 3)
    eot_id = model.config.text.eot_id
    if cross_aug:
      images = augment_images(k_cross, images, shift=aug_shift, jitter=aug_jitter)
      index_b = batch.get("index", jnp.arange(b))
      keys_b = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(index_b)
      ids = token_dropout(keys_b, ids, rate=token_dropout_rate, eot_id=eot_id)
    if second_view:
      img2 = augment_images(k_img, batch["image"], shift=aug_shift, jitter=aug_jitter)
      ids2 = token_dropout(k_txt, batch["ids"], rate=token_dropout_rate, eot_id=eot_id)
      images = jnp.concatenate([images, img2], 0)
      ids = jnp.concatenate([ids, ids2], 0)
    img = model.encode_image(p, images)
    txt = model.encode_text(p, ids)
    extras = None
    if second_view:
      extras = {
        "zimg2": img.emb[b:],
        "ztxt2": txt.emb[b:],
        "img_tokens2": img.tokens[b:],
        "txt_tokens2": txt.tokens[b:],
        "txt_mask2": txt.mask[b:],
      }
    return Embeddings(
      zimg=img.emb[:b],
      ztxt=txt.emb[:b],
      logit_scale=model.logit_scale(p),
      logit_bias=p.get("logit_bias"),
      img_tokens=img.tokens[:b],
      txt_tokens=txt.tokens[:b],
      txt_mask=txt.mask[:b],
      batch=batch,
      extras=extras,
    )

  return forward
