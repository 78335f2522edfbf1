"""HOT-CLIP hierarchical OT fusion (Algorithm 1) and its baselines.

Paper: "Towards Adversarially Robust CLIP: A Hierarchical Model Fusion Method Using Optimal
Transport" (ICLR 2026 submission), Algorithm 1 and appendix C.

* Level 1 (intra-attack, lines 8-21): for every attack a, the |T| prompt submodels are aligned
  to the anchor prompt's model and averaged (eq. 10-11); the result is optionally fine-tuned
  (line 20, `intra_finetune`).
* Level 2 (inter-attack, lines 22-33): the |A| level-1 models are aligned to the anchor attack's
  model and averaged (eq. 12-13); the result is optionally fine-tuned (`inter_finetune`, the
  unsupervised adversarial fine-tune).

Models come from loader callables `loaders[a][t]() -> params`. Aligning a model to an anchor does
not depend on the other models, so both levels are accumulated as models arrive: the anchor
attack is fused first, and each later level-1 model is aligned to it and added to the level-2
sum as soon as it is done. The result equals Algorithm 1's; the models held at once are the two
anchors, the two running sums and the one being aligned, i.e. O(1)·U, within the paper's
O(max(|A|, |T|)·U) (C.2).

Baselines: `direct_average` (uniform weight average of all submodels), `direct_ot` (flat OT
fusion of all |A|·|T| submodels to one anchor), and `ensemble_encode_image` (output ensemble, k
forward passes per image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from clipjax.fusion import align as align_lib
from clipjax.fusion import spec as spec_lib
from clipjax.fusion.fuse import Fused, FusionAccumulator, check_weights, fuse_stream

__all__ = [
  "Hierarchical",
  "direct_average",
  "direct_ot",
  "ensemble_encode_image",
  "hierarchical_fuse",
]

Loader = Callable[[], dict]


class Hierarchical(NamedTuple):
  """Result of `hierarchical_fuse`.

  Attributes:
    params: the final fused params (after `inter_finetune` when given).
    intra_infos: [a][t] map infos of level 1 (None for anchors).
    inter_infos: [a] map infos of level 2 (None for the anchor attack).
  """

  params: dict
  intra_infos: tuple[tuple[dict | None, ...], ...]
  inter_infos: tuple[dict | None, ...]


def _grid(loaders: Sequence[Sequence[Loader]]) -> None:
  if not loaders or any(not row for row in loaders):
    raise ValueError("loaders must be a non-empty [attack][prompt] grid with non-empty rows")


def hierarchical_fuse(
  loaders: Sequence[Sequence[Loader]],
  *,
  spec: spec_lib.FusionSpec,
  options: align_lib.AlignOptions,
  anchor_attack: int = 0,
  anchor_prompt: int = 0,
  attack_weights: Sequence[float] | None = None,
  prompt_weights: Sequence[Sequence[float]] | None = None,
  intra_finetune: Callable[[int, dict], dict] | None = None,
  inter_finetune: Callable[[dict], dict] | None = None,
  acts_fn: align_lib.ActsFn | None = None,
  outside: str = "anchor",
) -> Hierarchical:
  """HOT-CLIP Algorithm 1: intra-attack OT fusion, fine-tune, inter-attack OT fusion, fine-tune.

  Args:
    loaders: `loaders[a][t]() -> params` of the submodel of attack a and prompt t.
    spec: fusion spec (e.g. `vit_spec_for(config, ...)`); leaves outside its root come from the
      anchors.
    options: alignment options for both levels.
    anchor_attack: index of the level-2 anchor attack.
    anchor_prompt: index of the level-1 anchor prompt (in every attack).
    attack_weights: level-2 weights (None: uniform, eq. 13).
    prompt_weights: per attack, level-1 weights (None: uniform, eq. 10).
    intra_finetune: `(a, params) -> params`, the short fine-tune of a level-1 model under
      attack a (Algorithm 1 line 20); None skips it.
    inter_finetune: `params -> params`, the final unsupervised adversarial fine-tune; None skips.
    acts_fn: activation function for `options.representation="acts"`.
    outside: "anchor" or "average" for leaves outside `spec.root`.

  Returns:
    `Hierarchical(params, intra_infos, inter_infos)`.
  """
  _grid(loaders)
  n_att = len(loaders)
  if not 0 <= anchor_attack < n_att:
    raise IndexError(f"anchor_attack={anchor_attack} is out of range for {n_att} attacks")
  a_weights = check_weights(attack_weights, n_att)
  if prompt_weights is not None and len(prompt_weights) != n_att:
    raise ValueError(f"prompt_weights has {len(prompt_weights)} rows for {n_att} attacks")
  level2 = FusionAccumulator(spec, method="ot", options=options, acts_fn=acts_fn, outside=outside)
  intra: list[tuple] = [()] * n_att
  inter: list[dict | None] = [None] * n_att
  order = [anchor_attack] + [a for a in range(n_att) if a != anchor_attack]
  for a in order:
    if a != anchor_attack and a_weights[a] == 0:
      intra[a] = (None,) * len(loaders[a])
      continue
    row = loaders[a]
    if not 0 <= anchor_prompt < len(row):
      raise IndexError(f"anchor_prompt={anchor_prompt} is out of range for attack {a}")
    fused = fuse_stream(
      row,
      None if prompt_weights is None else prompt_weights[a],
      anchor=anchor_prompt,
      spec=spec,
      method="ot",
      options=options,
      acts_fn=acts_fn,
      outside=outside,
    )
    intra[a] = fused.infos
    params = fused.params
    del fused
    if intra_finetune is not None:
      params = intra_finetune(a, params)
    inter[a] = level2.add(params, a_weights[a])
    del params
  params = level2.result()
  del level2
  if inter_finetune is not None:
    params = inter_finetune(params)
  return Hierarchical(params, tuple(intra), tuple(inter))


def _flatten(loaders: Sequence[Sequence[Loader]]) -> list[Loader]:
  _grid(loaders)
  return [load for row in loaders for load in row]


def direct_average(
  loaders: Sequence[Sequence[Loader]],
  *,
  spec: spec_lib.FusionSpec | None = None,
  outside: str = "anchor",
) -> dict:
  """Uniform weight average of all submodels (streamed), the "Direct Average" baseline.

  Args:
    loaders: `[attack][prompt]` grid of loaders.
    spec: optional spec; only its `root` is used (None: the whole tree is averaged).
    outside: "anchor" (copy from the first submodel) or "average", outside `spec.root`.

  Returns:
    The averaged params.
  """
  return fuse_stream(_flatten(loaders), spec=spec, method="average", outside=outside)[0]


def direct_ot(
  loaders: Sequence[Sequence[Loader]],
  *,
  spec: spec_lib.FusionSpec,
  options: align_lib.AlignOptions,
  anchor: tuple[int, int] = (0, 0),
  acts_fn: align_lib.ActsFn | None = None,
  outside: str = "anchor",
) -> Fused:
  """Flat OT fusion of all |A|·|T| submodels to one anchor submodel ("Direct OTFusion").

  Args:
    loaders: `[attack][prompt]` grid of loaders.
    spec: fusion spec.
    options: alignment options.
    anchor: `(attack, prompt)` of the anchor submodel.
    acts_fn: activation function for `options.representation="acts"`.
    outside: "anchor" or "average" outside `spec.root`.

  Returns:
    `Fused(params, infos)` with infos in row-major `[attack][prompt]` order.
  """
  flat = _flatten(loaders)
  a, t = anchor
  if not (0 <= a < len(loaders) and 0 <= t < len(loaders[a])):
    raise IndexError(f"anchor={anchor} is outside the loader grid")
  index = sum(len(row) for row in loaders[:a]) + t
  return fuse_stream(
    flat, anchor=index, spec=spec, method="ot", options=options, acts_fn=acts_fn, outside=outside
  )


def ensemble_encode_image(
  encode_image: Callable[[dict, jax.Array], Any],
  models: Sequence[dict | Loader],
  pixels_bhwc: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Output ensemble: the mean of the members' L2-normalised image embeddings, renormalised.

  Costs one forward pass per member per image (the reference HOT-CLIP avoids).

  Args:
    encode_image: `(params, pixels) -> ImageFeatures` (e.g. `CLIP.encode_image`).
    models: params or loaders (loaded one at a time).
    pixels_bhwc: [b, s, s, 3] pixels in [0, 1].

  Returns:
    `(emb_bd, tokens_bnd)`: L2-normalised ensemble embedding and the mean patch tokens.
  """
  if not models:
    raise ValueError("ensemble needs at least one model")
  emb_bd = tokens_bnd = None
  for m in models:
    feats = encode_image(m() if callable(m) else m, pixels_bhwc)
    emb_bd = feats.emb if emb_bd is None else emb_bd + feats.emb
    tokens_bnd = feats.tokens if tokens_bnd is None else tokens_bnd + feats.tokens
  emb_bd = emb_bd / jnp.maximum(jnp.linalg.norm(emb_bd, axis=-1, keepdims=True), 1e-12)
  return emb_bd, tokens_bnd / len(models)
