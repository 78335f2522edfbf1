"""Fusion specs: which parameter axes share a transport map, as data.

A spec is a list of `AxisRule`s (leaf-name regex -> axis -> group name) and an ordered list of
`Group`s that say how each group's map is obtained. Fusion (`clipjax.fusion.align`) walks the
groups in order, so a group's neuron representation may only read axes whose groups come earlier
(OTFusion's layer-by-layer propagation: the incoming side of a layer is aligned with the previous
map before the layer's own map is solved).

Maps are [m, n] "soft permutations" (rows sum to 1): aligning axis k of a leaf replaces index j
by `sum_i map_mn[j, i] * leaf[..., i, ...]`. Input and output sides use the same contraction, so
a rule only records *which* group indexes an axis and whether that leaf contributes to the
group's neuron representation (`role="out"`: the leaf holds the incoming weights of the group's
units) or is only aligned (`role="in"`).

Exactness: a hard permutation of hidden units, heads (with within-head dims permuted consistently
for q and k, and for v with the out_proj input side) and of the residual stream is
function-preserving for a pre-LN ViT, because LayerNorm is permutation-equivariant. LayerNorm is
not equivariant under soft maps, so exact recovery of a permuted model is a property of hard
assignments (`solver="exact"` or a very low ε), not of entropic maps.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from clipjax import tree as tree_lib

__all__ = [
  "AxisRule",
  "Binding",
  "FusionSpec",
  "Group",
  "RESIDUAL_POLICIES",
  "HEAD_MODES",
  "random_permutation_maps",
  "replace_subtree",
  "resolve",
  "rule_table",
  "subtree",
  "vit_spec",
  "vit_spec_for",
]

RESIDUAL_POLICIES = ("mean", "shared", "none")
HEAD_MODES = ("per_head", "cross_head")


@dataclasses.dataclass(frozen=True)
class AxisRule:
  """One axis of the leaves whose name matches `pattern` is indexed by a group's units.

  Attributes:
    pattern: regex, `re.fullmatch`ed against leaf names relative to `FusionSpec.root`; named
      groups (`(?P<b>\\d+)`) fill the `group` template.
    axis: the leaf axis (negative values count from the end).
    group: group name template, formatted with the pattern's named groups (e.g. "mlp/{b}").
    role: "out" when the leaf holds incoming weights of the group's units (it contributes to
      their representation), "in" when the axis is only aligned (an input side, a LayerNorm
      that passes the incoming map through, ...).
    chunk: `(index, count)` when the axis is a concatenation of `count` equal chunks and only
      chunk `index` belongs to the group (q, k, v in a fused `in_proj`).
  """

  pattern: str
  axis: int
  group: str
  role: Literal["out", "in"]
  chunk: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Group:
  """How one transport map (or a coupled pair of maps) is obtained.

  Attributes:
    name: the group name used by rules.
    kind: "solve" (OT between the units' representations), "combine" (a weighted sum of earlier
      maps: transformer fusion's residual policy, Imfeld et al. eq. 18), or "heads" (one OT over
      attention heads whose head-to-head cost is the within-head OT cost; it yields a
      block-structured map for every name in `members`).
    sources: for "combine", the earlier groups whose maps are summed.
    weights: for "combine", their weights (they sum to 1, so rows of the sum still sum to 1).
    members: for "heads", the groups that receive the maps, e.g. ("qk/0", "v/0"): all members
      share the head assignment, each has its own within-head maps.
    num_heads: for "heads", the number of heads (member sizes must be divisible by it).
  """

  name: str
  kind: Literal["solve", "combine", "heads"]
  sources: tuple[str, ...] = ()
  weights: tuple[float, ...] = ()
  members: tuple[str, ...] = ()
  num_heads: int = 0

  def __post_init__(self):
    if self.kind not in ("solve", "combine", "heads"):
      raise ValueError(f"Group {self.name!r}: kind={self.kind!r} is not solve|combine|heads")
    if self.kind == "combine":
      if not self.sources or len(self.sources) != len(self.weights):
        raise ValueError(f"Group {self.name!r}: combine needs matching sources and weights")
      if abs(sum(self.weights) - 1.0) > 1e-6 or min(self.weights) < 0:
        raise ValueError(f"Group {self.name!r}: weights {self.weights} must be >= 0, sum to 1")
    if self.kind == "heads" and (not self.members or self.num_heads <= 0):
      raise ValueError(f"Group {self.name!r}: heads needs members and num_heads > 0")

  @property
  def outputs(self) -> tuple[str, ...]:
    """Names of the maps this group produces."""
    return self.members if self.kind == "heads" else (self.name,)


@dataclasses.dataclass(frozen=True)
class FusionSpec:
  """Rules and groups for one subtree.

  Attributes:
    root: '/'-joined path of the fused subtree (e.g. "visual"), or "" for the whole tree.
      Leaves outside it are not aligned (the fusion functions copy or average them).
    rules: axis rules; leaves under `root` that no rule names are averaged unaligned.
    groups: groups in computation order.
  """

  root: str
  rules: tuple[AxisRule, ...]
  groups: tuple[Group, ...]

  def map_names(self) -> list[str]:
    """Every map name, in computation order."""
    return [n for g in self.groups for n in g.outputs]


@dataclasses.dataclass(frozen=True)
class Binding:
  """A rule resolved on one leaf: `leaf[..., start:stop (on axis), ...]` is indexed by `group`."""

  axis: int
  start: int
  stop: int
  group: str
  role: str


def subtree(params: Any, root: str) -> Any:
  """The subtree of `params` at '/'-joined `root` ("" is `params` itself)."""
  node = params
  for key in root.split("/") if root else []:
    if not isinstance(node, dict) or key not in node:
      raise KeyError(f"Fusion root {root!r}: key {key!r} not found")
    node = node[key]
  return node


def replace_subtree(params: dict, root: str, new: Any) -> Any:
  """A shallow copy of `params` with the subtree at `root` replaced by `new`."""
  if not root:
    return new
  head, _, rest = root.partition("/")
  out = dict(params)
  out[head] = replace_subtree(params[head], rest, new)
  return out


def resolve(spec: FusionSpec, params: Any) -> tuple[dict[str, list[Binding]], dict[str, int]]:
  """Applies the rules to the leaves under `spec.root` and checks the spec.

  Args:
    spec: the fusion spec.
    params: a parameter pytree containing `spec.root`.

  Returns:
    `(bindings, sizes)`: leaf name (relative to root) -> its bindings, and map name -> number of
    units.

  Raises:
    ValueError: a rule matches no leaf, an axis is out of range or its length is not divisible
      by the chunk count, two rules claim overlapping parts of one axis, a map's units disagree
      in size, a rule names an undeclared group, or a representation reads a map that is
      computed later.
  """
  leaves = tree_lib.flatten_with_names(subtree(params, spec.root))
  declared = spec.map_names()
  if len(set(declared)) != len(declared):
    raise ValueError(f"Duplicate map names in spec: {declared}")
  order = {n: i for i, n in enumerate(declared)}
  solve_maps = {g.name for g in spec.groups if g.kind == "solve"}
  solve_maps |= {m for g in spec.groups if g.kind == "heads" for m in g.members}
  bindings: dict[str, list[Binding]] = {}
  sizes: dict[str, int] = {}
  hits = [0] * len(spec.rules)
  for name, leaf in leaves:
    shape = tuple(getattr(leaf, "shape", ()))
    for r_idx, rule in enumerate(spec.rules):
      match = re.fullmatch(rule.pattern, name)
      if not match:
        continue
      hits[r_idx] += 1
      group = rule.group.format(**match.groupdict())
      if group not in order:
        raise ValueError(f"Rule {rule.pattern!r} on {name!r}: group {group!r} is not declared")
      if not -len(shape) <= rule.axis < len(shape):
        raise ValueError(f"Rule {rule.pattern!r}: axis {rule.axis} out of range: {name!r}{shape}")
      axis = rule.axis % len(shape)
      index, count = rule.chunk or (0, 1)
      if shape[axis] % count:
        raise ValueError(f"{name!r}{shape}: axis {axis} is not divisible into {count} chunks")
      width = shape[axis] // count
      start, stop = index * width, (index + 1) * width
      for other in bindings.get(name, []):
        if other.axis == axis and other.start < stop and start < other.stop:
          raise ValueError(f"{name!r}: axis {axis} is claimed by {other.group!r} and {group!r}")
      if sizes.setdefault(group, width) != width:
        raise ValueError(
          f"Map {group!r}: {name!r} axis {axis} has {width} units, others have {sizes[group]}"
        )
      bindings.setdefault(name, []).append(Binding(axis, start, stop, group, rule.role))
  unused = [r.pattern for r, h in zip(spec.rules, hits) if not h]
  if unused:
    some = ", ".join(n for n, _ in leaves[:8])
    raise ValueError(f"Fusion rules matched no leaf under {spec.root!r}: {unused}. Some: {some}")
  for name, binds in bindings.items():
    for b in binds:
      if b.role != "out":
        continue
      if b.group not in solve_maps:
        raise ValueError(f"{name!r}: role 'out' for {b.group!r}, which is not solved by OT")
      for other in binds:
        if other.axis != b.axis and order[other.group] >= order[b.group]:
          raise ValueError(
            f"{name!r}: the representation of {b.group!r} reads axis {other.axis} aligned by "
            f"{other.group!r}, which is computed later"
          )
  for g in spec.groups:
    for src in g.sources:
      if src not in order or order[src] >= order[g.name]:
        raise ValueError(f"Group {g.name!r}: source {src!r} is not an earlier map")
      if g.name in sizes and src in sizes and sizes[src] != sizes[g.name]:
        raise ValueError(f"Group {g.name!r}: source {src!r} has a different size")
    if g.kind == "heads":
      for m in g.members:
        if m in sizes and sizes[m] % g.num_heads:
          raise ValueError(f"Map {m!r}: {sizes[m]} units not divisible by {g.num_heads} heads")
  return bindings, sizes


def vit_spec(
  layers: int,
  heads: int,
  *,
  residual: str,
  head_mode: str,
  residual_weight: float = 0.5,
  pos_embed: str = "learned",
  root: str = "visual",
) -> FusionSpec:
  """Spec for the CLIP ViT image tower (`params["visual"]`, layout of `clipjax/model`).

  Maps (block b, L = `layers`):

  * residual stream: conv1 output channels, class_embedding, positional_embedding (last axis),
    ln_pre, every ln_1/ln_2, in_proj and c_fc input sides, out_proj and c_proj output sides,
    ln_post and the proj input side. `residual="mean"` gives each site its own map as
    transformer fusion (Imfeld et al. 2024): "res/embed" is solved from the embeddings,
    "attn_out/b" from out_proj, "mlp_out/b" from c_proj, and after each residual add the
    stream map is `(1 - γ)·branch + γ·skip` ("res/b/mid", "res/{b+1}/in"; γ =
    `residual_weight`, 0.5 = mean). `residual="shared"` uses one map "res" for every site,
    solved from the embedding weights (the only residual weights whose other axes are fixed
    before any block map exists). `residual="none"` leaves the stream unpermuted.
  * attention of block b: "qk/b" indexes the q and k outputs (one map for both, so q·k is
    preserved under a hard map) and "v/b" the v outputs and the out_proj input side.
    `head_mode="per_head"` solves them jointly as a "heads" group (whole heads are matched,
    and within matched heads the dims; exact for hard maps); "cross_head" solves the two maps
    over all width dims independently (HOT-CLIP appendix C.1.2; a hard map that mixes heads is
    not function-preserving).
  * "mlp/b": c_fc output + bias, c_proj input.
  * the proj output side is never permuted (image embeddings stay in the frozen text space).

  Args:
    layers: number of vision blocks.
    heads: attention heads per block.
    residual: "mean" | "shared" | "none".
    head_mode: "per_head" | "cross_head".
    residual_weight: γ, the skip map's weight in "mean".
    pos_embed: the vision config's `pos_embed`; with "learned+sincos2d" a fixed table is added
      to the residual stream, so a residual permutation is not function-preserving and only
      `residual="none"` is accepted.
    root: path of the image tower in the params.

  Returns:
    The `FusionSpec`.
  """
  if residual not in RESIDUAL_POLICIES:
    raise ValueError(f"residual={residual!r} is not one of {RESIDUAL_POLICIES}")
  if head_mode not in HEAD_MODES:
    raise ValueError(f"head_mode={head_mode!r} is not one of {HEAD_MODES}")
  if not 0.0 <= residual_weight <= 1.0:
    raise ValueError(f"residual_weight={residual_weight} must be in [0, 1]")
  if pos_embed != "learned" and residual != "none":
    raise ValueError(
      f"pos_embed={pos_embed!r} adds a fixed table to the residual stream, which a residual "
      "permutation would not move; use residual='none'"
    )
  blk = r"blocks/(?P<b>\d+)/"
  rules: list[AxisRule] = [
    AxisRule(blk + r"attn/in_proj/kernel", 1, "qk/{b}", "out", (0, 3)),
    AxisRule(blk + r"attn/in_proj/kernel", 1, "qk/{b}", "out", (1, 3)),
    AxisRule(blk + r"attn/in_proj/kernel", 1, "v/{b}", "out", (2, 3)),
    AxisRule(blk + r"attn/in_proj/bias", 0, "qk/{b}", "out", (0, 3)),
    AxisRule(blk + r"attn/in_proj/bias", 0, "qk/{b}", "out", (1, 3)),
    AxisRule(blk + r"attn/in_proj/bias", 0, "v/{b}", "out", (2, 3)),
    AxisRule(blk + r"attn/out_proj/kernel", 0, "v/{b}", "in"),
    AxisRule(blk + r"mlp/c_fc/(kernel|bias)", -1, "mlp/{b}", "out"),
    AxisRule(blk + r"mlp/c_proj/kernel", 0, "mlp/{b}", "in"),
  ]
  groups: list[Group] = []

  def res_rules(names: dict[str, tuple[str, str]]) -> None:
    for key, (group, role) in names.items():
      pattern, axis = {
        "embed_conv": (r"conv1/kernel", -1),
        "embed_cls": (r"class_embedding", 0),
        "embed_pos": (r"positional_embedding", -1),
        "ln_pre": (r"ln_pre/(scale|bias)", 0),
        "ln_1": (blk + r"ln_1/(scale|bias)", 0),
        "in_proj": (blk + r"attn/in_proj/kernel", 0),
        "out_proj": (blk + r"attn/out_proj/(kernel|bias)", -1),
        "ln_2": (blk + r"ln_2/(scale|bias)", 0),
        "c_fc": (blk + r"mlp/c_fc/kernel", 0),
        "c_proj": (blk + r"mlp/c_proj/(kernel|bias)", -1),
        "ln_post": (r"ln_post/(scale|bias)", 0),
        "proj": (r"proj", 0),
      }[key]
      rules.append(AxisRule(pattern, axis, group, role))

  def attn_groups(b: int) -> list[Group]:
    if head_mode == "per_head":
      return [Group(f"attn/{b}", "heads", members=(f"qk/{b}", f"v/{b}"), num_heads=heads)]
    return [Group(f"qk/{b}", "solve"), Group(f"v/{b}", "solve")]

  if residual == "mean":
    final = f"res/{layers}/in"
    res_rules(
      {
        "embed_conv": ("res/embed", "out"),
        "embed_cls": ("res/embed", "out"),
        "embed_pos": ("res/embed", "out"),
        "ln_pre": ("res/embed", "in"),
        "ln_1": ("res/{b}/in", "in"),
        "in_proj": ("res/{b}/in", "in"),
        "out_proj": ("attn_out/{b}", "out"),
        "ln_2": ("res/{b}/mid", "in"),
        "c_fc": ("res/{b}/mid", "in"),
        "c_proj": ("mlp_out/{b}", "out"),
        "ln_post": (final, "in"),
        "proj": (final, "in"),
      }
    )
    g = residual_weight
    groups += [Group("res/embed", "solve"), Group("res/0/in", "combine", ("res/embed",), (1.0,))]
    for b in range(layers):
      groups += attn_groups(b)
      groups += [
        Group(f"attn_out/{b}", "solve"),
        Group(f"res/{b}/mid", "combine", (f"attn_out/{b}", f"res/{b}/in"), (1 - g, g)),
        Group(f"mlp/{b}", "solve"),
        Group(f"mlp_out/{b}", "solve"),
        Group(f"res/{b + 1}/in", "combine", (f"mlp_out/{b}", f"res/{b}/mid"), (1 - g, g)),
      ]
  else:
    if residual == "shared":
      res_rules(
        {
          "embed_conv": ("res", "out"),
          "embed_cls": ("res", "out"),
          "embed_pos": ("res", "out"),
          **{k: ("res", "in") for k in ("ln_pre", "ln_1", "in_proj", "out_proj", "ln_2")},
          **{k: ("res", "in") for k in ("c_fc", "c_proj", "ln_post", "proj")},
        }
      )
      groups.append(Group("res", "solve"))
    for b in range(layers):
      groups += attn_groups(b)
      groups.append(Group(f"mlp/{b}", "solve"))
  return FusionSpec(root=root, rules=tuple(rules), groups=tuple(groups))


def vit_spec_for(config: Any, *, residual: str, head_mode: str, **kwargs: Any) -> FusionSpec:
  """`vit_spec` with layers, heads and pos_embed read from a `CLIPConfig`."""
  vis = config.vision
  return vit_spec(
    vis.layers,
    vis.heads,
    residual=residual,
    head_mode=head_mode,
    pos_embed=vis.pos_embed,
    **kwargs,
  )


def rule_table(spec: FusionSpec) -> Sequence[tuple[str, int, str, str]]:
  """`(pattern, axis, group, role)` rows, for printing/logging a spec."""
  return [(r.pattern, r.axis, r.group, r.role) for r in spec.rules]


def random_permutation_maps(
  spec: FusionSpec, config: Any, rng: np.random.Generator
) -> dict[str, np.ndarray]:
  """Random function-preserving permutation maps for every map of a ViT image-tower spec.

  In block b the heads are permuted as units, the dims within each head by one permutation for
  q and k (`qk/b`) and another for v (`v/b`), and the MLP units (`mlp/b`); every other map of
  the spec (the residual stream) gets one shared permutation. A map is the [n, n] matrix
  `I[perm]` (`new[j] = old[perm[j]]`); `clipjax.fusion.apply_maps` applies them. Used to build
  permuted copies of a model, which exact fusion must recover.

  Args:
    spec: e.g. `vit_spec_for(config, ...)`.
    config: the `CLIPConfig` (its `vision` width, heads, layers and MLP width).
    rng: the permutations' source (drawn in a fixed order: residual, then per block).
  """
  vis = config.vision
  w, heads, dh = vis.width, vis.heads, vis.width // vis.heads

  def matrix(perm):
    return np.eye(len(perm), dtype=np.float32)[perm]

  res = matrix(rng.permutation(w))
  maps = {}
  for b in range(vis.layers):
    pi = rng.permutation(heads)
    for name in ("qk", "v"):
      maps[f"{name}/{b}"] = matrix(
        np.concatenate([pi[h] * dh + rng.permutation(dh) for h in range(heads)])
      )
    maps[f"mlp/{b}"] = matrix(rng.permutation(vis.mlp_dim))
  return {n: maps.get(n, res) for n in spec.map_names()}
