"""Checks an exported base (scripts/export_base.py) against real open_clip, in two environments.

  python scripts/check_export_open_clip.py dump assets/bases/base_s0 /tmp/ref.npz  # clipjax
  python scripts/check_export_open_clip.py compare assets/bases/base_s0 /tmp/ref.npz  # torch

`dump` encodes 8 test images of the shapes world and 3 captions with `clipjax.model.load(DIR)`;
`compare` loads DIR with `open_clip.create_model("local-dir:DIR")` and its tokenizer with
`SimpleTokenizer(bpe_path=DIR/bpe.txt.gz)`, and prints whether the token ids are equal and the
largest embedding differences. A developer tool (open_clip needs torch, which clipjax never does).
"""

from __future__ import annotations

import sys

import numpy as np

TEXTS = ["a small red circle in the top left", "one blue star.", "a large green cross"]


def dump(directory: str, out: str) -> None:
  from clipjax import model as model_lib
  from clipjax.data.synthetic import SyntheticShapes
  from clipjax.data.tokenizer import Tokenizer

  m = model_lib.load(directory)
  v = m.config.vision
  src = SyntheticShapes("test", image_size=v.image_size, seed=0)
  imgs = np.stack([src[i]["image"] for i in range(8)]).astype(np.float32) / 255
  ids = Tokenizer(f"{directory}/bpe.txt.gz", context_length=m.config.text.context_length)(TEXTS)
  np.savez(
    out,
    imgs=imgs,
    ids=ids,
    image_emb=np.asarray(m.encode_image(m.params, imgs).emb),
    text_emb=np.asarray(m.encode_text(m.params, ids).emb),
    mean=np.asarray(v.image_mean, np.float32),
    std=np.asarray(v.image_std, np.float32),
  )


def compare(directory: str, ref: str) -> None:
  import open_clip
  import torch
  from open_clip.tokenizer import SimpleTokenizer

  r = np.load(ref)
  model = open_clip.create_model(f"local-dir:{directory}").eval()
  tok = SimpleTokenizer(bpe_path=f"{directory}/bpe.txt.gz", context_length=r["ids"].shape[1])
  ids = tok(TEXTS)
  x = (torch.from_numpy(r["imgs"]) - torch.from_numpy(r["mean"])) / torch.from_numpy(r["std"])
  with torch.no_grad():
    img = torch.nn.functional.normalize(model.encode_image(x.permute(0, 3, 1, 2)), dim=-1)
    txt = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
  print(f"open_clip {open_clip.__version__}: token ids equal: {np.array_equal(ids, r['ids'])}")
  print(f"max |image embedding difference| {np.abs(img.numpy() - r['image_emb']).max():.2e}")
  print(f"max |text embedding difference| {np.abs(txt.numpy() - r['text_emb']).max():.2e}")


if __name__ == "__main__":
  if len(sys.argv) != 4 or sys.argv[1] not in ("dump", "compare"):
    raise SystemExit(__doc__)
  (dump if sys.argv[1] == "dump" else compare)(sys.argv[2], sys.argv[3])
