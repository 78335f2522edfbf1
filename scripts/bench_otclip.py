"""OT-CLIP loss cost: loss+gradient and whole-train-step time per training loss vs InfoNCE.

  python scripts/bench_otclip.py bench 64 256   # jitted value_and_grad of each loss, ms per call
  python scripts/bench_otclip.py stepbench 64   # the train_step of configs/otclip.py:small

CPU ms (process CPU time per call, all threads) is the number to compare on a shared machine; the
wall medians depend on its load. Numbers: docs/results/otclip.md.
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from clipjax import losses
from clipjax.measure import time_calls
from clipjax.methods import otclip

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import otclip as otclip_config

LOSS_ORDER = ("infonce", *otclip_config.VARIANTS)


def bench(batch: int, reps: int = 20) -> dict[str, dict[str, float]]:
  """Times a jitted value_and_grad of each loss w.r.t. [batch, 64] embeddings and 1/ε.

  Returns:
    {loss: {"wall_ms": median wall ms per call, "cpu_ms": process CPU ms per call}}.
  """
  k1, k2 = jax.random.split(jax.random.key(0))
  zi = jax.random.normal(k1, (batch, 64))
  zi = zi / jnp.linalg.norm(zi, axis=1, keepdims=True)
  zt = zi + 0.5 * jax.random.normal(k2, (batch, 64))
  zt = zt / jnp.linalg.norm(zt, axis=1, keepdims=True)
  fns = {"infonce": lambda a, b, s: losses.clip_loss(a, b, s)[0]}
  for kind, kw in otclip_config.VARIANTS.items():
    fns[kind] = lambda a, b, s, kind=kind, kw=kw: otclip.ot_clip_loss(
      a, b, 1.0 / s, kind=kind, num_iters=5, **kw
    )[0]
  out = {}
  for name, f in fns.items():
    g = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
    scale = jnp.float32(15.0)
    t = time_calls(g, zi, zt, scale, repeats=reps)
    out[name] = {"wall_ms": t.wall * 1e3, "cpu_ms": float(np.mean(t.cpu_s)) * 1e3}
  return out


def stepbench(batch: int, reps: int = 20) -> dict[str, dict[str, float]]:
  """Whole training step of the `small` config per loss at `batch`: median wall ms, CPU ms/step.

  Same model, optimizer, data batch and jitted `train_step` as the trainer (one device).
  """
  import functools

  from clipjax import methods
  from clipjax.train import data_setup, loop, optim
  from clipjax.train.state import TrainState
  from clipjax.train.step import train_step

  out = {}
  for loss in LOSS_ORDER:
    c = otclip_config.get_config(f"loss={loss},small,steps=300")
    c.data.batch_size = batch
    model = loop.build_model(c, jax.random.key(0))
    method = methods.get(c.method.name, **c.method.kwargs)
    tx = optim.make_optimizer(c.optim, model.params, c.total_steps)
    it = data_setup.train_iterator(c, 0, 1)
    data = jax.tree.map(jnp.asarray, data_setup.model_inputs(next(it)))
    it.close()
    state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=model.params,
      opt_state=tx.init(model.params),
      method_state=method.init(model.config.embed_dim),
      rng=jax.random.PRNGKey(1),
    )
    fn = jax.jit(
      functools.partial(
        train_step,
        model=model,
        method=method,
        tx=tx,
        schedule=optim.make_schedule(c.optim, c.total_steps),
      )
    )
    t = time_calls(fn, state, data, repeats=reps)
    out[loss] = {"wall_ms": t.wall * 1e3, "cpu_ms": float(np.mean(t.cpu_s)) * 1e3}
  base = out["infonce"]
  for r in out.values():
    r["wall_overhead"] = r["wall_ms"] / base["wall_ms"]
    r["cpu_overhead"] = r["cpu_ms"] / base["cpu_ms"]
  return out


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("cmd", choices=("bench", "stepbench"))
  p.add_argument("batch", nargs="+", type=int)
  a = p.parse_args(argv)
  fn, key = (bench, "loss_grad_ms") if a.cmd == "bench" else (stepbench, "train_step")
  for b in a.batch:
    print(json.dumps({"batch": b, "backend": jax.default_backend(), key: fn(b)}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
