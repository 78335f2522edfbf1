"""Checkpoint import and export: OpenAI / open_clip and Hugging Face `CLIPModel` layouts.

Torch-free: `.safetensors` files are read and written with numpy + safetensors. `.pt` / `.pth` /
`.bin` files are read only through an optional torch path with `torch.load(weights_only=True)`;
nothing else is ever unpickled.

Every tensor goes through ONE table, `key_table(config)`, built from `_TOWER_ROWS`, `_BLOCK_ROWS`
and `_TOP_ROWS`: a row names the clipjax parameter path, the OpenAI/open_clip key, the HF key(s)
and the `Kind` of tensor, which fixes how it is transposed or split in each layout. Accounting is
strict: missing, unused and mis-shaped keys are all listed in one `CheckpointError`. Known
non-parameter buffers (`_IGNORED_BUFFERS`) are dropped by name.

Layouts on disk:
  'openai'  a `.safetensors` file with OpenAI / open_clip state-dict keys (`visual.conv1.weight`,
            `transformer.resblocks.0.attn.in_proj_weight`, ...), or a directory holding
            `open_clip_model.safetensors` and optionally `open_clip_config.json`
            (`{"model_cfg": ...}`, as written by open_clip's `push_to_hf_hub`).
  'hf'      a directory with `model.safetensors` (or a sharded `model.safetensors.index.json`) and
            `config.json` of a transformers `CLIPModel`.

The variant is inferred from tensor shapes. Attention heads, LayerNorm epsilon and the
end-of-text id come from the side-car config when there is one, else from the OpenAI rules
(heads = width // 64, eps 1e-5, eot = vocab_size - 1). The block activation is never guessed;
it comes from the checkpoint's own metadata:

  open_clip    `model_cfg.quick_gelu` of `open_clip_config.json` (absent = GELU, open_clip's
               default; only `-quickgelu` configs and OpenAI's weights use QuickGELU), or of the
               same JSON stored under `open_clip_config` in the safetensors header (clipjax's
               single-file export);
  HF           `hidden_act` of `config.json` (absent = QuickGELU, transformers' default);
  OpenAI       the release's bookkeeping scalars `input_resolution` / `context_length` /
               `vocab_size` mark OpenAI's own (QuickGELU) weights.

A file that tells none of these (a bare state dict) is refused unless the caller passes
`act="gelu"` or `act="quick_gelu"`. Image mean/std and the eval resize come from open_clip's
`preprocess_cfg` or HF's `preprocessor_config.json` (else OpenAI's). Any `CLIPConfig` field can be
overridden (`load_checkpoint(path, act="gelu", **{"vision.heads": 2})`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import pathlib
import re
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from clipjax import tree
from clipjax.model.variants import CLIPConfig, TextConfig, VisionConfig, get_config

__all__ = [
  "LAYOUTS",
  "CheckpointError",
  "Kind",
  "Row",
  "detect_layout",
  "export",
  "key_table",
  "load_checkpoint",
  "read_state_dict",
]

LAYOUTS = ("openai", "hf")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_OPENCLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors")
_OPENCLIP_CONFIG = "open_clip_config.json"
_HF_WEIGHTS = "model.safetensors"
_HF_INDEX = "model.safetensors.index.json"
_HF_CONFIG = "config.json"
_HF_PREPROCESSOR = "preprocessor_config.json"
_HEADER_KEY = "open_clip_config"  # safetensors metadata key of clipjax's single-file export
# Scalars that OpenAI's released (TorchScript) state dicts carry: they mark OpenAI's weights.
_OPENAI_BOOKKEEPING = ("input_resolution", "context_length", "vocab_size")
# HF `resample` (PIL enum values) -> clipjax `vision.interpolation`, and back.
_HF_RESAMPLE = {3: "bicubic", 2: "bilinear"}


class CheckpointError(ValueError):
  """A checkpoint does not match the expected layout (the message lists every problem)."""


class Kind(enum.Enum):
  """How a tensor is stored in each layout, relative to clipjax ([in, out] kernels).

  COPY:   same array everywhere (LayerNorm params, biases, embeddings, logit scale).
  LINEAR: torch Linear weight [out, in] in both layouts.
  PROJ:   tower projection; OpenAI stores [w, d] (as clipjax), HF a Linear weight [d, w].
  CONV:   patch-embedding conv, OIHW in both layouts, HWIO in clipjax.
  QKV:    fused input projection kernel [w, 3w]; OpenAI `in_proj_weight` [3w, w], HF separate
          q, k, v Linear weights [w, w] (in that order).
  QKV_BIAS: fused [3w]; OpenAI `in_proj_bias`, HF separate q, k, v biases [w].
  """

  COPY = "copy"
  LINEAR = "linear"
  PROJ = "proj"
  CONV = "conv"
  QKV = "qkv"
  QKV_BIAS = "qkv_bias"


@dataclasses.dataclass(frozen=True)
class Row:
  """One parameter: clipjax path, OpenAI key, HF key(s) (q, k, v for the fused kinds), kind."""

  path: str
  openai: str
  hf: tuple[str, ...]
  kind: Kind

  def keys(self, layout: str) -> tuple[str, ...]:
    return (self.openai,) if layout == "openai" else self.hf


def _qkv(fmt: str) -> tuple[str, ...]:
  return tuple(fmt.format(n) for n in "qkv")


# One residual block, relative to the tower's block prefix (see `_TOWER_ROWS`).
_BLOCK_ROWS = (
  ("ln_1/scale", "ln_1.weight", ("layer_norm1.weight",), Kind.COPY),
  ("ln_1/bias", "ln_1.bias", ("layer_norm1.bias",), Kind.COPY),
  ("attn/in_proj/kernel", "attn.in_proj_weight", _qkv("self_attn.{}_proj.weight"), Kind.QKV),
  ("attn/in_proj/bias", "attn.in_proj_bias", _qkv("self_attn.{}_proj.bias"), Kind.QKV_BIAS),
  ("attn/out_proj/kernel", "attn.out_proj.weight", ("self_attn.out_proj.weight",), Kind.LINEAR),
  ("attn/out_proj/bias", "attn.out_proj.bias", ("self_attn.out_proj.bias",), Kind.COPY),
  ("ln_2/scale", "ln_2.weight", ("layer_norm2.weight",), Kind.COPY),
  ("ln_2/bias", "ln_2.bias", ("layer_norm2.bias",), Kind.COPY),
  ("mlp/c_fc/kernel", "mlp.c_fc.weight", ("mlp.fc1.weight",), Kind.LINEAR),
  ("mlp/c_fc/bias", "mlp.c_fc.bias", ("mlp.fc1.bias",), Kind.COPY),
  ("mlp/c_proj/kernel", "mlp.c_proj.weight", ("mlp.fc2.weight",), Kind.LINEAR),
  ("mlp/c_proj/bias", "mlp.c_proj.bias", ("mlp.fc2.bias",), Kind.COPY),
)

# Block prefixes per tower: (clipjax, OpenAI, HF); `{i}` is the block index.
_BLOCK_PREFIXES = {
  "visual": (
    "visual/blocks/{i}/",
    "visual.transformer.resblocks.{i}.",
    "vision_model.encoder.layers.{i}.",
  ),
  "text": ("text/blocks/{i}/", "transformer.resblocks.{i}.", "text_model.encoder.layers.{i}."),
}

_TOWER_ROWS = (
  (
    "visual/conv1/kernel",
    "visual.conv1.weight",
    ("vision_model.embeddings.patch_embedding.weight",),
    Kind.CONV,
  ),
  (
    "visual/class_embedding",
    "visual.class_embedding",
    ("vision_model.embeddings.class_embedding",),
    Kind.COPY,
  ),
  (
    "visual/positional_embedding",
    "visual.positional_embedding",
    ("vision_model.embeddings.position_embedding.weight",),
    Kind.COPY,
  ),
  ("visual/ln_pre/scale", "visual.ln_pre.weight", ("vision_model.pre_layrnorm.weight",), Kind.COPY),
  ("visual/ln_pre/bias", "visual.ln_pre.bias", ("vision_model.pre_layrnorm.bias",), Kind.COPY),
  (
    "visual/ln_post/scale",
    "visual.ln_post.weight",
    ("vision_model.post_layernorm.weight",),
    Kind.COPY,
  ),
  ("visual/ln_post/bias", "visual.ln_post.bias", ("vision_model.post_layernorm.bias",), Kind.COPY),
  ("visual/proj", "visual.proj", ("visual_projection.weight",), Kind.PROJ),
  (
    "text/token_embedding",
    "token_embedding.weight",
    ("text_model.embeddings.token_embedding.weight",),
    Kind.COPY,
  ),
  (
    "text/positional_embedding",
    "positional_embedding",
    ("text_model.embeddings.position_embedding.weight",),
    Kind.COPY,
  ),
  ("text/ln_final/scale", "ln_final.weight", ("text_model.final_layer_norm.weight",), Kind.COPY),
  ("text/ln_final/bias", "ln_final.bias", ("text_model.final_layer_norm.bias",), Kind.COPY),
  ("text/text_projection", "text_projection", ("text_projection.weight",), Kind.PROJ),
  ("logit_scale", "logit_scale", ("logit_scale",), Kind.COPY),
)

# Only present when `config.logit_bias_init is not None` (SigLIP-style); HF CLIPModel has none.
_LOGIT_BIAS_ROW = ("logit_bias", "logit_bias", (), Kind.COPY)

# Non-parameter buffers that some files carry; dropped by exact name.
_IGNORED_BUFFERS = {
  "openai": (
    "attn_mask",  # causal mask buffer of older open_clip text towers
    "input_resolution",  # OpenAI TorchScript bookkeeping scalars
    "context_length",
    "vocab_size",
  ),
  "hf": (
    "text_model.embeddings.position_ids",  # arange buffers saved by older transformers
    "vision_model.embeddings.position_ids",
  ),
}


def key_table(config: CLIPConfig) -> list[Row]:
  """The full key table for `config`: one `Row` per clipjax parameter, in a fixed order."""
  layers = {"visual": config.vision.layers, "text": config.text.layers}
  rows = [Row(p, o, h, k) for p, o, h, k in _TOWER_ROWS]
  for tower, (pre_c, pre_o, pre_h) in _BLOCK_PREFIXES.items():
    for i in range(layers[tower]):
      for p, o, h, k in _BLOCK_ROWS:
        rows.append(
          Row(
            pre_c.format(i=i) + p,
            pre_o.format(i=i) + o,
            tuple(pre_h.format(i=i) + x for x in h),
            k,
          )
        )
  if config.logit_bias_init is not None:
    rows.append(Row(*_LOGIT_BIAS_ROW))
  return rows


def _param_shapes(config: CLIPConfig) -> dict[str, tuple[int, ...]]:
  """clipjax parameter shapes by path (the layout of `clipjax/model/__init__.py`)."""
  v, t, d = config.vision, config.text, config.embed_dim
  shapes = {
    "visual/conv1/kernel": (v.patch_size, v.patch_size, 3, v.width),
    "visual/class_embedding": (v.width,),
    "visual/positional_embedding": (1 + v.grid_size**2, v.width),
    "visual/ln_pre/scale": (v.width,),
    "visual/ln_pre/bias": (v.width,),
    "visual/ln_post/scale": (v.width,),
    "visual/ln_post/bias": (v.width,),
    "visual/proj": (v.width, d),
    "text/token_embedding": (t.vocab_size, t.width),
    "text/positional_embedding": (t.context_length, t.width),
    "text/ln_final/scale": (t.width,),
    "text/ln_final/bias": (t.width,),
    "text/text_projection": (t.width, d),
    "logit_scale": (),
    "logit_bias": (),
  }
  for tower, cfg in (("visual", v), ("text", t)):
    w, m = cfg.width, cfg.mlp_dim
    block = {
      "ln_1/scale": (w,),
      "ln_1/bias": (w,),
      "attn/in_proj/kernel": (w, 3 * w),
      "attn/in_proj/bias": (3 * w,),
      "attn/out_proj/kernel": (w, w),
      "attn/out_proj/bias": (w,),
      "ln_2/scale": (w,),
      "ln_2/bias": (w,),
      "mlp/c_fc/kernel": (w, m),
      "mlp/c_fc/bias": (m,),
      "mlp/c_proj/kernel": (m, w),
      "mlp/c_proj/bias": (w,),
    }
    for i in range(cfg.layers):
      shapes.update({f"{tower}/blocks/{i}/{k}": s for k, s in block.items()})
  return shapes


def _stored_shapes(kind: Kind, layout: str, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
  """Shapes of the stored tensor(s) for a clipjax parameter of `shape`."""
  if kind is Kind.COPY:
    return [shape]
  if kind is Kind.LINEAR or (kind is Kind.PROJ and layout == "hf"):
    return [shape[::-1]]
  if kind is Kind.PROJ:
    return [shape]
  if kind is Kind.CONV:
    h, w, i, o = shape
    return [(o, i, h, w)]
  if kind is Kind.QKV:
    w, w3 = shape
    return [(w3, w)] if layout == "openai" else [(w, w)] * 3
  (w3,) = shape
  return [shape] if layout == "openai" else [(w3 // 3,)] * 3


def _to_clipjax(kind: Kind, layout: str, xs: list[np.ndarray]) -> np.ndarray:
  if kind is Kind.COPY or (kind is Kind.PROJ and layout == "openai"):
    return xs[0]
  if kind in (Kind.LINEAR, Kind.PROJ):
    return xs[0].T
  if kind is Kind.CONV:
    return xs[0].transpose(2, 3, 1, 0)
  if kind is Kind.QKV:
    return xs[0].T if layout == "openai" else np.concatenate([x.T for x in xs], axis=1)
  return xs[0] if layout == "openai" else np.concatenate(xs, axis=0)


def _from_clipjax(kind: Kind, layout: str, x: np.ndarray) -> list[np.ndarray]:
  if kind is Kind.COPY or (kind is Kind.PROJ and layout == "openai"):
    return [x]
  if kind in (Kind.LINEAR, Kind.PROJ):
    return [x.T]
  if kind is Kind.CONV:
    return [x.transpose(3, 2, 0, 1)]
  if kind is Kind.QKV:
    return [x.T] if layout == "openai" else [p.T for p in np.split(x, 3, axis=1)]
  return [x] if layout == "openai" else np.split(x, 3, axis=0)


# ----------------------------------------------------------------------------------------------
# Reading files.


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  import ml_dtypes  # a jax dependency; registers numpy's 'bfloat16' for bf16 files
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  try:
    state = load_file(str(path))
  except (SafetensorError, OSError) as e:
    raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
  buffers = {k for names in _IGNORED_BUFFERS.values() for k in names}  # attn_mask holds -inf
  floats = {
    k: v
    for k, v in state.items()
    if (v.dtype.kind == "f" or v.dtype == ml_dtypes.bfloat16) and k not in buffers
  }
  bad = {k: n for k, v in floats.items() if (n := int(v.size - np.isfinite(v).sum()))}
  if bad:
    shown = ", ".join(f"{k} ({n})" for k, n in sorted(bad.items())[:5])
    warnings.warn(
      f"{path}: {len(bad)} tensor(s) hold NaN/Inf values: {shown}{', ...' if len(bad) > 5 else ''}",
      RuntimeWarning,
      stacklevel=2,
    )
  return state


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise CheckpointError(
      f"{path}: reading {path.suffix} files needs torch (`pip install clipjax[parity]`); "
      "or convert it to .safetensors"
    ) from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises several types for unsafe or TorchScript archives
    raise CheckpointError(
      f"{path}: torch.load(weights_only=True) refused it ({type(e).__name__}: "
      f"{str(e).split('. ')[0]}); only plain tensor state dicts are read, never TorchScript "
      "archives or arbitrary pickles (load those in torch, e.g. with open_clip, and save the "
      "state dict with safetensors)"
    ) from e
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]  # open_clip training checkpoints
  if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
    raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
  return {
    k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in obj.items()
  }


def _find_weights(directory: pathlib.Path) -> list[pathlib.Path]:
  index = directory / _HF_INDEX
  if index.is_file():
    weight_map = json.loads(index.read_text())["weight_map"]
    return [directory / f for f in sorted(set(weight_map.values()))]
  for name in (_HF_WEIGHTS, *_OPENCLIP_WEIGHTS):
    if (directory / name).is_file():
      return [directory / name]
  found = sorted(directory.glob("*.safetensors"))
  if len(found) != 1:
    raise CheckpointError(
      f"{directory}: expected one of {[_HF_WEIGHTS, _HF_INDEX, *_OPENCLIP_WEIGHTS]} or exactly one "
      f"*.safetensors file, found {[f.name for f in found]}"
    )
  return found


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], pathlib.Path]:
  """Reads the raw tensors of a checkpoint file or directory.

  Args:
    path: a `.safetensors` file, a `.pt`/`.pth`/`.bin` file (needs torch), or a directory.

  Returns:
    (state dict of numpy arrays, directory that holds side-car config files).

  Raises:
    FileNotFoundError: nothing at `path`.
    CheckpointError: an unsupported or unreadable file.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no checkpoint at {path}")
  if path.is_dir():
    files = _find_weights(path)
    state: dict[str, np.ndarray] = {}
    for f in files:
      part = _read_safetensors(f)
      dup = sorted(set(part) & set(state))
      if dup:
        raise CheckpointError(f"{f}: keys also present in another shard: {dup}")
      state.update(part)
    return state, path
  if path.suffix == ".safetensors":
    return _read_safetensors(path), path.parent
  if path.suffix in _TORCH_SUFFIXES:
    return _read_torch(path), path.parent
  raise CheckpointError(
    f"refusing to read {path}: unknown checkpoint format {path.suffix!r}; expected a .safetensors "
    f"file, a directory holding one, or {'/'.join(_TORCH_SUFFIXES)} via torch weights_only"
  )


