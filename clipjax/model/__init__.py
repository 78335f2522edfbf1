"""CLIP model: variants, NNX towers and the functional `params` API.

Public entry points: `create(variant, rng)` (random init) and `load(path)` (checkpoints, from
`convert.py`); both return a `CLIP` with `params`, `encode_image(params, pixels)`,
`encode_text(params, ids)` and `config`.
"""

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

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
  "load",
]


def load(path: str | os.PathLike, **overrides: Any) -> CLIP:
  """Loads an OpenAI/open_clip or HF CLIPModel checkpoint (layout and variant auto-detected).

  Args:
    path: a `.safetensors` file, a directory holding one (HF: `model.safetensors` +
      `config.json`; open_clip: `open_clip_model.safetensors` [+ `open_clip_config.json`]), or
      a `.pt`/`.pth`/`.bin` state dict (needs torch; read with `weights_only=True`).
    **overrides: `CLIPConfig` overrides applied to the inferred config, see `get_config`
      (e.g. `**{"vision.heads": 2}` where heads cannot be inferred, or `dtype="bfloat16"`).

  Returns:
    A `CLIP` whose float32 `params` are on the default device.

  Raises:
    convert.CheckpointError: unsupported file, or missing / unused / mis-shaped keys.
  """
  config, params = convert.load_checkpoint(path, **overrides)
  return dataclasses.replace(abstract(config), params=jax.tree.map(jnp.asarray, params))
