import io
import json

import numpy as np
import pytest

from clipjax import metrics


def test_writer_appends_json_lines_with_step(tmp_path):
  w = metrics.MetricWriter(str(tmp_path))
  w.write(3, {"loss": np.float32(1.5), "acc": np.array(0.25)}, kind="train")
  w.write(4, {"loss": 1.0})
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"step": 3, "kind": "train", "loss": 1.5, "acc": 0.25}, {"step": 4, "loss": 1.0}]


def test_writer_disabled_writes_nothing(tmp_path):
  metrics.MetricWriter(str(tmp_path / "x"), enabled=False).write(1, {"a": 1})
  assert not (tmp_path / "x").exists()


def test_tensorboard_writer(tmp_path):
  w = metrics.MetricWriter(str(tmp_path), tensorboard=True)
  w.write(1, {"loss": 2.0}, kind="train")
  w.close()
  assert list((tmp_path / "tb").iterdir())


def test_check_finite():
  metrics.check_finite({"loss": 1.0}, 5)
  with pytest.raises(metrics.NonFiniteError, match="step 7"):
    metrics.check_finite({"loss": np.float32("nan")}, 7)
  with pytest.raises(metrics.NonFiniteError, match=r"parameters, optimizer state.*steps 4\.\.9"):
    metrics.check_finite({"loss": 1.0}, 9, state_finite=False, since=3)


def test_writer_is_strict_json(tmp_path):
  w = metrics.MetricWriter(str(tmp_path))
  w.write(1, {"a": np.float32("nan"), "b": [np.inf, -np.inf], "c": 2.5})
  text = (tmp_path / "metrics.jsonl").read_text()
  event = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON literal {c}"))
  assert event == {"step": 1, "a": "NaN", "b": ["Infinity", "-Infinity"], "c": 2.5}
  assert np.isnan(float(event["a"])) and float(event["b"][0]) == np.inf


def test_truncate_after_drops_later_steps_and_a_torn_line(tmp_path):
  w = metrics.MetricWriter(str(tmp_path))
  for step in range(1, 6):
    w.write(step, {"loss": float(step)}, kind="train")
  w.write(4, {"acc": 0.5}, kind="eval")
  path = tmp_path / "metrics.jsonl"
  with path.open("a") as f:
    f.write('{"step": 6, "lo')  # a SIGKILL in the middle of a write
  kept = w.truncate_after(4)
  assert [(e["step"], e["kind"]) for e in kept] == [(s, "train") for s in range(1, 5)] + [
    (4, "eval")
  ]
  assert [json.loads(x) for x in path.read_text().splitlines()] == kept
  w.write(5, {"loss": 5.0}, kind="train")
  assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4, 4, 5]
  path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match="metrics.jsonl:2"):
    w.truncate_after(1)


def test_progress_line():
  out = io.StringIO()
  p = metrics.Progress(100, 32, out=out)
  p.start(0)
  rates = p.update(10, {"loss": 1.25})
  assert rates["examples_per_s"] == pytest.approx(rates["steps_per_s"] * 32)
  assert "step 10/100 loss=1.25" in out.getvalue() and "ETA" in out.getvalue()


def test_loads_inverts_dumps():
  obj = {"a": [np.nan, np.inf, -np.inf, 1.5], "b": "text", "c": {"d": np.float32(np.inf)}}
  back = metrics.loads(metrics.dumps(obj))
  assert np.isnan(back["a"][0]) and back["a"][1:] == [np.inf, -np.inf, 1.5]
  assert back["b"] == "text" and back["c"] == {"d": np.inf}
