"""Path-addressed pytree utilities.

Every part of clipjax that selects parameters by name (frozen towers, weight-decay masks,
sharding rules, partial checkpoint loads, converter key accounting, fusion specs) goes through
these helpers. A path is the '/'-joined sequence of dict keys, e.g.
`visual/blocks/0/attn/in_proj/kernel`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
  "all_finite",
  "flatten_with_names",
  "match_mask",
  "names",
  "path_to_name",
  "select",
  "tree_map_with_names",
  "unflatten_names",
]


def path_to_name(path: Sequence[Any]) -> str:
  """Turns a `jax.tree_util` key path into a '/'-joined name."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  return "/".join(parts)


def flatten_with_names(tree: Any) -> list[tuple[str, Any]]:
  """Returns `[(name, leaf), ...]` in tree-flatten order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_to_name(p), x) for p, x in leaves]


def names(tree: Any) -> list[str]:
  """All leaf names of `tree`."""
  return [n for n, _ in flatten_with_names(tree)]


def tree_map_with_names(fn: Callable[[str, Any], Any], tree: Any, *rest: Any) -> Any:
  """`jax.tree.map` whose function also receives the leaf's name as first argument."""
  return jax.tree_util.tree_map_with_path(lambda p, *xs: fn(path_to_name(p), *xs), tree, *rest)


def _compile(patterns: str | Iterable[str]) -> list[re.Pattern]:
  if isinstance(patterns, str):
    patterns = [patterns]
  return [re.compile(p) for p in patterns]


def match_mask(tree: Any, patterns: str | Iterable[str], *, strict: bool = True) -> Any:
  """Boolean pytree: True where the leaf name fully matches any of the regexes.

  Args:
    tree: any pytree (params, opt state, ...).
    patterns: one regex or several; matched with `re.fullmatch` against leaf names.
    strict: raise if a pattern matches no leaf (a typo in a config regex is an error,
      not a silent no-op).
  """
  regexes = _compile(patterns)
  hits = [0] * len(regexes)

  def fn(name, _):
    out = False
    for i, r in enumerate(regexes):
      if r.fullmatch(name):
        hits[i] += 1
        out = True
    return out

  mask = tree_map_with_names(fn, tree)
  if strict:
    unused = [r.pattern for r, h in zip(regexes, hits) if not h]
    if unused:
      examples = ", ".join(names(tree)[:8])
      raise ValueError(f"Patterns matched no parameter: {unused}. Some names: {examples}, ...")
  return mask


def select(tree: Any, patterns: str | Iterable[str]) -> dict[str, Any]:
  """`{name: leaf}` for leaves whose name fully matches any pattern (non-strict)."""
  regexes = _compile(patterns)
  return {n: x for n, x in flatten_with_names(tree) if any(r.fullmatch(n) for r in regexes)}


def unflatten_names(flat: dict[str, Any]) -> dict[str, Any]:
  """Inverse of `dict(flatten_with_names(nested_dict))` for nested dicts."""
  out: dict[str, Any] = {}
  for name, x in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ValueError(f"Name {name!r} conflicts with a leaf at {p!r}.")
    if leaf in node:
      raise ValueError(f"Duplicate name {name!r}.")
    node[leaf] = x
  return out


def all_finite(tree: Any) -> jax.Array:
  """bool scalar: every floating leaf of `tree` is finite, and so is its float32 sum of squares.

  One fused reduction per leaf. The sum of squares also rejects values so large (|x| above
  about 1e19) that norms overflow, which no trained model has but a diverged step does.
  """
  sq = [
    jnp.sum(jnp.square(x.astype(jnp.float32)))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.isfinite(sum(sq, jnp.zeros((), jnp.float32)))
