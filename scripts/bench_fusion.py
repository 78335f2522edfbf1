"""Times OT alignment/fusion of randomly permuted, perturbed copies of one CLIP image tower.

Usage:
  python scripts/bench_fusion.py --variant tiny --models 3 --solver exact
  python scripts/bench_fusion.py --variant ViT-B/32 --models 2 --solver sinkhorn --epsilon 0.08

Prints, per aligned model, the wall time of `align_params`, the fused model's max parameter
difference to the mean of the unpermuted copies (0 up to float error when the maps recover the
permutations) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

with warnings.catch_warnings():
  warnings.filterwarnings("ignore", category=DeprecationWarning, module="jaxopt")
  from clipjax import fusion
from clipjax import tree as tree_lib
from clipjax.model import create


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="tiny")
  parser.add_argument("--models", type=int, default=3)
  parser.add_argument("--solver", default="exact", choices=["exact", "sinkhorn"])
  parser.add_argument("--epsilon", type=float, default=0.08)
  parser.add_argument("--residual", default="mean")
  parser.add_argument("--head-mode", default="per_head")
  parser.add_argument("--noise", type=float, default=1e-3)
  args = parser.parse_args()

  model = create(args.variant, jax.random.key(0), **{"text.vocab_size": 64, "text.eot_id": 63})
  spec = fusion.vit_spec_for(model.config, residual=args.residual, head_mode=args.head_mode)
  options = fusion.AlignOptions(solver=args.solver, epsilon=args.epsilon)
  rng = np.random.default_rng(0)
  visual = jax.tree.map(np.asarray, model.params["visual"])
  plain, loaders = [], []

  def perturb(x):
    return x + args.noise * rng.normal(size=x.shape).astype(x.dtype)

  for k in range(args.models):
    noisy = jax.tree.map(perturb, visual)
    plain.append(noisy)
    params = {**model.params, "visual": jax.tree.map(jnp.asarray, noisy)}
    if k:
      params = fusion.apply_maps(
        params, spec, fusion.random_permutation_maps(spec, model.config, rng)
      )
    host = jax.tree.map(np.asarray, params)
    loaders.append(lambda host=host: jax.tree.map(jnp.asarray, host))

  n_params = sum(x.size for x in jax.tree.leaves(visual))
  print(
    f"variant={args.variant} visual params={n_params / 1e6:.2f}M solver={args.solver} "
    f"eps={args.epsilon if args.solver == 'sinkhorn' else '-'} residual={args.residual} "
    f"head_mode={args.head_mode}"
  )
  anchor = loaders[0]()
  for k in range(1, args.models):
    t0 = time.perf_counter()
    out = fusion.align_params(loaders[k](), anchor, spec, options)
    jax.block_until_ready(out.params)
    dt = time.perf_counter() - t0
    ident = np.mean([i.identity_mass for i in out.infos.values()])
    conv = all(i.converged for i in out.infos.values())
    print(f"align model {k}: {dt:.2f} s (mean identity mass {ident:.3f}, converged {conv})")
  t0 = time.perf_counter()
  fused = fusion.fuse_stream(loaders, spec=spec, options=options)
  dt = time.perf_counter() - t0
  mean = jax.tree.map(lambda *xs: sum(xs) / len(xs), *plain)
  got = dict(tree_lib.flatten_with_names(fused.params["visual"]))
  err = max(
    float(np.max(np.abs(np.asarray(got[n]) - x))) for n, x in tree_lib.flatten_with_names(mean)
  )
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(
    f"fuse_stream of {args.models} models: {dt:.2f} s; max |fused - mean of unpermuted| = "
    f"{err:.2e}; peak RSS {rss:.0f} MiB"
  )


if __name__ == "__main__":
  main()
