"""scripts/bench_ot.py --quick runs, writes finite rows, and leaves docs/ alone by default."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_ot.py"


@pytest.mark.slow
def test_bench_ot_quick_writes_rows_to_a_scratch_dir_by_default(tmp_path):
  page = ROOT / "docs" / "benchmarks" / "ot.md"
  before = page.read_bytes() if page.exists() else None
  # No --out: the default is a scratch directory under TMPDIR, never docs/.
  proc = subprocess.run(
    [sys.executable, str(SCRIPT), "--quick"],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "TMPDIR": str(tmp_path)},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (page.read_bytes() if page.exists() else None) == before
  out = tmp_path / "clipjax_bench_ot"
  data = json.loads((out / "ot.json").read_text())
  rows = data["rows"]
  assert {r["section"] for r in rows} >= {"roofline", "single", "batched", "fgw"}
  for r in rows:
    assert math.isfinite(r["time_s"]) and r["time_s"] > 0, r
    err = r.get("marginal_l1", r.get("marginal_l1_max"))
    if err is not None:
      assert math.isfinite(err) and err < 1e-2, r
  single = [r for r in rows if r["section"] == "single"]
  assert all(r["reached_tol"] for r in single if "reached_tol" in r)
  # Equal work: every solver stopped at the same tolerance reports its iterations.
  assert all(r["iters"] > 0 for r in single)
  assert "| config |" in (out / "ot.md").read_text()