def _header_metadata(path: str | os.PathLike) -> dict[str, str]:
  """The `__metadata__` of a `.safetensors` file (or of a directory's single weights file)."""
  path = pathlib.Path(path)
  if path.is_dir():
    files = _find_weights(path)
    if len(files) != 1:
      return {}
    path = files[0]
  if path.suffix != ".safetensors":
    return {}
  with open(path, "rb") as f:
    (n,) = np.frombuffer(f.read(8), "<u8")
    header = json.loads(f.read(int(n)))
  return dict(header.get("__metadata__") or {})


def detect_layout(state: dict[str, Any], where: str = "checkpoint") -> str:
  """'hf' or 'openai' from the token-embedding key; raises `CheckpointError` otherwise."""
  if "text_model.embeddings.token_embedding.weight" in state:
    return "hf"
  if "token_embedding.weight" in state:
    return "openai"
  sample = sorted(state)[:8]
  raise CheckpointError(
    f"{where}: neither an OpenAI/open_clip nor an HF CLIPModel state dict (no "
    f"'token_embedding.weight' or 'text_model.embeddings.token_embedding.weight'); keys start "
    f"with {sample}"
  )


# ----------------------------------------------------------------------------------------------
# Inferring the config.


def _n_blocks(state: dict[str, Any], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix).replace(r"\{i\}", r"(\d+)"))
  found = [int(m.group(1)) for k in state if (m := pattern.match(k))]
  return max(found) + 1 if found else 0


