"""Times the CLIP forward pass (image + text towers) on the default JAX device.

Usage:
  python scripts/bench_model.py [--variant ViT-B/32] [--batch 8] [--repeats 5] [--dtype float32]

Randomly initialised weights (the timing does not depend on their values). Each encoder is jitted;
after one warm-up call (compilation) the script runs `repeats` timed calls of image + text at
the given batch size and prints the median wall time (and process CPU time, which a busy machine
distorts less), plus the median of each tower alone, as one JSON line.
"""

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from clipjax import model as clipmodel
from clipjax.measure import time_calls


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="ViT-B/32")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args()

  start = time.perf_counter()
  clip = clipmodel.create(args.variant, jax.random.key(0), dtype=args.dtype)
  jax.block_until_ready(clip.params)
  init_s = time.perf_counter() - start
  cfg = clip.config
  rng = np.random.default_rng(0)
  s = cfg.vision.image_size
  pixels = jax.device_put(rng.uniform(size=(args.batch, s, s, 3)).astype(np.float32))
  ids_np = rng.integers(1, cfg.text.eot_id, size=(args.batch, cfg.text.context_length))
  ids_np[:, 0] = cfg.text.eot_id - 1
  ids_np[:, 20] = cfg.text.eot_id
  ids = jax.device_put(ids_np.astype(np.int32))

  @jax.jit
  def both(params, pixels, ids):
    return clip.encode_image(params, pixels).emb, clip.encode_text(params, ids).emb

  start = time.perf_counter()
  jax.block_until_ready(both(clip.params, pixels, ids))
  compile_s = time.perf_counter() - start
  n = args.repeats
  both_t = time_calls(both, clip.params, pixels, ids, repeats=n)
  result = {
    "variant": args.variant,
    "dtype": args.dtype,
    "batch": args.batch,
    "repeats": args.repeats,
    "image_plus_text_s": both_t.wall,
    "image_plus_text_cpu_s": both_t.cpu,
    "image_s": time_calls(lambda: clip.encode_image(clip.params, pixels).emb, repeats=n).wall,
    "text_s": time_calls(lambda: clip.encode_text(clip.params, ids).emb, repeats=n).wall,
    "init_s": init_s,
    "first_call_s": compile_s,
    "device": str(jax.devices()[0]),
    "cpu_count": os.cpu_count(),
    "load_avg_1min": os.getloadavg()[0],
    "machine": platform.machine(),
    "jax": jax.__version__,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
