"""Exports a trained reference base (configs/base.py) to assets/bases/NAME with its model card.

  python scripts/export_base.py WORKDIR assets/bases/NAME --command "python -m clipjax.main ..."
  python scripts/export_base.py --cards assets/bases   # rewrite every MODEL_CARD.md from card.json

What lands in the directory:
  open_clip_model.safetensors + open_clip_config.json   the weights in open_clip's layout
      (clipjax's own converter; `open_clip.create_model("local-dir:DIR")` and
      `clipjax.model.load(DIR)` both open it);
  bpe.txt.gz                                           the model's tokenizer (CLIP merges format:
      open_clip's `SimpleTokenizer(bpe_path=...)` and `clipjax.data.tokenizer.Tokenizer` read it);
  card.json                                            the record: config, command, data, commit,
      training metrics (the run's summary.json), the 200-image check numbers and sha256s;
  MODEL_CARD.md                                        generated from card.json (never typed).

The 200-image numbers are zero-shot accuracies on the first 200 images of the world's test split,
recomputed from the exported files (not the workdir), so `tests/assets/test_bases.py` checks the
shipped files against them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np

CHECK_IMAGES = 200
REPO = pathlib.Path(__file__).resolve().parents[1]


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def check_metrics(directory: str | os.PathLike, datasets: dict, context_length: int) -> dict:
  """Zero-shot top-1 per label set of the exported model on the first `CHECK_IMAGES` images.

  Whole label sets only (`{dataset}/zeroshot/{label set}/acc1`): their subsets (seen/held-out)
  are too small for a one-image tolerance.
  """
  from clipjax import model as model_lib
  from clipjax import runs
  from clipjax.evaluation import suite

  directory = pathlib.Path(directory)
  model = model_lib.load(directory)
  out = suite.evaluate_datasets(
    model,
    model.params,
    datasets,
    image_size=model.config.vision.image_size,
    context_length=context_length,
    batch_size=100,
    max_examples=CHECK_IMAGES,
    tokenizer=runs.trained_tokenizer(str(directory)),
  )
  return {
    k: round(float(v), 6)
    for k, v in sorted(out.items())
    if "/zeroshot/" in k and k.endswith("/acc1") and k.count("/") == 3
  }


def _git_commit() -> str:
  try:
    return subprocess.run(
      ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _time_log(path: str) -> dict:
  """CPU and wall seconds from a GNU `/usr/bin/time -v` log of the training command."""
  from clipjax.measure import parse_time_log

  cpu, wall = parse_time_log(pathlib.Path(path).read_text())
  return {"cpu_s": round(cpu, 1), "wall_s": round(wall, 1)}


def export(
  workdir: str, out: str, command: str, commit: str = "", time_log: str = "", note: str = ""
) -> dict:
  from clipjax import model as model_lib
  from clipjax import runs
  from clipjax.data import tokenizer as tok_lib
  from clipjax.model import convert

  work = pathlib.Path(workdir)
  config = json.loads((work / "config.json").read_text())
  summary = json.loads((work / "summary.json").read_text())
  if not summary.get("finished"):
    raise SystemExit(f"{work}/summary.json says the run did not finish; export a finished run")
  out_dir = pathlib.Path(out)
  if out_dir.exists():
    raise SystemExit(f"{out_dir} exists; remove it first (nothing was written)")
  tmp = out_dir.with_name(f".partial-{out_dir.name}".replace(".", "_"))
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  model = model_lib.load(work)
  convert.export(model.params, model.config, tmp, layout="openai")
  merges = config["data"]["tokenizer"]
  # The tokenizer file resolves the run's setting ("clipjax:<name>" or a path) once, for good.
  shutil.copyfile(tok_lib.Tokenizer(merges or None).merges_path, tmp / runs.EXPORTED_TOKENIZER)
  datasets = config["eval"]["datasets"]
  card = {
    "name": out_dir.name,
    "command": command,
    "commit": commit or _git_commit(),
    "cost": {**(_time_log(time_log) if time_log else {}), "note": note},
    "data": {"train": config["data"]["train"], "test": datasets},
    "config": config,
    "train_summary": {
      k: v
      for k, v in summary.items()
      if ("/zeroshot/" in k or "/retrieval/" in k) and not k.endswith("/chance")
    },
    "check": {
      "images": CHECK_IMAGES,
      "metrics": check_metrics(tmp, datasets, config["data"]["context_length"]),
    },
    "files": {
      p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size}
      for p in sorted(tmp.iterdir())
      if p.is_file()
    },
  }
  (tmp / "card.json").write_text(json.dumps(card, indent=1) + "\n")
  (tmp / "MODEL_CARD.md").write_text(model_card(card))
  os.replace(tmp, out_dir)
  return card


def _pct(v: float) -> str:
  return f"{100 * v:.1f} %"


def model_card(card: dict) -> str:
  cfg = card["config"]
  v = cfg["model"]["overrides"]["vision"]
  t = cfg["model"]["overrides"]["text"]
  n_params_bytes = card["files"]["open_clip_model.safetensors"]["bytes"]
  lines = [
    f"# {card['name']}: a clipjax reference base model (shapes world)",
    "",
    "Generated by `scripts/export_base.py` from `card.json`; do not edit by hand.",
    "",
    "- Model: tiny CLIP, ViT image tower (patch {p}, width {w}, {vl} blocks, mean pooling) and "
    "text tower (width {tw}, {tl} blocks, context {cl}), embedding {e}; float32, "
    "{mb:.1f} MB.".format(
      p=v["patch_size"],
      w=v["width"],
      vl=v["layers"],
      tw=t["width"],
      tl=t["layers"],
      cl=cfg["data"]["context_length"],
      e=cfg["model"]["overrides"]["embed_dim"],
      mb=n_params_bytes / 1e6,
    ),
    f"- Input: {cfg['data']['image_size']} px RGB; tokenizer `bpe.txt.gz` "
    f"(`{cfg['data']['tokenizer'] or 'OpenAI'}`: {t.get('vocab_size', 49408)} ids).",
    f"- Trained: `{card['command']}` ({cfg['total_steps']} steps, batch "
    f"{cfg['data']['batch_size']}, seed {cfg['seed']}), clipjax commit `{card['commit'][:12]}`.",
    f"- Training data: `{json.dumps(card['data']['train'], sort_keys=True)}` "
    "(`clipjax.data.registry.build_source`); no external data.",
    "- Load: `clipjax.model.load(DIR)`, or open_clip: `open_clip.create_model('local-dir:DIR')` "
    "with `open_clip.tokenizer.SimpleTokenizer(bpe_path=DIR + '/bpe.txt.gz')`.",
  ]
  cost = card.get("cost") or {}
  if "cpu_s" in cost:
    lines.append(
      f"- Training cost: {cost['cpu_s']:.0f} CPU-seconds ({cost['cpu_s'] / 120:.1f} min of 2 "
      f"cores), wall {cost['wall_s'] / 60:.1f} min. {cost.get('note', '')}".rstrip()
    )
  elif cost.get("note"):
    lines.append(f"- Training cost: no complete time log. {cost['note']}")
  lines += [
    "",
    "## Zero-shot accuracy on the world's test split",
    "",
    "| label set | all 1000 test images (training run) | first 200 images (exported files) |",
    "|---|---|---|",
  ]
  check = card["check"]["metrics"]
  for key in sorted(check):
    if not key.endswith("/acc1"):
      continue
    label = key.split("/zeroshot/")[1].removesuffix("/acc1")
    lines.append(
      f"| {label} | {_pct(card['train_summary'].get(key, float('nan')))} | {_pct(check[key])} |"
    )
  summary = card["train_summary"]
  extra = [
    ("colour+shape, held-out combinations", "/zeroshot/colour+shape/held_out/acc1"),
    ("image→text R@1", "/retrieval/text_retrieval_recall@1"),
    ("text→image R@1", "/retrieval/image_retrieval_recall@1"),
  ]
  for label, suffix in extra:
    got = [v for k, v in summary.items() if k.endswith(suffix)]
    if got:
      lines.append(f"| {label} | {_pct(got[0])} | – |")
  lines += [
    "",
    "Zero-shot here uses the world's three default prompts per label set and CLIP's mean rule "
    "(`tests/assets/test_bases.py` checks the 200-image column). The recipes evaluate with the "
    "world's caption prompts and the posterior rule, which gives every base more on size, shape "
    "and held-out colour+shape: docs/results.md, section Prompt sets and the ensembling rule "
    "(`scripts/prompt_sets.py`).",
  ]
  lines += ["", "## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
  for name, f in card["files"].items():
    lines.append(f"| {name} | {f['bytes']} | `{f['sha256']}` |")
  return "\n".join(lines) + "\n"


TABLE_ROWS = (
  ("colour", "zeroshot/colour/acc1", 0.98),
  ("size", "zeroshot/size/acc1", 0.98),
  ("position", "zeroshot/position/acc1", 0.98),
  ("shape", "zeroshot/shape/acc1", 0.85),
  ("colour+shape", "zeroshot/colour+shape/acc1", None),
  ("colour+shape held-out", "zeroshot/colour+shape/held_out/acc1", 0.60),
  ("image→text R@1", "retrieval/text_retrieval_recall@1", None),
  ("text→image R@1", "retrieval/image_retrieval_recall@1", None),
)
"""Rows of the bases table: label, metric suffix, issue-16 target (None: no target)."""


def bases_table(cards: list[dict]) -> str:
  """Markdown table of the bases' training-run metrics (1000 test images), mean ± std."""
  names = [c["name"] for c in cards]
  head = "| metric | " + " | ".join(names) + " | mean ± std | target | met by |"
  lines = [head, "|---|" + "---|" * (len(names) + 3)]
  for label, suffix, target in TABLE_ROWS:
    vals = [
      next((v for k, v in c["train_summary"].items() if k.endswith("/" + suffix)), float("nan"))
      for c in cards
    ]
    arr = np.asarray(vals, np.float64)
    spread = f"{100 * arr.mean():.1f} ± {100 * arr.std(ddof=1):.1f}" if len(arr) > 1 else "–"
    met = "–" if target is None else f"{int((arr >= target).sum())} of {len(arr)}"
    goal = "–" if target is None else f"≥ {100 * target:.0f} %"
    lines.append(
      f"| {label} | " + " | ".join(_pct(v) for v in vals) + f" | {spread} | {goal} | {met} |"
    )
  cost = [c.get("cost", {}).get("cpu_s") for c in cards]
  lines.append(
    "| training CPU-s | "
    + " | ".join("–" if x is None else f"{x:.0f}" for x in cost)
    + " | | ≤ 5400 | "
    + f"{sum(x is not None and x <= 5400 for x in cost)} of {len(cost)} |"
  )
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("workdir", nargs="?")
  ap.add_argument("out", nargs="?")
  ap.add_argument("--command", default="", help="the command that trained WORKDIR (for the card)")
  ap.add_argument("--commit", default="", help="commit that trained WORKDIR (default: HEAD)")
  ap.add_argument("--time-log", default="", help="`/usr/bin/time -v` log of the training")
  ap.add_argument("--note", default="", help="one sentence on the training machine's load")
  ap.add_argument("--cards", help="rewrite MODEL_CARD.md of every base under this directory")
  ap.add_argument("--table", help="print the markdown table of every base under this directory")
  args = ap.parse_args(argv)
  if args.table:
    paths = sorted(pathlib.Path(args.table).glob("*/card.json"))
    print(bases_table([json.loads(p.read_text()) for p in paths]), end="")
    return
  if args.cards:
    for card_path in sorted(pathlib.Path(args.cards).glob("*/card.json")):
      card = json.loads(card_path.read_text())
      card_path.with_name("MODEL_CARD.md").write_text(model_card(card))
      print(f"wrote {card_path.with_name('MODEL_CARD.md')}")
    return
  if not (args.workdir and args.out and args.command):
    ap.error("give WORKDIR OUT --command '...' (or --cards DIR)")
  card = export(args.workdir, args.out, args.command, args.commit, args.time_log, args.note)
  print(json.dumps(card["check"], indent=1))


if __name__ == "__main__":
  main(sys.argv[1:])
