"""NCU small-scale reproduction driver (docs/results/ncu.md): trains the rows, then tabulates them.

Every run is one `python -m clipjax.main --config configs/ncu.py:<args>` call (the public CLI).
Runs are sequential; a run whose workdir already holds a finished summary.json is skipped and an
interrupted one resumes from its last checkpoint (the trainer's own resume), so the script can be
re-started. Per-run wall time and the child's CPU time go to ROOT/timings.jsonl.

Usage:
  python scripts/ncu_repro.py run --root /tmp/ncu_runs --init /tmp/ncu_pre \
      clip:2 ga:2 ncu:1,2 v3_50:0,1
  python scripts/ncu_repro.py table --root /tmp/ncu_runs --init /tmp/ncu_pre

`run` first trains the reference (`variant=pretrain`) into --init when it holds no finished
summary.json. Row names (ROWS) map to config arguments; every row shares the schedule below
(SCHEDULE: 20 stage-1 + 80 stage-2 steps for NCU, 100 steps for the baselines).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

# Schedule shared by every row of the tables (never compare rows trained for different steps).
SCHEDULE = "hn_steps=20,ul_steps=80"
# row name -> config arguments (besides seed, init and SCHEDULE).
ROWS = {
  "clip": "variant=clip",
  "clip_clean": "variant=clip,noise=0.0",
  "ga": "variant=ga",
  "filter": "variant=ga,ascent_weight=0.0",
  "ncu": "variant=ncu",
  "ncu50": "variant=ncu,prompt_scale=50.0",
  "v3": "variant=v3",
  "v4": "variant=v4",
  "v3_50": "variant=v3,prompt_scale=50.0",
  "v4_50": "variant=v4,prompt_scale=50.0",
}
ROW_TITLES = {
  "reference": "reference (pre-trained, 300 steps)",
  "clip": "plain CLIP fine-tuning (`clip`)",
  "clip_clean": "plain CLIP fine-tuning on clean data (`clip`, `noise=0.0`; oracle)",
  "ga": "gradient ascent (`ga`)",
  "filter": "drop the forget set (`ga`, `ascent_weight=0`)",
  "ncu": "NCU (`ncu`, paper defaults)",
  "ncu50": "NCU, `prompt_scale=50`",
  "v3": "V3: false negatives only (`v3`)",
  "v4": "V4: false positives only (`v4`)",
  "v3_50": "V3: false negatives only (`v3`), `prompt_scale=50`",
  "v4_50": "V4: false positives only (`v4`), `prompt_scale=50`",
}
_PREFIX = "clean_test/"
_LABEL_SETS = ("colour", "size", "position", "shape", "colour+shape")
_RETRIEVAL = {
  "text R@1": "retrieval/text_retrieval_recall_identical@1",
  "text R@5": "retrieval/text_retrieval_recall_identical@5",
  "image R@1": "retrieval/image_retrieval_recall_identical@1",
  "image R@5": "retrieval/image_retrieval_recall_identical@5",
}


def _finished(workdir: str) -> bool:
  """Whether the run reached its last step and evaluated there.

  A run stopped by SIGTERM right after its final step and evaluation saves summary.json with
  `finished: false`; it counts as finished too (the step and the clean-test metrics are there).
  """
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "config.json")) as f:
    total_steps = json.load(f)["total_steps"]
  evaluated = f"{_PREFIX}zeroshot/colour/acc1" in summary
  return bool(summary.get("finished")) or (summary.get("step", 0) >= total_steps and evaluated)


def _train(config_arg: str, workdir: str, log_path: str, timings_path: str) -> None:
  """Runs one training through the CLI, appending its wall and CPU seconds to timings_path."""
  cmd = [
    sys.executable,
    "-m",
    "clipjax.main",
    f"--config=configs/ncu.py:{config_arg}",
    f"--workdir={workdir}",
  ]
  print(" ".join(cmd), flush=True)
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.time()
  with open(log_path, "a") as log:
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  record = {
    "workdir": workdir,
    "config": config_arg,
    "rc": rc,
    "wall_s": round(time.time() - start, 1),
    "cpu_s": round(cpu, 1),
    "load_avg": os.getloadavg(),
    "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  with open(timings_path, "a") as f:
    f.write(json.dumps(record) + "\n")
  print(json.dumps(record), flush=True)
  if rc != 0:
    raise SystemExit(f"{workdir}: training exited with status {rc}; see {log_path}")


def _parse_jobs(specs: list[str]) -> list[tuple[str, int]]:
  jobs = []
  for spec in specs:
    row, _, seeds = spec.partition(":")
    if row not in ROWS:
      raise SystemExit(f"Unknown row {row!r} in {spec!r}; rows: {sorted(ROWS)}")
    if not seeds:
      raise SystemExit(f"{spec!r}: give the seeds as ROW:S1,S2,...")
    jobs += [(row, int(s)) for s in seeds.split(",")]
  return jobs


def run(root: str, init: str, specs: list[str]) -> None:
  """Trains the reference (if missing) and then each ROW:SEEDS job in order."""
  jobs = _parse_jobs(specs)
  os.makedirs(root, exist_ok=True)
  timings = os.path.join(root, "timings.jsonl")
  if not _finished(init):
    _train("variant=pretrain", init, f"{init}.log", timings)
  for row, seed in jobs:
    workdir = os.path.join(root, f"{row}_s{seed}")
    if _finished(workdir):
      print(f"{workdir}: finished, skipped", flush=True)
      continue
    arg = f"{ROWS[row]},seed={seed},init={init},{SCHEDULE}"
    _train(arg, workdir, f"{workdir}.log", timings)


def run_metrics(workdir: str) -> dict[str, float]:
  """Clean-test metrics (summary.json) and forget-set precision/recall (metrics.jsonl).

  Forget-set numbers average the logged training steps of stage "unlearn" (NCU and its ablations)
  or of the whole run (gradient ascent); absent for runs that select no forget set.
  """
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  out = {name: summary[f"{_PREFIX}zeroshot/{name}/acc1"] for name in _LABEL_SETS}
  out["ZS mean"] = float(np.mean([out[name] for name in _LABEL_SETS]))
  out.update({name: summary[_PREFIX + key] for name, key in _RETRIEVAL.items()})
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  steps = [
    e
    for e in logged
    if e.get("kind") == "train" and "forget/precision" in e and e.get("stage") != "hn"
  ]
  if steps:
    out["forget precision"] = float(np.mean([e["forget/precision"] for e in steps]))
    out["forget recall"] = float(np.mean([e["forget/recall"] for e in steps]))
  return out


COLUMNS = (
  ["ZS mean", *_LABEL_SETS]
  + list(_RETRIEVAL)
  + [
    "forget precision",
    "forget recall",
  ]
)


def table(root: str, init: str, rows: list[str]) -> str:
  """Markdown table: mean ± sample std (ddof 1) over the finished seeds of each row, in %."""
  lines = [
    "| variant | n | " + " | ".join(COLUMNS) + " |",
    "|---|---|" + "---|" * len(COLUMNS),
  ]
  groups = [("reference", [init])] + [
    (
      row,
      sorted(
        os.path.join(root, d)
        for d in os.listdir(root)
        if d.rsplit("_s", 1)[0] == row and _finished(os.path.join(root, d))
      ),
    )
    for row in rows
  ]
  for row, workdirs in groups:
    if not workdirs:
      continue
    per_run = [run_metrics(w) for w in workdirs]
    cells = []
    for col in COLUMNS:
      xs = np.array([100 * m[col] for m in per_run if col in m])
      if xs.size == 0:
        cells.append("–")
      elif xs.size == 1:
        cells.append(f"{xs[0]:.1f}")
      else:
        cells.append(f"{xs.mean():.1f} ± {xs.std(ddof=1):.1f}")
    lines.append(f"| {ROW_TITLES[row]} | {len(workdirs)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("command", choices=["run", "table"])
  parser.add_argument("jobs", nargs="*", help="run: ROW:SEEDS (e.g. ncu:0,1,2); table: rows")
  parser.add_argument("--root", default="/tmp/ncu_runs", help="directory of the run workdirs")
  parser.add_argument("--init", default="/tmp/ncu_pre", help="reference model workdir")
  args = parser.parse_args()
  if args.command == "run":
    run(args.root, args.init, args.jobs)
  else:
    print(table(args.root, args.init, args.jobs or list(ROWS)))


if __name__ == "__main__":
  main()
