"""Test configuration: 8 fake CPU devices, strict numerics, absl flags parsed.

The device count must be set before any JAX backend is initialised, so it lives here at
import time of the test session.
"""

import jax
from absl import flags

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")

# grain workers read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()
