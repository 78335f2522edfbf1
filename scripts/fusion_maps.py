"""Per-map identity mass of aligning one image tower to another: where does an OT fusion move?

Prints, for each map of the ViT fusion spec (residual stream, attention heads, MLP units), the
mass its transport map keeps on the identity (1: units stay in place; 1/n: uniform), for the
given residual policies and solvers. Two submodels fine-tuned from one base should align to the
identity; a map far from it at the default τ is entropic blur, not alignment.

Command (two clipjax workdirs or exported checkpoints of the same architecture):
  python scripts/fusion_maps.py ANCHOR OTHER [--epsilon 0.08 0.01] [--residual mean none]
"""

from __future__ import annotations

import argparse

from clipjax import fusion
from clipjax import model as model_lib
from clipjax.fusion import align as align_lib


def identity_masses(anchor, other, residual: str, options) -> dict[str, float]:
  """{map name: identity mass} of aligning `other` to `anchor` (both `clipjax.model.CLIP`)."""
  spec = fusion.vit_spec_for(anchor.config, residual=residual, head_mode="per_head")
  out = align_lib.align_params(other.params, anchor.params, spec, options)
  return {name: float(info.identity_mass) for name, info in out.infos.items()}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("anchor")
  ap.add_argument("other")
  ap.add_argument("--epsilon", type=float, nargs="+", default=[0.08], help="Sinkhorn τ values")
  ap.add_argument("--residual", nargs="+", default=["mean"], help="residual policies")
  ap.add_argument("--below", type=float, default=0.9, help="list maps below this mass")
  args = ap.parse_args()
  anchor, other = model_lib.load(args.anchor), model_lib.load(args.other)
  settings = [(f"sinkhorn τ={e:g}", align_lib.AlignOptions(epsilon=e)) for e in args.epsilon]
  settings.append(("exact", align_lib.AlignOptions(solver="exact", epsilon=None)))
  print("| residual | solver | maps | min | maps below " + f"{args.below:g} |")
  print("|---|---|---|---|---|")
  for residual in args.residual:
    for label, options in settings:
      masses = identity_masses(anchor, other, residual, options)
      low = ", ".join(f"{k} {v:.3f}" for k, v in masses.items() if v < args.below) or "none"
      print(f"| {residual} | {label} | {len(masses)} | {min(masses.values()):.3f} | {low} |")


if __name__ == "__main__":
  main()
