"""Writes the tiny CLIP parity fixtures used by `tests/model/test_parity.py`.

Developer-only: needs torch, transformers and open_clip_torch (the `parity` extra), never runs in
CI. The tests only read what this script writes, with numpy and safetensors.

  python -m venv .venv-torch  # a separate venv: torch never enters clipjax's own
  .venv-torch/bin/pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0 \
    transformers safetensors  # open_clip needs torchvision, which needs this torch pair
  .venv-torch/bin/python scripts/make_parity_fixtures.py [--out tests/fixtures/parity] \
    [--only hf openclip openclip_gelu openai preprocess]

Output (all seeded and deterministic, about 1 MB in total):
  hf/model.safetensors, hf/config.json        tiny random transformers `CLIPModel`
  hf_io.npz                                   its inputs and reference outputs
  openclip/open_clip_model.safetensors,
  openclip/open_clip_config.json              tiny random `open_clip.model.CLIP` (OpenAI layout,
                                              `quick_gelu: true`)
  openclip_io.npz                             its inputs and reference outputs
  openclip_gelu/..., openclip_gelu_io.npz     the same for an open_clip model with open_clip's
                                              default GELU (no `quick_gelu` key, as in open_clip's
                                              ViT-B-32.json) and its own mean/std in
                                              `preprocess_cfg`; references normalised with them
  openai.safetensors, openai_io.npz           a QuickGELU model as OpenAI's release stores it:
                                              a bare file with the `input_resolution`,
                                              `context_length` and `vocab_size` scalars, heads of
                                              width 64 and no config
  preprocess.npz                              uint8 images of several shapes and what open_clip's
                                              eval `image_transform` (torchvision on PIL) makes of
                                              them, per interpolation and resize mode

Every `*_io.npz` holds:
  pixels_bhwc   float32 [b, s, s, 3] in [0, 1] (clipjax input; the references were fed the CLIP
                mean/std-normalised NCHW tensor computed from it in float32)
  ids_bl        int32 [t, ctx]: sot = vocab-2, tokens in [1, vocab-3], eot = vocab-1 (the largest
                id, so first-eot and argmax pooling agree), zero padding; varied lengths, one full
  image_emb     float32 [b, d] L2-normalised pooled image embedding
  text_emb      float32 [t, d] L2-normalised pooled (at eot) text embedding
  image_feat    float32 [b, d] the same before normalisation
  text_feat     float32 [t, d] the same before normalisation
  logits_per_image float32 [b, t] = exp(logit_scale) * image_emb @ text_emb.T
  image_tokens  float32 [b, n_patches, d] ln_post + proj of the patch tokens (class token dropped)
  text_tokens   float32 [t, ctx, d] ln_final + text projection of every position
  logit_scale   float32 [] the stored (log) value

Both reference libraries return L2-normalised embeddings from their `forward` (HF `CLIPModel`
normalises `image_embeds`/`text_embeds`; open_clip's `CLIP.forward` uses `normalize=True`).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np
import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VOCAB = 1000
CTX = 16
IMAGE = 32
PATCH = 8
WIDTH = 32
EMBED = 16
N_IMAGES = 3
LENGTHS = (2, 5, 9, CTX)  # sot..eot inclusive; the last one fills the whole context


def randomise_(module: torch.nn.Module, gen: torch.Generator) -> None:
  """Re-draws every parameter so that no part of the network is trivial.

  Default inits leave biases at 0 and layer-norm gains at 1, and small weight scales make
  attention nearly uniform; a converter or model bug in those places would then go unseen.
  Matrices get N(0, 1/fan_in), biases N(0, 0.1^2), layer-norm gains 1 + N(0, 0.1^2),
  embeddings N(0, 0.5^2), and the logit scale a non-default value.
  """
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
      if name.endswith("logit_scale"):
        p.fill_(math.log(1 / 0.07) + 0.25)
      elif "norm" in name or "ln_" in name:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
      elif name.endswith("bias"):
        p.copy_(0.1 * noise)
      elif "embedding" in name and p.ndim < 4:
        p.copy_(0.5 * noise)
      else:
        fan_in = p.shape[0] if name.endswith(("proj", "text_projection")) and p.ndim == 2 else None
        if fan_in is None:
          fan_in = int(np.prod(p.shape[1:]))
        p.copy_(noise / math.sqrt(fan_in))


def make_inputs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  pixels_bhwc = rng.uniform(0.0, 1.0, size=(N_IMAGES, IMAGE, IMAGE, 3)).astype(np.float32)
  ids_bl = np.zeros((len(LENGTHS), CTX), np.int32)
  for i, n in enumerate(LENGTHS):
    ids_bl[i, 0] = VOCAB - 2
    ids_bl[i, 1 : n - 1] = rng.integers(1, VOCAB - 2, size=n - 2)
    ids_bl[i, n - 1] = VOCAB - 1
  return pixels_bhwc, ids_bl


def normalise_nchw(pixels_bhwc: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
  x = torch.from_numpy(pixels_bhwc)
  mean = torch.tensor(mean, dtype=torch.float32)
  std = torch.tensor(std, dtype=torch.float32)
  return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()


def finish(out: dict, img_feat, txt_feat, logit_scale) -> dict:
  img_emb = img_feat / img_feat.norm(dim=-1, keepdim=True)
  txt_emb = txt_feat / txt_feat.norm(dim=-1, keepdim=True)
  out.update(
    image_feat=img_feat,
    text_feat=txt_feat,
    image_emb=img_emb,
    text_emb=txt_emb,
    logits_per_image=logit_scale.exp() * img_emb @ txt_emb.T,
    logit_scale=logit_scale,
  )
  return {k: v.detach().numpy().astype(np.float32) for k, v in out.items()}


def make_hf(out_dir: pathlib.Path, pixels_bhwc: np.ndarray, ids_bl: np.ndarray) -> dict:
  from transformers import CLIPConfig, CLIPModel

  common = dict(
    hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2, num_attention_heads=2,
    hidden_act="quick_gelu", layer_norm_eps=1e-5,
  )  # fmt: skip
  cfg = CLIPConfig(
    text_config=dict(
      vocab_size=VOCAB, max_position_embeddings=CTX, bos_token_id=VOCAB - 2,
      eos_token_id=VOCAB - 1, pad_token_id=0, **common,
    ),
    vision_config=dict(image_size=IMAGE, patch_size=PATCH, **common),
    projection_dim=EMBED,
  )  # fmt: skip
  model = CLIPModel(cfg).eval()
  gen = torch.Generator().manual_seed(1)
  randomise_(model, gen)
  model.save_pretrained(out_dir / "hf", safe_serialization=True)

  px = normalise_nchw(pixels_bhwc)
  ids = torch.from_numpy(ids_bl.astype(np.int64))
  with torch.no_grad():
    res = model(input_ids=ids, pixel_values=px)
    vis = model.vision_model(pixel_values=px).last_hidden_state
    image_tokens = model.visual_projection(model.vision_model.post_layernorm(vis[:, 1:]))
    txt = model.text_model(input_ids=ids).last_hidden_state  # final_layer_norm already applied
    text_tokens = model.text_projection(txt)
    out = finish(
      dict(image_tokens=image_tokens, text_tokens=text_tokens),
      model.get_image_features(pixel_values=px).pooler_output,
      model.get_text_features(input_ids=ids).pooler_output,
      model.logit_scale,
    )
    # The library's own normalised outputs must agree with ours (same pooling and scale).
    np.testing.assert_allclose(res.image_embeds.numpy(), out["image_emb"], atol=1e-6)
    np.testing.assert_allclose(res.text_embeds.numpy(), out["text_emb"], atol=1e-6)
    np.testing.assert_allclose(res.logits_per_image.numpy(), out["logits_per_image"], atol=1e-5)
  return out


OPENCLIP_CFG = dict(
  embed_dim=EMBED,
  vision_cfg=dict(image_size=IMAGE, layers=2, width=WIDTH, patch_size=PATCH, head_width=16),
  text_cfg=dict(context_length=CTX, vocab_size=VOCAB, width=WIDTH, heads=2, layers=2),
)
GELU_MEAN = (0.5, 0.45, 0.4)  # not OpenAI's: the loader must take them from the checkpoint
GELU_STD = (0.2, 0.25, 0.3)


def _openclip_model(model_cfg: dict, seed: int):
  import open_clip

  model = open_clip.model.CLIP(**model_cfg).eval()
  randomise_(model, torch.Generator().manual_seed(seed))
  return model


def make_openclip(out_dir: pathlib.Path, pixels_bhwc: np.ndarray, ids_bl: np.ndarray) -> dict:
  """open_clip with `quick_gelu: true` (the layout and activation of OpenAI's weights)."""
  model_cfg = dict(OPENCLIP_CFG, quick_gelu=True)
  model = _openclip_model(model_cfg, seed=2)
  _save_openclip(model, {"model_cfg": model_cfg}, out_dir / "openclip")
  return _openclip_refs(model, pixels_bhwc, ids_bl)


def make_openclip_gelu(out_dir: pathlib.Path, pixels_bhwc: np.ndarray, ids_bl: np.ndarray) -> dict:
  """open_clip's default GELU model (no `quick_gelu` key) with its own mean/std."""
  import torch.nn as nn

  model = _openclip_model(OPENCLIP_CFG, seed=3)
  assert all(isinstance(b.mlp.gelu, nn.GELU) for b in model.transformer.resblocks)
  side = {"model_cfg": OPENCLIP_CFG, "preprocess_cfg": {"mean": GELU_MEAN, "std": GELU_STD}}
  _save_openclip(model, side, out_dir / "openclip_gelu")
  return _openclip_refs(model, pixels_bhwc, ids_bl, mean=GELU_MEAN, std=GELU_STD)


def make_openai(out_dir: pathlib.Path, pixels_bhwc: np.ndarray, ids_bl: np.ndarray) -> dict:
  """OpenAI's release layout: a bare file, QuickGELU, 64-wide heads (heads = width // 64), and
  the `input_resolution` / `context_length` / `vocab_size` scalars; no config at all."""
  from safetensors.torch import save_file

  model_cfg = dict(
    embed_dim=EMBED,
    quick_gelu=True,
    vision_cfg=dict(image_size=IMAGE, layers=2, width=64, patch_size=PATCH, head_width=64),
    text_cfg=dict(context_length=CTX, vocab_size=VOCAB, width=64, heads=1, layers=2),
  )
  model = _openclip_model(model_cfg, seed=5)
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  for key, value in (("input_resolution", IMAGE), ("context_length", CTX), ("vocab_size", VOCAB)):
    state[key] = torch.tensor(value, dtype=torch.int64)
  save_file(state, out_dir / "openai.safetensors")
  return _openclip_refs(model, pixels_bhwc, ids_bl)


def _save_openclip(model, side: dict, d: pathlib.Path) -> None:
  from safetensors.torch import save_file

  d.mkdir(parents=True, exist_ok=True)
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  save_file(state, d / "open_clip_model.safetensors")
  (d / "open_clip_config.json").write_text(json.dumps(side, indent=2) + "\n")


def _openclip_refs(model, pixels_bhwc, ids_bl, mean=CLIP_MEAN, std=CLIP_STD) -> dict:
  px = normalise_nchw(pixels_bhwc, mean, std)
  ids = torch.from_numpy(ids_bl.astype(np.int64))
  captured = {}
  hook = model.ln_final.register_forward_hook(lambda m, i, o: captured.update(ln_final=o))
  with torch.no_grad():
    img_n, txt_n, scale = model(px, ids)
    model.visual.output_tokens = True
    img_feat, vis_tokens = model.visual(px)  # tokens after ln_post, not projected
    model.visual.output_tokens = False
    txt_feat = model.encode_text(ids)
    out = finish(
      dict(
        image_tokens=vis_tokens @ model.visual.proj,
        text_tokens=captured["ln_final"] @ model.text_projection,
      ),
      img_feat,
      txt_feat,
      model.logit_scale,
    )
    np.testing.assert_allclose(img_n.numpy(), out["image_emb"], atol=1e-6)
    np.testing.assert_allclose(txt_n.numpy(), out["text_emb"], atol=1e-6)
    np.testing.assert_allclose(scale.numpy(), np.exp(out["logit_scale"]), rtol=1e-6)
  hook.remove()
  return out


PREPROCESS_SIZE = 32
PREPROCESS_SHAPES = ((48, 64), (64, 48), (33, 47), (40, 40), (32, 32), (17, 23), (90, 31))


def make_preprocess(out_dir: pathlib.Path) -> None:
  """open_clip's eval transform on smooth and noisy uint8 images of several shapes."""
  from open_clip.transform import image_transform
  from PIL import Image

  rng = np.random.default_rng(4)
  arrays = {}
  for i, (h, w) in enumerate(PREPROCESS_SHAPES):
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([255 * xx / w, 255 * yy / h, 128 + 100 * np.sin(xx / 5 + yy / 7)], -1)
    noisy = smooth + rng.normal(0, 40, size=smooth.shape)
    img = np.clip(np.round(noisy if i % 2 else smooth), 0, 255).astype(np.uint8)
    arrays[f"image_{i}"] = img
    for interpolation in ("bicubic", "bilinear"):
      for mode in ("shortest", "squash"):
        tf = image_transform(
          PREPROCESS_SIZE, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
          resize_mode=mode, interpolation=interpolation,
        )  # fmt: skip
        out = tf(Image.fromarray(img)).permute(1, 2, 0).numpy()  # ToTensor: uint8 / 255
        arrays[f"out_{i}_{interpolation}_{mode}"] = out.astype(np.float32)
  np.savez_compressed(out_dir / "preprocess.npz", size=PREPROCESS_SIZE, **arrays)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  default = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "parity"
  parser.add_argument("--out", type=pathlib.Path, default=default)
  names = ("hf", "openclip", "openclip_gelu", "openai", "preprocess")
  parser.add_argument("--only", nargs="+", choices=names, default=names)
  args = parser.parse_args()
  torch.manual_seed(0)
  torch.set_num_threads(1)
  args.out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  pixels_bhwc, ids_bl = make_inputs(rng)
  models = {
    "hf": make_hf,
    "openclip": make_openclip,
    "openclip_gelu": make_openclip_gelu,
    "openai": make_openai,
  }
  for name, fn in models.items():
    if name in args.only:
      refs = fn(args.out, pixels_bhwc, ids_bl)
      np.savez(args.out / f"{name}_io.npz", pixels_bhwc=pixels_bhwc, ids_bl=ids_bl, **refs)
  if "preprocess" in args.only:
    make_preprocess(args.out)
  total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
  print(f"wrote {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
