"""Metric writing: `metrics.jsonl` (always), console progress lines, optional TensorBoard.

Only process 0 writes. Every event is one JSON object with a `step` key, in strict JSON: a
non-finite float is written as the string "NaN", "Infinity" or "-Infinity" (`loads` and
Python's `float()` read them back), never as the bare literals that JSON does not allow. A
resumed run first drops the events logged after its restored step
(`MetricWriter.truncate_after`), so each step appears once. `Progress` prints
`step 120/600 loss=2.31 41.2 ex/s ETA 3m05s` lines, and `StageProgress` the same for one stage
of known size (`embed 'shapes': 12/40 batches 3.1 batches/s ETA 0m09s`); tqdm-style bars are
avoided so CI logs stay readable. `check_finite` is the NaN/Inf guard the trainer calls at log
time.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import numpy as np
from etils import epath

__all__ = [
  "MetricWriter",
  "NonFiniteError",
  "Progress",
  "StageProgress",
  "check_finite",
  "dumps",
  "loads",
  "to_python",
]


class NonFiniteError(FloatingPointError):
  """Raised when a logged metric is NaN or Inf."""


def to_python(x: Any) -> Any:
  """Converts arrays / numpy scalars to JSON-friendly Python values (recursively)."""
  if isinstance(x, Mapping):
    return {str(k): to_python(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [to_python(v) for v in x]
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    arr = np.asarray(x)
    if arr.ndim == 0:
      return arr.item()
    return arr.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return x


def _strict(x: Any) -> Any:
  if isinstance(x, float) and not math.isfinite(x):
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
  if isinstance(x, dict):
    return {k: _strict(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_strict(v) for v in x]
  return x


def dumps(obj: Any, **kwargs: Any) -> str:
  """Strict JSON of `obj` (arrays converted; non-finite floats as "NaN"/"Infinity" strings)."""
  return json.dumps(_strict(to_python(obj)), allow_nan=False, **kwargs)


_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _unstrict(x: Any) -> Any:
  if isinstance(x, str):
    return _NON_FINITE.get(x, x)
  if isinstance(x, dict):
    return {k: _unstrict(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_unstrict(v) for v in x]
  return x


def loads(text: str) -> Any:
  """Parses JSON written by `dumps`: the "NaN"/"Infinity"/"-Infinity" strings become floats."""
  return _unstrict(json.loads(text))


def check_finite(
  metrics: Mapping[str, Any],
  step: int,
  *,
  keys: tuple[str, ...] = ("loss",),
  state_finite: bool = True,
  since: int | None = None,
) -> None:
  """Raises `NonFiniteError` if any of `keys` in `metrics` is NaN/Inf, or `state_finite` is False.

  Args:
    metrics: host metrics of `step`.
    step: the step just taken.
    keys: metrics that must be finite.
    state_finite: the step function's `finite` flag (all of the steps since `since`).
    since: the last step known to be finite (for the message).
  """
  bad = {}
  for k in keys:
    if k in metrics:
      v = float(np.asarray(metrics[k]))
      if not math.isfinite(v):
        bad[k] = v
  if bad or not state_finite:
    what = f"metrics {bad}" if bad else "parameters, optimizer state or update"
    where = f"step {step}" if since is None or since >= step - 1 else f"steps {since + 1}..{step}"
    raise NonFiniteError(
      f"Non-finite {what} at {where}. Training stopped; no checkpoint is ever written for a "
      "non-finite state, so the newest checkpoint is good."
    )


class MetricWriter:
  """Appends JSON lines to `workdir/metrics.jsonl`; mirrors scalars to TensorBoard if asked.

  Args:
    workdir: run directory (created if needed).
    enabled: write at all (False on non-zero processes).
    tensorboard: also write tensorboardX event files under `workdir/tb`.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = False):
    self.enabled = enabled
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if tensorboard:
        try:
          from tensorboardX import SummaryWriter
        except ImportError as e:
          raise ImportError(
            "config.tensorboard=True needs tensorboardX: pip install 'clipjax[tb]'"
          ) from e
        self._tb = SummaryWriter(str(epath.Path(workdir) / "tb"))

  def write(self, step: int, metrics: Mapping[str, Any], **tags: Any) -> None:
    """Writes one event `{"step": step, **tags, **metrics}`."""
    if not self.enabled:
      return
    event = {"step": int(step), **to_python(tags), **to_python(dict(metrics))}
    # epath has no append mode on every backend (gs://): keep a handle open per event.
    with self.path.open("a") as f:
      f.write(dumps(event, sort_keys=True) + "\n")
    if self._tb is not None:
      prefix = tags.get("kind", "")
      for k, v in event.items():
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
          self._tb.add_scalar(f"{prefix}/{k}" if prefix else k, v, step)

  def truncate_after(self, step: int) -> list[dict[str, Any]]:
    """Drops the events logged after `step` and returns the kept ones (all processes).

    A run resumed from checkpoint `step` logs the later steps again; without this they would
    appear twice. A last line torn by a kill is dropped too; the file is replaced atomically.
    """
    if not self.path.exists():
      return []
    lines = self.path.read_text().splitlines(keepends=True)
    kept, events = [], []
    for i, line in enumerate(lines):
      try:
        event = json.loads(line)
      except json.JSONDecodeError:
        if i == len(lines) - 1 and not line.endswith("\n"):
          continue  # written when the process was killed
        raise ValueError(f"{self.path}:{i + 1}: not a JSON object; fix or remove it") from None
      if event.get("step", 0) <= step:
        kept.append(dumps(event, sort_keys=True) + "\n")
        events.append(event)
    if self.enabled and kept != lines:
      tmp = self.path.parent / (self.path.name + ".tmp")
      tmp.write_text("".join(kept))
      tmp.replace(self.path)
    return events

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _fmt_duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
  """Console progress: step, chosen metrics, examples/s, steps/s and ETA."""

  def __init__(
    self, total_steps: int, batch_size: int, *, enabled: bool = True, out: TextIO | None = None
  ):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.enabled = enabled
    self.out = out or sys.stdout
    self._t = None
    self._step = None

  def start(self, step: int) -> None:
    self._t, self._step = time.perf_counter(), step

  def update(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Returns throughput numbers since the last update and prints a line."""
    now = time.perf_counter()
    if self._t is None:
      self.start(step)
      return {}
    dt, dsteps = now - self._t, step - self._step
    self._t, self._step = now, step
    if dsteps <= 0 or dt <= 0:
      return {}
    steps_s = dsteps / dt
    rates = {"steps_per_s": steps_s, "examples_per_s": steps_s * self.batch_size}
    if self.enabled:
      shown = " ".join(
        f"{k}={float(np.asarray(v)):.4g}"
        for k, v in metrics.items()
        if np.ndim(v) == 0 and not k.startswith("ot/")
      )
      eta = _fmt_duration((self.total_steps - step) / steps_s)
      print(
        f"step {step}/{self.total_steps} {shown} {rates['examples_per_s']:.1f} ex/s "
        f"{steps_s:.2f} steps/s ETA {eta}",
        file=self.out,
        flush=True,
      )
    return rates


class StageProgress:
  """Progress lines for one stage of `total` units, at most every `every_s` seconds.

  `update(done)` prints `"{stage}: {done}/{total} {unit} {rate} {unit}/s ETA {eta}"` when
  `every_s` has passed since the last line, and always once `done` reaches `total`; the first
  call prints the start. Nothing is printed when disabled (other processes than 0).
  """

  def __init__(
    self,
    stage: str,
    total: int,
    unit: str,
    *,
    every_s: float = 10.0,
    enabled: bool = True,
    out: TextIO | None = None,
  ):
    self.stage, self.total, self.unit = stage, int(total), unit
    self.every_s = every_s
    self.enabled = enabled
    self.out = out or sys.stdout
    self._t0 = time.perf_counter()
    self._last: float | None = None

  def update(self, done: int) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    final = done >= self.total
    if self._last is not None and not final and now - self._last < self.every_s:
      return
    self._last = now
    elapsed = now - self._t0
    line = f"{self.stage}: {done}/{self.total} {self.unit}"
    if done > 0 and elapsed > 0:
      rate = done / elapsed
      tail = (
        f"done in {_fmt_duration(elapsed)}"
        if final
        else (f"ETA {_fmt_duration((self.total - done) / rate)}")
      )
      line += f" {rate:.3g} {self.unit}/s {tail}"
    print(line, file=self.out, flush=True)
