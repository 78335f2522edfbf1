"""OpenAI CLIP in Flax NNX, behind a functional `params` boundary.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
arXiv:2103.00020. The modules mirror OpenAI's `model.py` (ViT image tower, causal text
transformer, `logit_scale`); `CLIP` splits them once into a static `graphdef` and a plain nested
dict `params`, and every encoder is a pure, jitted function of `(params, inputs)`.
`CLIP.image_intermediates` runs the same image tower built with `sow=True` under `nnx.capture`
and returns what it sowed, so code that needs activations (activation-based fusion) reads them
from the model rather than from a second forward pass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clipjax.model import layers
from clipjax.model.variants import CLIPConfig, TextConfig, VisionConfig, get_config

__all__ = [
  "CLIP",
  "CLIPModule",
  "ImageFeatures",
  "TextFeatures",
  "TextTower",
  "VisionTower",
  "abstract",
  "check_params",
  "create",
]


class ImageFeatures(NamedTuple):
  """Image tower outputs (float32).

  Attributes:
    emb: [b, d] L2-normalised pooled embedding.
    tokens: [b, n_patches, d] patch tokens after ln_post and proj (not normalised).
  """

  emb: jax.Array
  tokens: jax.Array


class TextFeatures(NamedTuple):
  """Text tower outputs (float32).

  Attributes:
    emb: [b, d] L2-normalised embedding pooled at the end-of-text token.
    tokens: [b, L, d] per-token features after ln_final and text_projection (not normalised).
    mask: [b, L] bool, True for the valid tokens (start token to end-of-text token inclusive).
  """

  emb: jax.Array
  tokens: jax.Array
  mask: jax.Array


def _l2_normalize(x_bd: jax.Array) -> jax.Array:
  norm_b1 = jnp.linalg.norm(x_bd, axis=-1, keepdims=True)
  return x_bd / jnp.maximum(norm_b1, 1e-12)


class PatchEmbed(nnx.Module):
  """Bias-free convolution with stride = kernel = patch size, written as a matmul on patches."""

  def __init__(self, patch_size: int, width: int):
    self.patch_size = patch_size
    self.kernel = layers.zeros_param((patch_size, patch_size, 3, width))

  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    """Embeds non-overlapping patches.

    Args:
      x_bhwc: [b, h, w, 3] normalised images, h and w divisible by the patch size.

    Returns:
      [b, (h / p) * (w / p), width] patch embeddings in row-major patch order.
    """
    b, h, w, c = x_bhwc.shape
    p = self.patch_size
    gh, gw = h // p, w // p
    patches_bgk = (
      x_bhwc.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c)
    )
    kernel_kw = self.kernel[...].reshape(p * p * c, -1).astype(x_bhwc.dtype)
    return patches_bgk @ kernel_kw


class VisionTower(nnx.Module):
  """ViT image tower: conv1, class token, positions, ln_pre, blocks, ln_post, proj.

  With `sow=True` it sows "embed" ([b, t, w] tokens plus positions, before ln_pre) and its blocks
  sow theirs (see `clipjax.model.layers`).
  """

  def __init__(self, config: CLIPConfig, *, sow: bool = False):
    cfg: VisionConfig = config.vision
    dtype = jnp.dtype(config.dtype)
    w = cfg.width
    self.image_size = cfg.image_size
    self.image_mean, self.image_std = cfg.image_mean, cfg.image_std
    self.pool = cfg.pool
    self.sincos = cfg.pos_embed == "learned+sincos2d"
    self.dtype = dtype
    self.sow_acts = sow
    self.conv1 = PatchEmbed(cfg.patch_size, w)
    self.class_embedding = layers.zeros_param((w,))
    self.positional_embedding = layers.zeros_param((1 + cfg.num_patches, w))
    self.ln_pre = layers.LayerNorm(w, eps=config.ln_eps, dtype=dtype)
    self.remat = config.remat
    self.blocks = layers.make_blocks(
      w,
      cfg.layers,
      cfg.heads,
      cfg.mlp_dim,
      causal=False,
      act=config.act,
      eps=config.ln_eps,
      dtype=dtype,
      sow=sow,
    )
    self.ln_post = layers.LayerNorm(w, eps=config.ln_eps, dtype=dtype)
    self.proj = layers.zeros_param((w, config.embed_dim))

  def __call__(self, pixels_bhwc: jax.Array) -> ImageFeatures:
    """Encodes images.

    Args:
      pixels_bhwc: [b, s, s, 3] float pixels in [0, 1] (s = image_size); the config's
        `image_mean`/`image_std` normalisation is applied here.

    Returns:
      `ImageFeatures` in float32.
    """
    s = self.image_size
    if pixels_bhwc.ndim != 4 or pixels_bhwc.shape[1:] != (s, s, 3):
      raise ValueError(f"pixels must have shape [b, {s}, {s}, 3], got {pixels_bhwc.shape}")
    if not jnp.issubdtype(pixels_bhwc.dtype, jnp.floating):
      raise TypeError(f"pixels must be floats in [0, 1], got dtype {pixels_bhwc.dtype}")
    mean_111c = jnp.asarray(self.image_mean, jnp.float32).reshape(1, 1, 1, 3)
    std_111c = jnp.asarray(self.image_std, jnp.float32).reshape(1, 1, 1, 3)
    x_bhwc = ((pixels_bhwc.astype(jnp.float32) - mean_111c) / std_111c).astype(self.dtype)
    x_bnw = self.conv1(x_bhwc)
    b, n, w = x_bnw.shape
    cls_b1w = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (b, 1, w))
    pos_tw = self.positional_embedding[...]
    if self.sincos:
      grid = round(n**0.5)
      fixed_tw = jnp.concatenate([jnp.zeros((1, w), jnp.float32), layers.sincos_2d(grid, w)])
      pos_tw = pos_tw + fixed_tw
    x_btw = jnp.concatenate([cls_b1w, x_bnw], axis=1) + pos_tw.astype(self.dtype)[None]
    if self.sow_acts:
      self.sow(nnx.Intermediate, "embed", x_btw)
    x_btw = self.ln_pre(x_btw)
    x_btw = layers.apply_blocks(self.blocks, x_btw, remat=self.remat)
    x_btw = self.ln_post(x_btw)
    proj_wd = self.proj[...].astype(self.dtype)
    pooled_bw = x_btw[:, 0] if self.pool == "cls" else jnp.mean(x_btw[:, 1:], axis=1)
    emb_bd = (pooled_bw @ proj_wd).astype(jnp.float32)
    tokens_bnd = (x_btw[:, 1:] @ proj_wd).astype(jnp.float32)
    return ImageFeatures(emb=_l2_normalize(emb_bd), tokens=tokens_bnd)


class TextTower(nnx.Module):
  """Causal text transformer: token + position embeddings, blocks, ln_final, text_projection."""

  def __init__(self, config: CLIPConfig):
    cfg: TextConfig = config.text
    dtype = jnp.dtype(config.dtype)
    w = cfg.width
    self.context_length = cfg.context_length
    self.eot_id = cfg.eot_id
    self.dtype = dtype
    self.token_embedding = layers.zeros_param((cfg.vocab_size, w))
    self.positional_embedding = layers.zeros_param((cfg.context_length, w))
    self.remat = config.remat
    self.blocks = layers.make_blocks(
      w,
      cfg.layers,
      cfg.heads,
      cfg.mlp_dim,
      causal=True,
      act=config.act,
      eps=config.ln_eps,
      dtype=dtype,
    )
    self.ln_final = layers.LayerNorm(w, eps=config.ln_eps, dtype=dtype)
    self.text_projection = layers.zeros_param((w, config.embed_dim))

  def __call__(self, ids_bl: jax.Array, prompts_mw: jax.Array | None = None) -> TextFeatures:
    """Encodes token ids, optionally with prompt embeddings spliced after the start token.

    With m prompts the sequence is [sot, p_1..p_m, ids[1:L-m]]: the end-of-text token moves
    from position e to min(e + m, L - 1), so a caption that no longer fits is truncated and
    keeps its end-of-text token last. Rows without an end-of-text token pool at position L - 1
    (all tokens valid).

    Args:
      ids_bl: [b, L] int token ids, L <= context_length, padded with anything after eot.
      prompts_mw: optional [m, w] or [b, m, w] prompt token embeddings, 0 < m <= L - 2.

    Returns:
      `TextFeatures` in float32.
    """
    if ids_bl.ndim != 2:
      raise ValueError(f"ids must have shape [b, L], got {ids_bl.shape}")
    if not jnp.issubdtype(ids_bl.dtype, jnp.integer):
      raise TypeError(f"ids must be integers, got dtype {ids_bl.dtype}")
    b, length = ids_bl.shape
    if length > self.context_length:
      raise ValueError(f"ids length {length} exceeds context_length {self.context_length}")
    table_vw = self.token_embedding[...]
    x_blw = jnp.take(table_vw, ids_bl, axis=0)
    is_eot_bl = ids_bl == self.eot_id
    has_eot_b = jnp.any(is_eot_bl, axis=1)
    eot_b = jnp.where(has_eot_b, jnp.argmax(is_eot_bl, axis=1), length - 1)
    pos_l = jnp.arange(length)
    if prompts_mw is not None:
      x_blw, eot_b = self._splice(x_blw, eot_b, has_eot_b, prompts_mw, table_vw[self.eot_id])
    x_blw = (x_blw + self.positional_embedding[:length][None]).astype(self.dtype)
    x_blw = layers.apply_blocks(self.blocks, x_blw, remat=self.remat)
    x_blw = self.ln_final(x_blw)
    tokens_bld = (x_blw @ self.text_projection[...].astype(self.dtype)).astype(jnp.float32)
    pooled_bd = jnp.take_along_axis(tokens_bld, eot_b[:, None, None], axis=1)[:, 0]
    mask_bl = pos_l[None, :] <= eot_b[:, None]
    return TextFeatures(emb=_l2_normalize(pooled_bd), tokens=tokens_bld, mask=mask_bl)

  def _splice(
    self,
    x_blw: jax.Array,
    eot_b: jax.Array,
    has_eot_b: jax.Array,
    prompts: jax.Array,
    eot_w: jax.Array,
  ) -> tuple[jax.Array, jax.Array]:
    """Inserts prompts after the start token; rewrites a pushed-out eot at position L - 1."""
    b, length, w = x_blw.shape
    if prompts.ndim == 2:
      prompts = jnp.broadcast_to(prompts[None], (b, *prompts.shape))
    if prompts.ndim != 3 or prompts.shape[0] != b or prompts.shape[2] != w:
      raise ValueError(f"prompts must have shape [m, {w}] or [{b}, m, {w}], got {prompts.shape}")
    m = prompts.shape[1]
    if not 0 < m <= length - 2:
      raise ValueError(f"number of prompts m={m} must be in [1, L - 2] with L={length}")
    x_blw = jnp.concatenate(
      [x_blw[:, :1], prompts.astype(x_blw.dtype), x_blw[:, 1 : length - m]], axis=1
    )
    eot_b = jnp.minimum(eot_b + m, length - 1)
    at_eot_bl = (jnp.arange(length)[None, :] == eot_b[:, None]) & has_eot_b[:, None]
    x_blw = jnp.where(at_eot_bl[:, :, None], eot_w[None, None, :], x_blw)
    return x_blw, eot_b


class CLIPModule(nnx.Module):
  """Both towers plus `logit_scale` (and `logit_bias` when configured).

  `sow=True` makes the image tower sow its intermediates (same parameters, another graphdef).
  """

  def __init__(self, config: CLIPConfig, *, sow: bool = False):
    self.visual = VisionTower(config, sow=sow)
    self.text = TextTower(config)
    self.logit_scale = nnx.Param(jnp.asarray(config.logit_scale_init, jnp.float32))
    if config.logit_bias_init is not None:
      self.logit_bias = nnx.Param(jnp.asarray(config.logit_bias_init, jnp.float32))


def _init_rule(config: CLIPConfig, path: tuple[str, ...]) -> tuple[str, float]:
  """OpenAI CLIP's initialisation (`initialize_parameters`) for one parameter.

  Returns ("normal", std) or ("const", value). Residual-branch output projections are scaled by
  depth; OpenAI applies the block scheme to the text tower only, here both towers use it.
  """
  name = path[-1]
  if path[0] in ("logit_scale", "logit_bias"):
    value = config.logit_scale_init if path[0] == "logit_scale" else config.logit_bias_init
    return "const", float(value)
  if name == "scale":
    return "const", 1.0
  if name == "bias":
    return "const", 0.0
  tower = config.vision if path[0] == "visual" else config.text
  w = tower.width
  if path[1] == "blocks":
    proj_std = w**-0.5 * (2 * tower.layers) ** -0.5
    stds = {"in_proj": w**-0.5, "out_proj": proj_std, "c_fc": (2 * w) ** -0.5, "c_proj": proj_std}
    return "normal", stds[path[-2]]
  stds = {
    ("visual", "conv1"): (3 * config.vision.patch_size**2) ** -0.5,
    ("visual", "class_embedding"): w**-0.5,
    ("visual", "positional_embedding"): w**-0.5,
    ("visual", "proj"): w**-0.5,
    ("text", "token_embedding"): 0.02,
    ("text", "positional_embedding"): 0.01,
    ("text", "text_projection"): w**-0.5,
  }
  return "normal", stds[path[:2]]


def _init_params(config: CLIPConfig, rng: jax.Array) -> dict:
  """Draws all random parameters from one flat normal vector and fills in the constants."""
  abstract_params = _abstract(config)[1]
  leaves, treedef = jax.tree.flatten_with_path(abstract_params)
  rules = [_init_rule(config, tuple(k.key for k in path)) for path, _ in leaves]
  n_normal = sum(math.prod(x.shape) for (_, x), (kind, _) in zip(leaves, rules) if kind == "normal")
  flat_n = jax.random.normal(rng, (n_normal,), jnp.float32)
  values, offset = [], 0
  for (_, x), (kind, arg) in zip(leaves, rules):
    if kind == "normal":
      size = math.prod(x.shape)
      values.append(arg * flat_n[offset : offset + size].reshape(x.shape))
      offset += size
    else:
      values.append(jnp.full(x.shape, arg, jnp.float32))
  return jax.tree.unflatten(treedef, values)


def _path_str(path: tuple) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def check_params(params: Any, expected: Any) -> None:
  """Raises a ValueError listing every missing, unexpected and mis-shaped entry of `params`.

  Args:
    params: a nested dict of arrays.
    expected: a nested dict with the same structure whose leaves have `.shape`.
  """
  if not isinstance(params, dict):
    raise TypeError(f"params must be a nested dict of arrays, got {type(params).__name__}")
  got = {_path_str(p): v for p, v in jax.tree.flatten_with_path(params)[0]}
  want = {_path_str(p): v for p, v in jax.tree.flatten_with_path(expected)[0]}
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  mismatched = [
    f"{k}: {_shape(got[k])} != expected {_shape(want[k])}"
    for k in sorted(set(got) & set(want))
    if _shape(got[k]) != _shape(want[k])
  ]
  if missing or unexpected or mismatched:
    raise ValueError(
      "params do not match the model config: "
      f"missing={missing} unexpected={unexpected} shape_mismatch={mismatched}"
    )


def _encode_image(
  graphdef: Any, expected: Any, params: dict, pixels_bhwc: jax.Array
) -> ImageFeatures:
  check_params(params, expected)
  model = nnx.merge(graphdef, params)
  return model.visual(pixels_bhwc)


def _image_intermediates(
  graphdef: Any, expected: Any, params: dict, pixels_bhwc: jax.Array
) -> tuple[ImageFeatures, dict[str, jax.Array]]:
  check_params(params, expected)
  model = nnx.merge(graphdef, params)
  feats, sown = nnx.capture(model.visual, nnx.Intermediate)(pixels_bhwc)
  acts = {}
  for path, var in nnx.to_flat_state(sown):
    name = "/".join(str(k) for k in path)
    values = var.get_value()
    if len(values) != 1:
      raise RuntimeError(f"image tower sowed {name!r} {len(values)} times in one forward")
    acts[name] = values[0]
  return feats, acts


def _encode_text(
  graphdef: Any, expected: Any, params: dict, ids_bl: jax.Array, prompts_mw: jax.Array | None
) -> TextFeatures:
  check_params(params, expected)
  model = nnx.merge(graphdef, params)
  return model.text(ids_bl, prompts_mw)


@functools.lru_cache(maxsize=64)
def _jitted_encoders(config: CLIPConfig, graphdef: Any) -> tuple[Any, Any]:
  """Jitted (encode_image, encode_text) shared by every CLIP with this config and graphdef."""
  expected = _abstract(config)[1]
  return (
    jax.jit(functools.partial(_encode_image, graphdef, expected)),
    jax.jit(functools.partial(_encode_text, graphdef, expected)),
  )


@functools.lru_cache(maxsize=64)
def _jitted_intermediates(config: CLIPConfig) -> Any:
  """Jitted image forward of the sowing graphdef, shared by every CLIP with this config."""
  graphdef, expected = _abstract(config, sow=True)
  return jax.jit(functools.partial(_image_intermediates, graphdef, expected))


@functools.lru_cache(maxsize=64)
def _jitted_init(config: CLIPConfig) -> Any:
  return jax.jit(functools.partial(_init_params, config))


@dataclasses.dataclass(frozen=True, eq=False)
class CLIP:
  """A CLIP model as a static `graphdef` plus a plain nested dict of float32 `params`.

  `encode_image` and `encode_text` are pure functions of `(params, inputs)`. They are jitted
  once per (config, graphdef) and shared by all instances, so they run fast eagerly, nest
  inside a caller's `jax.jit` without retracing, and are differentiable w.r.t. params, pixels
  and prompts. `self.params` is never read by them.

  Attributes:
    config: the model config.
    graphdef: NNX graph definition of `CLIPModule` (static).
    params: parameter pytree in the layout of `clipjax/model/__init__.py`.
  """

  config: CLIPConfig
  graphdef: Any = dataclasses.field(repr=False)
  params: dict = dataclasses.field(repr=False)

  def __post_init__(self):
    check_params(self.params, _abstract(self.config)[1])
    image_fn, text_fn = _jitted_encoders(self.config, self.graphdef)
    object.__setattr__(self, "_image_fn", image_fn)
    object.__setattr__(self, "_text_fn", text_fn)

  def encode_image(self, params: dict, pixels_bhwc: jax.Array) -> ImageFeatures:
    """Encodes images.

    Args:
      params: parameter pytree.
      pixels_bhwc: [b, s, s, 3] float pixels in [0, 1], s = config.vision.image_size; the CLIP
        mean/std normalisation is applied inside.

    Returns:
      `ImageFeatures(emb [b, d] L2-normalised, tokens [b, n_patches, d])`, float32.
    """
    return self._image_fn(params, pixels_bhwc)

  def image_intermediates(
    self, params: dict, pixels_bhwc: jax.Array
  ) -> tuple[ImageFeatures, dict[str, jax.Array]]:
    """Encodes images and returns the image tower's own intermediates.

    Args:
      params: parameter pytree.
      pixels_bhwc: [b, s, s, 3] float pixels in [0, 1], as for `encode_image`.

    Returns:
      `(features, acts)`: `features` as `encode_image` returns them, and `acts` keyed by module
      path under the image tower: "embed" [b, t, w] (tokens plus positions, before ln_pre, t = 1
      + n_patches), and per block i "blocks/i/attn/q", ".../k", ".../v" [b, t, w] (before the
      head split), "blocks/i/attn_out" [b, t, w] (out_proj output), "blocks/i/mlp/hidden"
      [b, t, mlp_dim] (c_fc output before the activation), "blocks/i/mlp_out" [b, t, w] (c_proj
      output) and "blocks/i/out" [b, t, w] (the residual stream after the block), in the compute
      dtype.
    """
    return _jitted_intermediates(self.config)(params, pixels_bhwc)

  def encode_text(
    self, params: dict, ids_bl: jax.Array, prompts_mw: jax.Array | None = None
  ) -> TextFeatures:
    """Encodes token ids, optionally with learnable prompt embeddings after the start token.

    Args:
      params: parameter pytree.
      ids_bl: [b, L] int token ids (L <= context_length), start token first, pooled at the first
        `eot_id`.
      prompts_mw: optional [m, w] or [b, m, w] prompt token embeddings (w = text width) spliced
        as [sot, p_1..p_m, ids[1:L-m]]; the eot position shifts by m, and a caption that no
        longer fits keeps its eot token last.

    Returns:
      `TextFeatures(emb [b, d] L2-normalised, tokens [b, L, d], mask [b, L] bool)`, float32.
    """
    return self._text_fn(params, ids_bl, prompts_mw)

  def logit_scale(self, params: dict) -> jax.Array:
    """Returns exp(params["logit_scale"]), a float32 scalar."""
    return jnp.exp(params["logit_scale"])

  def init_params(self, rng: jax.Array) -> dict:
    """Returns freshly initialised params for this config (same structure as `self.params`)."""
    return _jitted_init(self.config)(rng)


@functools.lru_cache(maxsize=32)
def _abstract(config: CLIPConfig, sow: bool = False) -> tuple[Any, dict]:
  """(graphdef, params of `jax.ShapeDtypeStruct`) for a config, traced once per config."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: CLIPModule(config, sow=sow)), nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def abstract(variant: str | CLIPConfig, **overrides: Any) -> CLIP:
  """Builds a CLIP whose params are `jax.ShapeDtypeStruct`s, without allocating anything.

  Useful with `jax.eval_shape(clip.encode_image, clip.params, ...)`, for sharding inference, and
  as the target of checkpoint loading: `dataclasses.replace(abstract(cfg), params=loaded)`
  validates the loaded tree against the config.

  Args:
    variant: a name in `VARIANTS` or a `CLIPConfig`.
    **overrides: config overrides, see `get_config`.
  """
  config = get_config(variant, **overrides)
  graphdef, params = _abstract(config)
  return CLIP(config=config, graphdef=graphdef, params=jax.tree.map(lambda x: x, params))


def create(variant: str | CLIPConfig, rng: jax.Array | int, **overrides: Any) -> CLIP:
  """Builds a randomly initialised CLIP.

  Args:
    variant: a name in `VARIANTS` or a `CLIPConfig`.
    rng: PRNG key (or int seed) for the initialisation.
    **overrides: config overrides, see `get_config`.

  Returns:
    A `CLIP` whose float32 params were initialised (jitted, on the default device) with
    OpenAI's scheme: N(0, 0.02) token and N(0, 0.01) text position embeddings,
    N(0, width^-0.5) class token, image positions and projections, depth-scaled block
    projections, zero biases and unit LayerNorm scales.
  """
  config = get_config(variant, **overrides)
  if isinstance(rng, int):
    rng = jax.random.key(rng)
  params = _jitted_init(config)(rng)
  return CLIP(config=config, graphdef=_abstract(config)[0], params=params)
