"""scripts/reproduce.py: committed pages match their records, --table-only is deterministic, and
`--quick` runs one method's grid end to end (and resumes without re-running anything)."""

import importlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import types

import pytest
from repro import grid

from clipjax import config_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "reproduce.py"
METHODS = ("otclip", "ncu", "otcclip", "cola", "hotclip")


def _driver(*args, timeout=600):
  proc = subprocess.run(
    [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.parametrize("method", METHODS)
def test_committed_page_is_generated_from_its_records(method):
  """`reproduce.py METHOD --table-only --write-docs` would not change the committed page."""
  module = importlib.import_module(f"repro.{method}")
  records = json.loads((REPO / "docs" / "results" / f"{method}.records.json").read_text())
  assert records["method"] == method
  page = (REPO / "docs" / "results" / f"{method}.md").read_text()
  command = f"python scripts/reproduce.py {method} --table-only --write-docs"
  generated = grid.render(method, records["records"], module.TABLES, module.CLAIMS, command)
  assert grid.splice(page, generated, method) == page, (
    f"docs/results/{method}.md is out of date with its records: run `{command}`"
  )


def _config(path: str, arg: str):
  return config_lib.load(f"{REPO / path}:{arg}")


@pytest.mark.parametrize("method", METHODS)
def test_grids_are_well_formed(method, tmp_path):
  """Every kind of run's config argument and overrides parse against the current configs."""
  module = importlib.import_module(f"repro.{method}")
  seen = set()  # (config file, argument keys, override keys): one parse each (CPU time)
  for quick in (True, False):
    runs = grid.toposort(module.grid(quick, 2, max(1, module.BASES)))
    for r in runs:
      # Configs that read their checkpoint at parse time get a real one (nothing has run yet).
      config = re.sub(
        r"\b(init|ckpt)=\{root\}/[\w./-]+", rf"\1={REPO}/assets/bases/base_s0", r.config
      )
      path, _, arg = (
        config.replace("{root}", str(tmp_path)).replace("{repo}", str(REPO)).partition(":")
      )
      keys = tuple(o.split("=")[0] for o in (*arg.split(","), *r.overrides))
      shape = (path, keys)
      if shape in seen:
        continue
      seen.add(shape)
      config = _config(path, arg)  # unknown or malformed arguments raise here
      for o in r.overrides:
        o = o.replace("{repo}", str(REPO))
        key = o.removeprefix("--config.").split("=", 1)[0]
        node = config
        for part in key.split("."):
          assert part in node, f"{r.name}: override {o!r} names no key of {path}"
          node = node[part]
      if r.evaluate:
        assert callable(getattr(module, r.evaluate)), r
    # Seeds pair runs: within a group, (seed, base) identifies a run.
    keys = [(r.group, r.seed, r.base) for r in runs]
    assert len(keys) == len(set(keys)), method


def _synthetic_records():
  recs = []
  for s in range(3):
    for loss, shift in (("infonce", 0.0), ("fgw", 0.02)):
      m = {"zeroshot_mean": 0.5 + shift + 0.01 * s, "logit_scale": 16.0 + s}
      for ls in ("colour+shape", "position"):
        m[f"{ls}/argmax"] = 0.4 + shift
        m[f"{ls}/fgw"] = 0.42 + shift + 0.001 * s
      recs.append(
        {
          "method": "otclip",
          "run": f"{loss}_s{s}",
          "group": loss,
          "seed": s,
          "base": None,
          "quick": False,
          "commit": "0123456789",
          "metrics": m,
          "cpu_s": 80.0 + s,
          "wall_s": 300.0,
          "eval_cpu_s": 20.0,
        }
      )
  return recs


def test_table_only_regenerates_deterministically(tmp_path):
  (tmp_path / "otclip.records.json").write_text(
    json.dumps({"method": "otclip", "records": _synthetic_records()})
  )
  _driver("otclip", "--table-only", "--root", str(tmp_path))
  first = (tmp_path / "otclip.md").read_text()
  _driver("otclip", "--table-only", "--root", str(tmp_path))
  assert (tmp_path / "otclip.md").read_text() == first
  assert not (tmp_path / "records").exists()  # nothing was run
  assert "| fgw | 3 | 17.0 ± 1.0 |" in first  # logit_scale column (scale 1)
  # FGW − InfoNCE on zeroshot_mean: +2 pt for every seed; FGW inference +2.1 pt on average.
  assert "| 3 | +2.00 | [+2.00, +2.00] | **reproduced** |" in first
  assert "| 6 | +2.10 |" in first


def test_write_docs_refuses_quick(tmp_path):
  proc = subprocess.run(
    [sys.executable, str(SCRIPT), "cola", "--quick", "--write-docs", "--root", str(tmp_path)],
    capture_output=True,
    text=True,
    cwd=REPO,
  )
  assert proc.returncode != 0 and "toy-size" in proc.stderr


@pytest.mark.slow
def test_quick_cola_end_to_end_and_resume(tmp_path):
  root = tmp_path / "cola"
  out = _driver("cola", "--quick", "--root", str(root))
  assert "[1/2] cola base_b0: running" in out and "[2/2] cola cola_b0_s0: running" in out
  records = json.loads((root / "cola.records.json").read_text())["records"]
  assert [r["run"] for r in records] == ["base_b0", "cola_b0_s0"]
  for r in records:
    assert r["quick"] and r["attempts"] == 1 and r["cpu_s"] > 0 and r["wall_s"] > 0
    assert "{root}" not in r["config"] and str(tmp_path) not in json.dumps(r)
  cola = records[1]
  assert cola["base"] == "base_b0" and cola["config"].endswith("ckpt=ROOT/base_b0")
  assert 0.0 <= cola["metrics"]["clean/cola"] <= 1.0 and "clean/base" in cola["metrics"]
  page = (root / "cola.md").read_text()
  assert "Toy-size (`--quick`) records" in page and "| cola_eval | 1 |" in page
  timings = (root / "timings" / "cola_b0_s0.jsonl").read_text()
  # A second driver finds every run recorded and starts nothing.
  out = _driver("cola", "--quick", "--root", str(root))
  assert out.count("recorded, skipped") == 2
  assert (root / "timings" / "cola_b0_s0.jsonl").read_text() == timings
  # A lost record of a finished workdir is re-extracted without re-running the run.
  (root / "records" / "cola_b0_s0.json").unlink()
  out = _driver("cola", "--quick", "--root", str(root))
  assert "cola_b0_s0: running" not in out and "cola_b0_s0: resuming" not in out
  assert (root / "timings" / "cola_b0_s0.jsonl").read_text() == timings
  assert (
    json.loads((root / "cola.records.json").read_text())["records"][1]["metrics"]
    == (cola["metrics"])
  )


# A stand-in for `python -m clipjax.main`: fails while WORKDIR.fail exists, else writes a
# finished summary.json (or an unfinished one while WORKDIR.stop exists).
_FAKE_RUN = """
import json, pathlib, sys
wd = pathlib.Path(sys.argv[1])
if pathlib.Path(str(wd) + ".fail").exists():
  sys.exit(3)
wd.mkdir(exist_ok=True)
(wd / "starts").write_text(str(int((wd / "starts").read_text() or 0) + 1)
  if (wd / "starts").exists() else "1")
done = not pathlib.Path(str(wd) + ".stop").exists()
(wd / "summary.json").write_text(json.dumps({"finished": done, "acc": 0.5}))
"""


def test_execute_order_failure_and_resume(tmp_path, monkeypatch):
  import reproduce as driver

  monkeypatch.setattr(
    driver,
    "train_command",
    lambda run, root: [sys.executable, "-c", _FAKE_RUN, str(root / run.name)],
  )
  module = types.SimpleNamespace(
    metrics=lambda run, wd: {
      "acc": json.loads((pathlib.Path(wd) / "summary.json").read_text())["acc"]
    }
  )
  runs = [
    grid.Run("fine", "configs/x.py", "fine", deps=("base",), seed=0, base="base"),
    grid.Run("base", "configs/x.py", "base", seed=0, base="base"),
  ]
  root = tmp_path / "root"
  (root / "fine.fail").parent.mkdir(parents=True)
  (root / "fine.fail").write_text("")
  with pytest.raises(SystemExit, match=r"fine: exit status 3.*logs/fine.log"):
    driver.execute("toy", module, runs, root, quick=True)
  assert (root / "records" / "base.json").exists()  # the dependency ran first and was recorded
  assert not (root / "records" / "fine.json").exists()
  # An unfinished run (summary says finished: false) is an error too, and is re-run next time.
  (root / "fine.fail").unlink()
  (root / "fine.stop").write_text("")
  with pytest.raises(SystemExit, match="not finished"):
    driver.execute("toy", module, runs, root, quick=True)
  (root / "fine.stop").unlink()
  driver.execute("toy", module, runs, root, quick=True)
  fine = json.loads((root / "records" / "fine.json").read_text())
  base = json.loads((root / "records" / "base.json").read_text())
  assert (root / "base" / "starts").read_text() == "1"  # never re-run once recorded
  assert (root / "fine" / "starts").read_text() == "2"  # the unfinished start, then the resume
  assert fine["attempts"] == 3 and base["attempts"] == 1  # the failed start counts
  assert fine["metrics"] == {"acc": 0.5} and fine["base"] == "base" and fine["quick"]
  assert fine["commit"] == driver.git_commit() and fine["commits_all"] == [fine["commit"]]
  lines = (root / "timings" / "fine.jsonl").read_text().splitlines()
  assert [json.loads(x)["rc"] for x in lines] == [3, 0, 0]
  assert fine["cpu_s"] == pytest.approx(sum(json.loads(x)["cpu_s"] for x in lines), abs=0.2)
  assert fine["cpu_s"] > 0 and fine["wall_s"] >= fine["cpu_s"] / 4


# A stand-in for a trainer: on SIGTERM it "saves" (writes RUN.saved) and exits; until then it
# burns CPU.
_SAVING_RUN = """
import pathlib, signal, sys
run = pathlib.Path(sys.argv[1])
def save(signum, frame):
  run.with_suffix(".saved").write_text(signal.Signals(signum).name)
  sys.exit(0)
signal.signal(signal.SIGTERM, save)
run.with_suffix(".started").write_text("")
x = 0
while True:
  x += 1
"""


def test_interrupted_driver_lets_the_run_save_and_keeps_its_seconds(tmp_path):
  """SIGTERM to the driver: the run gets SIGTERM (and saves), and its attempt is still timed."""
  run, timings = tmp_path / "run", tmp_path / "run.jsonl"
  cmd = [sys.executable, "-c", _SAVING_RUN, str(run)]
  code = (
    "import reproduce; reproduce.terminate_on_sigterm(); "
    f"reproduce.timed_call({cmd!r}, {str(tmp_path / 'log')!r}, {str(timings)!r}, 'train')"
  )
  env = {**os.environ, "PYTHONPATH": str(REPO / "scripts")}
  driver = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
  deadline = time.time() + 120
  while not run.with_suffix(".started").exists():
    assert time.time() < deadline and driver.poll() is None, "the run never started"
    time.sleep(0.1)
  time.sleep(1.0)
  driver.send_signal(signal.SIGTERM)
  assert driver.wait(timeout=120) == 128 + signal.SIGTERM
  assert run.with_suffix(".saved").read_text() == "SIGTERM"
  (entry,) = [json.loads(line) for line in timings.read_text().splitlines()]
  assert entry["interrupted"] is True and entry["step"] == "train" and entry["rc"] == 0
  assert entry["cpu_s"] > 0.05 and entry["wall_s"] >= 1.0  # the run's busy second is counted
