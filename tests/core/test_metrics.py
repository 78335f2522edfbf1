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


def test_progress_line():
  out = io.StringIO()
  p = metrics.Progress(100, 32, out=out)
  p.start(0)
  rates = p.update(10, {"loss": 1.25})
  assert rates["examples_per_s"] == pytest.approx(rates["steps_per_s"] * 32)
  assert "step 10/100 loss=1.25" in out.getvalue() and "ETA" in out.getvalue()
