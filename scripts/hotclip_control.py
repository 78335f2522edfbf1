"""HOT-CLIP's classical OT-fusion control: two image towers trained from different initialisations.

OTFusion's premise (Singh & Jaggi 2020, the mechanism HOT-CLIP builds on) is that models trained
from different random initialisations compute similar features in permuted units, so averaging
their weights collapses while aligning them first does not. This checks it on a small CLIP:

1. model A: the quickstart CLIP trained on the digits world (`configs/quickstart.py:world=digits`,
   learned positions only, so the residual stream can be aligned, 32 px);
2. model B: A's trained text tower and logit scale (frozen) with an image tower freshly drawn
   from another seed, trained for the same number of steps: both image towers map into the same
   text space, from different initialisations;
3. `hotclip_fuse` on the 2 x 1 grid [[A], [B]] at its defaults (OT fusion with residual
   alignment, per-head maps, Sinkhorn τ = 0.08 on the cost as written), plain averaging and the
   output ensemble, each evaluated on zero-shot digit accuracy over the 270 test images (clean
   and PGD-10 at 2/255), with the transport maps' identity mass;
4. direct OT fusion again with one setting changed (`VARIANTS`: exact assignment, the cost
   divided by its max, no residual-stream alignment), and a table of all of them.

Command, from the repository root (about 7 CPU minutes for 300 steps per model on the project's
CPU):
  PYTHONPATH=. python scripts/hotclip_control.py --root /tmp/hotclip_control --steps 300
Re-running resumes the trainings (clipjax workdirs resume) and redoes the fusion.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import jax

from clipjax import model as model_lib
from clipjax import runs, tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Direct OT fusion with one setting of configs/hotclip_fuse.py changed: (section, key, value).
VARIANTS = {
  "ot_exact": ("align", "solver", "exact"),
  "ot_cost_over_max": ("align", "cost_scale", "max"),
  "ot_no_residual": ("spec", "residual", "none"),
}


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", f"{REPO}/configs/{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def train_config(steps: int, seed: int):
  c = load_config("quickstart", "world=digits")
  c.total_steps = steps
  c.checkpoint.every_steps = steps
  c.data.image_size = 32
  c.model.overrides.vision.pos_embed = "learned"  # so the residual stream can be aligned
  c.seed = seed
  return c


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--root", required=True, help="directory for the workdirs")
  ap.add_argument("--steps", type=int, default=300, help="training steps of each model")
  ap.add_argument("--seed_b", type=int, default=1, help="seed of B's image-tower init and data")
  args = ap.parse_args()
  a_dir, b_init, b_dir = f"{args.root}/g_a_0", f"{args.root}/b_init", f"{args.root}/g_b_0"
  tasks.get("train").run(train_config(args.steps, 0), a_dir)
  if not model_lib.is_workdir(b_init):
    # A's trained text tower and logit scale with a fresh image tower drawn from seed_b.
    model = model_lib.load(a_dir)
    params = dict(model.params)
    params["visual"] = model.init_params(jax.random.key(args.seed_b))["visual"]
    runs.save_params_workdir(params, runs.read_run_config(a_dir), b_init)
  b_cfg = train_config(args.steps, args.seed_b)
  b_cfg.model.init_checkpoint = b_init
  b_cfg.optim.frozen = [r"text/.*", r"logit_scale"]
  tasks.get("train").run(b_cfg, b_dir)
  rows = []
  for name, change in [("defaults", None), *VARIANTS.items()]:
    fusions = "direct_ot+average+ensemble" if change is None else "direct_ot"
    fuse = load_config(
      "hotclip_fuse",
      f"root={args.root}/g,attacks=a+b,prompts=1,eval_attacks=light,fusions={fusions},"
      f"submodels={change is None}",
    )
    fuse.eval.dataset = {"name": "digits", "split": "test", "seed": 0}
    fuse.eval.label_set = "digit"
    fuse.eval.max_examples = 270
    fuse.export_layouts = []
    if change is not None:
      section, key, value = change
      fuse[section][key] = value
    summary = tasks.get("hotclip_fuse").run(fuse, f"{args.root}/fused_{name}")
    for model, r in summary["models"].items():
      label = model if change is None or model != "direct_ot" else name
      mass = r.get("identity_mass_mean")
      rows.append(
        f"| {label} | {r['clean_acc']:.3f} | {r['robust_acc_worst']:.3f} | "
        + ("" if mass is None else f"{mass:.3f} (min {r['identity_mass_min']:.3f})")
        + " |"
      )
  print("| model | clean digit acc | PGD-10 2/255 | identity mass |\n|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
