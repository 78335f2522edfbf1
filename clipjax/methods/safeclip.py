"""SafeCLIP-style baseline (Yang, Chen, Mirzasoleiman et al., ICML 2024, arXiv:2311.12639).

Follows the released code (``DomJamb/SafeCLIP``: ``SafeCLIP/src/main.py``, ``parser.py``,
``samplers.py``; shared/METHODS.md §4.4) where a per-batch method can:

* Steps ``< unimodal_steps``: in-modal contrastive warm-up (image view ↔ image view, caption ↔
  caption view; published: 5 of 32 epochs, the memory bank off by default as in its parser).
* Then ``clip_warmup_steps`` of plain CLIP (published: 1 epoch).
* Then each step a 2-component 1-D GMM (``gmm_iters`` EM steps) on the detached pair cosines
  gives each pair's clean posterior. During the first split epoch (``steps_per_epoch`` steps)
  a pair is safe when its posterior is ``>= first_threshold`` (published 0.9) and the mean safe
  fraction of that epoch is kept in the method state; from the next epoch on, the
  ``min(safe_max, first_fraction + safe_growth · epochs since the first split)`` pairs with the
  highest posterior are safe (published +0.01 per epoch, capped at 0.85). Safe pairs get the
  CLIP loss among safe pairs only; risky pairs get the in-modal loss.

Not reconstructible in one per-batch loss, stated: SafeCLIP fits the GMM once per epoch over
the whole dataset's cosines (here per batch), trains its risky and safe subsets in two passes
per epoch (here in one loss), and its warm-ups run on a learning-rate schedule of their own
(cosine from 5e-4 towards 5e-6, restarted for the split phase); clipjax runs one schedule for the
whole run, and with AdamW scaling the loss does not change the step size. The published epoch
counts are for 32 epochs; ``configs/otcclip.py`` scales them to the run's length.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from clipjax import losses
from clipjax.methods import rematching
from clipjax.methods.base import Embeddings, Method

__all__ = ["METHODS", "gmm_clean_posterior", "safeclip"]


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
  first_threshold: float,
  safe_growth: float,
  safe_max: float,
  gmm_iters: int,
  aug_shift: int,
  aug_jitter: float,
  token_dropout: float,
) -> Method:
  """SafeCLIP-style safe/risky split (module docstring)."""
  if not 0.0 < first_threshold < 1.0 or not 0.0 < safe_max <= 1.0:
    raise ValueError(
      f"first_threshold must be in (0, 1) and safe_max in (0, 1], got {first_threshold}, {safe_max}"
    )
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
  split_start = unimodal_steps + clip_warmup_steps

  def init(embed_dim: int) -> dict:
    del embed_dim
    zero = jnp.zeros((), jnp.float32)
    return {"step": jnp.zeros((), jnp.int32), "first_sum": zero, "first_n": zero}

  def loss(emb: Embeddings, mstate, rng):
    del rng
    ex = emb.extras or {}
    if "zimg2" not in ex:
      raise ValueError("safeclip needs its two-view forward (extras['zimg2'])")
    b = emb.zimg.shape[0]
    step = mstate["step"]
    scale = emb.logit_scale
    poisoned_b = rematching.batch_truth(emb.batch, b, ())["poisoned"]

    def inmodal_b(za, zb):
      i2t_b, t2i_b = losses.infonce(scale * za @ zb.T)
      return (i2t_b + t2i_b) / 2

    uni_b = inmodal_b(emb.zimg, ex["zimg2"]) + inmodal_b(emb.ztxt, ex["ztxt2"])
    cos_b = jax.lax.stop_gradient(jnp.sum(emb.zimg * emb.ztxt, 1))
    post_b = gmm_clean_posterior(cos_b, num_iters=gmm_iters)
    epochs = jnp.maximum(step - split_start, 0) // steps_per_epoch
    first_epoch = (step >= split_start) & (epochs == 0)
    first_fraction = mstate["first_sum"] / jnp.maximum(mstate["first_n"], 1.0)
    frac = jnp.minimum(safe_max, first_fraction + safe_growth * epochs.astype(jnp.float32))
    n_safe = jnp.round(frac * b).astype(jnp.int32)
    rank_b = jnp.argsort(jnp.argsort(-post_b))
    split_b = jnp.where(first_epoch, post_b >= first_threshold, rank_b < n_safe)
    phase = jnp.where(step < unimodal_steps, 0, jnp.where(step < split_start, 1, 2))
    safe_b = jnp.where(phase == 2, split_b, phase == 1)
    safe_f = safe_b.astype(jnp.float32)
    # CLIP loss among safe pairs only (risky rows/columns are not negatives).
    i2t_b, t2i_b = losses.infonce(scale * emb.zimg @ emb.ztxt.T, valid_b=safe_b)
    clip_term = jnp.sum(safe_f * (i2t_b + t2i_b) / 2) / jnp.maximum(jnp.sum(safe_f), 1.0)
    uni_term = jnp.sum(jnp.where(safe_b, 0.0, uni_b)) / b
    total = jnp.where(phase == 0, jnp.mean(uni_b), clip_term + uni_term)
    aux = {
      "loss_clip_safe": clip_term,
      "loss_unimodal": jnp.mean(uni_b),
      "safe/fraction": jnp.mean(safe_f),
      "safe/poison_in_safe": jnp.sum(safe_f * poisoned_b) / jnp.maximum(jnp.sum(poisoned_b), 1),
      "safe/clean_in_safe": jnp.sum(safe_f * ~poisoned_b) / jnp.maximum(jnp.sum(~poisoned_b), 1),
      "remat/n_poisoned": jnp.sum(poisoned_b.astype(jnp.float32)),
    }
    new_state = {
      "step": step + 1,
      "first_sum": mstate["first_sum"] + jnp.where(first_epoch, jnp.mean(safe_f), 0.0),
      "first_n": mstate["first_n"] + first_epoch.astype(jnp.float32),
    }
    return total, aux, new_state

  forward = rematching.two_view_forward(
    second_view=True,
    cross_aug=False,
    aug_shift=aug_shift,
    aug_jitter=aug_jitter,
    token_dropout_rate=token_dropout,
  )
  return Method(loss=loss, init=init, needs_tokens=False, forward=forward)


METHODS: dict[str, Callable[..., Method]] = {"safeclip": safeclip}
