"""Fusing an [attack][prompt] grid of submodels, with what each fusion costs (HOT-CLIP §5).

The `hotclip_fuse` task (`clipjax.tasks.hotclip_fuse`) compares, on one grid of submodels given
as loaders (`loaders[a][t]() -> params`):

* `"hierarchical"`: HOT-CLIP Algorithm 1 (`hierarchical.hierarchical_fuse`), with the optional
  intra- and inter-attack fine-tunes the caller supplies;
* `"direct_ot"`: flat OT fusion of every submodel to the anchor (`hierarchical.direct_ot`);
* `"average"`: the uniform weight average (`hierarchical.direct_average`);
* `"ensemble"`: the output ensemble (`hierarchical.ensemble_encode_image`; no fused params).

`fuse_grid` runs one of the first three and reports its cost next to the params: wall seconds
(fine-tunes included, and their share), peak RSS growth, checkpoint loads, and the identity
mass of its transport maps (`identity_mass`). `fuse_and_evaluate` builds a list of them and
evaluates each with a caller's evaluation (e.g. robust zero-shot accuracy); `format_table`
renders the results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from clipjax import measure
from clipjax.fusion import align as align_lib
from clipjax.fusion import hierarchical
from clipjax.fusion import spec as spec_lib

__all__ = [
  "FUSIONS",
  "PARAM_FUSIONS",
  "format_table",
  "fuse_and_evaluate",
  "fuse_grid",
  "identity_mass",
]

PARAM_FUSIONS = ("hierarchical", "direct_ot", "average")
"""The fusions `fuse_grid` builds (one set of params each)."""
FUSIONS = (*PARAM_FUSIONS, "ensemble")
"""Every model of the experiment built from the grid."""

Loader = Callable[[], dict]


def identity_mass(infos: Any) -> dict[str, float]:
  """Mean and min `identity_mass` over the `MapInfo`s of nested fusion infos.

  Args:
    infos: `{group: MapInfo}` dicts nested in tuples/lists, with None for anchors (as in
      `Hierarchical.intra_infos` / `inter_infos` or `Fused.infos`). Non-finite masses (maps that
      are not square) are left out.

  Returns:
    `{"identity_mass_mean", "identity_mass_min"}`, or `{}` when no finite mass is found.
  """
  vals = []
  stack = [infos]
  while stack:
    x = stack.pop()
    if x is None:
      continue
    if isinstance(x, dict):
      vals += [float(m.identity_mass) for m in x.values() if np.isfinite(m.identity_mass)]
    elif isinstance(x, tuple | list):
      stack.extend(x)
  if not vals:
    return {}
  return {"identity_mass_mean": float(np.mean(vals)), "identity_mass_min": float(np.min(vals))}


def fuse_grid(
  name: str,
  loaders: Sequence[Sequence[Loader]],
  *,
  spec: spec_lib.FusionSpec,
  options: align_lib.AlignOptions,
  anchor: tuple[int, int],
  intra_finetune: Callable[[int, dict], dict] | None = None,
  inter_finetune: Callable[[dict], dict] | None = None,
  acts_fn: align_lib.ActsFn | None = None,
) -> tuple[dict, dict[str, Any]]:
  """Builds fusion `name` (one of `PARAM_FUSIONS`) of the grid and measures its cost.

  Args:
    name: "hierarchical", "direct_ot" or "average".
    loaders: `loaders[a][t]() -> params` of the submodel of attack a and prompt t.
    spec: fusion spec (`spec.vit_spec_for`).
    options: alignment options (both levels of "hierarchical"; "direct_ot").
    anchor: (attack, prompt) of the anchor submodel.
    intra_finetune: "hierarchical" only: `(a, params) -> params` after each intra-attack fusion.
    inter_finetune: "hierarchical" only: `params -> params` after the inter-attack fusion.
    acts_fn: the activation function of `options.representation="acts"` (OT fusions), e.g.
      `align.vit_activations(model, pixels)`.

  Returns:
    `(params, info)`; info has `fusion_seconds` (fine-tunes included), `checkpoint_loads` (loader
    calls), `peak_rss_growth_mb` where the platform measures it, the identity mass of the maps
    (OT fusions) and, for "hierarchical", `finetune_seconds` (the fine-tunes' share).
  """
  n_loads = [0]

  def counted(load: Loader) -> Loader:
    def call() -> dict:
      n_loads[0] += 1
      return load()

    return call

  grid = [[counted(load) for load in row] for row in loaders]
  ft_seconds = [0.0]

  def timed(fn):
    if fn is None:
      return None

    def call(*args):
      start = time.perf_counter()
      out = fn(*args)
      ft_seconds[0] += time.perf_counter() - start
      return out

    return call

  if name == "hierarchical":
    build = lambda: hierarchical.hierarchical_fuse(
      grid,
      spec=spec,
      options=options,
      anchor_attack=anchor[0],
      anchor_prompt=anchor[1],
      intra_finetune=timed(intra_finetune),
      inter_finetune=timed(inter_finetune),
      acts_fn=acts_fn,
    )
  elif name == "direct_ot":
    build = lambda: hierarchical.direct_ot(
      grid, spec=spec, options=options, anchor=tuple(anchor), acts_fn=acts_fn
    )
  elif name == "average":
    build = lambda: hierarchical.direct_average(grid, spec=spec)
  else:
    raise ValueError(f"fuse_grid: unknown fusion {name!r}; valid: {list(PARAM_FUSIONS)}")
  out, seconds, growth = measure.peak_rss_growth(build)
  info: dict[str, Any] = {"fusion_seconds": seconds, "checkpoint_loads": n_loads[0]}
  if growth is not None:
    info["peak_rss_growth_mb"] = growth / 2**20
  if name == "hierarchical":
    info.update(identity_mass((out.intra_infos, out.inter_infos)))
    info["finetune_seconds"] = ft_seconds[0]
    return out.params, info
  if name == "direct_ot":
    info.update(identity_mass(out.infos))
    return out.params, info
  return out, info


def fuse_and_evaluate(
  fusions: Sequence[str],
  loaders: Sequence[Sequence[Loader]],
  *,
  spec: spec_lib.FusionSpec,
  options: align_lib.AlignOptions,
  anchor: tuple[int, int],
  encode_image: Callable[[dict, jax.Array], Any],
  evaluate: Callable[[Callable[[jax.Array], jax.Array]], dict[str, Any]],
  intra_finetune: Callable[[int, dict], dict] | None = None,
  inter_finetune: Callable[[dict], dict] | None = None,
  on_fused: Callable[[str, dict], dict[str, Any]] | None = None,
  acts_fn: align_lib.ActsFn | None = None,
) -> dict[str, dict[str, Any]]:
  """Builds and evaluates each model of `fusions` (names in `FUSIONS`), in that order.

  The fusions of `PARAM_FUSIONS` are all built first (`fuse_grid`), then each is evaluated;
  the ensemble is evaluated when its turn comes, its members loaded together.

  Args:
    fusions: the models to build.
    loaders, spec, options, anchor, intra_finetune, inter_finetune, acts_fn: as in `fuse_grid`.
    encode_image: `(params, pixels_bhwc) -> features` with `.emb` (e.g. `CLIP.encode_image`).
    evaluate: `encode(pixels_bhwc) -> emb_bd` -> the model's evaluation entries.
    on_fused: `(name, params) -> entries`, called after a fused model's evaluation (e.g. to
      save and export it).

  Returns:
    name -> entries: `fuse_grid`'s info (`members`, `forward_passes_per_image` for the
    ensemble), then `evaluate`'s, then `on_fused`'s.
  """
  results: dict[str, dict[str, Any]] = {}
  fused: dict[str, dict] = {}
  for name in fusions:
    if name == "ensemble":
      members = [load() for row in loaders for load in row]
      results[name] = {"members": len(members), "forward_passes_per_image": len(members)}
      encode = lambda x, ms=members: hierarchical.ensemble_encode_image(encode_image, ms, x)[0]
      results[name].update(evaluate(encode))
      del members
      continue
    fused[name], results[name] = fuse_grid(
      name,
      loaders,
      spec=spec,
      options=options,
      anchor=anchor,
      intra_finetune=intra_finetune,
      inter_finetune=inter_finetune,
      acts_fn=acts_fn,
    )
  for name, params in fused.items():
    results[name].update(evaluate(lambda x, params=params: encode_image(params, x).emb))
    if on_fused is not None:
      results[name].update(on_fused(name, params))
  return results


def format_table(results: Mapping[str, Mapping[str, Any]], attacks: Sequence[Mapping]) -> str:
  """Markdown table: model, clean, robust per attack, worst case, fusion time, peak RSS.

  Args:
    results: model name -> its entries (`clean_acc`, `robust_acc/<label>`, `robust_acc_worst`
      from `clipjax.evaluation.zeroshot_robustness`; `fuse_grid`'s info); missing ones are blank.
    attacks: the attack specs evaluated (their `label`, else `name`).
  """
  labels = [a.get("label") or a["name"] for a in attacks]
  head = [
    "model",
    "clean",
    *labels,
    "worst",
    "fusion s (excl. fine-tune)",
    "peak RSS +MB",
    "identity mass",
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

  def f(v, fmt="{:.3f}"):
    return "" if v is None else fmt.format(v)

  for name, r in results.items():
    fuse_s = r.get("fusion_seconds")
    if fuse_s is not None:
      fuse_s -= r.get("finetune_seconds", 0.0)
    row = [name, f(r.get("clean_acc"))]
    row += [f(r.get(f"robust_acc/{lab}")) for lab in labels]
    row += [f(r.get("robust_acc_worst")), f(fuse_s, "{:.2f}"),
            f(r.get("peak_rss_growth_mb"), "{:.1f}"), f(r.get("identity_mass_mean"))]  # fmt: skip
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"
