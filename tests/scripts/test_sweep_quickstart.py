"""scripts/sweep_quickstart.py: a record is built from a workdir and tabulated without edits."""

import json
import pathlib
import sys

import sweep_quickstart as sweep

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_record_and_table_from_a_workdir(tmp_path, capsys, monkeypatch):
  run = tmp_path / "t2"
  run.mkdir()
  config = {
    "total_steps": 100,
    "optim": {"lr": 0.001},
    "data": {"batch_size": 128, "image_size": 48},
    "model": {"overrides": {"text": {"layers": 2}}},
  }
  (run / "config.json").write_text(json.dumps(config))
  events = [
    {"kind": "train", "step": 50, "loss": 1.0},
    {"kind": "eval", "step": 100, "shapes_test/zeroshot/shape/acc1": 0.625},
  ]
  (run / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
  (tmp_path / "time.log").write_text(
    "\tUser time (seconds): 70.5\n\tSystem time (seconds): 9.5\n"
    "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03\n"
  )
  monkeypatch.setattr(
    sys, "argv", ["x", "record", str(run), "--time-log", str(tmp_path / "time.log")]
  )
  sweep.main()
  rec = json.loads((run / "record.json").read_text())
  assert rec["cpu_s"] == 80.0 and rec["wall_s"] == 3723.0
  assert rec["evals"] == [{"step": 100, "shape": 0.625}]
  capsys.readouterr()
  other = dict(rec, name="t4", wall_s=None, load_avg_start_end=[])
  other["settings"] = {**rec["settings"], "model.overrides": {"text": {"layers": 4}}}
  (tmp_path / "t4.json").write_text(json.dumps(other))
  out_json = tmp_path / "records.json"
  argv = ["x", "table", str(run), str(tmp_path / "t4.json"), "--records", str(out_json)]
  monkeypatch.setattr(sys, "argv", argv)
  sweep.main()
  table = capsys.readouterr().out.splitlines()
  # Only what differs between runs is in the rows; the rest is listed once under the table.
  assert table[2].startswith("| t2 | model.overrides.text.layers=2 | 0.80 | 62.0 min | 100 |")
  assert table[3].startswith("| t4 | model.overrides.text.layers=4 | 0.80 | – | 100 |")
  assert "| 62.5 |" in table[2]
  assert table[-1] == "Common to all runs: data.batch_size=128, data.image_size=48, optim.lr=0.001."
  assert json.loads(out_json.read_text()) == [rec, other]
