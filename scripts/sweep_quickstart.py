"""The quickstart recipe sweep behind docs/results.md: run variants, record them, tabulate.

  python scripts/sweep_quickstart.py run ROOT NAME [--config.key=value ...]
  python scripts/sweep_quickstart.py record ROOT/NAME [--time-log FILE]
  python scripts/sweep_quickstart.py table ROOT/* [--records docs/results/quickstart_sweep.json]

`run` trains `configs/quickstart.py` with the given overrides into ROOT/NAME and writes
ROOT/NAME/record.json: the overrides, steps, CPU seconds of the run (user + system, all
threads: a load-independent cost, since wall time on a shared machine says little), wall
seconds, the machine's load average at start and end, and every evaluation event (so the
table shows accuracy against steps). `record` builds the same record for a workdir trained by
hand, taking CPU seconds from a GNU `/usr/bin/time -v` log. `table` prints the markdown table
of docs/results.md from records (and with --records also writes them to one JSON file, the
page's source); nothing in the table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from clipjax import measure, metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = (
  ("colour", "zeroshot/colour/acc1"),
  ("size", "zeroshot/size/acc1"),
  ("position", "zeroshot/position/acc1"),
  ("shape", "zeroshot/shape/acc1"),
  ("c+s", "zeroshot/colour+shape/acc1"),
  ("c+s held-out", "zeroshot/colour+shape/held_out/acc1"),
  ("i→t R@1", "retrieval/text_retrieval_recall_identical@1"),
  ("t→i R@1", "retrieval/image_retrieval_recall_identical@1"),
)


def _read_json(path: str):
  with open(path) as f:
    return metrics.loads(f.read())


def _write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=1)
    f.write("\n")


def _settings(workdir: str) -> dict:
  cfg = _read_json(os.path.join(workdir, "config.json"))
  keep = {}
  for key in ("total_steps", "optim.lr", "data.batch_size", "data.image_size"):
    node = cfg
    for part in key.split("."):
      node = node[part]
    keep[key] = node
  for key in ("train", "tokenizer"):  # recorded since 2026-12-06 18:00 UTC
    if key in cfg["data"]:
      keep[f"data.{key}"] = cfg["data"][key]
  keep["model.overrides"] = cfg["model"]["overrides"]
  return keep


def _evals(workdir: str) -> list[dict]:
  out = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = f.read().splitlines()
  for line in lines:
    event = metrics.loads(line)
    if event.get("kind") == "eval":
      out.append(
        {
          "step": event["step"],
          **{k: event[f"shapes_test/{m}"] for k, m in METRICS if f"shapes_test/{m}" in event},
        }
      )
  return out


def make_record(workdir: str, cpu_s: float, wall_s: float | None, load: list) -> dict:
  return {
    "name": os.path.basename(os.path.normpath(workdir)),
    "settings": _settings(workdir),
    "cpu_s": round(cpu_s, 1),
    "wall_s": None if wall_s is None else round(wall_s, 1),
    "load_avg_start_end": load,
    "evals": _evals(workdir),
  }


def cmd_run(args, extra: list[str]) -> None:
  workdir = os.path.join(args.root, args.name)
  cmd = [
    sys.executable,
    "-m",
    "clipjax.main",
    "--config",
    os.path.join(REPO, "configs/quickstart.py"),
    "--workdir",
    workdir,
    *extra,
  ]
  load0 = os.getloadavg()[0]
  t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
  subprocess.run(cmd, check=True)
  c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
  rec = make_record(
    workdir, cpu, time.perf_counter() - t0, [round(load0, 1), round(os.getloadavg()[0], 1)]
  )
  _write_json(os.path.join(workdir, "record.json"), rec)
  print(json.dumps(rec))


def cmd_record(args) -> None:
  with open(args.time_log) as f:
    cpu, wall = measure.parse_time_log(f.read())
  rec = make_record(args.workdir, cpu, wall, [])
  _write_json(os.path.join(args.workdir, "record.json"), rec)
  print(json.dumps(rec))


def _fmt(v) -> str:
  return "–" if v is None else f"{100 * v:.1f}"


def cmd_table(args) -> None:
  records = []
  for path in args.records_in:
    path = os.path.join(path, "record.json") if os.path.isdir(path) else path
    loaded = _read_json(path)
    records.extend(loaded if isinstance(loaded, list) else [loaded])
  if args.records:
    _write_json(args.records, records)
  flats = [_flat(r["settings"]) for r in records]
  keys = sorted({k for f in flats for k in f} - {"total_steps"})
  varying = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
  print(
    "| run | settings that differ | CPU s / step | wall (load) | step | "
    + " | ".join(k for k, _ in METRICS)
    + " |"
  )
  print("|---|---|---|---|---|" + "---|" * len(METRICS))
  for r, flat in zip(records, flats):
    steps = r["settings"]["total_steps"]
    settings = ", ".join(f"{k}={flat.get(k, '–')}" for k in varying) or "–"
    load = r.get("load_avg_start_end") or []
    wall = "–" if r.get("wall_s") is None else f"{r['wall_s'] / 60:.1f} min"
    if load:
      wall += f" ({load[0]}–{load[-1]})"
    for i, e in enumerate(r["evals"]):
      head = (
        f"{r['name']} | {settings} | {r['cpu_s'] / steps:.2f} | {wall}" if i == 0 else " | | | "
      )
      print(f"| {head} | {e['step']} | " + " | ".join(_fmt(e.get(k)) for k, _ in METRICS) + " |")
  common = [k for k in keys if k not in varying]
  print("\nCommon to all runs: " + ", ".join(f"{k}={flats[0][k]}" for k in common) + ".")


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  sub = p.add_subparsers(dest="cmd", required=True)
  r = sub.add_parser("run")
  r.add_argument("root")
  r.add_argument("name")
  rec = sub.add_parser("record")
  rec.add_argument("workdir")
  rec.add_argument("--time-log", required=True)
  t = sub.add_parser("table")
  t.add_argument("records_in", nargs="+")
  t.add_argument("--records", default="")
  args, extra = p.parse_known_args()
  if args.cmd == "run":
    cmd_run(args, extra)
  elif extra:
    p.error(f"unknown arguments {extra}")
  elif args.cmd == "record":
    cmd_record(args)
  else:
    cmd_table(args)


if __name__ == "__main__":
  main()
