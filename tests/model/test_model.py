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
  return np.random.default_rng(1).uniform(size=(3, 32, 32, 3)).astype(np.float32)


def _ids(rows, length=77):
  """[b, length] int32 ids: each row is [SOT, *row, EOT] zero-padded."""
  ids = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    seq = [SOT, *row, EOT]
    ids[i, : len(seq)] = seq
  return ids


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


def _block(x, p, heads, causal, act, record=None):
  """One residual block; `record` (a dict) receives the intermediates the model sows."""
  b, t, w = x.shape
  h = _ln(x, p["ln_1"])
  qkv = h @ p["attn"]["in_proj"]["kernel"] + p["attn"]["in_proj"]["bias"]
  if record is not None:
    record.update({f"attn/{n}": qkv[..., i * w : (i + 1) * w] for i, n in enumerate("qkv")})
  q, k, v = (qkv[..., i * w : (i + 1) * w].reshape(b, t, heads, -1) for i in range(3))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(w // heads)
  if causal:
    logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
  prob = np.exp(logits - logits.max(-1, keepdims=True))
  prob /= prob.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", prob, v).reshape(b, t, w)
  attn_out = o @ p["attn"]["out_proj"]["kernel"] + p["attn"]["out_proj"]["bias"]
  x = x + attn_out
  hidden = _ln(x, p["ln_2"]) @ p["mlp"]["c_fc"]["kernel"] + p["mlp"]["c_fc"]["bias"]
  mlp_out = _act(hidden, act) @ p["mlp"]["c_proj"]["kernel"] + p["mlp"]["c_proj"]["bias"]
  x = x + mlp_out
  if record is not None:
    record.update({"attn_out": attn_out, "mlp/hidden": hidden, "mlp_out": mlp_out, "out": x})
  return x


def _ref_image(params, pixels, cfg, record=None):
  """(emb, tokens) of the image tower; `record` receives what `image_intermediates` returns."""
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
  if record is not None:
    record["embed"] = tok
  tok = _ln(tok, p["ln_pre"])
  for i in range(cfg.vision.layers):
    block = None if record is None else {}
    tok = _block(tok, p["blocks"][str(i)], cfg.vision.heads, False, cfg.act, block)
    if record is not None:
      record.update({f"blocks/{i}/{k}": v for k, v in block.items()})
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


def _random_affine(params, seed):
  """`params` with every bias, LayerNorm scale and LayerNorm bias drawn at random (init: 0, 1)."""
  rng = np.random.default_rng(seed)

  def draw(path, x):
    if path[-1].key not in ("bias", "scale"):
      return x
    base = 1.0 if path[-1].key == "scale" else 0.0
    return jnp.asarray(base + 0.1 * rng.normal(size=x.shape), jnp.float32)

  return jax.tree.map_with_path(draw, params)


@pytest.mark.parametrize(
  "overrides",
  [
    {},
    {"act": "gelu", "vision.pool": "mean", "vision.pos_embed": "learned+sincos2d", "remat": True},
  ],
  ids=["openai", "gelu-meanpool-sincos2d-remat"],
)
def test_image_intermediates_match_numpy_reference(pixels, overrides):
  sizes = {"vision.width": 48, "vision.heads": 4, "vision.layers": 3, "vision.mlp_dim": 96}
  clip = clipmodel.create("tiny", 1, **sizes, **overrides)
  params = _random_affine(clip.params, 2)
  feats, acts = clip.image_intermediates(params, pixels)
  want = {}
  emb, tokens = _ref_image(params, pixels, clip.config, want)
  np.testing.assert_allclose(feats.emb, emb, atol=2e-5)
  np.testing.assert_allclose(feats.tokens, tokens, atol=2e-5, rtol=1e-4)
  assert sorted(acts) == sorted(want)
  for name, value in want.items():
    np.testing.assert_allclose(acts[name], value, atol=5e-5, rtol=1e-4, err_msg=name)
  assert acts["blocks/2/mlp/hidden"].shape == (3, 17, 96)
  same = clip.encode_image(params, pixels)
  np.testing.assert_allclose(feats.emb, same.emb, atol=1e-6)


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
  assert jax.tree.all(jax.tree.map(np.array_equal, fresh, clip.params))
  other = clip.init_params(jax.random.key(1))
  assert not np.array_equal(other["visual"]["proj"], clip.params["visual"]["proj"])


def test_init_statistics(clip):
  p = jax.tree.map(np.asarray, clip.params)
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
  params["text"]["extra"] = np.zeros(3)
  params["text"]["ln_final"]["scale"] = np.zeros(5)
  with pytest.raises(ValueError, match="visual/proj") as err:
    clip.encode_image(params, pixels)
  assert "text/extra" in str(err.value) and "text/ln_final/scale: (5,)" in str(err.value)
  with pytest.raises(ValueError, match="visual/proj"):
    dataclasses.replace(clip, params=params)


def test_bad_inputs(clip, pixels, ids):
  with pytest.raises(ValueError, match=r"\[b, 32, 32, 3\]"):
    clip.encode_image(clip.params, pixels[:, :16])
  with pytest.raises(TypeError, match="floats"):
    clip.encode_image(clip.params, (pixels * 255).astype(np.uint8))
  with pytest.raises(ValueError, match="context_length"):
    clip.encode_text(clip.params, np.zeros((1, 78), np.int32))
  with pytest.raises(TypeError, match="integers"):
    clip.encode_text(clip.params, ids.astype(np.float32))
  with pytest.raises(ValueError, match="prompts"):
    clip.encode_text(clip.params, ids, np.zeros((2, 31), np.float32))
  with pytest.raises(ValueError, match="m=76"):
    clip.encode_text(clip.params, ids, np.zeros((76, 32), np.float32))


# ---------------------------------------------------------------- invariants


def _unit(x):
  x = np.asarray(x)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _encode(fn, *args):
  """Runs an encoder and returns its outputs as numpy arrays."""
  return jax.tree.map(np.asarray, fn(*args))


def test_embeddings_are_unit_norm(clip, pixels, ids):
  img = _encode(clip.encode_image, clip.params, pixels)
  txt = _encode(clip.encode_text, clip.params, ids)
  for emb in (img.emb, txt.emb):
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1, rtol=1e-5)


