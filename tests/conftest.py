"""Test configuration: 8 fake CPU devices, strict numerics, absl flags parsed.

The device count must be set before any JAX backend is initialised, so it lives here at
import time of the test session.
"""

import math
import os
import pathlib
import sys

# Tests are dominated by XLA compile time on CPU; the cheaper LLVM pipeline cut it by about a
# third on tests/model, and changes results only by float32 rounding (tests use tolerances).
os.environ.setdefault(
  "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

import jax
import numpy as np
import pytest
from absl import flags

# Tests import scripts as modules (`import export_base`, `from repro import otclip`).
SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
  sys.path.insert(0, str(SCRIPTS))

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")

# grain workers read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()


def reorder_tolerance(scale: float, n: int) -> float:
  """How far two float32 evaluations of one computation may differ by reduction order alone.

  Sharding changes the order (and tree shape) of float32 sums. The rounding error of a sum of
  `n` terms of size ~`scale` grows like sqrt(n) units of float32 resolution (random-walk
  rounding; the worst case grows like n). The bound allows 2 sqrt(n) units of
  `eps32 * max(scale, 1)`, where `n` is the largest reduction the compared value depends on.
  """
  return 2.0 * math.sqrt(n) * float(np.finfo(np.float32).eps) * max(float(scale), 1.0)


@pytest.fixture
def reorder_tol():
  """`reorder_tolerance` for tests comparing sharded and single-device results."""
  return reorder_tolerance
