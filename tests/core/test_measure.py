"""Timing and memory measurement: call counts, blocking, peak RSS growth."""

import sys

import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import measure


def test_time_calls_warms_up_then_times_each_repeat():
  calls = []

  def fn(x):
    calls.append(x)
    return jnp.ones(3) * x

  t = measure.time_calls(fn, 2.0, repeats=4, warmup=2)
  assert len(calls) == 6 and len(t.wall_s) == len(t.cpu_s) == 4
  assert all(s >= 0 for s in t.wall_s + t.cpu_s)
  assert t.wall == float(np.median(t.wall_s)) and t.cpu == float(np.median(t.cpu_s))
  np.testing.assert_array_equal(t.out, [2.0, 2.0, 2.0])
  with pytest.raises(ValueError, match="repeats must be >= 1"):
    measure.time_calls(fn, 1.0, repeats=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_peak_rss_growth_sees_a_temporary_allocation():
  size = 64 * 2**20

  def allocate():
    x = np.ones(size, np.uint8)  # touched, so resident
    return int(x[::4096].sum())

  out, seconds, growth = measure.peak_rss_growth(allocate)
  assert out == size // 4096 and seconds >= 0
  if growth is None:
    pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
  assert growth >= 0.9 * size