def _shape(state: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
  if key not in state:
    raise CheckpointError(f"{where}: cannot infer the model shape, key {key!r} is missing")
  return tuple(state[key].shape)


def _grid(n_pos: int, where: str) -> int:
  grid = math.isqrt(n_pos - 1)
  if grid * grid != n_pos - 1:
    raise CheckpointError(f"{where}: the image position table has {n_pos} rows, not 1 + g^2")
  return grid


def _overridden(overrides: dict[str, Any], tower: str, field: str) -> Any:
  """The value `overrides` gives to `tower.field` (dotted or as a sub-config), else None."""
  if f"{tower}.{field}" in overrides:
    return overrides[f"{tower}.{field}"]
  sub = overrides.get(tower)
  return sub.get(field) if isinstance(sub, dict) else getattr(sub, field, None)


def _openai_heads(width: int, tower: str, where: str, overrides: dict[str, Any]) -> int:
  given = _overridden(overrides, tower, "heads")
  if given is not None:
    return given
  if width % 64:
    raise CheckpointError(
      f"{where}: cannot infer {tower} heads for width {width} (OpenAI rule heads = width // 64 "
      f"needs width % 64 == 0); pass e.g. `**{{'{tower}.heads': n}}` or add a side-car config"
    )
  return width // 64


def _act(name: str, where: str) -> str:
  acts = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
  if name not in acts:
    raise CheckpointError(f"{where}: activation {name!r} is not supported ({sorted(acts)})")
  return acts[name]


_OPENCLIP_KNOWN = {
  "model_cfg": {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "init_logit_bias"},
  "vision_cfg": {
    "image_size",
    "layers",
    "width",
    "patch_size",
    "head_width",
    "mlp_ratio",
    "pool_type",
  },
  "text_cfg": {
    "context_length",
    "vocab_size",
    "width",
    "heads",
    "layers",
    "mlp_ratio",
    "pool_type",
  },
}


_OPENCLIP_PREPROCESS_KNOWN = {"mean", "std", "interpolation", "resize_mode", "size", "fill_color"}


def _openclip_json(directory: pathlib.Path, metadata: dict[str, str]) -> tuple[dict, str] | None:
  """open_clip's `{"model_cfg", "preprocess_cfg"}` from the side-car file or the file header."""
  f = directory / _OPENCLIP_CONFIG
  if f.is_file():
    return json.loads(f.read_text()), str(f)
  if _HEADER_KEY in metadata:
    return json.loads(metadata[_HEADER_KEY]), f"the {_HEADER_KEY!r} safetensors metadata"
  return None


def _openclip_model_cfg(full: dict[str, Any], where: str) -> dict[str, Any]:
  cfg = full.get("model_cfg", full)
  unknown = sorted(set(cfg) - _OPENCLIP_KNOWN["model_cfg"] - {"preprocess_cfg"})
  for sub in ("vision_cfg", "text_cfg"):
    unknown += [f"{sub}.{k}" for k in sorted(set(cfg.get(sub, {})) - _OPENCLIP_KNOWN[sub])]
  if unknown:
    raise CheckpointError(f"{where}: unsupported open_clip model_cfg fields {unknown}")
  pool = cfg.get("vision_cfg", {}).get("pool_type", "tok")
  text_pool = cfg.get("text_cfg", {}).get("pool_type", "argmax")
  if pool not in ("tok", "avg") or text_pool != "argmax":
    raise CheckpointError(
      f"{where}: unsupported pooling vision_cfg.pool_type={pool!r} / "
      f"text_cfg.pool_type={text_pool!r}"
    )
  return cfg


def _openclip_preprocess(full: dict[str, Any], where: str) -> dict[str, Any]:
  """`VisionConfig` fields from open_clip's `preprocess_cfg` (missing ones keep the defaults)."""
  pp = full.get("preprocess_cfg") or {}
  unknown = sorted(set(pp) - _OPENCLIP_PREPROCESS_KNOWN)
  if unknown:
    raise CheckpointError(f"{where}: unsupported open_clip preprocess_cfg fields {unknown}")
  names = {"mean": "image_mean", "std": "image_std"}
  names.update(interpolation="interpolation", resize_mode="resize_mode")
  out = {names[k]: (tuple(v) if k in ("mean", "std") else v) for k, v in pp.items() if k in names}
  if out.get("resize_mode", "shortest") not in ("shortest", "squash") or out.get(
    "interpolation", "bicubic"
  ) not in ("bicubic", "bilinear"):
    raise CheckpointError(
      f"{where}: preprocess_cfg resize_mode={pp.get('resize_mode')!r} / interpolation="
      f"{pp.get('interpolation')!r} is not supported (resize_mode 'shortest' or 'squash', "
      "interpolation 'bicubic' or 'bilinear')"
    )
  return out


def _openai_act(
  state: dict[str, Any], model_cfg: dict[str, Any] | None, where: str, overrides: dict[str, Any]
) -> str:
  """The block activation an OpenAI-layout checkpoint declares (see the module docstring)."""
  if model_cfg is not None:
    return "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
  if any(k in state for k in _OPENAI_BOOKKEEPING):
    return "quick_gelu"
  if "act" in overrides:
    return overrides["act"]
  raise CheckpointError(
    f"{where}: cannot tell the MLP activation of this checkpoint (no {_OPENCLIP_CONFIG}, no "
    f"{_HEADER_KEY!r} header, and not OpenAI's release, which carries "
    f"{list(_OPENAI_BOOKKEEPING)}). Pass it: act='gelu' (open_clip models without '-quickgelu' "
    "in their name, e.g. LAION's ViT-B-32) or act='quick_gelu' (OpenAI's weights, open_clip "
    "'-quickgelu' models). A wrong guess changes the embeddings (logits by ~0.1) silently."
  )


def _infer_openai(
  state: dict[str, Any],
  directory: pathlib.Path,
  metadata: dict[str, str],
  where: str,
  overrides: dict[str, Any],
) -> CLIPConfig:
  found = _openclip_json(directory, metadata)
  model_cfg = preprocess = None
  if found is not None:
    full, cfg_where = found
    model_cfg = _openclip_model_cfg(full, cfg_where)
    preprocess = _openclip_preprocess(full, cfg_where)
  side = model_cfg or {}
  vside, tside = side.get("vision_cfg", {}), side.get("text_cfg", {})
  vw, _, patch, _ = _shape(state, "visual.conv1.weight", where)
  n_pos = _shape(state, "visual.positional_embedding", where)[0]
  grid = _grid(n_pos, where)
  vocab, tw = _shape(state, "token_embedding.weight", where)
  vblock = "visual.transformer.resblocks.0.mlp.c_fc.weight"
  tblock = "transformer.resblocks.0.mlp.c_fc.weight"
  vision = VisionConfig(
    image_size=grid * patch,
    patch_size=patch,
    width=vw,
    layers=_n_blocks(state, _BLOCK_PREFIXES["visual"][1]),
    heads=vw // vside["head_width"]
    if "head_width" in vside
    else _openai_heads(vw, "vision", where, overrides),
    mlp_dim=_shape(state, vblock, where)[0],
    pool="mean" if vside.get("pool_type") == "avg" else "cls",
    **(preprocess or {}),
  )
  text = TextConfig(
    vocab_size=vocab,
    context_length=_shape(state, "positional_embedding", where)[0],
    width=tw,
    layers=_n_blocks(state, _BLOCK_PREFIXES["text"][1]),
    heads=tside["heads"] if "heads" in tside else _openai_heads(tw, "text", where, overrides),
    mlp_dim=_shape(state, tblock, where)[0],
    eot_id=vocab - 1,
  )
  return CLIPConfig(
    vision=vision,
    text=text,
    embed_dim=_shape(state, "visual.proj", where)[1],
    act=_openai_act(state, model_cfg, where, overrides),
    logit_bias_init=float(state["logit_bias"]) if "logit_bias" in state else None,
  )


def _hf_preprocess(directory: pathlib.Path) -> dict[str, Any]:
  """`VisionConfig` fields from an HF `preprocessor_config.json`, if there is one."""
  f = directory / _HF_PREPROCESSOR
  if not f.is_file():
    return {}
  pp = json.loads(f.read_text())
  out: dict[str, Any] = {}
  if "image_mean" in pp:
    out["image_mean"] = tuple(pp["image_mean"])
  if "image_std" in pp:
    out["image_std"] = tuple(pp["image_std"])
  if "resample" in pp:
    if pp["resample"] not in _HF_RESAMPLE:
      raise CheckpointError(
        f"{f}: resample={pp['resample']!r} is not supported ({_HF_RESAMPLE} as PIL enums)"
      )
    out["interpolation"] = _HF_RESAMPLE[pp["resample"]]
  size = pp.get("size")
  if isinstance(size, dict) and "shortest_edge" not in size:
    out["resize_mode"] = "squash"
  return out


def _infer_hf(
  state: dict[str, Any],
  directory: pathlib.Path,
  metadata: dict[str, str],
  where: str,
  overrides: dict[str, Any],
) -> CLIPConfig:
  del metadata, overrides  # everything comes from config.json; overrides are applied later
  f = directory / _HF_CONFIG
  if not f.is_file():
    raise CheckpointError(
      f"{where}: an HF CLIPModel checkpoint needs its {_HF_CONFIG} in {directory}"
    )
  cfg = json.loads(f.read_text())
  vcfg, tcfg = cfg.get("vision_config", {}), cfg.get("text_config", {})
  acts = {_act(c.get("hidden_act", "quick_gelu"), str(f)) for c in (vcfg, tcfg)}
  eps = {float(c.get("layer_norm_eps", 1e-5)) for c in (vcfg, tcfg)}
  if len(acts) > 1 or len(eps) > 1:
    raise CheckpointError(f"{f}: towers differ in hidden_act {acts} or layer_norm_eps {eps}")
  vw, _, patch, _ = _shape(state, "vision_model.embeddings.patch_embedding.weight", where)
  n_pos = _shape(state, "vision_model.embeddings.position_embedding.weight", where)[0]
  grid = _grid(n_pos, where)
  vocab, tw = _shape(state, "text_model.embeddings.token_embedding.weight", where)
  # HF pools at the first eos_token_id, except for legacy configs (eos 2) that use argmax, which
  # for the CLIP vocabulary is the last id.
  eos = tcfg.get("eos_token_id")
  vblock = "vision_model.encoder.layers.0.mlp.fc1.weight"
  tblock = "text_model.encoder.layers.0.mlp.fc1.weight"
  return CLIPConfig(
    vision=VisionConfig(
      image_size=grid * patch,
      patch_size=patch,
      width=vw,
      layers=_n_blocks(state, _BLOCK_PREFIXES["visual"][2]),
      heads=int(vcfg.get("num_attention_heads", 12)),
      mlp_dim=_shape(state, vblock, where)[0],
      **_hf_preprocess(directory),
    ),
    text=TextConfig(
      vocab_size=vocab,
      context_length=_shape(state, "text_model.embeddings.position_embedding.weight", where)[0],
      width=tw,
      layers=_n_blocks(state, _BLOCK_PREFIXES["text"][2]),
      heads=int(tcfg.get("num_attention_heads", 8)),
      mlp_dim=_shape(state, tblock, where)[0],
      eot_id=vocab - 1 if eos in (None, 2) else int(eos),
    ),
    embed_dim=_shape(state, "visual_projection.weight", where)[0],
    act=acts.pop(),
    ln_eps=eps.pop(),
  )


# ----------------------------------------------------------------------------------------------
# Public API.


def _convert_in(
  state: dict[str, np.ndarray], config: CLIPConfig, layout: str, where: str
) -> dict[str, Any]:
  rows = key_table(config)
  shapes = _param_shapes(config)
  ignored = set(_IGNORED_BUFFERS[layout])
  expected = {k for r in rows for k in r.keys(layout)}
  missing = [k for r in rows for k in r.keys(layout) if k not in state]
  unused = sorted(set(state) - expected - ignored)
  mismatched = []
  for r in rows:
    for key, want in zip(r.keys(layout), _stored_shapes(r.kind, layout, shapes[r.path])):
      if key in state and tuple(state[key].shape) != want:
        mismatched.append(f"{key}: {tuple(state[key].shape)}, expected {want}")
  if missing or unused or mismatched:
    problems = []
    if missing:
      problems.append(f"missing keys ({len(missing)}): {missing}")
    if unused:
      problems.append(f"unused keys ({len(unused)}): {unused}")
    if mismatched:
      problems.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
    raise CheckpointError(
      f"{where} does not match the {layout!r} layout of the inferred config "
      f"(vision {config.vision.width}x{config.vision.layers}, text {config.text.width}x"
      f"{config.text.layers}, embed {config.embed_dim}):\n  " + "\n  ".join(problems)
    )
  flat = {}
  for r in rows:
    xs = [np.asarray(state[k], dtype=np.float32) for k in r.keys(layout)]
    flat[r.path] = np.array(_to_clipjax(r.kind, layout, xs), order="C", copy=None)
  return tree.unflatten_names(flat)


def load_checkpoint(path: str | os.PathLike, **overrides: Any) -> tuple[CLIPConfig, dict]:
  """Reads an OpenAI/open_clip or HF CLIP checkpoint into clipjax params (layout auto-detected).

  Args:
    path: see `read_state_dict`.
    **overrides: `CLIPConfig` overrides applied to the inferred config before the key
      accounting (e.g. `**{"vision.heads": 2, "dtype": "bfloat16"}`); `act` is required when
      the file does not declare its activation (module docstring).

  Returns:
    (config, params): params is a nested dict of float32 numpy arrays in the clipjax layout.

  Raises:
    CheckpointError: unsupported file, an undeclared activation without `act`, or missing /
      unused / mis-shaped keys (all listed).
  """
  state, directory = read_state_dict(path)
  where = str(path)
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module.") :]: v for k, v in state.items()}  # saved from DistributedDataParallel
  layout = detect_layout(state, where)
  infer = _infer_hf if layout == "hf" else _infer_openai
  inferred = infer(state, directory, _header_metadata(path), where, overrides)
  config = get_config(inferred, **overrides)
  if config.vision.pos_embed != inferred.vision.pos_embed:
    # No layout stores a fixed table, and `export` folds one into the learned positions: adding
    # it on import would add it twice (or to a model that never had one).
    raise CheckpointError(
      f"{where}: override vision.pos_embed={config.vision.pos_embed!r}, but the checkpoint's "
      f"positions are {inferred.vision.pos_embed!r} (an exported 'learned+sincos2d' model has "
      "its sin-cos table folded into them); drop the override, e.g. start from "
      "configs/base.py:init=PATH, which reads the checkpoint's own settings"
    )
  return config, _convert_in(state, config, layout, where)


def _hf_config_json(config: CLIPConfig) -> dict[str, Any]:
  v, t = config.vision, config.text
  common = {"hidden_act": config.act, "layer_norm_eps": config.ln_eps}
  return {
    "architectures": ["CLIPModel"],
    "model_type": "clip",
    "projection_dim": config.embed_dim,
    "logit_scale_init_value": config.logit_scale_init,
    "text_config": {
      "model_type": "clip_text_model",
      "vocab_size": t.vocab_size,
      "max_position_embeddings": t.context_length,
      "hidden_size": t.width,
      "intermediate_size": t.mlp_dim,
      "num_hidden_layers": t.layers,
      "num_attention_heads": t.heads,
      "bos_token_id": t.eot_id - 1,
      "eos_token_id": t.eot_id,
      "projection_dim": config.embed_dim,
      **common,
    },
    "vision_config": {
      "model_type": "clip_vision_model",
      "image_size": v.image_size,
      "patch_size": v.patch_size,
      "num_channels": 3,
      "hidden_size": v.width,
      "intermediate_size": v.mlp_dim,
      "num_hidden_layers": v.layers,
      "num_attention_heads": v.heads,
      "projection_dim": config.embed_dim,
      **common,
    },
  }


def _openclip_config_json(config: CLIPConfig) -> dict[str, Any]:
  v, t = config.vision, config.text
  model_cfg: dict[str, Any] = {
    "embed_dim": config.embed_dim,
    "quick_gelu": config.act == "quick_gelu",
    "vision_cfg": {
      "image_size": v.image_size,
      "layers": v.layers,
      "width": v.width,
      "patch_size": v.patch_size,
      "head_width": v.width // v.heads,
      "mlp_ratio": v.mlp_dim / v.width,
      "pool_type": "avg" if v.pool == "mean" else "tok",
    },
    "text_cfg": {
      "context_length": t.context_length,
      "vocab_size": t.vocab_size,
      "width": t.width,
      "heads": t.heads,
      "layers": t.layers,
      "mlp_ratio": t.mlp_dim / t.width,
    },
  }
  if config.logit_bias_init is not None:
    model_cfg["init_logit_bias"] = config.logit_bias_init
  preprocess_cfg = {
    "mean": list(v.image_mean),
    "std": list(v.image_std),
    "interpolation": v.interpolation,
    "resize_mode": v.resize_mode,
  }
  return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def _hf_preprocessor_json(config: CLIPConfig) -> dict[str, Any]:
  v = config.vision
  shortest = v.resize_mode == "shortest"
  return {
    "image_processor_type": "CLIPImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": v.image_size}
    if shortest
    else {"height": v.image_size, "width": v.image_size},
    "resample": {name: code for code, name in _HF_RESAMPLE.items()}[v.interpolation],
    "do_center_crop": shortest,
    "crop_size": {"height": v.image_size, "width": v.image_size},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(v.image_mean),
    "image_std": list(v.image_std),
    "do_convert_rgb": True,
  }


