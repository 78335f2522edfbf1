"""COLA's overhead beyond its N image-encoder passes (issue 20: target ≤ 10 % at ViT-B/32).

Usage:
  python scripts/bench_cola.py --small        # tiny model, seconds (the test's smoke run)
  nice -n 19 python scripts/bench_cola.py     # ViT-B/32, 8 images x 8 views, 1000 x (1 + 50)

Flags:
  --variant V        model variant of `clipjax.model.VARIANTS` (default ViT-B/32), randomly
                     initialised: no weights and no network (timings do not depend on values).
  --batch B          images per classification (default 8); B·N views go through the encoder.
  --views N          COLA's views per image, centre view included (default 8, the paper's).
  --classes K        classes (default 1000, ImageNet).
  --descriptions D   descriptions per class (default 50, the paper's M); each class has
                     1 template + D text features, as `cola.class_prompts` builds them.
  --rounds R         calls of `cola_protocol.overhead` (each: 1 warm-up + 3 timed calls per
                     side, encoder and COLA back to back); the medians over rounds are reported
                     (default 3).
  --ablations        also time the ablations of `configs/cola.py` (uniform marginals, no Π,
                     views + mean logits without OT).
  --out PATH         also write the result as JSON to PATH.
  --small            tiny model, 32 px, 2 images, 10 classes x 5 descriptions, 1 round.

The measurement is the `cola_eval` task's own: `cola_protocol.build_classifiers` builds the
classifiers (paper settings: `ColaConfig()` defaults, N views, C = 256 text directions, entropy
marginals, 100 Sinkhorn iterations at ε = 0.1) and `cola_protocol.overhead` times (a) the N
image-encoder passes (B·N images through the jitted vision tower) and (b) the jitted COLA
prediction on the B images (views + encoder passes + Π + entropy weights + OT + scoring), both
compiled beforehand (warm-up excluded). The text side is random: a stand-in text encoder
(fixed pseudo-random features per prompt) replaces the text tower, which COLA runs once per
dataset and which is not part of the per-image cost. For a breakdown, the views
(`cola.make_views`) and everything after the encoder (`cola.cola_scores` on the view
embeddings) are also timed alone.

Prints the machine (CPU, cores, memory, load average before and after, niceness) and one final
JSON line with `encoder_s`, `cola_s` and `overhead = cola_s / encoder_s - 1`. The overhead is a
ratio of two timings taken side by side in one process, so it is meaningful on a shared,
loaded machine where the absolute seconds are not.
"""

import argparse
import dataclasses
import json
import statistics
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from clipjax import measure
from clipjax import model as clipmodel
from clipjax.evaluation import cola_protocol
from clipjax.methods import cola

TEMPLATE = "a photo of a {}."
# Ablations of configs/cola.py (overrides of the paper settings).
ABLATIONS = {
  "cola_uniform": {"marginals": "uniform"},
  "cola_no_proj": {"projection": False},
  "views_mean": {"use_ot": False, "projection": False},
}


def fake_text_tower(dim: int):
  """`(tokenize, encode_text)` giving each prompt fixed pseudo-random features in R^dim.

  `tokenize` maps a prompt to one id (its CRC-32), `encode_text` an id to `sin(id·w + φ)` with
  random frequencies `w` and phases `φ`: distinct prompts get distinct, full-rank features.
  """
  rng = np.random.default_rng(0)
  w_d = rng.uniform(0.5, 1.5, size=dim)
  phase_d = rng.uniform(0.0, 2 * np.pi, size=dim)

  def tokenize(texts):
    return np.asarray([[zlib.crc32(t.encode())] for t in texts], np.int64)

  def encode_text(ids_b1):
    return np.sin(ids_b1.astype(np.float64) * w_d + phase_d).astype(np.float32)

  return tokenize, encode_text


