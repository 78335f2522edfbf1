"""The pure train step: forward both towers, the method's loss, AdamW update.

`train_step` is a module-level pure function; `loop.py` binds its static arguments (model,
method, optimizer) with `functools.partial` and jits it once with shardings and donation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from clipjax.methods import Embeddings, Method
from clipjax.methods.base import model_params
from clipjax.train.optim import clamp_logit_scale
from clipjax.train.state import TrainState
from clipjax.tree import all_finite

__all__ = ["forward", "train_step"]


def forward(
  model: Any, params: Any, batch: dict[str, jax.Array], *, needs_tokens: bool
) -> Embeddings:
  """Encodes `batch["image"]` [b, h, w, 3] in [0, 1] and `batch["ids"]` [b, L]."""
  params = model_params(params)
  img = model.encode_image(params, batch["image"])
  txt = model.encode_text(params, batch["ids"])
  return Embeddings(
    zimg=img.emb,
    ztxt=txt.emb,
    logit_scale=model.logit_scale(params),
    logit_bias=params.get("logit_bias"),
    img_tokens=img.tokens if needs_tokens else None,
    txt_tokens=txt.tokens if needs_tokens else None,
    txt_mask=txt.mask if needs_tokens else None,
    batch=batch,
  )


def _loss_fn(params, batch, method_state, rng, *, model, method: Method):
  fwd_rng, loss_rng = jax.random.split(rng)
  if method.forward is not None:
    emb = method.forward(model, params, batch, fwd_rng)
  else:
    emb = forward(model, params, batch, needs_tokens=method.needs_tokens)
  loss, aux, new_mstate = method.loss(emb, method_state, loss_rng)
  return loss, (aux, new_mstate)


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  model: Any,
  method: Method,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  grad_accum_steps: int = 1,
  trainable: Any = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on a global batch.

  With `grad_accum_steps > 1` the batch is split into that many micro-batches whose gradients
  are averaged; note that a contrastive loss then sees only the micro-batch as negatives.

  `trainable` (a bool pytree like `params`, or None for all) freezes parameters by zeroing
  their gradients and updates; the optimizer state keeps its structure, so stages that freeze
  different parameters share one state (frozen leaves' moments are simply not used).

  Returns:
    The new state and a dict of scalar metrics (loss, grad/param norms, lr, method aux) with
    `finite`: a bool that is True iff the loss and every value of the gradients, the update
    and the new parameters, optimizer state and method state are finite (and their squared
    norms do not overflow). The loop checks it before logging or saving that state.
  """
  rng, step_rng = jax.random.split(state.rng)
  grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (loss, (aux, mstate)), grads = grad_fn(
      state.params, batch, state.method_state, step_rng, model=model, method=method
    )
  else:
    micro = jax.tree.map(lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch)
    rngs = jax.random.split(step_rng, grad_accum_steps)

    def body(carry, xs):
      grads_acc, mstate = carry
      mb, r = xs
      (loss, (aux, mstate)), grads = grad_fn(
        state.params, mb, mstate, r, model=model, method=method
      )
      return (jax.tree.map(jnp.add, grads_acc, grads), mstate), (loss, aux)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, mstate), (losses, auxs) = jax.lax.scan(body, (zeros, state.method_state), (micro, rngs))
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
    loss = jnp.mean(losses)
    aux = jax.tree.map(lambda a: jnp.mean(a, axis=0), auxs)
  if trainable is not None:
    grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if trainable is not None:
    updates = jax.tree.map(lambda u, t: u if t else jnp.zeros_like(u), updates, trainable)
  params = clamp_logit_scale(optax.apply_updates(state.params, updates))
  metrics = {
    "loss": loss,
    "grad_norm": optax.tree.norm(grads),
    "param_norm": optax.tree.norm(params),
    "lr": schedule(state.step),
    "finite": jnp.isfinite(loss) & all_finite((grads, updates, params, opt_state, mstate)),
    **aux,
  }
  if isinstance(params, dict) and "logit_scale" in params:
    metrics["logit_scale"] = jnp.exp(params["logit_scale"])
  new_state = TrainState(
    step=state.step + 1, params=params, opt_state=opt_state, method_state=mstate, rng=rng
  )
  return new_state, metrics
