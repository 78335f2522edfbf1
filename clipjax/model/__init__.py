"""CLIP model: variants, NNX towers and the functional `params` API.

Public entry points: `create(variant, rng)` (random init) and `load(path)` (checkpoints, from
`convert.py`); both return a `CLIP` with `params`, `encode_image(params, pixels)`,
`encode_text(params, ids)` and `config`.
"""

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
]