def test_cls_pool_and_tokens_differ_from_mean(clip, pixels):
  out = _encode(clip.encode_image, clip.params, pixels)
  assert out.tokens.shape == (3, 16, 32)
  assert np.max(np.abs(out.emb - _unit(np.mean(out.tokens, axis=1)))) > 1e-3


def test_text_is_causal(clip, ids):
  t = 3
  changed = ids.copy()
  changed[:, t] = 1234
  a = _encode(clip.encode_text, clip.params, ids).tokens
  b = _encode(clip.encode_text, clip.params, changed).tokens
  np.testing.assert_allclose(a[:, :t], b[:, :t], atol=1e-6)
  assert np.all(np.abs(a[:, t:] - b[:, t:]).max(-1) > 1e-4)


def test_eot_pooling_and_mask(clip):
  ids = _ids([[5, 17, 300], [], [7] * 20])
  ids[0, 10] = EOT  # a second EOT later in the row: pooling uses the first
  out = _encode(clip.encode_text, clip.params, ids)
  eot = np.array([4, 1, 21])
  np.testing.assert_allclose(out.emb, _unit(out.tokens[np.arange(3), eot]), atol=1e-6)
  np.testing.assert_array_equal(out.mask, np.arange(77)[None, :] <= eot[:, None])
  no_eot = np.full((3, 77), 9, np.int32)
  no_eot[:, 0] = SOT
  out = _encode(clip.encode_text, clip.params, no_eot)
  assert out.mask.all()
  np.testing.assert_allclose(out.emb, _unit(out.tokens[:, -1]), atol=1e-6)


def test_shorter_ids_match_full_context(clip, ids):
  full = _encode(clip.encode_text, clip.params, ids)
  short = _encode(clip.encode_text, clip.params, ids[:, :24])
  np.testing.assert_allclose(short.emb, full.emb, atol=1e-5)
  np.testing.assert_allclose(short.tokens, full.tokens[:, :24], atol=1e-5)


def test_prompts_reproduce_their_tokens(clip):
  table = np.asarray(clip.params["text"]["token_embedding"])
  words = [11, 22, 33]
  # Prompts equal to the embeddings of the first m caption words give the unprompted output.
  rows = [[*words, 5, 17, 300], [*words], [*words, *range(100, 160)]]
  plain = _encode(clip.encode_text, clip.params, _ids(rows))
  spliced = _encode(clip.encode_text, clip.params, _ids([r[3:] for r in rows]), table[words])
  np.testing.assert_allclose(spliced.tokens, plain.tokens, atol=1e-5)
  np.testing.assert_allclose(spliced.emb, plain.emb, atol=1e-6)
  np.testing.assert_array_equal(spliced.mask, plain.mask)
  np.testing.assert_array_equal(spliced.mask.sum(1), [1 + len(r) + 1 for r in rows])
  # Per-row prompts [b, m, w].
  other = [40, 41, 42]
  per_row = np.stack([table[words], table[other], table[words]])
  rows = [[*words, 5, 17, 300], [*other], [*words]]
  out = _encode(clip.encode_text, clip.params, _ids([r[3:] for r in rows]), per_row)
  want = _encode(clip.encode_text, clip.params, _ids(rows))
  np.testing.assert_allclose(out.tokens, want.tokens, atol=1e-5)
  np.testing.assert_allclose(out.emb, want.emb, atol=1e-6)


