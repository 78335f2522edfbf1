"""Checkpoint converter: round trips, strict key accounting, refused files (numpy, no model)."""

import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from clipjax import tree
from clipjax.model import convert
from clipjax.model.variants import get_config

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "parity"
HF_DIR = FIXTURES / "hf"
OC_DIR = FIXTURES / "openclip"
OC_FILE = OC_DIR / "open_clip_model.safetensors"
HEADS = {"vision.heads": 2, "text.heads": 2}
BARE = {**HEADS, "act": "quick_gelu"}  # what a bare OpenAI-layout file cannot tell


def _assert_bit_equal(a: dict, b: dict) -> None:
  fa, fb = dict(tree.flatten_with_names(a)), dict(tree.flatten_with_names(b))
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype == np.float32, k
    assert fa[k].shape == fb[k].shape, k
    assert np.array_equal(fa[k], fb[k]), k


def test_infers_fixture_configs():
  hf, _ = convert.load_checkpoint(HF_DIR)
  oc, _ = convert.load_checkpoint(OC_DIR)
  for cfg, mlp in ((hf, 64), (oc, 128)):
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.width) == (32, 8, 32)
    assert (cfg.vision.layers, cfg.vision.heads, cfg.vision.mlp_dim) == (2, 2, mlp)
    assert (cfg.text.vocab_size, cfg.text.context_length, cfg.text.eot_id) == (1000, 16, 999)
    assert (cfg.text.width, cfg.text.layers, cfg.text.heads, cfg.text.mlp_dim) == (32, 2, 2, mlp)
    assert (cfg.embed_dim, cfg.act, cfg.ln_eps) == (16, "quick_gelu", 1e-5)


def test_table_is_a_bijection():
  cfg = get_config("ViT-B/32", logit_bias_init=-10.0)
  rows = convert.key_table(cfg)
  assert len({r.path for r in rows}) == len(rows) == 14 + 12 * (12 + 12) + 1
  for layout in convert.LAYOUTS:
    keys = [k for r in rows for k in r.keys(layout)]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("src", [HF_DIR, OC_DIR])
@pytest.mark.parametrize("layout", ["openai", "hf"])
def test_round_trip_is_bit_exact(tmp_path, src, layout):
  config, params = convert.load_checkpoint(src)
  out = tmp_path / "ckpt"
  written = convert.export(params, config, out, layout=layout)
  assert written.parent == out
  config2, params2 = convert.load_checkpoint(out)
  assert config2 == config
  _assert_bit_equal(params, params2)


@pytest.mark.parametrize(
  ("src", "layout", "name"),
  [(HF_DIR, "hf", "model.safetensors"), (OC_DIR, "openai", "open_clip_model.safetensors")],
)
def test_export_reproduces_the_original_file(tmp_path, src, layout, name):
  config, params = convert.load_checkpoint(src)
  convert.export(params, config, tmp_path, layout=layout)
  original, written = load_file(str(src / name)), load_file(str(tmp_path / name))
  assert sorted(original) == sorted(written)
  for k in original:
    assert np.array_equal(original[k], written[k]), k


def test_round_trip_single_file_with_logit_bias(tmp_path):
  config = get_config(
    "tiny", **{"text.vocab_size": 50, "text.eot_id": 49, "text.context_length": 8}
  )
  config = dataclasses.replace(config, logit_bias_init=-3.0)
  rng = np.random.default_rng(0)
  shapes = convert._param_shapes(config)
  flat = {
    r.path: rng.normal(size=shapes[r.path]).astype(np.float32) for r in convert.key_table(config)
  }
  params = tree.unflatten_names(flat)
  f = convert.export(params, config, tmp_path / "m.safetensors", layout="openai")
  assert f == tmp_path / "m.safetensors"
  config2, params2 = convert.load_checkpoint(f, vision={"heads": 2}, **{"text.heads": 2})
  assert config2.logit_bias_init == float(flat["logit_bias"])
  _assert_bit_equal(params, params2)
  with pytest.raises(ValueError, match="logit_bias"):
    convert.export(params, config, tmp_path / "hf", layout="hf")


def test_heads_need_config_or_override(tmp_path):
  bare = shutil.copy(OC_FILE, tmp_path / "bare.safetensors")  # no open_clip_config.json beside it
  with pytest.raises(convert.CheckpointError, match=r"vision heads for width 32.*vision\.heads"):
    convert.load_checkpoint(bare)
  config, params = convert.load_checkpoint(bare, **BARE)
  config_dir, params_dir = convert.load_checkpoint(OC_DIR)
  assert config == config_dir
  _assert_bit_equal(params, params_dir)


def _write(tmp_path, state, name="bad.safetensors"):
  path = tmp_path / name
  save_file(state, str(path))
  return path


