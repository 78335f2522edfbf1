"""Reference contrastive losses over the global batch: CLIP's InfoNCE and SigLIP's sigmoid loss.

Both take L2-normalised embeddings `zimg_bd`, `ztxt_bd` ([b, d], row i of each is a positive
pair) and are written over the whole (global) batch: under `jax.jit` with a sharded batch XLA
inserts the collectives, so there is no rank/world-size logic here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["clip_loss", "infonce", "siglip_loss"]


def infonce(logits_bb: jax.Array, valid_b: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-example InfoNCE cross-entropies of a square logit matrix whose diagonal is positive.

  Args:
    logits_bb: [b, b] logits, row i = query i (e.g. image), column j = candidate j (caption).
    valid_b: optional [b] bool: only valid rows/columns serve as negatives (SafeCLIP's safe
      subset); entries for invalid examples are still returned (finite) for the caller to mask.

  Returns:
    `(i2t_b, t2i_b)`: −log softmax over each row (resp. column) at the diagonal.
  """
  logits_bb = logits_bb.astype(jnp.float32)
  rows, cols = logits_bb, logits_bb
  if valid_b is not None:
    cols = jnp.where(valid_b[None, :], logits_bb, -jnp.inf)
    rows = jnp.where(valid_b[:, None], logits_bb, -jnp.inf)
  diag_b = jnp.diagonal(logits_bb)
  return jax.nn.logsumexp(cols, axis=1) - diag_b, jax.nn.logsumexp(rows, axis=0) - diag_b


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
  i2t_b, t2i_b = infonce(logits_bb)
  i2t, t2i = jnp.mean(i2t_b), jnp.mean(t2i_b)
  acc = jnp.mean(jnp.argmax(logits_bb, axis=1) == jnp.arange(logits_bb.shape[0]))
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
