"""Zero-shot accuracy of one label set of the shapes world, broken down by another attribute.

Which images a checkpoint gets wrong, e.g. size errors per shape: the world's size is the shape's
circumradius, so a large star or triangle covers less area than a large circle, and a model that
judges size by area calls it small.

  python scripts/attribute_errors.py assets/bases/base_s0 --label-set size --by shape
  python scripts/attribute_errors.py /tmp/clipjax_quickstart --label-set size --by shape \
    --prompts captions --split test --images 1000

Prints one markdown row per value of `--by`: images, accuracy and each confusion
(true → predicted) with its count; `--out` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np


def breakdown(
  checkpoint: str,
  label_set: str,
  by: str,
  *,
  prompts: str,
  split: str,
  images: int,
  ensemble: str = "mean",
) -> dict:
  """{value of `by`: {"n", "correct", "acc", "confusions": {"true -> predicted": count}}}."""
  from clipjax import model as model_lib
  from clipjax import runs
  from clipjax.data import registry
  from clipjax.data.sources import label_sets_of
  from clipjax.data.tokenizer import Tokenizer
  from clipjax.evaluation import zeroshot

  spec = runs.checkpoint_settings(checkpoint)["data"]
  model = model_lib.load(checkpoint)
  world = {"name": "synthetic", "split": split, "seed": 0, "label_templates": prompts}
  source = registry.build_source(world, spec["image_size"])
  sets = label_sets_of(source)
  for name in (label_set, by):
    if name not in sets:
      raise ValueError(f"label set {name!r} is not one of {sorted(sets)}")
  ls, grouping = sets[label_set], sets[by]
  tok = Tokenizer(runs.trained_tokenizer(checkpoint), spec["context_length"])
  clf = zeroshot.build_classifier(
    lambda ids: model.encode_text(model.params, ids).emb,
    tok,
    ls.classnames,
    ls.templates,
    logit_scale=float(np.exp(np.asarray(model.params["logit_scale"]))),
    ensemble=ensemble,
  )
  n = min(images, len(source))
  examples = [source[i] for i in range(n)]
  pixels = np.stack([e["image"] for e in examples]).astype(np.float32) / 255.0
  emb = np.concatenate(
    [
      np.asarray(model.encode_image(model.params, pixels[i : i + 100]).emb)
      for i in range(0, n, 100)
    ]
  )
  pred = np.asarray(clf.predict(zeroshot.l2_normalize(emb)))
  true = np.array([e["labels"][label_set] for e in examples])
  group = np.array([e["labels"][by] for e in examples])
  out = {}
  for g, gname in enumerate(grouping.classnames):
    sel = group == g
    if not sel.any():
      continue
    wrong = collections.Counter(
      f"{ls.classnames[t]} -> {ls.classnames[p]}" for t, p in zip(true[sel], pred[sel]) if t != p
    )
    out[gname] = {
      "n": int(sel.sum()),
      "correct": int((pred[sel] == true[sel]).sum()),
      "acc": round(100 * float((pred[sel] == true[sel]).mean()), 2),
      "confusions": dict(wrong.most_common()),
    }
  return out


def table(rows: dict, by: str) -> str:
  lines = [
    f"| {by} | images | accuracy (%) | errors (true -> predicted: count) |",
    "|---|---|---|---|",
  ]
  for name, r in rows.items():
    errs = ", ".join(f"{k}: {v}" for k, v in r["confusions"].items()) or "–"
    lines.append(f"| {name} | {r['n']} | {r['acc']:.1f} | {errs} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("checkpoint")
  parser.add_argument("--label-set", default="size")
  parser.add_argument("--by", default="shape")
  parser.add_argument("--prompts", default="captions", choices=("default", "rich", "captions"))
  parser.add_argument("--ensemble", default="mean", choices=("mean", "posterior"))
  parser.add_argument("--split", default="test", choices=("val", "test"))
  parser.add_argument("--images", type=int, default=1000)
  parser.add_argument("--out")
  args = parser.parse_args(argv)
  if not os.path.isdir(args.checkpoint):
    parser.error(f"checkpoint {args.checkpoint!r} is not a directory")
  rows = breakdown(
    args.checkpoint,
    args.label_set,
    args.by,
    prompts=args.prompts,
    split=args.split,
    images=args.images,
    ensemble=args.ensemble,
  )
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"args": vars(args), "rows": rows}, f, indent=1)
  print(table(rows, args.by), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
