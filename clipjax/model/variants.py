"""CLIP configurations: the two tower configs, the variant table and `get_config`.

The OpenAI rows use the hyperparameters published with CLIP (Radford et al., 2021, Table 20 and
the released checkpoints): context length 77, vocabulary 49408, end-of-text id 49407, QuickGELU.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = [
  "INTERPOLATIONS",
  "OPENAI_MEAN",
  "OPENAI_STD",
  "RESIZE_MODES",
  "VARIANTS",
  "CLIPConfig",
  "TextConfig",
  "VisionConfig",
  "get_config",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = ("bicubic", "bilinear")
RESIZE_MODES = ("shortest", "squash")
_POOLS = ("cls", "mean")
_POS_EMBEDS = ("learned", "learned+sincos2d")
_ACTS = ("quick_gelu", "gelu")
_DTYPES = ("float32", "bfloat16")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


def _check_positive(name: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"{name}={value!r} must be a positive int")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """ViT image tower.

  Attributes:
    image_size: side of the square input image in pixels.
    patch_size: side of a square patch; `image_size` must be divisible by it.
    width: token width of the transformer.
    layers: number of residual attention blocks.
    heads: attention heads; `width` must be divisible by it.
    mlp_dim: hidden width of the block MLP (OpenAI: 4 * width).
    pool: 'cls' (class token after ln_post, as OpenAI) or 'mean' (mean of the patch tokens after
      ln_post).
    pos_embed: 'learned' or 'learned+sincos2d' (adds a fixed 2-D sin-cos table to the learned
      one; the class token gets zeros).
    image_mean: per-channel RGB mean subtracted from pixels in [0, 1] (OpenAI's by default;
      imported checkpoints bring their own, e.g. open_clip's `preprocess_cfg`).
    image_std: per-channel RGB standard deviation the pixels are divided by.
    interpolation: resampling filter of the eval resize, 'bicubic' or 'bilinear' (PIL).
    resize_mode: eval resize, as open_clip's `resize_mode`: 'shortest' (shorter side to
      image_size, then centre crop) or 'squash' (both sides to image_size).
  """

  image_size: int = 224
  patch_size: int = 32
  width: int = 768
  layers: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  pool: str = "cls"
  pos_embed: str = "learned"
  image_mean: tuple[float, float, float] = OPENAI_MEAN
  image_std: tuple[float, float, float] = OPENAI_STD
  interpolation: str = "bicubic"
  resize_mode: str = "shortest"

  def __post_init__(self):
    for name in ("image_size", "patch_size", "width", "layers", "heads", "mlp_dim"):
      _check_positive(f"vision.{name}", getattr(self, name))
    for name in ("image_mean", "image_std"):
      value = getattr(self, name)
      try:
        value = tuple(float(v) for v in value)
      except (TypeError, ValueError):
        value = ()
      if len(value) != 3 or (name == "image_std" and min(value) <= 0):
        raise ValueError(
          f"vision.{name}={getattr(self, name)!r} must be 3 floats (RGB)"
          + (", all > 0" if name == "image_std" else "")
        )
      object.__setattr__(self, name, value)  # lists from JSON configs become hashable tuples
    _check_choice("vision.interpolation", self.interpolation, INTERPOLATIONS)
    _check_choice("vision.resize_mode", self.resize_mode, RESIZE_MODES)
    if self.image_size % self.patch_size:
      raise ValueError(
        f"vision.image_size={self.image_size} is not divisible by "
        f"vision.patch_size={self.patch_size}"
      )
    if self.width % self.heads:
      raise ValueError(f"vision.width={self.width} is not divisible by vision.heads={self.heads}")
    _check_choice("vision.pool", self.pool, _POOLS)
    _check_choice("vision.pos_embed", self.pos_embed, _POS_EMBEDS)
    if self.pos_embed == "learned+sincos2d" and self.width % 4:
      raise ValueError(
        f"vision.pos_embed='learned+sincos2d' needs width % 4 == 0, got width={self.width}"
      )

  @property
  def grid_size(self) -> int:
    """Patches per image side."""
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    """Patch tokens per image (the class token excluded)."""
    return self.grid_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """Causal text transformer.

  Attributes:
    vocab_size: number of token embeddings.
    context_length: maximum sequence length (rows of the positional embedding).
    width: token width of the transformer.
    layers: number of residual attention blocks.
    heads: attention heads; `width` must be divisible by it.
    mlp_dim: hidden width of the block MLP (OpenAI: 4 * width).
    eot_id: end-of-text token id; the pooled embedding is taken at its FIRST occurrence.
  """

  vocab_size: int = 49408
  context_length: int = 77
  width: int = 512
  layers: int = 12
  heads: int = 8
  mlp_dim: int = 2048
  eot_id: int = 49407

  def __post_init__(self):
    for name in ("vocab_size", "context_length", "width", "layers", "heads", "mlp_dim"):
      _check_positive(f"text.{name}", getattr(self, name))
    if self.width % self.heads:
      raise ValueError(f"text.width={self.width} is not divisible by text.heads={self.heads}")
    if not 0 <= self.eot_id < self.vocab_size:
      raise ValueError(f"text.eot_id={self.eot_id} is outside [0, vocab_size={self.vocab_size})")
    if self.context_length < 2:
      raise ValueError(f"text.context_length={self.context_length} must be >= 2 (sot and eot)")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Two-tower CLIP model.

  Attributes:
    vision: image tower config.
    text: text tower config.
    embed_dim: dimension of the joint embedding space.
    act: block MLP activation, 'quick_gelu' (x * sigmoid(1.702 x), OpenAI) or 'gelu' (exact erf).
    ln_eps: LayerNorm epsilon.
    dtype: compute dtype, 'float32' or 'bfloat16'; parameters are always float32.
    remat: rematerialise every residual block in the backward pass.
    logit_scale_init: initial value of the log of the logit scale (ln(1/0.07)).
    logit_bias_init: initial logit bias (SigLIP-style losses); None means no `logit_bias` param.
  """

  vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
  text: TextConfig = dataclasses.field(default_factory=TextConfig)
  embed_dim: int = 512
  act: str = "quick_gelu"
  ln_eps: float = 1e-5
  dtype: str = "float32"
  remat: bool = False
  logit_scale_init: float = math.log(1 / 0.07)
  logit_bias_init: float | None = None

  def __post_init__(self):
    if not isinstance(self.vision, VisionConfig):
      raise TypeError(f"vision must be a VisionConfig, got {type(self.vision).__name__}")
    if not isinstance(self.text, TextConfig):
      raise TypeError(f"text must be a TextConfig, got {type(self.text).__name__}")
    _check_positive("embed_dim", self.embed_dim)
    _check_choice("act", self.act, _ACTS)
    _check_choice("dtype", self.dtype, _DTYPES)
    if not self.ln_eps > 0:
      raise ValueError(f"ln_eps={self.ln_eps!r} must be > 0")


