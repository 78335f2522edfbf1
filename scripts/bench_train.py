"""Training throughput, MFU, OT-loss overhead and scaling, data-pipeline throughput.

Side by side in one process (medians of timed steps after compilation):
  1. train-step examples/s for model variants × losses (InfoNCE, SigLIP, OT-CLIP variants) and
     the OT overhead ratio step(OT) / step(InfoNCE);
  2. MFU: model FLOPs per step (XLA cost analysis of the compiled step) / step time, divided by
     the dense float32 matmul FLOP/s measured in this process;
  3. OT-loss (value and gradient) time vs batch size on 1 and 8 devices (a subprocess with 8
     fake CPU devices; on a CPU host those share the same cores, so this shows sharding
     overhead, not speed-up);
  4. data pipeline examples/s (decode + tokenize + batch) vs the quickstart step's consumption.

Usage:
  python scripts/bench_train.py --out docs/benchmarks            # full (tens of minutes on CPU)
  python scripts/bench_train.py --quick                           # seconds; CI smoke test
Writes OUT/train.md and OUT/train.json (default OUT: a scratch directory under $TMPDIR; only
an explicit --out writes into docs/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np


def matmul_flops(n=2048, repeats=5):
  """Dense float32 matmul rate: the best of `repeats` timed calls.

  It is the denominator of MFU, so it is a peak: the fastest call, not the median (on a shared
  machine the median of a few millisecond-long calls is mostly other processes' time, and MFU
  then came out above 1).
  """
  from clipjax.measure import time_calls

  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / min(time_calls(f, a, repeats=repeats).wall_s)


LOSSES = {
  "infonce": ("clip", {}),
  "siglip": ("siglip", {}),
  "otclip-entropic": (
    "otclip",
    dict(loss="entropic", temperature="logit_scale", epsilon=0.01, num_iters=5, grad="unroll",
         direction="both", ot_weight=1.0, infonce_weight=1.0),
  ),
  "otclip-dbot": (
    "otclip",
    dict(loss="dbot", temperature="logit_scale", epsilon=0.01, num_iters=5, grad="unroll",
         direction="both", ot_weight=1.0, infonce_weight=1.0, delta=0.5),
  ),
  "otclip-uot": (
    "otclip",
    dict(loss="uot", temperature="logit_scale", epsilon=0.01, num_iters=5, grad="unroll",
         direction="both", ot_weight=1.0, infonce_weight=1.0, rho_a=1.0, rho_b=1.0),
  ),
  "otclip-fgw": (
    "otclip",
    dict(loss="fgw", temperature="logit_scale", epsilon=0.01, num_iters=5, grad="unroll",
         direction="both", ot_weight=1.0, infonce_weight=1.0, alpha=0.1, outer_iters=3),
  ),
  "otclip-ufgw": (
    "otclip",
    dict(loss="ufgw", temperature="logit_scale", epsilon=0.01, num_iters=5, grad="unroll",
         direction="both", ot_weight=1.0, infonce_weight=1.0, alpha=0.1, outer_iters=3,
         rho_a=1.0, rho_b=1.0),
  ),
}  # fmt: skip


def _time_steps(compiled, state, data, steps):
  state, m = compiled(state, data)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = compiled(state, data)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def train_step_bench(
  variant, batch, image, loss_names, steps, context_length=None, overrides=None, label=None
):
  import clipjax.model as model_lib
  from clipjax import methods
  from clipjax.train import optim
  from clipjax.train.state import TrainState
  from clipjax.train.step import train_step

  overrides = dict(overrides or {})
  overrides.update({"vision.image_size": image, "logit_bias_init": -10.0})  # SigLIP needs a bias
  if context_length:
    overrides["text.context_length"] = context_length
  model = model_lib.create(variant, jax.random.key(0), **overrides)
  ocfg = mlc.ConfigDict(
    dict(lr=1e-4, end_lr_frac=0.0, warmup_frac=0.0, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1,
         clip_grad_norm=1.0, grad_accum_steps=1, wd_exclude=[r".*/bias"])
  )  # fmt: skip
  tx = optim.make_optimizer(ocfg, model.params, 100)
  rng = np.random.default_rng(0)
  ctx = model.config.text.context_length
  ids = rng.integers(1, 1000, size=(batch, ctx)).astype(np.int32)
  ids[:, 0], ids[:, ctx // 2] = 49406, 49407
  data = {
    "image": jnp.asarray(rng.random((batch, image, image, 3), np.float32)),
    "ids": jnp.asarray(ids),
  }
  rows = []
  for name in loss_names:
    mname, kw = LOSSES[name]
    method = methods.get(mname, **kw)
    params = jax.tree.map(jnp.copy, model.params)  # donated below; model.params stays intact
    state = TrainState(jnp.int32(0), params, tx.init(params), {}, jax.random.PRNGKey(0))
    # The state is donated, as in the trainer: one copy of parameters and optimizer state lives
    # at a time (ViT-B/32 with AdamW is 1.8 GB of float32 state).
    fn = jax.jit(
      lambda s, b, m=method: train_step(
        s, b, model=model, method=m, tx=tx, schedule=lambda _: 1e-4
      ),
      donate_argnums=0,
    )
    t0 = time.perf_counter()
    compiled = fn.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan")))
    step_s = _time_steps(compiled, state, data, steps)
    del compiled, state
    rows.append(
      dict(
        variant=label or variant,
        loss=name,
        batch=batch,
        image=image,
        compile_s=compile_s,
        step_s=step_s,
        examples_per_s=batch / step_s,
        flops_per_step=flops,
      )
    )
    print(json.dumps(rows[-1]), flush=True)
  base = next(r["step_s"] for r in rows if r["loss"] == "infonce")
  for r in rows:
    r["ot_overhead"] = r["step_s"] / base
  return rows


_SCALING_CHILD = r"""
import json, os, sys, time, statistics
import jax
jax.config.update("jax_num_cpu_devices", 8)
import jax.numpy as jnp, numpy as np
from clipjax import sharding
from clipjax.methods import otclip
sizes, repeats = json.loads(sys.argv[1]), int(sys.argv[2])
out = []
for devices in (1, 8):
  mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:devices])
  sh = sharding.batch_sharding(mesh)
  f = lambda a, b: otclip.ot_clip_loss(a, b, 0.01, kind="entropic", num_iters=5)[0]
  g = jax.jit(jax.value_and_grad(f, argnums=(0, 1)), in_shardings=(sh, sh))
  for n in sizes:
    z = np.random.default_rng(0).normal(size=(2, n, 64)).astype(np.float32)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    a, b = jax.device_put(z[0], sh), jax.device_put(z[1], sh)
    c = g.lower(a, b).compile()
    mem = c.memory_analysis()
    row = dict(devices=devices, n=n, temp_bytes_per_device=int(mem.temp_size_in_bytes))
    # The fake devices share this host's memory: run only what fits in half of what is free.
    per_device = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    need = devices * per_device
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > 0.5 * free:
      gib = f"needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
      row.update(seconds=None, note="compiled only: " + gib)
    else:
      jax.block_until_ready(c(a, b))
      ts = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(c(a, b))
        ts.append(time.perf_counter() - t0)
      row.update(seconds=statistics.median(ts))
    out.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
