"""How long a call takes (wall and CPU seconds) and how much memory it adds (peak RSS).

One place for the measurements that tasks (COLA's overhead, HOT-CLIP's fusion cost) and the
benchmark scripts report, so that every number in the docs is taken the same way: warm-up
calls first (compilation), every call blocked until its JAX outputs are ready, the median
over repeats.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

__all__ = [
  "Timing",
  "machine_info",
  "peak_rss_bytes",
  "peak_rss_growth",
  "rss_bytes",
  "time_calls",
]


class Timing(NamedTuple):
  """Seconds per timed call (wall clock and this process's CPU time) and the last output."""

  wall_s: list[float]
  cpu_s: list[float]
  out: Any

  @property
  def wall(self) -> float:
    """Median wall seconds."""
    return statistics.median(self.wall_s)

  @property
  def cpu(self) -> float:
    """Median process CPU seconds (all threads): less sensitive to a busy machine."""
    return statistics.median(self.cpu_s)


def time_calls(fn: Callable[..., Any], *args: Any, repeats: int = 3, warmup: int = 1) -> Timing:
  """Calls `fn(*args)` `warmup` times untimed, then `repeats` times timed.

  Each call is blocked until its JAX outputs are ready (`jax.block_until_ready`; a no-op on
  numpy and Python values), so asynchronous dispatch does not hide the work.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  out = None
  for _ in range(warmup):
    out = jax.block_until_ready(fn(*args))
  wall, cpu = [], []
  for _ in range(repeats):
    w, c = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args))
    wall.append(time.perf_counter() - w)
    cpu.append(time.process_time() - c)
  return Timing(wall, cpu, out)


def _status_kib(field: str) -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    return None
  return None


def rss_bytes() -> int | None:
  """The process's resident set size now (Linux `VmRSS`), or None where unsupported."""
  kib = _status_kib("VmRSS")
  return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
  """The process's peak resident set size since the last reset (`VmHWM`), or None."""
  kib = _status_kib("VmHWM")
  return None if kib is None else kib * 1024


def _peak_rss_reset() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[Any, float, int | None]:
  """`(fn(), wall seconds, peak RSS growth in bytes during the call or None)`.

  The peak is reset before the call (Linux `/proc/self/clear_refs`), so the growth is what the
  call itself added on top of the memory held when it started.
  """
  rss0 = rss_bytes()
  reset = _peak_rss_reset()
  start = time.perf_counter()
  out = fn()
  seconds = time.perf_counter() - start
  peak = peak_rss_bytes()
  growth = peak - rss0 if reset and peak is not None and rss0 is not None else None
  return out, seconds, growth


def parse_time_log(text: str) -> tuple[float, float]:
  """(CPU seconds, user + system; wall seconds) from a GNU `/usr/bin/time -v` log."""
  import re

  cpu = sum(
    float(re.search(rf"{k} time \(seconds\): ([\d.]+)", text).group(1)) for k in ("User", "System")
  )
  clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
  wall = 0.0
  for part in clock.group(1).split(":"):
    wall = wall * 60 + float(part)
  return cpu, wall


def machine_info() -> dict[str, Any]:
  """What a benchmark record names the machine by: CPU model, cores, memory, platform, Python,
  jax and its devices, the load average and this process's niceness."""
  info: dict[str, Any] = {
    "cpu": platform.processor() or platform.machine(),
    "nproc": os.cpu_count(),
    "platform": platform.platform(),
    "python": sys.version.split()[0],
    "jax": jax.__version__,
    "devices": str(jax.devices()),
    "niceness": os.nice(0),
    "load_avg": [round(v, 2) for v in os.getloadavg()],
  }
  try:
    with open("/proc/cpuinfo") as f:
      info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    with open("/proc/meminfo") as f:
      info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
  except (OSError, StopIteration):
    pass
  return info
