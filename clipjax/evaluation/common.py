"""Helpers shared by the evaluators: batch fields, valid masks, feature extraction."""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["get_field", "l2_normalize", "map_batches", "valid_mask"]


def get_field(batch: Mapping[str, Any], key: str) -> np.ndarray:
  """Reads `key` from a batch; "labels/shape" reads `batch["labels"]["shape"]`.

  Raises:
    KeyError: naming the missing key and the keys that are there.
  """
  node: Any = batch
  for part in key.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
      raise KeyError(f"batch has no field {key!r} (missing {part!r}; available: {have})")
    node = node[part]
  return np.asarray(node)


def valid_mask(batch: Mapping[str, Any], n: int) -> np.ndarray:
  """`batch["valid"]` (padded final batches) or all-True."""
  if "valid" not in batch:
    return np.ones((n,), bool)
  valid = np.asarray(batch["valid"], bool)
  if valid.shape != (n,):
    raise ValueError(f"batch['valid'] has shape {valid.shape}, expected ({n},)")
  return valid


def l2_normalize(x_nd: np.ndarray) -> np.ndarray:
  """Row-wise L2 normalisation in float32 (zero rows stay zero)."""
  x_nd = np.asarray(x_nd, np.float32)
  return x_nd / np.maximum(np.linalg.norm(x_nd, axis=-1, keepdims=True), 1e-12)


def map_batches(
  fn: Callable[[np.ndarray], Any],
  batches: Iterable[Mapping[str, Any]],
  *,
  input_key: str = "image",
  label_key: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Applies `fn` to `batch[input_key]` for every batch and concatenates the valid rows.

  Args:
    fn: e.g. `encode_image(pixels_bhwc) -> emb_bd` or `logits_fn(pixels_bhwc) -> logits_bc`.
    batches: iterable of batch dicts (with optional `valid`).
    input_key: batch field fed to `fn`.
    label_key: optional label field to collect alongside (see `get_field`).

  Returns:
    `(out_n..., labels_n or None)` with padded rows dropped.
  """
  outs, labels = [], []
  for i, batch in enumerate(batches):
    x = get_field(batch, input_key)
    out = np.asarray(fn(x))
    if out.shape[0] != x.shape[0]:
      raise ValueError(f"batch {i}: fn returned {out.shape[0]} rows for {x.shape[0]} inputs")
    keep = valid_mask(batch, x.shape[0])
    outs.append(out[keep])
    if label_key is not None:
      labels.append(get_field(batch, label_key)[keep])
  if not outs:
    raise ValueError("no batches to evaluate (empty iterable)")
  return np.concatenate(outs), (np.concatenate(labels) if label_key is not None else None)