def _openai(
  *,
  embed_dim: int,
  image_size: int,
  patch_size: int,
  vision_width: int,
  vision_layers: int,
  vision_heads: int,
  text_width: int,
  text_heads: int,
) -> CLIPConfig:
  return CLIPConfig(
    vision=VisionConfig(
      image_size=image_size,
      patch_size=patch_size,
      width=vision_width,
      layers=vision_layers,
      heads=vision_heads,
      mlp_dim=4 * vision_width,
    ),
    text=TextConfig(
      vocab_size=49408,
      context_length=77,
      width=text_width,
      layers=12,
      heads=text_heads,
      mlp_dim=4 * text_width,
      eot_id=49407,
    ),
    embed_dim=embed_dim,
    act="quick_gelu",
  )


VARIANTS: dict[str, CLIPConfig] = {
  # Test size: runs in milliseconds on CPU. The full CLIP vocabulary keeps it usable with the
  # shipped tokenizer (the token embedding is then most of its 1.7 M parameters).
  "tiny": CLIPConfig(
    vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_dim=128),
    text=TextConfig(
      vocab_size=49408, context_length=77, width=32, layers=2, heads=2, mlp_dim=128, eot_id=49407
    ),
    embed_dim=32,
  ),
  "ViT-B/32": _openai(
    embed_dim=512,
    image_size=224,
    patch_size=32,
    vision_width=768,
    vision_layers=12,
    vision_heads=12,
    text_width=512,
    text_heads=8,
  ),
  "ViT-B/16": _openai(
    embed_dim=512,
    image_size=224,
    patch_size=16,
    vision_width=768,
    vision_layers=12,
    vision_heads=12,
    text_width=512,
    text_heads=8,
  ),
  "ViT-L/14": _openai(
    embed_dim=768,
    image_size=224,
    patch_size=14,
    vision_width=1024,
    vision_layers=24,
    vision_heads=16,
    text_width=768,
    text_heads=12,
  ),
  "ViT-L/14@336": _openai(
    embed_dim=768,
    image_size=336,
    patch_size=14,
    vision_width=1024,
    vision_layers=24,
    vision_heads=16,
    text_width=768,
    text_heads=12,
  ),
}

_SUB_CONFIGS = {"vision": VisionConfig, "text": TextConfig}


def get_config(name_or_config: str | CLIPConfig, **overrides: Any) -> CLIPConfig:
  """Returns a variant's config with overrides applied.

  Args:
    name_or_config: a key of `VARIANTS` or a `CLIPConfig`.
    **overrides: top-level fields (`dtype="bfloat16"`), dotted sub-config fields
      (`**{"vision.pool": "mean"}`), or whole sub-configs / dicts of their fields
      (`vision={"pool": "mean"}`).

  Returns:
    A validated `CLIPConfig`.

  Raises:
    KeyError: unknown variant name or unknown field (the message lists the valid ones).
    ValueError: the resulting config is invalid.
  """
  if isinstance(name_or_config, CLIPConfig):
    config = name_or_config
  elif isinstance(name_or_config, str):
    if name_or_config not in VARIANTS:
      raise KeyError(f"unknown CLIP variant {name_or_config!r}; valid names: {sorted(VARIANTS)}")
    config = VARIANTS[name_or_config]
  else:
    raise TypeError(
      f"name_or_config must be a variant name or CLIPConfig, got {type(name_or_config).__name__}"
    )

  top_fields = {f.name for f in dataclasses.fields(CLIPConfig)}
  top: dict[str, Any] = {}
  sub: dict[str, dict[str, Any]] = {"vision": {}, "text": {}}
  for key, value in overrides.items():
    head, dot, field = key.partition(".")
    if dot:
      if head not in _SUB_CONFIGS:
        raise KeyError(f"override {key!r}: {head!r} is not one of {sorted(_SUB_CONFIGS)}")
      sub[head][field] = value
    elif key in _SUB_CONFIGS and isinstance(value, dict):
      sub[key].update(value)
    elif key in top_fields:
      top[key] = value
    else:
      raise KeyError(f"unknown CLIPConfig field {key!r}; valid fields: {sorted(top_fields)}")

  for name, cls in _SUB_CONFIGS.items():
    if not sub[name]:
      continue
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(sub[name]) - valid)
    if unknown:
      raise KeyError(f"unknown {name} field(s) {unknown}; valid fields: {sorted(valid)}")
    base = top.get(name, getattr(config, name))
    top[name] = dataclasses.replace(base, **sub[name])
  return dataclasses.replace(config, **top) if top else config