def test_malformed_openai_lists_every_problem(tmp_path):
  state = load_file(str(OC_FILE))
  del state["visual.transformer.resblocks.1.attn.in_proj_bias"]
  del state["ln_final.weight"]
  state["visual.extra.weight"] = np.zeros(3, np.float32)
  state["transformer.resblocks.0.mlp.c_fc.bias"] = np.zeros(127, np.float32)
  path = _write(tmp_path, state)
  with pytest.raises(convert.CheckpointError) as info:
    convert.load_checkpoint(path, **BARE)
  msg = str(info.value)
  assert str(path) in msg
  assert "missing keys (2)" in msg and "unused keys (1)" in msg and "shape mismatches (1)" in msg
  for key in (
    "visual.transformer.resblocks.1.attn.in_proj_bias",
    "ln_final.weight",
    "visual.extra.weight",
    "transformer.resblocks.0.mlp.c_fc.bias: (127,), expected (128,)",
  ):
    assert key in msg


def test_malformed_hf_lists_every_problem(tmp_path):
  d = tmp_path / "hf"
  shutil.copytree(HF_DIR, d)
  state = load_file(str(d / "model.safetensors"))
  del state["text_model.encoder.layers.1.self_attn.k_proj.weight"]
  state["text_model.pooler.weight"] = np.zeros((2, 2), np.float32)
  state["visual_projection.weight"] = np.zeros((16, 31), np.float32)
  save_file(state, str(d / "model.safetensors"))
  with pytest.raises(convert.CheckpointError) as info:
    convert.load_checkpoint(d)
  msg = str(info.value)
  assert str(d) in msg and "'hf' layout" in msg
  for key in (
    "text_model.encoder.layers.1.self_attn.k_proj.weight",
    "text_model.pooler.weight",
    "visual_projection.weight: (16, 31), expected (16, 32)",
  ):
    assert key in msg


def test_known_buffers_are_ignored(tmp_path):
  state = load_file(str(OC_FILE))
  state["attn_mask"] = np.triu(np.full((16, 16), -np.inf, np.float32), 1)
  _, params = convert.load_checkpoint(_write(tmp_path, state), **BARE)
  _, ref = convert.load_checkpoint(OC_FILE, **BARE)
  _assert_bit_equal(params, ref)
  d = tmp_path / "hf"
  shutil.copytree(HF_DIR, d)
  state = load_file(str(d / "model.safetensors"))
  state["text_model.embeddings.position_ids"] = np.arange(16)[None]
  state["vision_model.embeddings.position_ids"] = np.arange(17)[None]
  save_file(state, str(d / "model.safetensors"))
  _, params = convert.load_checkpoint(d)
  _, ref = convert.load_checkpoint(HF_DIR)
  _assert_bit_equal(params, ref)


def test_half_precision_files_load_as_float32(tmp_path):
  import ml_dtypes

  state = load_file(str(OC_FILE))
  bf16, f16 = ml_dtypes.bfloat16, np.float16
  half = {k: v.astype(bf16 if k.startswith("visual") else f16) for k, v in state.items()}
  _, params = convert.load_checkpoint(_write(tmp_path, half), **BARE)
  _, ref = convert.load_checkpoint(OC_FILE, **BARE)
  flat, flat_ref = dict(tree.flatten_with_names(params)), dict(tree.flatten_with_names(ref))
  for k, x in flat.items():
    cast = bf16 if k.startswith("visual") else f16
    assert x.dtype == np.float32
    assert np.array_equal(x, flat_ref[k].astype(cast).astype(np.float32)), k


def test_non_finite_weights_warn_with_their_names(tmp_path):
  import ml_dtypes

  state = load_file(str(OC_FILE))
  state["visual.conv1.weight"].flat[[0, 5]] = [np.nan, np.inf]
  state["text_projection"] = state["text_projection"].astype(ml_dtypes.bfloat16)
  state["text_projection"].flat[3] = np.nan
  with pytest.warns(
    RuntimeWarning,
    match=r"2 tensor\(s\) hold NaN/Inf values: text_projection \(1\), visual\.conv1\.weight \(2\)$",
  ):
    convert.load_checkpoint(_write(tmp_path, state), **BARE)


def test_data_parallel_prefix_is_stripped(tmp_path):
  state = {f"module.{k}": v for k, v in load_file(str(OC_FILE)).items()}
  _, params = convert.load_checkpoint(_write(tmp_path, state), **BARE)
  _, ref = convert.load_checkpoint(OC_FILE, **BARE)
  _assert_bit_equal(params, ref)


def test_unknown_files_are_refused(tmp_path):
  pickle = tmp_path / "model.pkl"
  pickle.write_bytes(b"\x80\x04K\x01.")
  with pytest.raises(convert.CheckpointError, match=r"refusing to read .*model\.pkl"):
    convert.load_checkpoint(pickle)
  fake = tmp_path / "fake.safetensors"
  fake.write_bytes(b"not a safetensors file at all")
  with pytest.raises(convert.CheckpointError, match=r"fake\.safetensors: not a readable"):
    convert.load_checkpoint(fake)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    convert.load_checkpoint(tmp_path / "absent.safetensors")
  other = _write(tmp_path, {"w": np.zeros(2, np.float32)}, "other.safetensors")
  with pytest.raises(convert.CheckpointError, match="neither an OpenAI/open_clip nor an HF"):
    convert.load_checkpoint(other)


