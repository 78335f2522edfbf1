"""Neuron alignment: representations, transport maps and their propagation through a spec.

OTFusion (Singh & Jaggi, NeurIPS 2020) as used by HOT-CLIP (appendix C.1, eqs. 14-17) and
extended to transformers by Imfeld et al. (ICLR 2024, HOT-CLIP appendix C.1.2):

1. Walk the spec's groups in order. For a "solve" group, every leaf with `role="out"` for the
   group gives each unit its incoming weights, after the leaf's other axes were aligned with the
   maps computed earlier (eq. 14: the previous layer's map on the input side). With
   `representation="acts"` a unit is instead its activation vector over a small batch (no
   propagation is needed: both models see the same inputs; the activations are the model's own,
   `vit_activations`).
2. Ground cost between the units of the model and the anchor (`pairwise_cost`: optional
   L2-normalised rows, squared Euclidean or Euclidean, optionally divided by its max), uniform
   marginals, then `transport_map`: exact assignment (scipy's Hungarian solver; fusion runs
   outside `jit`) or entropic OT (ott-jax Sinkhorn with an explicit ε).
3. The plan is rescaled to a soft permutation, `map_mn = plan_nmᵀ / column marginal` (rows sum to
   1, eq. 16), and every axis in the group is contracted with it (`apply_maps`).

Defaults of `AlignOptions` follow HOT-CLIP appendix D: weight vectors, L2-normalised, squared
Euclidean ground cost (in [0, 4]), Sinkhorn with τ = ε = 0.08 on that cost as written. Dividing
the cost by its max first (`cost_scale="max"`, transformer fusion's "normalize by max") makes ε
relative and, at 0.08, blurs every map: on a randomly permuted width-48 ViT the fused copy is off
by 2e-2 instead of 1e-6 (tests/fusion/test_align.py), so it is an option, not the default.

Only hard maps recover a permuted model exactly: LayerNorm commutes with permutations of the
residual stream but not with soft maps (see `clipjax.fusion.spec`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from clipjax import tree as tree_lib
from clipjax.fusion import spec as spec_lib

__all__ = [
  "AlignOptions",
  "Aligned",
  "MapInfo",
  "align_params",
  "apply_maps",
  "compute_maps",
  "head_transport_maps",
  "pairwise_cost",
  "transport_map",
  "vit_activations",
  "vit_map_acts",
]

ActsFn = Callable[[dict], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class AlignOptions:
  """How transport maps are computed.

  Attributes:
    solver: "exact" (Hungarian assignment, hard permutation maps) or "sinkhorn" (entropic OT).
    epsilon: Sinkhorn regularisation ε (on the cost after `cost_scale`); required for
      "sinkhorn", ignored by "exact".
    representation: "weights" (incoming weight vectors) or "acts" (activations; needs an
      activation function, see `vit_activations`).
    ground_metric: "sqeuclidean" or "euclidean" between unit representations.
    normalize: "l2" (unit-norm representations) or "none".
    cost_scale: "none" (ε applies to the cost as written, HOT-CLIP appendix D) or "max" (divide
      the cost by its max first, so ε is relative; transformer fusion's "normalize by max").
    threshold: Sinkhorn stopping threshold on the marginal error.
    max_iterations: Sinkhorn iteration cap.
  """

  solver: str = "sinkhorn"
  epsilon: float | None = 0.08
  representation: str = "weights"
  ground_metric: str = "sqeuclidean"
  normalize: str = "l2"
  cost_scale: str = "none"
  threshold: float = 1e-6
  max_iterations: int = 5000

  def __post_init__(self):
    choices = {
      "solver": ("exact", "sinkhorn"),
      "representation": ("weights", "acts"),
      "ground_metric": ("sqeuclidean", "euclidean"),
      "normalize": ("l2", "none"),
      "cost_scale": ("max", "none"),
    }
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f"AlignOptions.{field}={getattr(self, field)!r} is not one of {allowed}")
    if self.solver == "sinkhorn" and (self.epsilon is None or self.epsilon <= 0):
      raise ValueError(f"AlignOptions.epsilon={self.epsilon} must be > 0 for solver='sinkhorn'")


class MapInfo(NamedTuple):
  """Diagnostics of one map (host scalars).

  Attributes:
    size: number of units.
    transport_cost: <plan, cost> on the (scaled) cost; 0 for a "combine" map, NaN for the
      members of a "heads" group (the group's own entry holds the head-level cost).
    identity_mass: trace(map) / size, the fraction of mass kept in place (1 = identity; the
      misalignment measure OTFusion logs).
    converged: Sinkhorn convergence (True for exact assignment and "combine").
    n_iters: Sinkhorn iterations (0 for exact assignment and "combine").
  """

  size: int
  transport_cost: float
  identity_mass: float
  converged: bool
  n_iters: int


class Aligned(NamedTuple):
  """Result of `align_params`.

  Attributes:
    params: the model's params with the spec's subtree aligned to the anchor.
    maps: map name -> [m, n] float32 numpy map (rows sum to 1).
    infos: map name -> `MapInfo`.
  """

  params: dict
  maps: dict[str, np.ndarray]
  infos: dict[str, MapInfo]


def pairwise_cost(x_nf: np.ndarray, y_mf: np.ndarray, options: AlignOptions) -> np.ndarray:
  """Ground cost between unit representations (host numpy, float32).

  Args:
    x_nf: [n, f] representations of the model's units.
    y_mf: [m, f] representations of the anchor's units.
    options: `normalize`, `ground_metric` and `cost_scale` are used.

  Returns:
    [n, m] float32 cost.
  """
  x_nf = np.asarray(x_nf, np.float32)
  y_mf = np.asarray(y_mf, np.float32)
  if options.normalize == "l2":
    x_nf = x_nf / np.maximum(np.linalg.norm(x_nf, axis=1, keepdims=True), 1e-12)
    y_mf = y_mf / np.maximum(np.linalg.norm(y_mf, axis=1, keepdims=True), 1e-12)
  sq_n1 = np.sum(x_nf * x_nf, axis=1, keepdims=True)
  sq_1m = np.sum(y_mf * y_mf, axis=1, keepdims=True).T
  cost_nm = np.maximum(sq_n1 + sq_1m - 2.0 * (x_nf @ y_mf.T), 0.0)
  if options.ground_metric == "euclidean":
    cost_nm = np.sqrt(cost_nm)
  top = cost_nm.max()
  if options.cost_scale == "max" and top > 0:
    cost_nm = cost_nm / top
  return cost_nm.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("threshold", "max_iterations"))
def _sinkhorn(cost_nm: jax.Array, epsilon: jax.Array, *, threshold: float, max_iterations: int):
  # ott broadcasts implicitly inside; clipjax's tests raise on implicit rank promotion.
  with jax.numpy_rank_promotion("allow"):
    geom = geometry.Geometry(cost_matrix=cost_nm, epsilon=epsilon)
    solver = ott_sinkhorn.Sinkhorn(
      threshold=threshold, max_iterations=max_iterations, implicit_diff=None
    )
    out = solver(linear_problem.LinearProblem(geom))
    return out.matrix, out.converged, out.n_iters


@functools.partial(jax.jit, static_argnames=("threshold", "max_iterations"))
def _sinkhorn_batch(
  cost_knm: jax.Array, epsilon: jax.Array, *, threshold: float, max_iterations: int
):
  solve = functools.partial(_sinkhorn, threshold=threshold, max_iterations=max_iterations)
  return jax.vmap(solve, in_axes=(0, None))(cost_knm, epsilon)


def _plan_to_map(plan_nm: np.ndarray) -> np.ndarray:
  """[n, m] plan -> [m, n] map whose rows sum to 1 (OTFusion's marginal correction)."""
  col_m = plan_nm.sum(axis=0)
  if np.any(col_m <= 0) or not np.all(np.isfinite(plan_nm)):
    raise FloatingPointError("transport plan has empty columns or non-finite entries")
  return (plan_nm / col_m[None, :]).T


def _exact_plan(cost_nm: np.ndarray) -> np.ndarray:
  n, m = cost_nm.shape
  if n != m:
    raise ValueError(f"solver='exact' needs equal unit counts, got cost of shape {cost_nm.shape}")
  rows, cols = scipy.optimize.linear_sum_assignment(cost_nm)
  plan_nm = np.zeros((n, m), np.float64)
  plan_nm[rows, cols] = 1.0 / n
  return plan_nm


def _info(map_mn: np.ndarray, plan_nm: np.ndarray, cost_nm: np.ndarray, conv, iters) -> MapInfo:
  size = map_mn.shape[0]
  ident = float(np.trace(map_mn) / size) if map_mn.shape[0] == map_mn.shape[1] else float("nan")
  return MapInfo(size, float(np.sum(plan_nm * cost_nm)), ident, bool(conv), int(iters))


def _solve_plan(cost_nm: jax.Array, options: AlignOptions) -> tuple[np.ndarray, bool, int]:
  """[n, m] float64 plan between uniform marginals (total mass 1), converged, iterations."""
  if options.solver == "exact":
    return _exact_plan(np.asarray(cost_nm, np.float64)), True, 0
  plan, conv, iters = _sinkhorn(
    jnp.asarray(cost_nm, jnp.float32),
    jnp.float32(options.epsilon),
    threshold=options.threshold,
    max_iterations=options.max_iterations,
  )
  return np.asarray(plan, np.float64), bool(conv), int(iters)


def transport_map(cost_nm: jax.Array, options: AlignOptions) -> tuple[np.ndarray, MapInfo]:
  """OT between uniform measures on the model's and the anchor's units, as a soft permutation.

  Args:
    cost_nm: [n, m] ground cost (model units x anchor units).
    options: `solver`, `epsilon`, `threshold`, `max_iterations` are used.

  Returns:
    `(map_mn, info)`: [m, n] float32 map with rows summing to 1 (a permutation matrix for
    `solver="exact"`), and its `MapInfo`.

  Raises:
    FloatingPointError: the Sinkhorn plan is not finite or leaves a column empty (ε too small).
  """
  plan_nm, conv, iters = _solve_plan(cost_nm, options)
  map_mn = _plan_to_map(plan_nm)
  info = _info(map_mn, plan_nm, np.asarray(cost_nm, np.float64), conv, iters)
  return map_mn.astype(np.float32), info


def head_transport_maps(
  costs: list[jax.Array], num_heads: int, options: AlignOptions
) -> tuple[list[np.ndarray], MapInfo]:
  """Head-structured OT: match whole heads, and within matched heads match dims.

  For every member (e.g. the q/k dims and the v dims) and every head pair (h, g), the
  within-head OT problem between the dims of model head h and anchor head g is solved; the
  head-to-head cost is the sum over members of their within-head transport costs; one OT over
  heads gives `plan_hg`. Member plans are the couplings `plan[(h, d), (g, e)] = plan_hg[h, g] *
  inner[h, g][d, e]` (uniform marginals again), rescaled to soft permutations. With exact
  assignment they are block permutations (a head permutation, then within-head permutations),
  which keep multi-head attention's function.

  Args:
    costs: per member, an [n, n] cost between the model's and the anchor's units (n = heads ·
      head_dim, head-major as in the fused in_proj).
    num_heads: number of heads.
    options: solver options.

  Returns:
    `(maps, info)`: per member an [n, n] float32 map (rows sum to 1); `MapInfo` of the
    head-level problem.
  """
  n = costs[0].shape[0]
  hh, k = num_heads, n // num_heads
  inners, head_cost_hg, all_conv = [], np.zeros((hh, hh), np.float64), True
  for cost in costs:
    if cost.shape != (n, n):
      raise ValueError(f"head costs must all be [{n}, {n}], got {cost.shape}")
    blocks_hgde = np.asarray(cost, np.float64).reshape(hh, k, hh, k).transpose(0, 2, 1, 3)
    if options.solver == "exact":
      inner_hgde = np.stack([np.stack([_exact_plan(c) for c in row]) for row in blocks_hgde])
    else:
      plans, conv, _ = _sinkhorn_batch(
        jnp.asarray(blocks_hgde.reshape(hh * hh, k, k), jnp.float32),
        jnp.float32(options.epsilon),
        threshold=options.threshold,
        max_iterations=options.max_iterations,
      )
      inner_hgde = np.asarray(plans, np.float64).reshape(hh, hh, k, k)
      all_conv = all_conv and bool(np.all(conv))
    inners.append(inner_hgde)
    head_cost_hg += np.sum(inner_hgde * blocks_hgde, axis=(2, 3))
  if options.cost_scale == "max" and head_cost_hg.max() > 0:
    head_cost_hg = head_cost_hg / head_cost_hg.max()
  plan_hg, conv, iters = _solve_plan(jnp.asarray(head_cost_hg), options)
  head_map = _plan_to_map(plan_hg)
  info = _info(head_map, plan_hg, head_cost_hg, conv and all_conv, iters)
  maps = []
  for inner_hgde in inners:
    full_nm = np.einsum("hg,hgde->hdge", plan_hg, inner_hgde).reshape(n, n)
    maps.append(_plan_to_map(full_nm).astype(np.float32))
  return maps, info


def _as_permutation(map_mn: np.ndarray) -> np.ndarray | None:
  """The index array p with map[j, p[j]] = 1 when `map_mn` is a permutation matrix, else None."""
  if map_mn.shape[0] != map_mn.shape[1] or np.count_nonzero(map_mn) != map_mn.shape[0]:
    return None
  perm = np.argmax(map_mn, axis=1)
  rows = np.arange(map_mn.shape[0])
  if not np.all(map_mn[rows, perm] == 1) or len(np.unique(perm)) != len(perm):
    return None
  return perm


def _contract(
  x: np.ndarray, axis: int, start: int, stop: int, map_mn: np.ndarray, perm: np.ndarray | None
) -> np.ndarray:
  """Replaces `x[..., start:stop (axis), ...]` by `map_mn` applied along that axis (numpy).

  `perm` is `_as_permutation(map_mn)` (computed once per map by the caller).

  A permutation map is applied as a gather (exact, and O(size) rather than a matmul).
  """
  x = np.asarray(x)
  map_mn = np.asarray(map_mn, np.float32)
  seg = np.take(x, np.arange(start, stop), axis=axis)
  if perm is not None:
    out = np.take(seg, perm, axis=axis)
  else:
    seg = np.moveaxis(seg, axis, 0)
    out = (map_mn @ seg.reshape(seg.shape[0], -1)).reshape(-1, *seg.shape[1:])
    out = np.moveaxis(out.astype(x.dtype), 0, axis)
  if start == 0 and stop == x.shape[axis]:
    return out
  index = [slice(None)] * x.ndim
  index[axis] = slice(start, stop)
  full = np.array(x, copy=True)
  full[tuple(index)] = out
  return full


def _flat_root(params: Any, spec: spec_lib.FusionSpec) -> dict[str, jax.Array]:
  return dict(tree_lib.flatten_with_names(spec_lib.subtree(params, spec.root)))


def _check_same(flat: dict, ref: dict, what: str) -> None:
  if set(flat) != set(ref):
    missing, extra = sorted(set(ref) - set(flat)), sorted(set(flat) - set(ref))
    raise ValueError(f"{what} differs from the anchor: missing={missing} unexpected={extra}")
  for name, x in flat.items():
    if jnp.shape(x) != jnp.shape(ref[name]):
      raise ValueError(f"{what}: {name!r} has shape {jnp.shape(x)}, anchor {jnp.shape(ref[name])}")


def _weight_features(
  flat: dict, bindings: dict, group: str, maps: dict[str, jax.Array] | None
) -> np.ndarray:
  """[n, f] incoming weights of `group`'s units; other axes aligned with `maps` (None: as is)."""
  feats = []
  for name, binds in bindings.items():
    for b in binds:
      if b.group != group or b.role != "out":
        continue
      x = flat[name]
      if maps is not None:
        perms = {o.group: _as_permutation(maps[o.group]) for o in binds if o.axis != b.axis}
        for o in binds:
          if o.axis != b.axis:
            x = _contract(x, o.axis, o.start, o.stop, maps[o.group], perms[o.group])
      x = np.take(np.asarray(x), np.arange(b.start, b.stop), axis=b.axis)
      feats.append(np.moveaxis(x, b.axis, 0).reshape(b.stop - b.start, -1))
  if not feats:
    raise ValueError(f"Map {group!r} has no role='out' leaf to build weight representations from")
  return np.concatenate(feats, axis=1)


def _act_features(acts: dict[str, jax.Array], group: str, size: int) -> np.ndarray:
  if group not in acts:
    raise KeyError(f"activations have no entry for map {group!r}; got {sorted(acts)}")
  a = np.asarray(acts[group])
  if a.shape[-1] != size:
    raise ValueError(f"activations[{group!r}] has {a.shape[-1]} units, expected {size}")
  return a.reshape(-1, size).T


def compute_maps(
  params: dict,
  anchor: dict,
  spec: spec_lib.FusionSpec,
  options: AlignOptions,
  *,
  acts: dict[str, jax.Array] | None = None,
  anchor_acts: dict[str, jax.Array] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, MapInfo]]:
  """Transport maps from `params`' units to `anchor`'s, group by group in spec order.

  Args:
    params: the model to align (same structure as `anchor` under `spec.root`).
    anchor: the anchor model.
    spec: the fusion spec.
    options: alignment options.
    acts: for `representation="acts"`, map name -> [..., units] activations of `params`.
    anchor_acts: the same for the anchor, on the same inputs.

  Returns:
    `(maps, infos)`: map name -> [m, n] float32 numpy map (rows sum to 1), and `MapInfo`s.
  """
  bindings, sizes = spec_lib.resolve(spec, anchor)
  flat, ref = _flat_root(params, spec), _flat_root(anchor, spec)
  _check_same(flat, ref, "params")
  use_acts = options.representation == "acts"
  if use_acts and (acts is None or anchor_acts is None):
    raise ValueError("representation='acts' needs acts and anchor_acts")
  maps: dict[str, np.ndarray] = {}
  infos: dict[str, MapInfo] = {}

  def cost_of(name: str) -> jax.Array:
    if use_acts:
      x_nf = _act_features(acts, name, sizes[name])
      y_mf = _act_features(anchor_acts, name, sizes[name])
    else:
      x_nf = _weight_features(flat, bindings, name, maps)
      y_mf = _weight_features(ref, bindings, name, None)
    return pairwise_cost(x_nf, y_mf, options)

  for g in spec.groups:
    if g.kind == "combine":
      out = sum(np.float32(w) * maps[s] for s, w in zip(g.sources, g.weights))
      maps[g.name] = out
      ident = float(np.trace(out) / out.shape[0])
      infos[g.name] = MapInfo(out.shape[0], 0.0, ident, True, 0)
    elif g.kind == "solve":
      if g.name not in sizes:
        raise ValueError(f"Map {g.name!r} is declared but no rule indexes an axis with it")
      map_mn, infos[g.name] = transport_map(cost_of(g.name), options)
      maps[g.name] = map_mn
    else:
      missing = [m for m in g.members if m not in sizes]
      if missing:
        raise ValueError(f"Heads group {g.name!r}: members {missing} are not indexed by any rule")
      member_maps, infos[g.name] = head_transport_maps(
        [cost_of(m) for m in g.members], g.num_heads, options
      )
      for m, map_mn in zip(g.members, member_maps):
        maps[m] = map_mn
        ident = float(np.trace(map_mn) / map_mn.shape[0])
        infos[m] = MapInfo(map_mn.shape[0], float("nan"), ident, infos[g.name].converged, 0)
  return maps, infos


def apply_maps(
  params: dict, spec: spec_lib.FusionSpec, maps: dict[str, np.ndarray | jax.Array]
) -> dict:
  """Contracts every bound axis under `spec.root` with its map.

  Args:
    params: parameter pytree.
    spec: the fusion spec.
    maps: map name -> [m, n] map for every map a rule uses.

  Returns:
    `params` with the subtree at `spec.root` replaced by its aligned copy (other leaves shared).
  """
  bindings, _ = spec_lib.resolve(spec, params)
  missing = sorted({b.group for bs in bindings.values() for b in bs} - set(maps))
  if missing:
    raise KeyError(f"apply_maps: no map given for {missing}")
  flat = _flat_root(params, spec)
  perms = {name: _as_permutation(np.asarray(m, np.float32)) for name, m in maps.items()}
  out = {}
  for name, x in flat.items():
    binds = bindings.get(name, [])
    for b in binds:
      x = _contract(x, b.axis, b.start, b.stop, maps[b.group], perms[b.group])
    out[name] = jnp.asarray(x) if binds else x
  return spec_lib.replace_subtree(params, spec.root, tree_lib.unflatten_names(out))


def align_params(
  params: dict,
  anchor: dict,
  spec: spec_lib.FusionSpec,
  options: AlignOptions,
  *,
  acts_fn: ActsFn | None = None,
  anchor_acts: dict[str, jax.Array] | None = None,
) -> Aligned:
  """Aligns `params` to `anchor` (maps by `compute_maps`, applied by `apply_maps`).

  Args:
    params: the model to align.
    anchor: the anchor model.
    spec: the fusion spec.
    options: alignment options.
    acts_fn: for `representation="acts"`: params -> {map name: [..., units] activations} on a
      fixed batch (e.g. `vit_activations(model, pixels)`).
    anchor_acts: precomputed `acts_fn(anchor)` (computed here when None).

  Returns:
    `Aligned(params, maps, infos)`; leaves outside `spec.root` are `params`' own.
  """
  acts = None
  if options.representation == "acts":
    if acts_fn is None:
      raise ValueError("representation='acts' needs acts_fn")
    acts = acts_fn(params)
    anchor_acts = acts_fn(anchor) if anchor_acts is None else anchor_acts
  maps, infos = compute_maps(params, anchor, spec, options, acts=acts, anchor_acts=anchor_acts)
  return Aligned(apply_maps(params, spec, maps), maps, infos)


def vit_map_acts(acts: dict[str, jax.Array], layers: int) -> dict[str, jax.Array]:
  """The image tower's own intermediates (`CLIP.image_intermediates`) keyed by map name.

  Args:
    acts: the intermediates dict of `CLIP.image_intermediates`.
    layers: number of vision blocks.

  Returns:
    {map name: [b, t', units]}: "res/embed" (tokens plus positions, before ln_pre), "res" (the
    residual stream after the embedding and after every block, concatenated over tokens), and
    per block b "qk/b" (q and k concatenated over tokens), "v/b", "attn_out/b" (out_proj
    output), "mlp/b" (c_fc output before the activation) and "mlp_out/b" (c_proj output).
  """
  out = {"res/embed": acts["embed"]}
  states = [acts["embed"]]
  for b in range(layers):
    blk = f"blocks/{b}/"
    out[f"qk/{b}"] = jnp.concatenate([acts[blk + "attn/q"], acts[blk + "attn/k"]], axis=1)
    out[f"v/{b}"] = acts[blk + "attn/v"]
    out[f"attn_out/{b}"] = acts[blk + "attn_out"]
    out[f"mlp/{b}"] = acts[blk + "mlp/hidden"]
    out[f"mlp_out/{b}"] = acts[blk + "mlp_out"]
    states.append(acts[blk + "out"])
  out["res"] = jnp.concatenate(states, axis=1)
  return out


def vit_activations(model: Any, pixels_bhwc: jax.Array) -> ActsFn:
  """An `acts_fn` for `align_params`: the image tower's own activations on a fixed batch.

  Args:
    model: the `clipjax.model.CLIP` whose params are aligned (its config and graphdef; its
      `params` are not read).
    pixels_bhwc: [b, s, s, 3] pixels in [0, 1] (a small batch: a few images give
      b·(1 + patches) samples per unit).

  Returns:
    A function full params -> `vit_map_acts` of `model.image_intermediates(params, pixels)`.
  """
  pixels_bhwc = jnp.asarray(pixels_bhwc)
  layers = model.config.vision.layers

  def acts_fn(params: dict) -> dict[str, jax.Array]:
    return vit_map_acts(model.image_intermediates(params, pixels_bhwc)[1], layers)

  return acts_fn
