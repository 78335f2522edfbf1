"""Test configuration: 8 fake CPU devices, strict numerics, absl flags parsed.

The device count must be set before any JAX backend is initialised, so it lives here at
import time of the test session.
"""

import os

# Tests are dominated by XLA compile time on CPU; the cheaper LLVM pipeline cut it by about a
# third on tests/model, and changes results only by float32 rounding (tests use tolerances).
os.environ.setdefault(
  "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

import jax
from absl import flags

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")

# grain workers read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()