def test_prompts_truncate_keeping_eot_last(clip):
  table = np.asarray(clip.params["text"]["token_embedding"])
  m = 3
  full = list(range(100, 175))  # fills [SOT, caption, EOT] exactly
  rows = [full, full[:74], [5]]  # EOT at 76, 75, 2
  out = _encode(clip.encode_text, clip.params, _ids(rows), table[[1, 2, 3]])
  np.testing.assert_array_equal(out.mask.sum(1), [77, 77, 3 + m])
  # Equivalent plain sequences: [SOT, 1, 2, 3, caption cut to fit, EOT].
  want = _encode(clip.encode_text, clip.params, _ids([[1, 2, 3, *r][:75] for r in rows]))
  np.testing.assert_allclose(out.tokens, want.tokens, atol=1e-5)
  np.testing.assert_allclose(out.emb, want.emb, atol=1e-6)
  # A row without EOT is only shifted (no EOT is written into it) and pools at L - 1.
  no_eot = np.full((3, 77), 9, np.int32)
  no_eot[:, 0] = SOT
  out = _encode(clip.encode_text, clip.params, no_eot, table[[1, 2, 3]])
  want = no_eot.copy()
  want[:, 1:4] = [1, 2, 3]
  want = _encode(clip.encode_text, clip.params, want)
  np.testing.assert_allclose(out.tokens, want.tokens, atol=1e-5)
  assert out.mask.all()


def _loss(model, ids):
  def loss(params, px, prompts_mw):
    zimg_bd = model.encode_image(params, px).emb
    ztxt_bd = model.encode_text(params, ids, prompts_mw).emb
    return jnp.sum(zimg_bd @ ztxt_bd.T) * model.logit_scale(params)

  return loss


@pytest.fixture(scope="module")
def prompts():
  return 0.02 * np.random.default_rng(2).normal(size=(3, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def grads(clip, pixels, ids, prompts):
  """Loss value and gradients w.r.t. (params, pixels, prompts) of the float32 model."""
  return jax.jit(jax.value_and_grad(_loss(clip, ids), argnums=(0, 1, 2)))(
    clip.params, pixels, prompts
  )


def test_gradients_are_finite_and_nonzero(clip, grads, pixels, ids, prompts):
  value, (g_params, g_pixels, g_prompts) = jax.tree.map(np.asarray, grads)
  # The encoders nested in the caller's jit give the same loss as the eager call.
  np.testing.assert_allclose(value, _loss(clip, ids)(clip.params, pixels, prompts), rtol=1e-5)
  assert g_pixels.shape == pixels.shape and g_prompts.shape == prompts.shape
  named = [("/".join(str(k.key) for k in path), x) for path, x in _flat(g_params)]
  for name, g in [("pixels", g_pixels), ("prompts", g_prompts), *named]:
    assert np.isfinite(g).all(), name
    if name != "logit_scale":  # d loss / d logit_scale can be anything, even 0
      assert np.abs(g).max() > 0, name


def _flat(tree):
  return jax.tree.flatten_with_path(tree)[0]


def test_remat_matches(clip, pixels, ids, prompts, grads):
  remat = dataclasses.replace(clipmodel.abstract(clip.config, remat=True), params=clip.params)
  loss = _loss(remat, ids)
  assert "remat" in str(jax.make_jaxpr(jax.grad(loss))(clip.params, pixels, prompts))
  v, g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(clip.params, pixels, prompts)
  np.testing.assert_allclose(v, grads[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(g), strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_stays_close(clip, pixels, ids):
  bf16 = dataclasses.replace(clipmodel.abstract(clip.config, dtype="bfloat16"), params=clip.params)
  for enc, x in ((lambda m: m.encode_image, pixels), (lambda m: m.encode_text, ids)):
    a, b = _encode(enc(clip), clip.params, x), _encode(enc(bf16), clip.params, x)
    assert b.emb.dtype == np.float32 and b.tokens.dtype == np.float32
    assert np.min(np.sum(a.emb * b.emb, axis=-1)) > 0.99
    assert np.max(np.abs(a.emb - b.emb)) > 0  # really computed in another precision


def test_no_retrace(clip, pixels, ids):
  image_fn, text_fn = clip._image_fn, clip._text_fn
  clip.encode_image(clip.params, pixels)
  clip.encode_text(clip.params, ids)
  before = image_fn._cache_size(), text_fn._cache_size()
  scaled = jax.jit(lambda t: jax.tree.map(lambda x: 1.5 * x, t))(clip.params)
  copy = dataclasses.replace(clip, params=scaled)
  assert copy._image_fn is image_fn and copy._text_fn is text_fn
  a = _encode(copy.encode_image, copy.params, pixels)
  copy.encode_text(copy.params, ids)
  assert (image_fn._cache_size(), text_fn._cache_size()) == before
  assert np.max(np.abs(a.emb - _encode(clip.encode_image, clip.params, pixels).emb)) > 1e-4


def test_import_is_light():
  code = (
    "import sys, clipjax.model; "
    "heavy = ('orbax', 'tensorflow_datasets', 'grain', 'ott', 'torch'); "
    "bad = [m for m in heavy if m in sys.modules]; "
    "assert not bad, bad"
  )
  subprocess.run([sys.executable, "-c", code], check=True)
