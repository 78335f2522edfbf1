"""Optimizer: AdamW with linear warmup + cosine decay, path-regex weight-decay masks and freezing.

Config section (`config.optim`):
  lr, end_lr_frac, warmup_frac, b1, b2, eps, weight_decay, clip_grad_norm,
  grad_accum_steps, wd_exclude (regexes: no weight decay), frozen (regexes: no update at all).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from clipjax import tree as tree_lib

__all__ = [
  "LOGIT_SCALE_MAX",
  "clamp_logit_scale",
  "fresh_opt_state",
  "make_optimizer",
  "make_schedule",
  "trainable_mask",
]

LOGIT_SCALE_MAX = math.log(100.0)


def make_schedule(optim: Any, total_steps: int) -> optax.Schedule:
  """Linear warmup for `warmup_frac` of the steps, then cosine to `end_lr_frac * lr`."""
  warmup = int(round(optim.warmup_frac * total_steps))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=optim.lr,
    warmup_steps=warmup,
    decay_steps=max(total_steps, warmup + 1),
    end_value=optim.lr * optim.end_lr_frac,
  )


def make_optimizer(optim: Any, params: Any, total_steps: int) -> optax.GradientTransformation:
  """Builds the optax chain for `params` (a params-like pytree; only names/shapes are used).

  The weight decay mask excludes `optim.wd_exclude` (biases, norms, embeddings, logit scale by
  default). Freezing is not done here but by `trainable_mask` in the train step, per stage.
  """
  schedule = make_schedule(optim, total_steps)
  wd_mask = jax.tree.map(
    lambda x: not x, tree_lib.match_mask(params, list(optim.wd_exclude), strict=False)
  )
  adamw = optax.adamw(
    schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay, mask=wd_mask
  )
  chain = []
  if optim.clip_grad_norm:
    chain.append(optax.clip_by_global_norm(optim.clip_grad_norm))
  chain.append(adamw)
  return optax.chain(*chain)


def fresh_opt_state(tx: optax.GradientTransformation, opt_state: Any, params: Any) -> Any:
  """`tx`'s state restarted for `params`, except the learning-rate schedule's position.

  What a new PyTorch optimizer does at a stage boundary while its LR scheduler keeps the global
  step (NCU's released code): Adam's moments and bias-correction count start from zero, the
  schedule does not restart its warm-up.
  """

  def is_schedule(x):
    return isinstance(x, optax.ScaleByScheduleState)

  return jax.tree.map(
    lambda new, old: old if is_schedule(new) else new,
    tx.init(params),
    opt_state,
    is_leaf=is_schedule,
  )


def trainable_mask(params: Any, frozen: list[str] | tuple[str, ...]) -> Any:
  """Bool pytree: False for leaves whose name matches a `frozen` regex (strictly checked)."""
  if not frozen:
    return jax.tree.map(lambda _: True, params)
  return jax.tree.map(lambda f: not f, tree_lib.match_mask(params, list(frozen), strict=True))


def clamp_logit_scale(params: Any) -> Any:
  """Clamps `params["logit_scale"]` (a log value) to ln 100, as every reference CLIP does."""
  if isinstance(params, dict) and "logit_scale" in params:
    params = dict(params)
    params["logit_scale"] = jnp.minimum(params["logit_scale"], LOGIT_SCALE_MAX)
  return params
