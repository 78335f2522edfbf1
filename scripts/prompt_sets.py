"""Zero-shot accuracy of shapes-world checkpoints under each prompt set and ensembling rule.

Measures, for every checkpoint (a run directory or an exported base), every prompt set of the
shapes world ("default": three prompts per label set, "rich": twelve, "captions": every caption
of the class; `label_templates`) combined by averaging their directions ("mean", CLIP's rule),
and the caption prompts also by their share of the image->text softmax ("posterior";
`zeroshot.build_classifier`), top-1 zero-shot accuracy per label set on the first N images of a
split, and writes one JSON record; `table` turns a record into the markdown table of
docs/results.md. Choose on `val`, report on `test`.

  python scripts/prompt_sets.py run assets/bases/base_s0 assets/bases/base_s1 \
    assets/bases/base_s2 --split val --out docs/results/prompt_sets_val.json
  python scripts/prompt_sets.py table docs/results/prompt_sets_val.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

RULES = ("default/mean", "rich/mean", "captions/mean", "captions/posterior")
"""The (prompt set)/(ensembling rule) pairs measured."""
LABEL_SETS = ("colour", "size", "position", "shape", "colour+shape", "colour+shape/held_out")


def _training_world(checkpoint: str) -> dict:
  """The shapes world a checkpoint was trained on: its workdir's `config.json` or an exported
  base's `card.json` (caption options dropped: they change training captions only)."""
  for name in ("config.json", "card.json"):
    path = os.path.join(checkpoint, name)
    if os.path.exists(path):
      with open(path) as f:
        spec = dict(json.load(f)["data"]["train"])
      if spec.get("name") != "synthetic":
        raise ValueError(f"{path}: trained on {spec.get('name')!r}, not the shapes world")
      for key in ("partial_captions", "partial_subsets", "label_templates"):
        spec.pop(key, None)
      return spec
  raise ValueError(f"{checkpoint}: neither config.json (a workdir) nor card.json (a base)")


def evaluate(checkpoint: str, split: str, images: int, rules=RULES) -> dict:
  """{rule: {label set: top-1 %}} for one checkpoint on the first `images` of `split`."""
  from clipjax import model as model_lib
  from clipjax import runs
  from clipjax.evaluation import suite

  world = {**_training_world(checkpoint), "split": split}
  model = model_lib.load(checkpoint)
  settings = runs.checkpoint_settings(checkpoint)
  data = settings["data"]
  out = {}
  for rule in rules:
    prompts, ensemble = rule.split("/")
    start = time.time()
    metrics = suite.evaluate_datasets(
      model,
      model.params,
      {"w": {**world, "label_templates": prompts}},
      image_size=data["image_size"],
      context_length=data["context_length"],
      batch_size=100,
      max_examples=images,
      tokenizer=runs.trained_tokenizer(checkpoint),
      zeroshot_ensemble=ensemble,
    )
    row = {}
    for key, value in metrics.items():
      parts = key.split("/")  # w/zeroshot/<label set>[/<subset>]/acc1
      if parts[1] == "zeroshot" and parts[-1] == "acc1":
        row["/".join(parts[2:-1])] = round(100 * float(value), 2)
    out[rule] = row
    print(f"{checkpoint} {split} {rule}: {time.time() - start:.0f} s {row}", file=sys.stderr)
  return out


def table(record: dict) -> str:
  """The markdown table of a record: one row per checkpoint and rule, then the means (with
  more than one checkpoint)."""
  cols = [
    c for c in LABEL_SETS if any(c in r for ck in record["runs"].values() for r in ck.values())
  ]
  lines = [
    f"| checkpoint | prompts / rule | {' | '.join(cols)} |",
    "|" + "---|" * (len(cols) + 2),
  ]
  for name, by_rule in record["runs"].items():
    for rule, row in by_rule.items():
      cells = " | ".join(f"{row[c]:.1f}" if c in row else "–" for c in cols)
      lines.append(f"| {name} | {rule} | {cells} |")
  for rule in record["rules"] if len(record["runs"]) > 1 else ():
    rows = [ck[rule] for ck in record["runs"].values()]
    means = []
    for c in cols:
      vals = [r[c] for r in rows if c in r]
      means.append(f"**{sum(vals) / len(vals):.1f}**" if vals else "–")
    lines.append(f"| mean of {len(rows)} | {rule} | {' | '.join(means)} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="cmd", required=True)
  run = sub.add_parser("run", help="evaluate checkpoints and write a JSON record")
  run.add_argument("checkpoints", nargs="+")
  run.add_argument("--split", default="val", choices=("val", "test"))
  run.add_argument("--images", type=int, default=1000)
  run.add_argument("--out", required=True)
  tab = sub.add_parser("table", help="print the markdown table of a record")
  tab.add_argument("record")
  args = parser.parse_args(argv)
  if args.cmd == "table":
    with open(args.record) as f:
      print(table(json.load(f)), end="")
    return 0
  for ck in args.checkpoints:
    if not os.path.isdir(ck):
      parser.error(f"checkpoint {ck!r} is not a directory")
  record = {
    "split": args.split,
    "images": args.images,
    "rules": list(RULES),
    "runs": {
      os.path.basename(os.path.normpath(ck)): evaluate(ck, args.split, args.images)
      for ck in args.checkpoints
    },
  }
  tmp = args.out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, args.out)
  print(table(record), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
