"""Reference base models: the quickstart recipe trained longer, on the shapes world or a variant.

Every method reproduction (`scripts/reproduce.py`) starts from a base trained by this config
unless the paper needs otherwise (NCU: the same recipe on noisy pairs, `noise=0.2`).

Commands:
  python -m clipjax.main --config configs/base.py --workdir runs/base_s0              # seed 0
  python -m clipjax.main --config configs/base.py:seed=1 --workdir runs/base_s1
  python -m clipjax.main --config configs/base.py:world=distinct --workdir runs/base_distinct
  python -m clipjax.main --config configs/base.py:noise=0.4 --workdir runs/base_noisy40
  python -m clipjax.main --config configs/base.py:smoke --workdir /tmp/base_smoke     # seconds
  python -m clipjax.main \
    --config configs/base.py:init=assets/bases/base_s0,fresh_image_tower=True,seed=1,steps=800 \
    --workdir runs/tower_s1    # a new image tower trained against base_s0's frozen text tower

Worlds (`clipjax.data.synthetic`, each with ground truth):
  shapes    the quickstart world (5 shapes x 6 colours x 2 sizes x 9 cells, 5 held-out
            colour+shape combinations);
  distinct  + a tiny second object named in every caption: captions tell images apart;
  longtail  colour+shape classes in train and test follow a 10:1 exponential profile (the exact
            prior is `SyntheticShapes.class_prior`);
  many      7 shapes x 11 colours (77 colour+shape classes) with 12 prompts per label set.

Targets (issue 16): every single attribute >= 98 %, shape >= 85 %, held-out colour+shape
>= 60 %, in <= 45 minutes on 2 CPU cores. Status: the recipe is the quickstart's at
`steps` = 4x its length. Evaluated as the recipe now evaluates (caption prompts, posterior rule),
seeds 0-2 (shipped in assets/bases/) meet every target: size 99.3-99.4 %, shape 93.3-94.8 %,
held-out colour+shape 60.7-69.9 %; with the default prompts and CLIP's mean rule (their model
cards) size and held-out colour+shape fall short (docs/results.md, "Reference base models").
"""

import ml_collections as mlc

from clipjax import config_lib, runs


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(
    arg,
    smoke=False,
    seed=0,
    world="shapes",
    noise=0.0,  # fraction of training pairs whose caption is another pair's (NCU's premise)
    steps=4 * config_lib.QUICKSTART_STEPS,
    init="",  # start from this checkpoint (clipjax workdir or exported base) instead of scratch
    fresh_image_tower=False,  # with init: a new image tower against init's frozen text tower
    freeze_text=False,  # with init: train the image tower only (text tower, logit scale frozen)
  )
  c = config_lib.train_config()
  config_lib.apply_shapes_recipe(c, arg.world)
  c.seed = arg.seed
  c.total_steps = arg.steps
  if arg.noise:
    if not 0.0 < arg.noise < 1.0:
      raise ValueError(f"noise is a fraction of pairs in (0, 1), got {arg.noise}")
    c.data.train.corrupt = {"kind": "noisy", "fraction": arg.noise, "seed": 0}
  c.eval.every_steps = arg.steps // 4
  c.checkpoint.every_steps = arg.steps // 8
  if arg.smoke:
    config_lib.apply_smoke(c)
  if arg.init:
    runs.start_from(c, arg.init)  # its architecture, sizes and tokenizer, not the recipe's
  if (arg.fresh_image_tower or arg.freeze_text) and not arg.init:
    raise ValueError("fresh_image_tower/freeze_text need init= (the checkpoint to start from)")
  if arg.fresh_image_tower or arg.freeze_text:
    c.optim.frozen = [r"text/.*", r"logit_scale"]
  if arg.fresh_image_tower:
    c.model.reinit = [r"visual/.*"]
  return c
