"""Metric writing: `metrics.jsonl` (always), console progress lines, optional TensorBoard.

Only process 0 writes. Every event is one JSON object with a `step` key. `Progress` prints
`step 120/600 loss=2.31 41.2 ex/s ETA 3m05s` lines; tqdm-style bars are avoided so CI logs stay
readable. `check_finite` is the NaN/Inf guard the trainer calls at log time.
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

__all__ = ["MetricWriter", "NonFiniteError", "Progress", "check_finite", "to_python"]


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


def check_finite(
  metrics: Mapping[str, Any], step: int, *, keys: tuple[str, ...] = ("loss",)
) -> None:
  """Raises `NonFiniteError` if any of `keys` in `metrics` is NaN/Inf."""
  bad = {}
  for k in keys:
    if k in metrics:
      v = float(np.asarray(metrics[k]))
      if not math.isfinite(v):
        bad[k] = v
  if bad:
    raise NonFiniteError(
      f"Non-finite metrics at step {step}: {bad}. Training stopped; the last good checkpoint "
      "is kept (no checkpoint is written after a non-finite loss)."
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
      f.write(json.dumps(event, sort_keys=True) + "\n")
    if self._tb is not None:
      prefix = tags.get("kind", "")
      for k, v in event.items():
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
          self._tb.add_scalar(f"{prefix}/{k}" if prefix else k, v, step)

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
