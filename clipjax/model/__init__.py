"""CLIP model: variants, NNX towers and the functional `params` API.

Public entry points: `create(variant, rng)` (random init) and `load(path)` (a clipjax workdir,
or an imported checkpoint through `convert.py`); both return a `CLIP` with `params`,
`encode_image(params, pixels)`, `encode_text(params, ids)` and `config`.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath

from clipjax.model import convert
from clipjax.model.clip import CLIP, ImageFeatures, TextFeatures, abstract, create
from clipjax.model.variants import VARIANTS, CLIPConfig, TextConfig, VisionConfig, get_config

__all__ = [
  "CLIP",
  "VARIANTS",
  "CLIPConfig",
  "ImageFeatures",
  "TextConfig",
  "TextFeatures",
  "VisionConfig",
  "abstract",
  "create",
  "get_config",
  "flatten_overrides",
  "is_workdir",
  "load",
]


def is_workdir(path: str | os.PathLike) -> bool:
  """Whether `path` is a clipjax run directory (`config.json` + `checkpoints/`)."""
  p = epath.Path(path)
  return (p / "checkpoints").is_dir() and (p / "config.json").exists()


def flatten_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
  """`{"vision": {"pool": "mean"}}` -> `{"vision.pool": "mean"}` (dotted keys kept)."""
  out = {}
  for k, v in overrides.items():
    if isinstance(v, dict):
      out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
    else:
      out[k] = v
  return out


def _load_workdir(path: str | os.PathLike, step: int | None) -> CLIP:
  from clipjax import checkpointing

  cfg = json.loads((epath.Path(path) / "config.json").read_text())
  try:
    name, data = cfg["model"]["name"], cfg["data"]
    overrides = {
      **flatten_overrides(dict(cfg["model"].get("overrides") or {})),
      "vision.image_size": data["image_size"],
      "text.context_length": data["context_length"],
    }
  except (KeyError, TypeError) as e:
    raise ValueError(
      f"{path}/config.json has no model.name / data.image_size / data.context_length ({e}): "
      "not the workdir of a run that trains a model"
    ) from None
  params = checkpointing.restore_params(os.fspath(epath.Path(path) / "checkpoints"), step)
  params = {k: v for k, v in params.items() if k != "method"}
  return dataclasses.replace(abstract(name, **overrides), params=jax.tree.map(jnp.asarray, params))


def load(path: str | os.PathLike, *, step: int | None = None, **overrides: Any) -> CLIP:
  """Loads a clipjax workdir, or an OpenAI/open_clip or HF CLIPModel checkpoint.

  Args:
    path: a clipjax workdir (`config.json` + `checkpoints/`: its latest checkpoint, or `step`),
      a `.safetensors` file, a directory holding one (HF: `model.safetensors` + `config.json`;
      open_clip: `open_clip_model.safetensors` [+ `open_clip_config.json`]), or a
      `.pt`/`.pth`/`.bin` state dict (needs torch; read with `weights_only=True`).
    step: the checkpoint step of a workdir (None: the latest).
    **overrides: `CLIPConfig` overrides applied to an imported checkpoint's inferred config, see
      `get_config` (e.g. `act="gelu"` for a bare open_clip state dict, `**{"vision.heads": 2}`
      where heads cannot be inferred, or `dtype="bfloat16"`).

  Returns:
    A `CLIP` whose float32 `params` are on the default device.

  Raises:
    convert.CheckpointError: unsupported file, undeclared activation, or missing / unused /
      mis-shaped keys.
  """
  if is_workdir(path):
    if overrides:
      raise ValueError(
        f"{path} is a clipjax workdir: its config.json fixes the model; overrides "
        f"{sorted(overrides)} apply to imported checkpoints only"
      )
    return _load_workdir(path, step)
  if step is not None:
    raise ValueError(f"step={step} applies to clipjax workdirs; {path} is not one")
  config, params = convert.load_checkpoint(path, **overrides)
  return dataclasses.replace(abstract(config), params=jax.tree.map(jnp.asarray, params))
