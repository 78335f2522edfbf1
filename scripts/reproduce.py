"""One reproduction driver for the five methods: run a method's grid, record it, generate its page.

Usage:
  python scripts/reproduce.py METHOD [--quick] [--seeds K] [--bases B] [--root DIR]
                              [--table-only] [--write-docs]

METHOD is one of otclip, ncu, otcclip, cola, hotclip; its grid (runs, dependencies, tables and
paper claims) is declared in `scripts/repro/<METHOD>.py`. Every run is a normal
`python -m clipjax.main --config ... --workdir ROOT/<run>` subprocess, started in dependency
order; a finished run (its `summary.json` or other done file exists and does not say
`"finished": false`) is skipped, and an unfinished workdir is re-run with the same command, which
resumes it from its last checkpoint (clipjax's own resume) — so a killed driver picks up where it
stopped. A run's post-run evaluation (e.g. OT-CLIP's OT inference) is a second subprocess that
writes `WORKDIR/repro_<function>.json`.

Cost: each subprocess's CPU time (user + system, from `resource.getrusage(RUSAGE_CHILDREN)`
deltas) and wall time are appended to `ROOT/timings/<run>.jsonl`, one line per attempt; a run's
record sums its attempts. Ctrl-C or SIGTERM to the driver sends the run in progress SIGTERM (the
trainer saves a checkpoint and exits), waits for it, and still appends that attempt's line.

Records: after each run, a small JSON record (method, run, group, config and overrides, seed,
base, git commit, the metrics its tables need, CPU/wall seconds) goes to `ROOT/records/<run>.json`;
all of them are collected into `ROOT/<METHOD>.records.json`, and the page's generated section is
written to `ROOT/<METHOD>.md`. `--write-docs` instead copies the records to
`docs/results/<METHOD>.records.json` and regenerates the section between the markers of
`docs/results/<METHOD>.md` (refused with `--quick`: toy numbers never replace a page's).
`--table-only` runs nothing: it regenerates the page from the records file (ROOT's, or with
`--write-docs` the committed one).

`--quick` runs the same grid at toy size (`:smoke` configs, one seed, one base, tiny evaluation)
into a separate default ROOT; it tests the pipeline, not the papers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from repro import grid as grid_lib  # noqa: E402

METHODS = ("otclip", "ncu", "otcclip", "cola", "hotclip")
EVAL_PREFIX = "repro_"


def load_method(name: str):
  """The grid module `scripts/repro/<name>.py`."""
  if name not in METHODS:
    raise SystemExit(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
  return importlib.import_module(f"repro.{name}")


def _fill(text: str, root: pathlib.Path, repo: pathlib.Path | str = REPO) -> str:
  """`{root}` -> ROOT, `{repo}` -> the repository (records write "ROOT" and "REPO")."""
  return text.replace("{root}", str(root)).replace("{repo}", str(repo))


def train_command(run: grid_lib.Run, root: pathlib.Path) -> list[str]:
  """The `python -m clipjax.main` command of a run."""
  return [
    sys.executable,
    "-m",
    "clipjax.main",
    f"--config={_fill(run.config, root)}",
    f"--workdir={root / run.name}",
    *(_fill(o, root) for o in run.overrides),
  ]


def is_finished(run: grid_lib.Run, workdir: pathlib.Path) -> bool:
  """Whether the run's done file exists and does not record an unfinished run."""
  path = workdir / run.done_file
  if not path.exists():
    return False
  try:
    content = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise SystemExit(f"{path}: not valid JSON ({e}); inspect or remove the workdir") from e
  return not (isinstance(content, dict) and content.get("finished") is False)


def git_commit() -> str:
  """`git describe --always --dirty` of the repository (what the run's code was)."""
  try:
    out = subprocess.run(
      ["git", "describe", "--always", "--dirty", "--abbrev=10"],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=True,
    )
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return out.stdout.strip()


GRACE_S = 300
"""How long an interrupted run gets to save its checkpoint and exit before it is killed."""


def terminate_on_sigterm() -> None:
  """SIGTERM -> SystemExit in the driver, so `timed_call` stops the run in progress cleanly."""

  def handler(signum, frame):
    del frame
    raise SystemExit(128 + signum)

  signal.signal(signal.SIGTERM, handler)


def _stop(proc: subprocess.Popen) -> None:
  """Asks an interrupted run to save and exit (SIGTERM: the trainer checkpoints), else kills it."""
  try:
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=GRACE_S)
  except BaseException:  # the grace period ran out, or a second interrupt
    proc.kill()
    proc.wait()


