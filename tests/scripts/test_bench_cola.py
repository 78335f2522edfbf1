"""scripts/bench_cola.py --small runs and reports well-formed, self-consistent timings."""

import json
import math

import bench_cola


def test_small_run_reports_the_overhead_of_its_own_timings(tmp_path, capsys):
  out_path = tmp_path / "cola.json"
  out = bench_cola.main(["--small", "--ablations", "--out", str(out_path)])
  # The last stdout line is the result as JSON, and --out holds the same.
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last) == json.loads(out_path.read_text()) == json.loads(json.dumps(out))
  assert (out["variant"], out["batch"], out["views"]) == ("tiny", 2, 8)
  assert out["encoder_images"] == 16
  assert (out["classes"], out["texts_per_class"]) == (10, 1 + 5)
  # Timings only for well-formedness: no bound on their values (a loaded machine may run this).
  rows = {"cola": out, **out["ablations"]}
  assert set(rows) == {"cola", "cola_uniform", "cola_no_proj", "views_mean"}
  for name, row in rows.items():
    assert row["encoder_s"] > 0 and row["cola_s"] > 0, name
    assert math.isclose(row["overhead"], row["cola_s"] / row["encoder_s"] - 1.0), name
    assert len(row["overhead_per_round"]) == out["rounds"] == 1, name
  assert out["views_s"] >= 0 and out["post_encoder_s"] >= 0
  assert out["machine"]["nproc"] >= 1 and len(out["machine"]["load_avg_after"]) == 3
