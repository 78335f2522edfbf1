"""Method registry: `get(name, **hyperparams) -> Method`.

Each entry is a factory taking the method's hyper-parameters (from `config.method.kwargs`) as
keyword arguments; unknown names list the valid ones. The baselines `clip` and `siglip` live
here; each paper's module exports its own `METHODS` dict, merged below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clipjax import losses
from clipjax.methods import cola, hotclip, ncu, otcclip, otclip, roclip, safeclip
from clipjax.methods.base import Embeddings, Method

__all__ = ["REGISTRY", "Embeddings", "Method", "get"]


def _stateless(_: int) -> dict:
  return {}


def _clip() -> Method:
  def loss(emb: Embeddings, mstate, rng):
    del rng
    value, aux = losses.clip_loss(emb.zimg, emb.ztxt, emb.logit_scale)
    return value, aux, mstate

  return Method(loss=loss, init=_stateless)


def _siglip() -> Method:
  def loss(emb: Embeddings, mstate, rng):
    del rng
    if emb.logit_bias is None:
      raise ValueError(
        "method 'siglip' needs a model with logit_bias (model.overrides.logit_bias_init)."
      )
    value, aux = losses.siglip_loss(emb.zimg, emb.ztxt, emb.logit_scale, emb.logit_bias)
    return value, aux, mstate

  return Method(loss=loss, init=_stateless)


REGISTRY: dict[str, Callable[..., Method]] = {
  "clip": _clip,
  "siglip": _siglip,
}
for _module in (otclip, ncu, otcclip, roclip, safeclip, cola, hotclip):
  for _name, _factory in _module.METHODS.items():
    if _name in REGISTRY:
      raise RuntimeError(f"Method {_name!r} registered twice ({_module.__name__}).")
    REGISTRY[_name] = _factory


def get(name: str, **kwargs: Any) -> Method:
  """Builds the method `name` with hyper-parameters `kwargs`."""
  if name not in REGISTRY:
    raise ValueError(f"Unknown method {name!r}; registered methods: {sorted(REGISTRY)}.")
  return REGISTRY[name](**kwargs)
