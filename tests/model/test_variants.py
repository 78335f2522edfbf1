"""Variant table, config overrides, parameter counts and output shapes (no allocation)."""

import math

import jax
import jax.numpy as jnp
import pytest

from clipjax import model as clipmodel
from clipjax.model import VARIANTS, get_config

# OpenAI's released checkpoints (number of elements in the state dict, minus the non-parameter
# buffers). ViT-L/14@336 adds (577 - 257) * 1024 image positions to ViT-L/14.
PUBLISHED_PARAMS = {
  "ViT-B/32": 151_277_313,
  "ViT-B/16": 149_620_737,
  "ViT-L/14": 427_616_513,
  "ViT-L/14@336": 427_616_513 + (577 - 257) * 1024,
}


def _count_from_formula(name):
  """Parameter count from the architecture description, independently of the model code."""
  cfg = VARIANTS[name]
  v, t, d = cfg.vision, cfg.text, cfg.embed_dim

  def block(w, mlp):
    ln = 2 * w
    attn = w * 3 * w + 3 * w + w * w + w
    return 2 * ln + attn + w * mlp + mlp + mlp * w + w

  vis = (
    v.patch_size**2 * 3 * v.width
    + v.width
    + (1 + (v.image_size // v.patch_size) ** 2) * v.width
    + 2 * (2 * v.width)
    + v.layers * block(v.width, v.mlp_dim)
    + v.width * d
  )
  txt = (
    t.vocab_size * t.width
    + t.context_length * t.width
    + t.layers * block(t.width, t.mlp_dim)
    + 2 * t.width
    + t.width * d
  )
  return vis + txt + 1


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_param_counts_match_published(name):
  clip = clipmodel.abstract(name)
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(clip.params))
  assert n == PUBLISHED_PARAMS[name]
  assert n == _count_from_formula(name)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(clip.params))


def test_openai_hyperparameters():
  for name in PUBLISHED_PARAMS:
    cfg = VARIANTS[name]
    assert (cfg.text.vocab_size, cfg.text.context_length, cfg.text.eot_id) == (49408, 77, 49407)
    assert cfg.act == "quick_gelu" and cfg.text.layers == 12
    assert cfg.vision.mlp_dim == 4 * cfg.vision.width and cfg.text.mlp_dim == 4 * cfg.text.width
  b32, b16, l14, l336 = (VARIANTS[k] for k in ("ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336"))
  assert (b32.embed_dim, b32.vision.width, b32.vision.layers) == (512, 768, 12)
  assert b32.vision.heads == 12
  assert (b32.vision.patch_size, b32.vision.image_size) == (32, 224)
  assert (b32.text.width, b32.text.heads) == (512, 8)
  assert b16.vision.patch_size == 16 and b16.vision.width == 768
  assert (l14.embed_dim, l14.vision.width, l14.vision.layers) == (768, 1024, 24)
  assert l14.vision.heads == 16
  assert (l14.vision.patch_size, l14.text.width, l14.text.heads) == (14, 768, 12)
  assert l336.vision.image_size == 336 and l336.vision.patch_size == 14


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_output_shapes_without_allocation(name):
  clip = clipmodel.abstract(name)
  cfg = clip.config
  s, d, ctx = cfg.vision.image_size, cfg.embed_dim, cfg.text.context_length
  n = (s // cfg.vision.patch_size) ** 2
  img = jax.eval_shape(clip.encode_image, clip.params, jax.ShapeDtypeStruct((2, s, s, 3), "f4"))
  assert (img.emb.shape, img.tokens.shape) == ((2, d), (2, n, d))
  ids = jax.ShapeDtypeStruct((3, ctx), jnp.int32)
  txt = jax.eval_shape(clip.encode_text, clip.params, ids)
  assert (txt.emb.shape, txt.tokens.shape, txt.mask.shape) == ((3, d), (3, ctx, d), (3, ctx))
  assert txt.mask.dtype == jnp.bool_ and txt.emb.dtype == img.tokens.dtype == jnp.float32
  prompts = jax.ShapeDtypeStruct((4, cfg.text.width), jnp.float32)
  txt = jax.eval_shape(clip.encode_text, clip.params, ids, prompts)
  assert txt.tokens.shape == (3, ctx, d)


def test_get_config_overrides():
  cfg = get_config("tiny", **{"vision.pool": "mean"}, dtype="bfloat16", text={"layers": 3})
  assert cfg.vision.pool == "mean" and cfg.dtype == "bfloat16" and cfg.text.layers == 3
  assert cfg.vision.width == VARIANTS["tiny"].vision.width
  assert get_config(cfg) is cfg
  assert get_config(cfg, remat=True).remat
  assert VARIANTS["tiny"].vision.pool == "cls"


def test_get_config_errors():
  with pytest.raises(KeyError, match="ViT-B/32"):
    get_config("ViT-B/33")
  with pytest.raises(KeyError, match="'poool'"):
    get_config("tiny", **{"vision.poool": "mean"})
  with pytest.raises(KeyError, match="'audio'"):
    get_config("tiny", **{"audio.width": 3})
  with pytest.raises(KeyError, match="'widht'"):
    get_config("tiny", widht=3)
  with pytest.raises(ValueError, match="vision.pool"):
    get_config("tiny", **{"vision.pool": "max"})
  with pytest.raises(ValueError, match="patch_size"):
    get_config("tiny", **{"vision.patch_size": 7})
  with pytest.raises(ValueError, match="text.heads"):
    get_config("tiny", **{"text.heads": 5})
  with pytest.raises(ValueError, match="dtype"):
    get_config("tiny", dtype="float16")
  with pytest.raises(ValueError, match="eot_id"):
    get_config("tiny", **{"text.vocab_size": 100})
