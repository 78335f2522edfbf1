"""Weighted fusion of several models: align each to an anchor, then average.

`fused = Σ_k w_k · align(θ_k → θ_anchor) / Σ_k w_k` on the subtree at `spec.root` (HOT-CLIP
eqs. 10 and 13, OTFusion eq. 17 with general weights). The anchor is used as is (it is its own
alignment), sums are kept on the host in numpy, models with weight 0 are never loaded, and
leaves outside the root are copied from the anchor (`outside="anchor"`: HOT-CLIP's frozen text
tower and logit scale) or averaged unaligned (`outside="average"`).

`FusionAccumulator` does this one model at a time, so `fuse_stream` holds at most the anchor,
the running sum and the model being aligned, whatever the number of models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipjax import tree as tree_lib
from clipjax.fusion import align as align_lib
from clipjax.fusion import spec as spec_lib

__all__ = [
  "METHODS",
  "Fused",
  "FusionAccumulator",
  "check_weights",
  "fuse",
  "fuse_stream",
  "l2_distance",
]

METHODS = ("ot", "average")
Loader = Callable[[], dict]


class Fused(NamedTuple):
  """Result of `fuse`/`fuse_stream`.

  Attributes:
    params: the fused parameter pytree.
    infos: per input model, map name -> `MapInfo` of its alignment, or None (the anchor,
      weight-0 models, and `method="average"`).
  """

  params: dict
  infos: tuple[dict[str, align_lib.MapInfo] | None, ...]


class FusionAccumulator:
  """Streaming weighted fusion; the first model added is the anchor.

  Example:
    acc = FusionAccumulator(spec, method="ot", options=opts)
    for loader, w in zip(loaders, weights):
      acc.add(loader(), w)
    fused = acc.result()
  """

  def __init__(
    self,
    spec: spec_lib.FusionSpec | None,
    *,
    method: str,
    options: align_lib.AlignOptions | None = None,
    acts_fn: align_lib.ActsFn | None = None,
    outside: str = "anchor",
  ):
    """Configures the fusion.

    Args:
      spec: the fusion spec (needed for "ot"; for "average" None means the whole tree).
      method: "ot" (align, then average) or "average" (plain weight averaging).
      options: alignment options (needed for "ot").
      acts_fn: params -> activations, for `options.representation="acts"`.
      outside: "anchor" or "average", for the leaves outside `spec.root`.
    """
    if method not in METHODS:
      raise ValueError(f"method={method!r} is not one of {METHODS}")
    if method == "ot" and (spec is None or options is None):
      raise ValueError("method='ot' needs a spec and AlignOptions")
    if outside not in ("anchor", "average"):
      raise ValueError(f"outside={outside!r} is not 'anchor' or 'average'")
    self.spec, self.method, self.options = spec, method, options
    self.acts_fn, self.outside = acts_fn, outside
    self.root = spec.root if spec is not None else ""
    self._anchor: dict | None = None
    self._anchor_acts = None
    self._sum = None
    self._total = 0.0

  def _part(self, params: dict):
    return params if self.outside == "average" else spec_lib.subtree(params, self.root)

  def add(self, params: dict, weight: float) -> dict[str, align_lib.MapInfo] | None:
    """Aligns `params` to the anchor (or makes it the anchor) and adds `weight` times it.

    Args:
      params: a parameter pytree.
      weight: its non-negative weight.

    Returns:
      The alignment's map infos (None for the anchor, weight 0, or `method="average"`).
    """
    if not weight >= 0:
      raise ValueError(f"fusion weights must be >= 0, got {weight}")
    info = None
    if self._anchor is None:
      self._anchor = params
      if self.method == "ot" and self.options.representation == "acts":
        if self.acts_fn is None:
          raise ValueError("representation='acts' needs acts_fn")
        self._anchor_acts = self.acts_fn(params)
    elif weight == 0:
      return None
    else:
      names = tree_lib.names(params)
      if names != tree_lib.names(self._anchor):
        extra = sorted(set(names) ^ set(tree_lib.names(self._anchor)))
        raise ValueError(f"model structure differs from the anchor's at {extra[:8]}")
      if self.method == "ot":
        aligned = align_lib.align_params(
          params,
          self._anchor,
          self.spec,
          self.options,
          acts_fn=self.acts_fn,
          anchor_acts=self._anchor_acts,
        )
        params, info = aligned.params, aligned.infos
    if weight > 0:
      part = self._part(params)
      if self._sum is None:
        self._sum = jax.tree.map(lambda x: _scale(x, weight), part)
      else:
        self._sum = jax.tree.map(lambda s, x: s + _scale(x, weight), self._sum, part)
      self._total += weight
    return info

  def result(self) -> dict:
    """The fused params (weights normalised to sum to 1)."""
    if self._sum is None:
      raise ValueError("no model with a positive weight was added")
    total = self._total
    scale = 1.0 / total
    avg = jax.tree.map(lambda s: jnp.asarray(_scale(s, scale) if total != 1 else s), self._sum)
    if self.outside == "average":
      return avg
    return spec_lib.replace_subtree(self._anchor, self.root, avg)


def _scale(x, weight: float) -> np.ndarray:
  """`weight * x` on the host, keeping x's dtype (multiplying by 1.0 is exact)."""
  x = np.asarray(x)
  return x * x.dtype.type(weight)


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
  if n == 0:
    raise ValueError("nothing to fuse: no models given")
  if weights is None:
    return [1.0 / n] * n
  weights = [float(w) for w in weights]
  if len(weights) != n:
    raise ValueError(f"got {len(weights)} weights for {n} models")
  if any(not w >= 0 for w in weights) or sum(weights) <= 0:
    raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
  return weights


