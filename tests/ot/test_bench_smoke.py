"""scripts/bench_ot.py --quick runs and writes finite timings and marginal errors."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "bench_ot.py"


@pytest.mark.slow
def test_bench_ot_quick_writes_rows(tmp_path):
  proc = subprocess.run(
    [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = json.loads((tmp_path / "ot.json").read_text())
  rows = data["rows"]
  assert {r["section"] for r in rows} >= {"single", "batched", "fgw"}
  for r in rows:
    assert math.isfinite(r["time_s"]) and r["time_s"] > 0, r
    err = r.get("marginal_l1", r.get("marginal_l1_max"))
    if err is not None:
      assert math.isfinite(err) and err < 1e-2, r
  assert all(r["reached_tol"] for r in rows if r["section"] == "single")
  assert "| config |" in (tmp_path / "ot.md").read_text()