def run(args) -> dict:
  start = time.perf_counter()
  before = measure.machine_info()
  print(json.dumps({"machine": before}), flush=True)
  config = clipmodel.get_config(args.variant)
  clip = clipmodel.create(config, jax.random.key(0))
  jax.block_until_ready(clip.params)

  def encode_image(px):
    return clip.encode_image(clip.params, px).emb

  classnames = [f"class {k}" for k in range(args.classes)]
  descriptions = {c: [f"with feature {j}" for j in range(args.descriptions)] for c in classnames}
  tokenize, encode_text = fake_text_tower(config.embed_dim)
  base = dataclasses.asdict(cola.ColaConfig(num_views=args.views))
  variants = {"cola": {}, **(ABLATIONS if args.ablations else {})}
  t0 = time.perf_counter()
  classifiers = cola_protocol.build_classifiers(
    encode_image,
    encode_text,
    tokenize,
    classnames,
    [TEMPLATE],
    base=base,
    variants=variants,
    descriptions=descriptions,
    max_descriptions=args.descriptions,
  )
  text_s = time.perf_counter() - t0

  s = config.vision.image_size
  x_b = np.random.default_rng(0).uniform(size=(args.batch, s, s, 3)).astype(np.float32)
  key = jax.random.key(0)
  rounds = []
  for r in range(args.rounds):
    t0 = time.perf_counter()
    rounds.append(cola_protocol.overhead(classifiers, encode_image, x_b, key))
    print(f"round {r}: {json.dumps(rounds[-1])} ({time.perf_counter() - t0:.0f} s)", flush=True)

  results = {}
  for name in variants:
    enc = statistics.median(t[name]["encoder_s"] for t in rounds)
    full = statistics.median(t[name]["cola_s"] for t in rounds)
    results[name] = {
      "encoder_s": enc,
      "cola_s": full,
      "overhead": full / enc - 1.0,
      "overhead_per_round": [t[name]["overhead"] for t in rounds],
    }

  # Breakdown of the paper variant: the views alone, and everything after the encoder alone.
  cfg = classifiers.variants["cola"]
  text = cola_protocol.text_side(
    encode_text,
    tokenize,
    classnames,
    [TEMPLATE],
    descriptions,
    max_descriptions=args.descriptions,
    num_components=cfg.num_components,
  )
  k_b = jax.random.fold_in(key, 0)
  views = jax.jit(lambda px, k: cola.make_views(px, k, cfg))
  zviews_bnd = jax.jit(jax.vmap(encode_image))(views(jnp.asarray(x_b), k_b))
  scores = jax.jit(lambda z: cola.cola_scores(z, text, cfg).scores_bk)
  repeats = 3 * args.rounds
  views_s = measure.time_calls(views, jnp.asarray(x_b), k_b, repeats=repeats).wall
  scores_s = measure.time_calls(scores, zviews_bnd, repeats=repeats).wall

  after = measure.machine_info()
  out = {
    "variant": args.variant,
    "batch": args.batch,
    "views": args.views,
    "encoder_images": args.batch * args.views,
    "image_size": s,
    "classes": args.classes,
    "texts_per_class": int(text.z_kmd.shape[1]),
    "descriptions": args.descriptions,
    "num_components": int(text.basis_dc.shape[1]),
    "rounds": args.rounds,
    "timed_calls_per_round": 3,
    **results["cola"],
    "views_s": views_s,
    "post_encoder_s": scores_s,
    "ablations": {k: v for k, v in results.items() if k != "cola"},
    "text_side_s": text_s,
    "wall_s": time.perf_counter() - start,
    "machine": before | {"load_avg_after": after["load_avg"]},
  }
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--variant", default="ViT-B/32")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--views", type=int, default=8)
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument("--descriptions", type=int, default=50)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--ablations", action="store_true")
  p.add_argument("--out", default="")
  p.add_argument("--small", action="store_true")
  args = p.parse_args(argv)
  if args.small:
    args.variant, args.batch, args.classes, args.descriptions, args.rounds = "tiny", 2, 10, 5, 1
  out = run(args)
  print(
    f"{args.variant}: {args.batch} images x {args.views} views, {args.classes} classes x "
    f"{out['texts_per_class']} texts: encoder {out['encoder_s']:.4g} s, "
    f"COLA {out['cola_s']:.4g} s, "
    f"overhead {100 * out['overhead']:.1f} % (views {out['views_s']:.4g} s, after the encoder "
    f"{out['post_encoder_s']:.4g} s); load average {out['machine']['load_avg']} -> "
    f"{out['machine']['load_avg_after']} on {out['machine']['nproc']} cores, niceness "
    f"{out['machine']['niceness']}",
    flush=True,
  )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(out, f, indent=1)
  print(json.dumps(out), flush=True)
  return out


if __name__ == "__main__":
  main()
