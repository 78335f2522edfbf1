"""What the trainer hands to a method, and what a method is.

A method is a pair of pure functions: `loss(emb, mstate, rng) -> (loss, aux,
new_mstate)` and an optional `init(...) -> mstate`. Hyper-parameters are bound with
`functools.partial` from `config.method.kwargs` by the registry; nothing here touches modules or
parameters directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

__all__ = ["METHOD_PARAMS", "Embeddings", "Method", "model_params"]

# The key of `params` under which a method keeps its own trainable parameters.
METHOD_PARAMS = "method"


class Embeddings(NamedTuple):
  """Forward-pass outputs for one global batch.

  Attributes:
    zimg: [b, d] L2-normalised image embeddings.
    ztxt: [b, d] L2-normalised text embeddings (row i pairs with image i).
    logit_scale: scalar, exponentiated temperature multiplier.
    logit_bias: scalar or None (sigmoid losses).
    img_tokens: [b, n_patches, d] projected patch tokens, or None if not requested.
    txt_tokens: [b, L, d] projected token features, or None.
    txt_mask: [b, L] bool validity of `txt_tokens`, or None.
    batch: the global batch dict (ground-truth flags, indices), for methods that need it.
    extras: anything else a method's own `forward` computes (e.g. NCU's negative embeddings).
  """

  zimg: jax.Array
  ztxt: jax.Array
  logit_scale: jax.Array
  logit_bias: jax.Array | None = None
  img_tokens: jax.Array | None = None
  txt_tokens: jax.Array | None = None
  txt_mask: jax.Array | None = None
  batch: dict[str, jax.Array] | None = None
  extras: dict[str, Any] | None = None


LossFn = Callable[[Embeddings, Any, jax.Array], tuple[jax.Array, dict[str, jax.Array], Any]]


class Method(NamedTuple):
  """A training method.

  Attributes:
    loss: `loss(emb, mstate, rng) -> (scalar loss, aux dict of scalars, new mstate)`.
    init: `init(embed_dim) -> mstate` (a pytree of arrays; `{}` when stateless).
    needs_tokens: whether the trainer must return patch/word tokens in `Embeddings`.
    forward: optional `forward(model, params, batch, rng) -> Embeddings` replacing the
      trainer's default (both towers on `batch["image"]`, `batch["ids"]`); `params` holds the
      model's parameters plus the method's own under `params["method"]`.
    init_params: optional `init_params(model, rng) -> dict` of extra trainable parameters
      (NCU's prompt vectors), stored in `params["method"]` and checkpointed with the model.
  """

  loss: LossFn
  init: Callable[[int], Any]
  needs_tokens: bool = False
  forward: Callable[..., Embeddings] | None = None
  init_params: Callable[..., dict[str, Any]] | None = None


def model_params(params: dict[str, Any]) -> dict[str, Any]:
  """The model's own parameters: `params` without a method's `params["method"]`."""
  return {k: v for k, v in params.items() if k != METHOD_PARAMS}
