"""CLIP towers on the tiny variant: numpy reference forward, contract layout and invariants."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import model as clipmodel

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def clip():
  return clipmodel.create("tiny", jax.random.key(0))


@pytest.fixture(scope="module")
def pixels():
  return jax.random.uniform(jax.random.key(1), (3, 32, 32, 3))


def _ids(rows, length=77):
  """[b, length] int32 ids: each row is [SOT, *row, EOT] zero-padded."""
  ids = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    seq = [SOT, *row, EOT]
    ids[i, : len(seq)] = seq
  return jnp.asarray(ids)


@pytest.fixture(scope="module")
def ids():
  return _ids([[5, 17, 300], [], [7] * 20])


# ---------------------------------------------------------------- numpy reference (OpenAI model.py)


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _ln(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _act(x, act):
  if act == "quick_gelu":
    return x / (1 + np.exp(-1.702 * x))
  from scipy.special import erf

  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _block(x, p, heads, causal, act):
  b, t, w = x.shape
  h = _ln(x, p["ln_1"])
  qkv = h @ p["attn"]["in_proj"]["kernel"] + p["attn"]["in_proj"]["bias"]
  q, k, v = (qkv[..., i * w : (i + 1) * w].reshape(b, t, heads, -1) for i in range(3))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(w // heads)
  if causal:
    logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
  prob = np.exp(logits - logits.max(-1, keepdims=True))
  prob /= prob.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", prob, v).reshape(b, t, w)
  x = x + o @ p["attn"]["out_proj"]["kernel"] + p["attn"]["out_proj"]["bias"]
  h = _ln(x, p["ln_2"])
  h = _act(h @ p["mlp"]["c_fc"]["kernel"] + p["mlp"]["c_fc"]["bias"], act)
  return x + h @ p["mlp"]["c_proj"]["kernel"] + p["mlp"]["c_proj"]["bias"]


def _ref_image(params, pixels, cfg):
  p = _np(params["visual"])
  x = (np.asarray(pixels, np.float64) - [0.48145466, 0.4578275, 0.40821073]) / [
    0.26862954,
    0.26130258,
    0.27577711,
  ]
  ps = cfg.vision.patch_size
  g = cfg.vision.image_size // ps
  kernel = p["conv1"]["kernel"]
  patches = [
    np.einsum("bijc,ijco->bo", x[:, r * ps : (r + 1) * ps, c * ps : (c + 1) * ps], kernel)
    for r in range(g)
    for c in range(g)
  ]
  cls = np.broadcast_to(p["class_embedding"], (x.shape[0], cfg.vision.width))
  tok = np.stack([cls, *patches], axis=1) + p["positional_embedding"]
  if cfg.vision.pos_embed == "learned+sincos2d":
    w4 = cfg.vision.width // 4
    omega = 10000.0 ** (-np.arange(w4) / w4)
    table = [
      np.concatenate([np.sin(r * omega), np.cos(r * omega), np.sin(c * omega), np.cos(c * omega)])
      for r in range(g)
      for c in range(g)
    ]
    tok = tok + np.concatenate([np.zeros((1, cfg.vision.width)), np.stack(table)])
  tok = _ln(tok, p["ln_pre"])
  for i in range(cfg.vision.layers):
    tok = _block(tok, p["blocks"][str(i)], cfg.vision.heads, False, cfg.act)
  tok = _ln(tok, p["ln_post"])
  pooled = tok[:, 0] if cfg.vision.pool == "cls" else tok[:, 1:].mean(1)
  emb = pooled @ p["proj"]
  return emb / np.linalg.norm(emb, axis=-1, keepdims=True), tok[:, 1:] @ p["proj"]


def _ref_text(params, ids, cfg):
  p = _np(params["text"])
  ids = np.asarray(ids)
  x = p["token_embedding"][ids] + p["positional_embedding"][: ids.shape[1]]
  for i in range(cfg.text.layers):
    x = _block(x, p["blocks"][str(i)], cfg.text.heads, True, cfg.act)
  tokens = _ln(x, p["ln_final"]) @ p["text_projection"]
  pooled = tokens[np.arange(len(ids)), ids.argmax(-1)]
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True), tokens


@pytest.mark.parametrize(
  "overrides",
  [{}, {"act": "gelu", "vision.pool": "mean", "vision.pos_embed": "learned+sincos2d"}],
  ids=["openai", "gelu-meanpool-sincos2d"],
)
def test_matches_numpy_reference(clip, pixels, ids, overrides):
  cfg = clipmodel.get_config(clip.config, **overrides)
  variant = dataclasses.replace(clipmodel.abstract(cfg), params=clip.params)
  img = variant.encode_image(clip.params, pixels)
  emb, tokens = _ref_image(clip.params, pixels, cfg)
  np.testing.assert_allclose(img.emb, emb, atol=2e-5)
  np.testing.assert_allclose(img.tokens, tokens, atol=2e-5, rtol=1e-4)
  txt = variant.encode_text(clip.params, ids)
  emb, tokens = _ref_text(clip.params, ids, cfg)
  np.testing.assert_allclose(txt.emb, emb, atol=2e-5)
  np.testing.assert_allclose(txt.tokens, tokens, atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------- contract layout


def _expected_tree(cfg):
  v, t, d = cfg.vision, cfg.text, cfg.embed_dim

  def ln(w):
    return {"scale": (w,), "bias": (w,)}

  def dense(i, o):
    return {"kernel": (i, o), "bias": (o,)}

  def block(w, mlp):
    return {
      "ln_1": ln(w),
      "attn": {"in_proj": dense(w, 3 * w), "out_proj": dense(w, w)},
      "ln_2": ln(w),
      "mlp": {"c_fc": dense(w, mlp), "c_proj": dense(mlp, w)},
    }

  return {
    "visual": {
      "conv1": {"kernel": (v.patch_size, v.patch_size, 3, v.width)},
      "class_embedding": (v.width,),
      "positional_embedding": (1 + (v.image_size // v.patch_size) ** 2, v.width),
      "ln_pre": ln(v.width),
      "blocks": {str(i): block(v.width, v.mlp_dim) for i in range(v.layers)},
      "ln_post": ln(v.width),
      "proj": (v.width, d),
    },
    "text": {
      "token_embedding": (t.vocab_size, t.width),
      "positional_embedding": (t.context_length, t.width),
      "blocks": {str(i): block(t.width, t.mlp_dim) for i in range(t.layers)},
      "ln_final": ln(t.width),
      "text_projection": (t.width, d),
    },
    "logit_scale": (),
  }


def test_param_tree_is_the_contract(clip):
  shapes = jax.tree.map(lambda x: tuple(x.shape), clip.params)
  assert shapes == _expected_tree(clip.config)
  assert type(clip.params) is dict and type(clip.params["visual"]["blocks"]) is dict
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(clip.params))
  np.testing.assert_allclose(clip.logit_scale(clip.params), 1 / 0.07, rtol=1e-6)
  fresh = clip.init_params(jax.random.key(0))
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), fresh, clip.params))
  other = clip.init_params(jax.random.key(1))
  assert not np.array_equal(other["visual"]["proj"], clip.params["visual"]["proj"])


def test_init_statistics(clip):
  p = clip.params
  w = clip.config.text.width
  np.testing.assert_allclose(np.std(p["text"]["token_embedding"]), 0.02, rtol=0.02)
  np.testing.assert_allclose(np.std(p["text"]["positional_embedding"]), 0.01, rtol=0.1)
  blk = p["text"]["blocks"]["1"]
  np.testing.assert_allclose(np.std(blk["attn"]["in_proj"]["kernel"]), w**-0.5, rtol=0.1)
  np.testing.assert_allclose(np.std(blk["mlp"]["c_proj"]["kernel"]), w**-0.5 / 2, rtol=0.1)
  assert not np.any(blk["attn"]["in_proj"]["bias"]) and np.all(blk["ln_1"]["scale"] == 1)
  # Independent draws: no two random tensors share values.
  firsts = [float(x.ravel()[0]) for x in jax.tree.leaves(p) if x.ndim == 2]
  assert len(set(firsts)) == len(firsts)


def test_logit_bias_only_when_configured():
  clip = clipmodel.abstract("tiny", logit_bias_init=-10.0)
  assert clip.params["logit_bias"].shape == ()
  assert float(clip.init_params(jax.random.key(0))["logit_bias"]) == -10.0
  assert "logit_bias" not in clipmodel.abstract("tiny").params


def test_bad_params_are_listed(clip, pixels):
  params = jax.tree.map(lambda x: x, clip.params)
  del params["visual"]["proj"]
  params["text"]["extra"] = jnp.zeros(3)
  params["text"]["ln_final"]["scale"] = jnp.zeros(5)
  with pytest.raises(ValueError, match="visual/proj") as err:
    clip.encode_image(params, pixels)
  assert "text/extra" in str(err.value) and "text/ln_final/scale: (5,)" in str(err.value)
  with pytest.raises(ValueError, match="visual/proj"):
    dataclasses.replace(clip, params=params)


def test_bad_inputs(clip, pixels, ids):
  with pytest.raises(ValueError, match=r"\[b, 32, 32, 3\]"):
    clip.encode_image(clip.params, pixels[:, :16])
  with pytest.raises(TypeError, match="floats"):
    clip.encode_image(clip.params, (pixels * 255).astype(jnp.uint8))
  with pytest.raises(ValueError, match="context_length"):
    clip.encode_text(clip.params, jnp.zeros((1, 78), jnp.int32))
  with pytest.raises(TypeError, match="integers"):
    clip.encode_text(clip.params, ids.astype(jnp.float32))
  with pytest.raises(ValueError, match="prompts"):
    clip.encode_text(clip.params, ids, jnp.zeros((2, 31)))
  with pytest.raises(ValueError, match="m=76"):
    clip.encode_text(clip.params, ids, jnp.zeros((76, 32)))


# ---------------------------------------------------------------- invariants


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_embeddings_are_unit_norm(clip, pixels, ids):
  for emb in (clip.encode_image(clip.params, pixels).emb, clip.encode_text(clip.params, ids).emb):
    np.testing.assert_allclose(jnp.linalg.norm(emb, axis=-1), 1, rtol=1e-5)


def test_cls_pool_and_tokens_differ_from_mean(clip, pixels):
  out = clip.encode_image(clip.params, pixels)
  assert out.tokens.shape == (3, 16, 32)
  assert float(jnp.max(jnp.abs(out.emb - _unit(jnp.mean(out.tokens, axis=1))))) > 1e-3


def test_text_is_causal(clip, ids):
  t = 3
  changed = ids.at[:, t].set(1234)
  a = clip.encode_text(clip.params, ids).tokens
  b = clip.encode_text(clip.params, changed).tokens
  np.testing.assert_allclose(a[:, :t], b[:, :t], atol=1e-6)
  assert np.all(np.abs(np.asarray(a[:, t:] - b[:, t:])).max(-1) > 1e-4)


def test_eot_pooling_and_mask(clip):
  ids = _ids([[5, 17, 300], [], [7] * 20])
  ids = ids.at[0, 10].set(EOT)  # a second EOT later in the row: pooling uses the first
  out = clip.encode_text(clip.params, ids)
  eot = np.array([4, 1, 21])
  np.testing.assert_allclose(out.emb, _unit(out.tokens[np.arange(3), eot]), atol=1e-6)
  np.testing.assert_array_equal(out.mask, np.arange(77)[None, :] <= eot[:, None])
  no_eot = jnp.full((3, 77), 9, jnp.int32).at[:, 0].set(SOT)
  out = clip.encode_text(clip.params, no_eot)
  assert bool(out.mask.all())
  np.testing.assert_allclose(out.emb, _unit(out.tokens[:, -1]), atol=1e-6)


def test_shorter_ids_match_full_context(clip, ids):
  full = clip.encode_text(clip.params, ids)
  short = clip.encode_text(clip.params, ids[:, :24])
  np.testing.assert_allclose(short.emb, full.emb, atol=1e-5)
  np.testing.assert_allclose(short.tokens, full.tokens[:, :24], atol=1e-5)


def test_prompts_reproduce_their_tokens(clip):
  table = clip.params["text"]["token_embedding"]
  words = [11, 22, 33]
  # Prompts equal to the embeddings of the first m caption words give the unprompted output.
  rows = [[*words, 5, 17, 300], [*words], [*words, *range(100, 160)]]
  plain = clip.encode_text(clip.params, _ids(rows))
  spliced = clip.encode_text(clip.params, _ids([r[3:] for r in rows]), table[jnp.asarray(words)])
  np.testing.assert_allclose(spliced.tokens, plain.tokens, atol=1e-5)
  np.testing.assert_allclose(spliced.emb, plain.emb, atol=1e-6)
  np.testing.assert_array_equal(spliced.mask, plain.mask)
  np.testing.assert_array_equal(spliced.mask.sum(1), [1 + len(r) + 1 for r in rows])
  # Per-row prompts [b, m, w].
  other = [40, 41, 42]
  per_row = jnp.stack([table[jnp.asarray(words)], table[jnp.asarray(other)]] * 2)[:3]
  rows = [[*words, 5, 17, 300], [*other], [*words]]
  out = clip.encode_text(clip.params, _ids([r[3:] for r in rows]), per_row)
  want = clip.encode_text(clip.params, _ids(rows))
  np.testing.assert_allclose(out.tokens, want.tokens, atol=1e-5)
  np.testing.assert_allclose(out.emb, want.emb, atol=1e-6)


def test_prompts_truncate_keeping_eot_last(clip):
  table = clip.params["text"]["token_embedding"]
  m = 3
  full = list(range(100, 175))  # fills [SOT, caption, EOT] exactly
  rows = [full, full[:74], [5]]  # EOT at 76, 75, 2
  out = clip.encode_text(clip.params, _ids(rows), table[jnp.asarray([1, 2, 3])])
  np.testing.assert_array_equal(out.mask.sum(1), [77, 77, 3 + m])
  # Equivalent plain sequences: [SOT, 1, 2, 3, caption cut to fit, EOT].
  want = clip.encode_text(clip.params, _ids([[1, 2, 3, *r][:75] for r in rows]))
  np.testing.assert_allclose(out.tokens, want.tokens, atol=1e-5)
  np.testing.assert_allclose(out.emb, want.emb, atol=1e-6)


def test_gradients_reach_pixels_and_prompts(clip, pixels, ids):
  def img_loss(px):
    return clip.encode_image(clip.params, px).emb[:, 0].sum()

  g = jax.grad(img_loss)(pixels)
  assert g.shape == pixels.shape and bool(jnp.isfinite(g).all()) and float(jnp.abs(g).max()) > 0

  def txt_loss(prompts):
    return clip.encode_text(clip.params, ids, prompts).emb[:, 0].sum()

  g = jax.grad(txt_loss)(jnp.ones((3, 32)) * 0.01)
  assert bool(jnp.isfinite(g).all()) and float(jnp.abs(g).max()) > 0


def _loss(model):
  def loss(params, px, ids):
    zimg_bd = model.encode_image(params, px).emb
    ztxt_bd = model.encode_text(params, ids).emb
    return jnp.sum(zimg_bd @ ztxt_bd.T) * model.logit_scale(params)

  return loss


def test_remat_matches(clip, pixels, ids):
  remat = dataclasses.replace(clipmodel.abstract(clip.config, remat=True), params=clip.params)
  jaxpr = str(jax.make_jaxpr(jax.grad(_loss(remat)))(clip.params, pixels, ids))
  assert "remat" in jaxpr or "checkpoint" in jaxpr
  v0, g0 = jax.value_and_grad(_loss(clip), argnums=(0, 1))(clip.params, pixels, ids)
  v1, g1 = jax.value_and_grad(_loss(remat), argnums=(0, 1))(clip.params, pixels, ids)
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_stays_close(clip, pixels, ids):
  bf16 = dataclasses.replace(clipmodel.abstract(clip.config, dtype="bfloat16"), params=clip.params)
  assert "bf16" in str(jax.make_jaxpr(bf16.encode_image)(clip.params, pixels))
  for enc, x in ((lambda m: m.encode_image, pixels), (lambda m: m.encode_text, ids)):
    a, b = enc(clip)(clip.params, x), enc(bf16)(clip.params, x)
    assert b.emb.dtype == jnp.float32 and b.tokens.dtype == jnp.float32
    assert float(jnp.min(jnp.sum(a.emb * b.emb, axis=-1))) > 0.99
  g = jax.grad(_loss(bf16))(clip.params, pixels, ids)
  assert all(x.dtype == jnp.float32 and bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(g))


def test_no_retrace_and_nests_in_jit(clip, pixels, ids):
  image_fn, text_fn = clip._image_fn, clip._text_fn
  px, tok = pixels[:1], ids[:1, :9]  # shapes used by no other test
  before = image_fn._cache_size(), text_fn._cache_size()
  copy = dataclasses.replace(clip, params=jax.tree.map(lambda x: x * 1.5, clip.params))
  for model in (clip, copy):
    model.encode_image(model.params, px)
    model.encode_text(model.params, tok)
  assert (image_fn._cache_size(), text_fn._cache_size()) == (before[0] + 1, before[1] + 1)
  assert copy._image_fn is image_fn
  outer = jax.jit(_loss(clip))
  want = _loss(clip)(copy.params, pixels, ids)
  np.testing.assert_allclose(outer(copy.params, pixels, ids), want, rtol=1e-6)


def test_import_is_light():
  code = (
    "import sys, clipjax.model; "
    "heavy = ('orbax', 'tensorflow_datasets', 'grain', 'ott', 'torch'); "
    "bad = [m for m in heavy if m in sys.modules]; "
    "assert not bad, bad"
  )
  subprocess.run([sys.executable, "-c", code], check=True)
