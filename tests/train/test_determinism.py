"""Two runs of one config and seed write the same metrics.jsonl and summary.json.

The only values allowed to differ are wall-clock measurements of the machine (throughput and
seconds), named by `_TIMING`; everything the model computes must be bit-identical, in separate
processes with different Python hash seeds (set/dict iteration order must not leak into the run).
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TIMING = re.compile(r"(_per_s|_seconds(_.*)?)$")


def _run(workdir, hash_seed):
  cmd = [
    sys.executable,
    "-m",
    "clipjax.main",
    "--config",
    os.path.join(REPO, "configs/quickstart.py:smoke"),
    "--workdir",
    str(workdir),
  ]
  env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _strip(event):
  out = {}
  for k, v in event.items():
    if _TIMING.search(k):
      continue
    out[k] = "nan" if isinstance(v, float) and math.isnan(v) else v
  return out


def _records(workdir):
  # Tolerates the NaN literal json.dumps writes by default; the comparison is on values.
  events = [_strip(json.loads(x)) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  summary = _strip(json.loads((workdir / "summary.json").read_text()))
  return events, summary


@pytest.mark.slow
def test_same_config_and_seed_give_identical_records(tmp_path):
  _run(tmp_path / "a", hash_seed=1)
  _run(tmp_path / "b", hash_seed=2)
  (events_a, summary_a), (events_b, summary_b) = _records(tmp_path / "a"), _records(tmp_path / "b")
  assert any(e.get("kind") == "eval" for e in events_a), "the smoke run must include an eval"
  assert len(events_a) == len(events_b)
  for ea, eb in zip(events_a, events_b):
    assert ea == eb, {
      k: (ea.get(k), eb.get(k)) for k in set(ea) | set(eb) if ea.get(k) != eb.get(k)
    }
  assert summary_a == summary_b