def timed_call(cmd: list[str], log_path: pathlib.Path, timings: pathlib.Path, step: str) -> dict:
  """Runs `cmd` (output to log_path); appends its CPU/wall seconds and commit to timings.

  An interrupted driver (Ctrl-C, SIGTERM) stops the run through `_stop` and still appends the
  attempt's seconds, marked `"interrupted": true`, so a resumed run's record counts them.
  """
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), str(REPO / "scripts"), env.get("PYTHONPATH", "")) if p
  )
  commit = git_commit()  # the code this attempt runs (the tree may change while a grid runs)
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.time()
  interrupted = False
  with open(log_path, "a") as log:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
      proc.wait()
    except BaseException:
      interrupted = True
      print(
        f"interrupted: the run saves a checkpoint and exits (≤ {GRACE_S} s); the same command "
        "resumes it",
        file=sys.stderr,
        flush=True,
      )
      _stop(proc)
      raise
    finally:
      after = resource.getrusage(resource.RUSAGE_CHILDREN)
      entry = {
        "step": step,
        "rc": proc.returncode,
        "cpu_s": round(
          (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
          2,
        ),
        "wall_s": round(time.time() - start, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "commit": commit,
        **({"interrupted": True} if interrupted else {}),
      }
      with open(timings, "a") as f:
        f.write(json.dumps(entry) + "\n")
  return entry


def _attempts(timings: pathlib.Path, step: str) -> list[dict]:
  if not timings.exists():
    return []
  return [e for e in map(json.loads, timings.read_text().splitlines()) if e["step"] == step]


def make_record(method: str, module, run: grid_lib.Run, root: pathlib.Path, quick: bool) -> dict:
  """The small JSON record of a finished run."""
  timings = root / "timings" / f"{run.name}.jsonl"
  train = _attempts(timings, "train")
  ev = _attempts(timings, "evaluate")
  attempts = train + ev
  return {
    "method": method,
    "run": run.name,
    "group": run.group,
    "config": _fill(run.config, pathlib.Path("ROOT"), "REPO"),
    "overrides": [_fill(o, pathlib.Path("ROOT"), "REPO") for o in run.overrides],
    "seed": run.seed,
    "base": run.base,
    "quick": quick,
    # The code of the run's last training attempt (its evaluation's if it has none).
    "commit": (train or ev)[-1].get("commit", "unknown") if attempts else git_commit(),
    "commits_all": sorted({e.get("commit", "unknown") for e in attempts}),
    "metrics": module.metrics(run, str(root / run.name)),
    "cpu_s": round(sum(e["cpu_s"] for e in train), 1),
    "wall_s": round(sum(e["wall_s"] for e in train), 1),
    "attempts": len(train),
    "eval_cpu_s": round(sum(e["cpu_s"] for e in ev), 1) if run.evaluate else None,
    "eval_wall_s": round(sum(e["wall_s"] for e in ev), 1) if run.evaluate else None,
    "load_avg_1m_end": attempts[-1]["load_avg_1m"] if attempts else None,
  }


def _write_json(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
  os.replace(tmp, path)


def execute(method: str, module, runs: list[grid_lib.Run], root: pathlib.Path, quick: bool):
  """Runs, evaluates and records every run of the grid that has no record yet."""
  for sub in ("logs", "timings", "records"):
    (root / sub).mkdir(parents=True, exist_ok=True)
  total = len(runs)
  for i, run in enumerate(grid_lib.toposort(runs), 1):
    tag = f"[{i}/{total}] {method} {run.name}"
    record_path = root / "records" / f"{run.name}.json"
    if record_path.exists():
      print(f"{tag}: recorded, skipped", flush=True)
      continue
    workdir = root / run.name
    log = root / "logs" / f"{run.name}.log"
    timings = root / "timings" / f"{run.name}.jsonl"
    if not is_finished(run, workdir):
      state = "resuming" if workdir.exists() else "running"
      print(f"{tag}: {state} ({_fill(run.config, root)}) ...", flush=True)
      e = timed_call(train_command(run, root), log, timings, "train")
      if e["rc"] != 0 or not is_finished(run, workdir):
        raise SystemExit(f"{tag}: exit status {e['rc']}, not finished; see {log}")
      print(f"{tag}: done, {e['cpu_s']:.0f} CPU s, {e['wall_s']:.0f} s wall", flush=True)
    if run.evaluate and not (workdir / f"{EVAL_PREFIX}{run.evaluate}.json").exists():
      print(f"{tag}: evaluating ({run.evaluate}) ...", flush=True)
      cmd = [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        "_evaluate",
        method,
        run.evaluate,
        str(workdir),
        json.dumps(run.eval_args),
      ]
      e = timed_call(cmd, log, timings, "evaluate")
      if e["rc"] != 0:
        raise SystemExit(f"{tag}: evaluation exit status {e['rc']}; see {log}")
      print(f"{tag}: evaluated, {e['cpu_s']:.0f} CPU s, {e['wall_s']:.0f} s wall", flush=True)
    _write_json(record_path, make_record(method, module, run, root, quick))


def collect(root: pathlib.Path, method: str) -> list[dict]:
  """Every record under ROOT/records (sorted by run name)."""
  recs = []
  for path in sorted((root / "records").glob("*.json")):
    rec = json.loads(path.read_text())
    if rec.get("method") != method:
      raise SystemExit(f"{path}: a record of method {rec.get('method')!r}, not {method!r}")
    recs.append(rec)
  return recs


def read_records(path: pathlib.Path, method: str) -> list[dict]:
  """The records of a `<method>.records.json` file."""
  if not path.exists():
    raise SystemExit(f"{path}: no records file (run the grid first, without --table-only)")
  content = json.loads(path.read_text())
  if content.get("method") != method or not isinstance(content.get("records"), list):
    raise SystemExit(f"{path}: not a records file of method {method!r}")
  return content["records"]


def write_page(module, method: str, records: list[dict], page: pathlib.Path, docs: bool) -> None:
  """Writes the generated section: spliced into the docs page, or a standalone ROOT page."""
  command = f"python scripts/reproduce.py {method} --table-only" + (" --write-docs" if docs else "")
  generated = grid_lib.render(method, records, module.TABLES, module.CLAIMS, command)
  if docs:
    text = grid_lib.splice(page.read_text(), generated, str(page))
  else:
    text = f"# {method}: generated tables\n\n{generated}\n"
  page.write_text(text)
  print(f"wrote {page}", flush=True)


def _evaluate_main(argv: list[str]) -> None:
  """`_evaluate METHOD FUNCTION WORKDIR JSON_KWARGS`: the post-run evaluation subprocess."""
  method, fn_name, workdir, kwargs = argv
  fn = getattr(load_method(method), fn_name)
  result = fn(workdir, **json.loads(kwargs))
  _write_json(pathlib.Path(workdir) / f"{EVAL_PREFIX}{fn_name}.json", result)


def main(argv: list[str]) -> None:
  if argv[:1] == ["_evaluate"]:
    _evaluate_main(argv[1:])
    return
  terminate_on_sigterm()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("method", choices=METHODS)
  p.add_argument("--quick", action="store_true", help="toy-size grid (smoke configs, 1 seed)")
  p.add_argument("--seeds", type=int, help="seeds per condition (default: the method's SEEDS)")
  p.add_argument("--bases", type=int, help="base checkpoints (default: the method's BASES)")
  p.add_argument("--root", help="where the workdirs go (default /tmp/clipjax_repro/METHOD[_quick])")
  p.add_argument("--table-only", action="store_true", help="regenerate the page, run nothing")
  p.add_argument(
    "--write-docs", action="store_true", help="write docs/results/METHOD.{md,records.json}"
  )
  a = p.parse_args(argv)
  if a.write_docs and a.quick:
    raise SystemExit("--write-docs with --quick: toy-size records never replace a results page")
  module = load_method(a.method)
  root = pathlib.Path(a.root or f"/tmp/clipjax_repro/{a.method}{'_quick' if a.quick else ''}")
  root = root.resolve()
  docs_page = REPO / "docs" / "results" / f"{a.method}.md"
  docs_records = REPO / "docs" / "results" / f"{a.method}.records.json"
  root_records = root / f"{a.method}.records.json"
  if a.table_only:
    records = read_records(docs_records if a.write_docs else root_records, a.method)
  else:
    seeds = a.seeds if a.seeds is not None else (1 if a.quick else module.SEEDS)
    bases = a.bases if a.bases is not None else (min(1, module.BASES) if a.quick else module.BASES)
    if seeds < 1 or bases < 0:
      raise SystemExit(f"--seeds must be ≥ 1 and --bases ≥ 0, got {seeds}, {bases}")
    if module.BASES == 0 and a.bases:
      raise SystemExit(f"{a.method} trains from scratch: --bases does not apply")
    runs = module.grid(a.quick, seeds, bases)
    execute(a.method, module, runs, root, a.quick)
    records = collect(root, a.method)
    _write_json(root_records, {"method": a.method, "records": records})
    if a.write_docs:
      _write_json(docs_records, {"method": a.method, "records": records})
  if a.write_docs:
    write_page(module, a.method, records, docs_page, docs=True)
  else:
    root.mkdir(parents=True, exist_ok=True)
    write_page(module, a.method, records, root / f"{a.method}.md", docs=False)


if __name__ == "__main__":
  main(sys.argv[1:])