print(json.dumps(out))
"""


def ot_scaling(sizes, repeats):
  proc = subprocess.run(
    [sys.executable, "-c", _SCALING_CHILD, json.dumps(sizes), str(repeats)],
    stdout=subprocess.PIPE, text=True, check=True,
  )  # fmt: skip
  return json.loads(proc.stdout.strip().splitlines()[-1])


def pipeline_bench(batches):
  from clipjax.data import registry
  from clipjax.data.pipeline import make_train_iterator
  from clipjax.data.tokenizer import Tokenizer

  src = registry.build_source({"name": "synthetic", "split": "train", "seed": 0}, 48)
  it = make_train_iterator(
    src, batch_size=128, image_size=48, tokenize=Tokenizer(context_length=16), seed=0
  )
  next(it)
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(it)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  it.close()
  return dict(examples_per_s_wall=batches * 128 / wall, examples_per_cpu_s=batches * 128 / cpu)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke test)")
  p.add_argument(
    "--out",
    default=os.path.join(tempfile.gettempdir(), "clipjax_bench_train"),
    help="output directory (default: a scratch directory; pass docs/benchmarks explicitly to "
    "regenerate the committed page)",
  )
  p.add_argument(
    "--resume",
    action="store_true",
    help="reuse the sections saved in OUT/train.partial.json by an interrupted run",
  )
  args = p.parse_args()
  steps = 2 if args.quick else 5
  res = {
    "machine": {
      "platform": platform.platform(),
      "cpus": os.cpu_count(),
      "devices": [str(d) for d in jax.devices()],
      "jax": jax.__version__,
      "load_avg_start": os.getloadavg(),
    }
  }
  os.makedirs(args.out, exist_ok=True)
  partial = os.path.join(args.out, "train.partial.json")
  if args.resume and os.path.exists(partial):
    with open(partial) as f:
      saved = json.load(f)
    res.update({k: v for k, v in saved.items() if k != "machine"})
    res["machine"]["resumed_from"] = saved["machine"]
  res.setdefault("matmul_flops_per_s", matmul_flops(512 if args.quick else 2048, max(10, steps)))
  small_losses = ["infonce", "otclip-entropic"] if args.quick else list(LOSSES)

  def checkpoint():  # a crash (e.g. out of memory) keeps the sections measured so far
    with open(partial, "w") as f:
      json.dump(res, f, indent=2)

  print(f"dense matmul: {res['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
  rows = res.setdefault("train_step", [])
  if not any(r["variant"] == "quickstart" for r in rows):
    # The quickstart's model and shapes (configs/quickstart.py: 48 px, 16 tokens, batch 128);
    # its steps are short, so more of them are timed.
    from clipjax import config_lib
    from clipjax import model as model_lib

    qs = config_lib.train_config().model
    qs_overrides = model_lib.flatten_overrides(qs.overrides.to_dict())
    rows += train_step_bench(
      qs.name,
      16 if args.quick else 128,
      48,
      small_losses,
      steps * 4,
      16,
      qs_overrides,
      "quickstart",
    )
    checkpoint()
  if not args.quick and not any(r["variant"] == "ViT-B/32" for r in rows):
    rows += train_step_bench("ViT-B/32", 32, 224, list(LOSSES), steps)
  # The peak again after the train steps, side by side: the larger of the two is the denominator.
  res["matmul_flops_per_s"] = max(
    res["matmul_flops_per_s"], matmul_flops(512 if args.quick else 2048, max(10, steps))
  )
  for r in rows:
    r["mfu"] = r["flops_per_step"] / r["step_s"] / res["matmul_flops_per_s"]
  checkpoint()
  if "ot_scaling" not in res:
    sizes = [64, 128] if args.quick else [256, 1024, 4096, 8192]
    res["ot_scaling"] = ot_scaling(sizes, steps)
    checkpoint()
  if "pipeline" not in res:
    res["pipeline"] = pipeline_bench(2 if args.quick else 20)
  res["machine"]["load_avg_end"] = os.getloadavg()
  with open(os.path.join(args.out, "train.json"), "w") as f:
    json.dump(res, f, indent=2)
  os.remove(partial)
  text = report(res, "python scripts/bench_train.py" + (" --quick" if args.quick else ""))
  with open(os.path.join(args.out, "train.md"), "w") as f:
    f.write(text)
  print(text)


def _describe_machine(m):
  """One line per invocation (an interrupted run resumed with --resume has several)."""
  runs = []
  while m:
    runs.append(m)
    m = m.get("resumed_from")
  first = runs[0]
  load = "; ".join(
    "load average (1/5/15 min) at start {} / end {}".format(
      "/".join(f"{v:.1f}" for v in r["load_avg_start"]),
      "/".join(f"{v:.1f}" for v in r.get("load_avg_end") or ()) or "(interrupted)",
    )
    for r in reversed(runs)
  )
  return (
    f"{first['platform']}, {first['cpus']} CPUs, devices {first['devices']}, jax {first['jax']}; "
    f"{len(runs)} invocation(s): {load}"
  )


def report(res, command):
  """Markdown tables of a result dict."""
  lines = [
    "# Training benchmark",
    "",
    f"Command: `{command}`",
    "",
    "Machine: " + _describe_machine(res["machine"]),
    "",
    f"Dense float32 matmul: {res['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s",
    "",
    "| variant | loss | batch | step s | examples/s | step / InfoNCE step | GFLOP/step | MFU |"
    " compile s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in res["train_step"]:
    lines.append(
      f"| {r['variant']} | {r['loss']} | {r['batch']} | {r['step_s']:.3f} |"
      f" {r['examples_per_s']:.1f} | {r['ot_overhead']:.2f} | {r['flops_per_step'] / 1e9:.1f} |"
      f" {r['mfu']:.2f} | {r['compile_s']:.1f} |"
    )
  lines += [
    "",
    "OT-CLIP entropic loss (value and gradient, K = 5, both directions) vs global batch N:",
    "",
    "| devices | N | seconds | temp MiB per device | note |",
    "|---|---|---|---|---|",
  ]
  for r in res["ot_scaling"]:
    secs = "—" if r["seconds"] is None else f"{r['seconds']:.4f}"
    lines.append(
      f"| {r['devices']} | {r['n']} | {secs} | {r['temp_bytes_per_device'] / 2**20:.1f} |"
      f" {r.get('note', '')} |"
    )
  pl = res["pipeline"]
  qs = next(r for r in res["train_step"] if r["variant"] == "quickstart" and r["loss"] == "infonce")
  lines += [
    "",
    f"Data pipeline (synthetic 48 px, batch 128, 16 tokens): {pl['examples_per_s_wall']:.0f}"
    f" examples/s wall, {pl['examples_per_cpu_s']:.0f} per CPU-second; the quickstart InfoNCE"
    f" step consumes {qs['examples_per_s']:.0f} examples/s.",
  ]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
