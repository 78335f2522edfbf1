"""Parity with HF transformers and open_clip on committed tiny fixtures (no torch needed).

The fixtures (`tests/fixtures/parity/`, written by `scripts/make_parity_fixtures.py`) hold tiny
random checkpoints in both layouts together with inputs and the reference libraries' outputs:
HF (QuickGELU), open_clip with `quick_gelu: true`, open_clip's default GELU with its own mean/std,
and OpenAI's bare-file layout. Each loads with no flag.
"""

import dataclasses
import pathlib

import numpy as np
import pytest

import clipjax.model
from clipjax import tree
from clipjax.model import convert
from clipjax.model.variants import OPENAI_MEAN, OPENAI_STD

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "parity"
TOL = 1e-5


def _outputs(model, params, io):
  img = model.encode_image(params, io["pixels_bhwc"])
  txt = model.encode_text(params, io["ids_bl"])
  logits = model.logit_scale(params) * img.emb @ txt.emb.T
  return img, txt, np.asarray(logits)


# checkpoint, reference outputs, expected activation
CASES = {
  "hf": ("hf", "hf", "quick_gelu"),
  "openclip": ("openclip", "openclip", "quick_gelu"),
  "openclip_gelu": ("openclip_gelu", "openclip_gelu", "gelu"),
  "openai": ("openai.safetensors", "openai", "quick_gelu"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name):
  path, refs, act = CASES[name]
  io = np.load(FIXTURES / f"{refs}_io.npz")
  model = clipjax.model.load(FIXTURES / path)
  assert model.config.act == act
  img, txt, logits = _outputs(model, model.params, io)
  np.testing.assert_allclose(img.emb, io["image_emb"], rtol=0, atol=TOL)
  np.testing.assert_allclose(txt.emb, io["text_emb"], rtol=0, atol=TOL)
  # Logits are ~exp(2.9) = 18 times the cosine; compare them relative to that scale.
  np.testing.assert_allclose(logits, io["logits_per_image"], rtol=TOL, atol=TOL)
  np.testing.assert_allclose(img.tokens, io["image_tokens"], rtol=0, atol=TOL)
  np.testing.assert_allclose(txt.tokens, io["text_tokens"], rtol=0, atol=TOL)
  eot_b = np.argmax(io["ids_bl"] == model.config.text.eot_id, axis=1)
  np.testing.assert_array_equal(txt.mask, np.arange(io["ids_bl"].shape[1]) <= eot_b[:, None])


@pytest.mark.parametrize(
  ("name", "overrides"),
  [
    ("hf", {"act": "gelu"}),
    ("hf", {"vision.heads": 1, "text.heads": 1}),
    ("hf", {"ln_eps": 1e-3}),
    ("openclip_gelu", {"act": "quick_gelu"}),
  ],
  ids=["gelu", "one_head", "ln_eps", "quick_gelu"],
)
def test_fixture_detects_wrong_hyperparameters(name, overrides):
  """The fixtures are sensitive to the details a converter could get wrong."""
  io = np.load(FIXTURES / f"{name}_io.npz")
  model = clipjax.model.load(FIXTURES / name, **overrides)
  img, txt, _ = _outputs(model, model.params, io)
  assert np.abs(np.asarray(img.emb) - io["image_emb"]).max() > 10 * TOL
  assert np.abs(np.asarray(txt.emb) - io["text_emb"]).max() > 10 * TOL


def test_gelu_fixture_needs_its_own_mean_and_std():
  io = np.load(FIXTURES / "openclip_gelu_io.npz")
  model = clipjax.model.load(FIXTURES / "openclip_gelu")
  assert model.config.vision.image_mean != OPENAI_MEAN
  openai_norm = {"vision.image_mean": OPENAI_MEAN, "vision.image_std": OPENAI_STD}
  wrong = clipjax.model.load(FIXTURES / "openclip_gelu", **openai_norm)
  img = wrong.encode_image(wrong.params, io["pixels_bhwc"])
  assert np.abs(np.asarray(img.emb) - io["image_emb"]).max() > 10 * TOL


@pytest.mark.parametrize("variant", ["tiny", "ViT-B/32"])
def test_key_table_matches_model_params(variant):
  config = clipjax.model.get_config(variant, logit_bias_init=-10.0)
  got = {n: x.shape for n, x in tree.flatten_with_names(clipjax.model.abstract(config).params)}
  shapes = convert._param_shapes(config)
  assert got == {r.path: shapes[r.path] for r in convert.key_table(config)}


def test_sincos_model_exports_as_plain_vit(tmp_path):
  config = clipjax.model.get_config(
    "tiny", **{"vision.pos_embed": "learned+sincos2d", "text.vocab_size": 64, "text.eot_id": 63}
  )
  # Random params straight from the key table: avoids compiling the model's initialiser.
  rng = np.random.default_rng(1)
  shapes = convert._param_shapes(config)
  flat = {
    r.path: rng.normal(size=shapes[r.path]).astype(np.float32) / 4
    for r in convert.key_table(config)
  }
  model = dataclasses.replace(clipjax.model.abstract(config), params=tree.unflatten_names(flat))
  pixels = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  convert.export(model.params, config, tmp_path, layout="openai")
  loaded = clipjax.model.load(tmp_path)
  assert loaded.config.vision.pos_embed == "learned"
  want = model.encode_image(model.params, pixels)
  got = loaded.encode_image(loaded.params, pixels)
  np.testing.assert_allclose(got.emb, want.emb, rtol=0, atol=1e-6)
  np.testing.assert_allclose(got.tokens, want.tokens, rtol=0, atol=1e-5)
