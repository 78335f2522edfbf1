"""Effective rank of COLA's class-text features: how much of them Π's C directions keep.

Usage:
  python scripts/cola_text_rank.py --ckpt assets/bases/base_s0 \
    --arg label_set=colour+shape,templates=rich,components=64

`--arg` is `configs/cola.py`'s argument (label set, world, templates, components; `ckpt` is
added). Builds the text side exactly as the `cola_eval` task does (`cola_protocol.text_side`)
and prints, for the normalised text features Z (one row per class prompt), the number of
features, C, the share of ‖Z‖² outside Π's C directions, and the number of directions that hold
99 % and 99.9 % of it. Π changes COLA's scores only through what lies outside its span: with
that share ≈ 0, Π fixes every text feature and is inert whatever the feature count.
"""

import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clipjax import runs
from clipjax.data.tokenizer import Tokenizer
from clipjax.evaluation import cola_protocol
from clipjax.tasks.cola_eval import merges_path
from configs import cola as cola_config


def text_rank(ckpt: str, arg: str) -> dict:
  c = cola_config.get_config(f"{arg},ckpt={ckpt}" if arg else f"ckpt={ckpt}")
  model = runs.build_model(
    c.model.to_dict(), c.data.image_size, c.data.context_length, jax.random.key(0)
  )
  _, _, lset = cola_protocol.load_examples(
    c.eval.dataset.to_dict(), c.eval.label_set, model.config.vision.image_size, 1
  )
  tok = Tokenizer(merges_path(c), context_length=model.config.text.context_length)
  encode = jax.jit(lambda ids: model.encode_text(model.params, ids).emb)
  text = cola_protocol.text_side(
    encode,
    tok,
    lset.classnames,
    lset.templates,
    None,
    max_descriptions=c.cola.max_descriptions,
    num_components=c.cola.base["num_components"],
  )
  z = np.asarray(text.z_kmd)[np.asarray(text.mask_km)]
  energy = np.linalg.svd(z.astype(np.float64), compute_uv=False) ** 2
  cum = np.cumsum(energy) / np.sum(energy)
  kept = text.basis_dc.shape[1]
  return {
    "label_set": c.eval.label_set,
    "features": int(z.shape[0]),
    "width": int(z.shape[1]),
    "C": int(kept),
    "energy_outside_C": float(max(0.0, 1.0 - cum[kept - 1])),
    "dims_99": int(np.searchsorted(cum, 0.99)) + 1,
    "dims_999": int(np.searchsorted(cum, 0.999)) + 1,
  }


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--ckpt", required=True, help="checkpoint (clipjax workdir or exported base)")
  p.add_argument("--arg", default="", help="configs/cola.py argument, e.g. label_set=shape")
  a = p.parse_args(argv)
  print(json.dumps(text_rank(a.ckpt, a.arg)))


if __name__ == "__main__":
  main()
