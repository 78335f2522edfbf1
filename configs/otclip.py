"""OT-CLIP (Shi, Fan, Yan, ICML 2024): the OT loss family on the synthetic shapes world.

Command:
  python -m clipjax.main --config configs/otclip.py:loss=fgw --workdir /tmp/otclip_fgw
  python -m clipjax.main --config configs/otclip.py:loss=dbot,smoke --workdir /tmp/otclip_smoke
  python -m clipjax.main --config configs/otclip.py:loss=infonce,small,steps=400 --workdir /tmp/b
  python -m clipjax.main --config configs/otclip.py:loss=fgw,recipe,seed=1 --workdir /tmp/fgw_s1

Arguments (after ':'): `loss` = entropic | dbot | uot | fgw | ufgw | infonce (CLIP's loss, the
baseline); `infonce_weight` (0 = the OT loss alone, the paper's Table 1; 1 = the authors' released
recipe, OT + InfoNCE summed); `temperature` = logit_scale (ε = 1/logit_scale, learned) | fixed
(ε = `epsilon`, the released code's 0.01); `num_iters` (Sinkhorn K, released code 5); `grad` =
unroll | implicit; `steps` (0: 1000, or with `recipe` the reference length, 4x the quickstart's);
`recipe` (the reference recipe of `configs/base.py` — model, tokenizer, data, schedule and its
evaluation — with this loss instead of InfoNCE: `loss=infonce,recipe,seed=s` is
`configs/base.py:seed=s`, so the shipped bases are its InfoNCE runs); `world` (with `recipe`: a
key of `config_lib.SHAPES_WORLDS`); `small` (a smaller model, the earlier 300-step grid of
docs/results/otclip.md); `seed`; `smoke`.

Choosing K: one Sinkhorn iteration is a column update *then* a row update, so `loss=entropic`
with `num_iters=1` is not InfoNCE (its loss differs by several per cent). The paper's
"one row normalisation = InfoNCE" limit is `uot` with a free column marginal (method kwargs
`rho_b=0`, `num_iters=1`), which equals image→text InfoNCE at temperature ε exactly (tested).

`ufgw` is unbalanced fused Gromov-Wasserstein with the square-loss GW term on in-batch cosine
distances and KL-relaxed marginals (`clipjax/methods/otclip.py`); the similarity-form structure
term of the paper's code is unbounded below once the marginals are relaxed and is not used.

OT inference (FGW zero-shot, label-prior Sinkhorn, partial-OT selective classification) is not a
training setting: it is applied to a trained checkpoint's embeddings through
`clipjax.methods.otclip.score_fn` / `prior_sinkhorn` / `partial_ot_selective`
(`python scripts/reproduce.py otclip` trains the losses and runs this inference).
"""

import ml_collections as mlc

from clipjax import config_lib

# Per-variant hyper-parameters (ε-relative: ρ is the marginal-KL weight divided by ε, α the FGW
# structural weight on the cost scale, δ the DBOT box half-width).
VARIANTS = {
  "entropic": {},
  "dbot": {"delta": 0.5},
  "uot": {"rho_a": 1.0, "rho_b": 1.0},
  "fgw": {"alpha": 0.1, "outer_iters": 3},
  "ufgw": {"alpha": 0.1, "outer_iters": 3, "rho_a": 1.0, "rho_b": 1.0},
}


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(
    arg,
    loss="entropic",
    infonce_weight=0.0,
    temperature="logit_scale",
    epsilon=0.01,
    num_iters=5,
    grad="unroll",
    steps=0,
    recipe=False,
    world="shapes",
    small=False,
    seed=0,
    smoke=False,
  )
  if arg.loss not in (*VARIANTS, "infonce"):
    raise ValueError(f"loss must be one of {[*VARIANTS, 'infonce']}, got {arg.loss!r}")
  if arg.recipe and arg.small:
    raise ValueError("recipe and small are two different models: pick one")
  if arg.world != "shapes" and not arg.recipe:
    raise ValueError(f"world={arg.world!r} needs recipe (the other configs train on shapes)")
  c = config_lib.train_config()
  c.seed = arg.seed
  c.eval.every_steps = 0
  if arg.recipe:
    # configs/base.py's recipe and schedule, so that seeds pair with the reference bases.
    config_lib.apply_shapes_recipe(c, arg.world)
    c.total_steps = arg.steps or 4 * config_lib.QUICKSTART_STEPS
    c.eval.every_steps = c.total_steps // 4
    c.checkpoint.every_steps = c.total_steps // 8
  else:
    c.total_steps = arg.steps or 1000
  if arg.small:
    # Fits 5 runs of a few hundred steps into ~10 min on a busy 2-core machine.
    c.data.batch_size = 64
    c.data.image_size = 32
    c.model.overrides.embed_dim = 64
    c.model.overrides.vision.update(width=64, layers=2, heads=2, mlp_dim=256)
    c.model.overrides.text.update(width=64, layers=2, heads=2, mlp_dim=256)
    c.eval.max_examples = 512
    c.log_every_steps = 50
    c.checkpoint.every_steps = c.total_steps
  if arg.loss == "infonce":
    c.method.name = "clip"
  else:
    c.method.name = "otclip"
    c.method.kwargs = {
      "loss": arg.loss,
      "temperature": arg.temperature,
      "epsilon": arg.epsilon,
      "num_iters": arg.num_iters,
      "grad": arg.grad,
      "direction": "both",
      "ot_weight": 1.0,
      "infonce_weight": arg.infonce_weight,
      "threshold": 1e-3,
      **VARIANTS[arg.loss],
    }
  if arg.smoke:
    config_lib.apply_smoke(c)
  return c
