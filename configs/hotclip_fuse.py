"""HOT-CLIP fusion: fuse an [attack][prompt] grid of submodel workdirs and evaluate (task
"hotclip_fuse", `clipjax/tasks/hotclip_fuse.py`).

Config arguments: `root`, `attacks` (+-separated), `prompts` (grid size), `epsilon` (Sinkhorn),
`fusions` (+-separated subset of hierarchical, direct_ot, average, ensemble; empty for none),
`submodels` (evaluate every submodel), `eval_attacks` ("full" or "light"), `smoke`.

Submodel workdirs are named `{root}_{attack}_{prompt}` (as `scripts/reproduce.py hotclip`
writes them), or given explicitly with `--config.workdirs`. Every submodel, the hierarchical OT
fusion (Algorithm 1), direct OT fusion, direct averaging and the output ensemble are evaluated on
clean and robust zero-shot accuracy (PGD-10 and APGD-CE-10 at ε = 2/255 and 4/255 by default).

Commands:
  python -m clipjax.main \
    --config configs/hotclip_fuse.py:root=/tmp/hot,attacks=fgsm+pgd+mim,prompts=3 \
    --config.base=/tmp/qs/full4 --workdir /tmp/hot_fused
  python -m clipjax.main --config configs/hotclip_fuse.py:smoke,root=/tmp/hs --workdir /tmp/hf

Paper settings (appendix D): weight representations, l2-normalised, squared Euclidean cost,
Sinkhorn τ = 0.08 on the cost as written (in [0, 4]), uniform measures and weights.
`--config.align.representation=acts` aligns units on their activations (the model's own
intermediates) on the first `acts_examples` images of the anchor's training data instead.
"""

import ml_collections as mlc

from clipjax import config_lib


def _attack(name: str, eps: float, **kw) -> dict:
  return {"name": name, "eps": eps / 255.0, "label": f"{name}@{eps:g}/255", **kw}


FUSIONS = ("hierarchical", "direct_ot", "average", "ensemble")
# Evaluation attack sets: "full" (PGD-10 and APGD-CE-10 at 2/255 and 4/255) and "light" (PGD-10 at
# 2/255 only, for the many submodels when CPU time is short).
EVAL_ATTACKS = {
  "full": [
    _attack("pgd", 2, step_size=0.5 / 255, steps=10),
    _attack("pgd", 4, step_size=1 / 255, steps=10),
    _attack("apgd-ce", 2, steps=10),
    _attack("apgd-ce", 4, steps=10),
  ],
  "light": [_attack("pgd", 2, step_size=0.5 / 255, steps=10)],
}


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(
    arg,
    smoke=False,
    root="/tmp/hot",
    attacks="fgsm+pgd+mim",
    prompts=3,
    epsilon=0.08,
    fusions="+".join(FUSIONS),
    submodels=True,
    eval_attacks="full",
  )
  fusions = [f for f in arg.fusions.split("+") if f]
  unknown = sorted(set(fusions) - set(FUSIONS))
  if unknown:
    raise ValueError(f"fusions={arg.fusions!r} has unknown entries {unknown}; valid: {FUSIONS}")
  if arg.eval_attacks not in EVAL_ATTACKS:
    raise ValueError(f"eval_attacks={arg.eval_attacks!r} is not one of {sorted(EVAL_ATTACKS)}")
  c = mlc.ConfigDict()
  c.task = "hotclip_fuse"
  c.seed = 0
  c.distributed = "off"
  c.workdirs = [[f"{arg.root}_{a}_{t}" for t in range(arg.prompts)] for a in arg.attacks.split("+")]
  c.anchor = [0, 0]  # (attack, prompt) of the anchor submodel
  c.base = ""  # optional: the pre-fine-tune workdir, evaluated for reference
  c.evaluate_submodels = arg.submodels
  c.fusions = fusions
  c.spec = {"residual": "auto", "head_mode": "per_head"}  # auto: "none" for sincos2d positions
  c.align = {
    "solver": "sinkhorn",
    "epsilon": arg.epsilon,
    "representation": "weights",
    "ground_metric": "sqeuclidean",
    "normalize": "l2",
    "cost_scale": "none",  # "max" divides the cost by its max first (relative ε; blurs maps)
    "threshold": 1e-6,
    "max_iterations": 5000,
  }
  c.acts_examples = 64  # training images that align.representation="acts" compares units on
  c.finetune = {
    "intra_steps": 0,  # TeCoA steps after each intra-attack fusion (Algorithm 1 line 20)
    "inter_steps": 0,  # FARE steps after the inter-attack fusion (unsupervised)
    "inter_attack": {
      "attack": "pgd",
      "eps": 4 / 255,
      "step_size": 1 / 255,
      "steps": 3,
      "decay": 1.0,
    },
  }
  c.export_layouts = ["openai"]
  c.eval = {
    "dataset": {"name": "synthetic", "split": "test", "seed": 0},
    "label_set": "shape",
    "templates": "all",  # "all" (template ensemble) or "first"
    "batch_size": 100,
    "max_examples": 500,
    "attacks": [dict(a) for a in EVAL_ATTACKS[arg.eval_attacks]],
  }
  if arg.smoke:
    c.eval.max_examples = 16
    c.eval.batch_size = 16
    c.eval.attacks = [
      _attack("pgd", 2, step_size=1 / 255, steps=2),
      _attack("apgd-ce", 4, steps=2),
    ]
    c.finetune.intra_steps = 2
    c.finetune.inter_steps = 2
    c.finetune.inter_attack.steps = 1
  return mlc.ConfigDict(c)
