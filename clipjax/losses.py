"""Reference contrastive losses over the global batch: CLIP's InfoNCE and SigLIP's sigmoid loss.

Both take L2-normalised embeddings `zimg_bd`, `ztxt_bd` ([b, d], row i of each is a positive
pair) and are written over the whole (global) batch: under `jax.jit` with a sharded batch XLA
inserts the collectives, so there is no rank/world-size logic here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["clip_loss", "siglip_loss"]


def clip_loss(
  zimg_bd: jax.Array, ztxt_bd: jax.Array, logit_scale: jax.Array
) -> tuple[jax.Array, dict]:
  """Symmetric InfoNCE (Radford et al. 2021, Fig. 3).

  Args:
    zimg_bd: [b, d] L2-normalised image embeddings.
    ztxt_bd: [b, d] L2-normalised text embeddings.
    logit_scale: scalar multiplier (already exponentiated, e.g. 100).

  Returns:
    `(loss, aux)`: mean of the image->text and text->image cross-entropies; aux holds both
    directions and the in-batch top-1 accuracy of image->text.
  """
  logits_bb = logit_scale * jnp.einsum(
    "id,jd->ij", zimg_bd.astype(jnp.float32), ztxt_bd.astype(jnp.float32)
  )
  labels = jnp.arange(logits_bb.shape[0])
  i2t = -jnp.mean(
    jnp.take_along_axis(jax.nn.log_softmax(logits_bb, axis=1), labels[:, None], axis=1)
  )
  t2i = -jnp.mean(
    jnp.take_along_axis(jax.nn.log_softmax(logits_bb, axis=0), labels[None, :], axis=0)
  )
  acc = jnp.mean(jnp.argmax(logits_bb, axis=1) == labels)
  return (i2t + t2i) / 2, {"loss_i2t": i2t, "loss_t2i": t2i, "batch_acc_i2t": acc}


def siglip_loss(
  zimg_bd: jax.Array, ztxt_bd: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array
) -> tuple[jax.Array, dict]:
  """Pairwise sigmoid loss (Zhai et al. 2023, Alg. 1), normalised by the batch size.

  Args:
    zimg_bd: [b, d] L2-normalised image embeddings.
    ztxt_bd: [b, d] L2-normalised text embeddings.
    logit_scale: scalar temperature t (already exponentiated).
    logit_bias: scalar bias b.
  """
  logits_bb = logit_scale * jnp.einsum(
    "id,jd->ij", zimg_bd.astype(jnp.float32), ztxt_bd.astype(jnp.float32)
  )
  logits_bb = logits_bb + logit_bias
  n = logits_bb.shape[0]
  labels_bb = 2.0 * jnp.eye(n) - 1.0
  loss = -jnp.sum(jax.nn.log_sigmoid(labels_bb * logits_bb)) / n
  return loss, {"mean_pos_logit": jnp.mean(jnp.diagonal(logits_bb))}