def fuse_stream(
  loaders: Sequence[Loader],
  weights: Sequence[float] | None = None,
  *,
  anchor: int = 0,
  spec: spec_lib.FusionSpec | None = None,
  method: str = "ot",
  options: align_lib.AlignOptions | None = None,
  acts_fn: align_lib.ActsFn | None = None,
  outside: str = "anchor",
) -> Fused:
  """Fuses models loaded one at a time (anchor first; weight-0 models are not loaded).

  Args:
    loaders: callables returning parameter pytrees (e.g. checkpoint restores).
    weights: non-negative weights, normalised to sum to 1 (None: uniform).
    anchor: index of the anchor model.
    spec: fusion spec (see `FusionAccumulator`).
    method: "ot" or "average".
    options: alignment options for "ot".
    acts_fn: activation function for `options.representation="acts"`.
    outside: "anchor" or "average" for leaves outside `spec.root`.

  Returns:
    `Fused(params, infos)`, infos indexed like `loaders`.
  """
  weights = check_weights(weights, len(loaders))
  if not 0 <= anchor < len(loaders):
    raise IndexError(f"anchor={anchor} is out of range for {len(loaders)} models")
  acc = FusionAccumulator(spec, method=method, options=options, acts_fn=acts_fn, outside=outside)
  infos: list[dict | None] = [None] * len(loaders)
  acc.add(loaders[anchor](), weights[anchor])
  for k, (load, w) in enumerate(zip(loaders, weights)):
    if k != anchor and w > 0:
      infos[k] = acc.add(load(), w)
  return Fused(acc.result(), tuple(infos))


def fuse(
  params_list: Sequence[dict],
  weights: Sequence[float] | None = None,
  *,
  anchor: int = 0,
  spec: spec_lib.FusionSpec | None = None,
  method: str = "ot",
  options: align_lib.AlignOptions | None = None,
  acts_fn: align_lib.ActsFn | None = None,
  outside: str = "anchor",
) -> Fused:
  """Fuses in-memory models: `fuse_stream` over `params_list` (same arguments)."""
  loaders = [(lambda p=p: p) for p in params_list]
  return fuse_stream(
    loaders,
    weights,
    anchor=anchor,
    spec=spec,
    method=method,
    options=options,
    acts_fn=acts_fn,
    outside=outside,
  )


def l2_distance(a: dict, b: dict) -> jax.Array:
  """Euclidean distance between two parameter pytrees of the same structure (a diagnostic)."""
  sq = jax.tree.map(lambda x, y: jnp.sum(jnp.square(x - y)), a, b)
  return jnp.sqrt(sum(jax.tree.leaves(sq)))