def _export_checks(config: CLIPConfig, layout: str) -> None:
  problems = []
  if layout == "hf":
    if config.vision.pool != "cls":
      problems.append(f"vision.pool={config.vision.pool!r} (HF CLIPModel pools the class token)")
    if config.logit_bias_init is not None:
      problems.append("a logit_bias (HF CLIPModel has none)")
  if config.text.eot_id != config.text.vocab_size - 1 and layout == "openai":
    problems.append(
      f"text.eot_id={config.text.eot_id} != vocab_size - 1 (open_clip pools at argmax(ids))"
    )
  if config.ln_eps != 1e-5 and layout == "openai":
    problems.append(f"ln_eps={config.ln_eps} (open_clip uses 1e-5)")
  if problems:
    raise ValueError(f"cannot export to the {layout!r} layout faithfully: {'; '.join(problems)}")


def _bake_sincos(config: CLIPConfig, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Folds the fixed 2-D sin-cos table into the learned positions (same function, plain ViT)."""
  from clipjax.model.layers import sincos_2d

  v = config.vision
  table = np.asarray(sincos_2d(v.grid_size, v.width), np.float32)
  fixed = np.concatenate([np.zeros((1, v.width), np.float32), table], axis=0)
  flat = dict(flat)
  flat["visual/positional_embedding"] = flat["visual/positional_embedding"] + fixed
  return flat


def _atomic_write(target: pathlib.Path, write: Callable[[str], None], overwrite: bool) -> None:
  if target.exists() and not overwrite:
    raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
  fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def export(
  params: dict,
  config: CLIPConfig,
  path: str | os.PathLike,
  layout: str = "openai",
  *,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes clipjax params as an OpenAI/open_clip or HF CLIPModel checkpoint.

  Args:
    params: clipjax params for `config` (arrays of any float dtype; written as float32).
    config: the model config.
    path: 'openai': a `.safetensors` file (open_clip's config JSON goes into its header under
      `open_clip_config`), or a directory that receives `open_clip_model.safetensors` +
      `open_clip_config.json` (opens with `open_clip.create_model("local-dir:PATH")`).
      'hf': a directory that receives `model.safetensors`, `config.json` and
      `preprocessor_config.json` (opens with `CLIPModel.from_pretrained(PATH)`).
    layout: 'openai' or 'hf'.
    overwrite: replace existing files (each file is written atomically).

  Returns:
    The weights file written.

  Raises:
    ValueError: unknown layout, params not matching `config`, or a config the layout cannot
      express (e.g. mean pooling or a logit bias in HF). A `vision.pos_embed='learned+sincos2d'`
      model is exported with the fixed table added to the learned positions.
  """
  from safetensors.numpy import save_file

  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r} is not one of {list(LAYOUTS)}")
  _export_checks(config, layout)
  rows = key_table(config)
  shapes = _param_shapes(config)
  flat = {k: np.asarray(v, dtype=np.float32) for k, v in tree.flatten_with_names(params)}
  want = {r.path for r in rows}
  missing, unexpected = sorted(want - set(flat)), sorted(set(flat) - want)
  mismatched = [
    f"{p}: {flat[p].shape}, expected {shapes[p]}"
    for p in sorted(want & set(flat))
    if flat[p].shape != shapes[p]
  ]
  if missing or unexpected or mismatched:
    raise ValueError(
      f"params do not match the config: missing={missing} unexpected={unexpected} "
      f"shape_mismatch={mismatched}"
    )
  if config.vision.pos_embed == "learned+sincos2d":
    flat = _bake_sincos(config, flat)
  tensors = {}
  for r in rows:
    for key, x in zip(r.keys(layout), _from_clipjax(r.kind, layout, flat[r.path])):
      tensors[key] = np.array(x, order="C", copy=None)

  path = pathlib.Path(path)
  # `format: pt` lets transformers' `from_pretrained` accept the file.
  metadata = {"format": "pt"}
  sides: list[tuple[pathlib.Path, dict[str, Any]]] = []
  if layout == "openai" and path.suffix == ".safetensors":
    # A single file has no side-car: its header keeps the config (activation, preprocessing).
    weights = path
    metadata[_HEADER_KEY] = json.dumps(_openclip_config_json(config))
  elif path.suffix:
    raise ValueError(f"{path}: the {layout!r} layout is written into a directory, not a file")
  elif layout == "hf":
    weights = path / _HF_WEIGHTS
    sides = [
      (path / _HF_CONFIG, _hf_config_json(config)),
      (path / _HF_PREPROCESSOR, _hf_preprocessor_json(config)),
    ]
  else:
    weights = path / _OPENCLIP_WEIGHTS[0]
    sides = [(path / _OPENCLIP_CONFIG, _openclip_config_json(config))]
  weights.parent.mkdir(parents=True, exist_ok=True)
  _atomic_write(weights, lambda f: save_file(tensors, f, metadata=metadata), overwrite)
  for side_path, side_json in sides:
    text = json.dumps(side_json, indent=2) + "\n"
    _atomic_write(side_path, lambda f, text=text: pathlib.Path(f).write_text(text), overwrite)
  return weights