def test_hf_dir_needs_config_json(tmp_path):
  shutil.copy(HF_DIR / "model.safetensors", tmp_path / "model.safetensors")
  with pytest.raises(convert.CheckpointError, match="needs its config.json"):
    convert.load_checkpoint(tmp_path)


def test_activation_is_declared_by_the_file_or_refused(tmp_path):
  bare = shutil.copy(OC_FILE, tmp_path / "bare.safetensors")
  with pytest.raises(convert.CheckpointError, match=r"cannot tell the MLP activation.*act='gelu'"):
    convert.load_checkpoint(bare, **HEADS)
  assert convert.load_checkpoint(bare, **HEADS, act="gelu")[0].act == "gelu"
  # OpenAI's release carries its bookkeeping scalars: QuickGELU without being told.
  state = load_file(str(OC_FILE))
  scalars = {"input_resolution": 32, "context_length": 16, "vocab_size": 1000}
  state.update({k: np.array(v, np.int64) for k, v in scalars.items()})
  openai = _write(tmp_path, state, "openai.safetensors")
  assert convert.load_checkpoint(openai, **HEADS)[0].act == "quick_gelu"
  # open_clip's config without `quick_gelu` means GELU, open_clip's default.
  d = tmp_path / "oc"
  d.mkdir()
  shutil.copy(OC_FILE, d / "open_clip_model.safetensors")
  cfg = json.loads((OC_DIR / "open_clip_config.json").read_text())
  del cfg["model_cfg"]["quick_gelu"]
  (d / "open_clip_config.json").write_text(json.dumps(cfg))
  assert convert.load_checkpoint(d)[0].act == "gelu"


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_single_file_export_keeps_activation_and_preprocessing(tmp_path, act):
  config, params = convert.load_checkpoint(OC_DIR)
  config = get_config(config, act=act, **{"vision.image_mean": (0.5, 0.4, 0.3)})
  f = convert.export(params, config, tmp_path / "m.safetensors")
  assert convert.load_checkpoint(f)[0] == config


def test_open_clip_side_config_is_read(tmp_path):
  shutil.copy(OC_FILE, tmp_path / "open_clip_model.safetensors")
  cfg = json.loads((OC_DIR / "open_clip_config.json").read_text())
  cfg["model_cfg"]["quick_gelu"] = False
  cfg["model_cfg"]["vision_cfg"]["pool_type"] = "avg"
  cfg["preprocess_cfg"] = {"mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
  (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
  config, _ = convert.load_checkpoint(tmp_path)
  assert (config.act, config.vision.pool) == ("gelu", "mean")
  v = config.vision
  assert (v.image_mean, v.image_std, v.interpolation) == ((0.5,) * 3, (0.25,) * 3, "bilinear")
  cfg["preprocess_cfg"]["resize_mode"] = "longest"
  (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
  with pytest.raises(convert.CheckpointError, match="resize_mode='longest'"):
    convert.load_checkpoint(tmp_path)
  del cfg["preprocess_cfg"]
  cfg["model_cfg"]["vision_cfg"]["ls_init_value"] = 1e-5
  (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
  with pytest.raises(convert.CheckpointError, match=r"vision_cfg\.ls_init_value"):
    convert.load_checkpoint(tmp_path)


def test_export_guards(tmp_path):
  config, params = convert.load_checkpoint(HF_DIR)
  convert.export(params, config, tmp_path / "a.safetensors")
  with pytest.raises(FileExistsError, match="overwrite=True"):
    convert.export(params, config, tmp_path / "a.safetensors")
  convert.export(params, config, tmp_path / "a.safetensors", overwrite=True)
  with pytest.raises(ValueError, match="layout='jax'"):
    convert.export(params, config, tmp_path / "b", layout="jax")
  with pytest.raises(ValueError, match="directory, not a file"):
    convert.export(params, config, tmp_path / "c.safetensors", layout="hf")
  mean_pool = get_config(config, **{"vision.pool": "mean"})
  with pytest.raises(ValueError, match="vision.pool='mean'"):
    convert.export(params, mean_pool, tmp_path / "d", layout="hf")
  bad = dict(params, logit_scale=np.zeros(2, np.float32))
  with pytest.raises(ValueError, match=r"logit_scale: \(2,\), expected \(\)"):
    convert.export(bad, config, tmp_path / "e.safetensors")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_import_refuses_a_pos_embed_override_the_checkpoint_cannot_have(tmp_path):
  """An exported `learned+sincos2d` model has its table folded into the learned positions:
  importing it with the recipe's pos_embed override would add the table twice (silently wrong
  embeddings), so the override is refused with the key named; the plain import is exact."""
  import jax

  from clipjax import model as clipmodel

  model = clipmodel.create("tiny", jax.random.key(0), **{"vision.pos_embed": "learned+sincos2d"})
  out = convert.export(model.params, model.config, str(tmp_path / "m"), layout="openai")
  with pytest.raises(convert.CheckpointError, match="vision.pos_embed"):
    convert.load_checkpoint(out, **{"vision.pos_embed": "learned+sincos2d"})
  config, _ = convert.load_checkpoint(out)
  assert config.vision.pos_embed == "learned"
