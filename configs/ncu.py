"""NCU (Han et al., ICCV 2025): unlearning noisy correspondence, plus its baselines and ablations.

One config, one trainer. `variant` picks what runs from `model.init_checkpoint` (`init=...`):
  ncu      stage "hn" (hardest-negative prompts, Eq. 3-6; visual encoder frozen) then stage
           "unlearn" (masked-OT re-alignment, Eq. 8-12; prompts frozen).
  v3 / v4  the paper's Table 5 ablations: only false-negative / only false-positive unlearning.
  clip     continued plain CLIP fine-tuning on the same data for the same number of steps.
  ga       gradient ascent (-L_CLIP on the forget set, label-smoothed L_CLIP on the rest; Table 4);
           with ascent_weight=0 it only drops the forget set (a filtering baseline).
  pretrain the reference model: a tiny CLIP trained from scratch on the noisy synthetic world.

The small-scale reproduction of docs/results/ncu.md is `python scripts/reproduce.py ncu`: it
fine-tunes reference bases trained on noisy pairs (`configs/base.py:noise=0.4`) for 60 + 240
steps, evaluated with caption prompts, and tabulates the seeds. Commands:
  python -m clipjax.main --config configs/ncu.py:variant=pretrain --workdir /tmp/ncu_pre
  python -m clipjax.main --config configs/ncu.py:init=/tmp/ncu_pre --workdir /tmp/ncu_s0
  python -m clipjax.main --config configs/ncu.py:variant=ga,init=/tmp/ncu_pre --workdir /tmp/ga_s0
  python -m clipjax.main --config configs/ncu.py:smoke --workdir /tmp/ncu_smoke  # seconds

Paper vs. official code (`hhc1997/NCU`): method-level choices are kwargs of `ncu_hn` /
`ncu_unlearn` (see `clipjax/methods/ncu.py`); `code_defaults` switches all of them, and the
following, to the released code's behaviour:
  stage 1 trainable: the prompts and the whole text tower, visual encoder frozen (paper: "with
    the visual encoder frozen"; the first term of Eq. 5, "to retain the original CLIP
    knowledge", has no gradient unless the text tower trains) / also the image projection
    `visual/proj` and `logit_scale`, which the code's model keeps outside `model.visual` (code);
  stage 2 trainable: everything but the prompts (paper) / also frozen: the text positional
    embedding and text blocks 0-4 of 12 (code; for L text blocks the first round(5L/12) are
    frozen, halves rounded up: `code_frozen_blocks`; the code's attempt to freeze the token
    embedding does not take effect, so it trains);
  forget-set size: round(P·N) (paper: "the lowest P %") / int(P·N) (code);
  optimizer state: `stage_optimizer=shared` (one AdamW state across stages; the paper says
    nothing) / `fresh` (the code builds one optimizer per stage; the learning-rate schedule runs
    over the global step in both) — `auto` picks shared for the paper, fresh for the code;
  stage-2 Sinkhorn: L1 marginal error 1e-3, ≤ 100 iterations (paper: Eq. 9 is the exact plan) /
    1e-4/(ε N), ≤ 100 iterations: the code's stop rule (Σ|Δu| < 1e-4, ≤ 100 iterations) in ott's
    terms; it reproduces the official plans' marginal error on CLIP-like batches (2e-5 at N = 128,
    5e-6 at N = 512) and, like them, stops at 100 iterations on well-separated ones.
Departures from the code in both modes (stated, not configurable):
  * no EDA augmentation of the caption behind the negative prompt: the code passes each caption
    through EDA (one of WordNet synonym replacement, synonym insertion, random swap, random
    deletion) before splicing the prompts; half of it needs the WordNet corpus, and captions
    here are token ids, so the negative text is built from the unaugmented caption;
  * one learning rate (`lr`) for both stages, the prompts' own rate through `prompt_scale`; the
    code uses 1e-4 (text tower), 3e-4 (prompts) in stage 1 and 5e-5 in stage 2.
"""

import ml_collections as mlc

from clipjax import config_lib, runs

_VARIANTS = ("ncu", "v3", "v4", "clip", "ga", "pretrain")
_STAGE_OPTIMIZERS = ("auto", "shared", "fresh")
# The code freezes text blocks 0-4 of its 12 in stage 2.
_CODE_FROZEN_TEXT_BLOCKS = (5, 12)
# The code's Sinkhorn stops when Σ|Δu| < this (u in cost units), or after 100 iterations.
_CODE_POTENTIAL_TOL = 1e-4


def code_frozen_blocks(layers: int) -> int:
  """Text blocks the code freezes in stage 2, for a text tower of `layers` blocks (12 → 5)."""
  frozen, of = _CODE_FROZEN_TEXT_BLOCKS
  return (2 * frozen * layers + of) // (2 * of)  # round(5L/12), halves up


def _frozen(code: bool, text_layers: int) -> tuple[list[str], list[str]]:
  """Frozen-parameter regexes of stage 1 ("hn") and stage 2 ("unlearn")."""
  hn = [r"visual/(?!proj$).*"] if code else [r"visual/.*", r"logit_scale"]
  ul = [r"method/prompts"]
  if code:
    ul += [r"text/positional_embedding"]
    ul += [rf"text/blocks/{i}/.*" for i in range(code_frozen_blocks(text_layers))]
  return hn, ul


def _sinkhorn_threshold(code: bool, epsilon: float, batch: int) -> float:
  """L1 marginal-error tolerance of the stage-2 plan (see the module docstring)."""
  return _CODE_POTENTIAL_TOL / (epsilon * batch) if code else 1e-3


def _ncu_kwargs(code: bool, forget_fraction: float) -> dict:
  """Hyper-parameters shared by both NCU stages (every value explicit)."""
  return {
    "forget_fraction": forget_fraction,  # P: lowest-confidence share of the global batch
    "forget_count": "floor" if code else "round",  # |D_FG| = int(P·N) (code) or round(P·N)
    "confidence": "i2t" if code else "both",  # Eq. 2 averages both directions; code: i2t
    "alpha": -0.7,  # lower margin of <t_i, t_i^Neg> (Eq. 3)
    "beta": -0.2,  # upper margin
  }


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(
    arg,
    smoke=False,
    variant="ncu",
    init="",
    seed=0,
    noise=0.4,  # fraction of training pairs with swapped captions (known ground truth)
    hn_steps=40,  # stage 1 (paper: 2 epochs)
    ul_steps=160,  # stage 2 (paper: 8 epochs)
    pretrain_steps=300,
    # pretrain: both towers and the embedding (quickstart: 128; halved for a loaded 2-core box);
    # a fine-tune takes its architecture from `init`.
    width=64,
    layers=2,
    batch=128,
    forget_fraction=0.4,
    prompt_scale=1.0,  # prompts' learning-rate multiplier (see ncu_hn)
    ascent_weight=1.0,  # ga: weight of -L_CLIP on the forget set (0: drop the forget set)
    lr=2e-4,
    code_defaults=False,
    stage_optimizer="auto",  # shared | fresh AdamW state per stage | auto (code: fresh)
    # Zero-shot evaluation: "default" (the world's three prompts, CLIP's mean rule) or
    # "captions" (every caption of a class, posterior rule: the reference bases' own evaluation,
    # config_lib.apply_shapes_recipe).
    prompts="default",
  )
  if arg.prompts not in ("default", "captions"):
    raise ValueError(f"prompts must be 'default' or 'captions', got {arg.prompts!r}")
  if arg.variant not in _VARIANTS:
    raise ValueError(f"variant must be one of {_VARIANTS}, got {arg.variant!r}")
  if arg.stage_optimizer not in _STAGE_OPTIMIZERS:
    raise ValueError(
      f"stage_optimizer must be one of {_STAGE_OPTIMIZERS}, got {arg.stage_optimizer!r}"
    )
  c = config_lib.train_config()
  c.seed = arg.seed
  c.data.image_size = 32
  c.data.batch_size = arg.batch
  w = arg.width
  c.model.overrides.embed_dim = w
  c.model.overrides.vision.update({"width": w, "layers": arg.layers, "heads": 2, "mlp_dim": 4 * w})
  c.model.overrides.text.update({"width": w, "layers": arg.layers, "heads": 2, "mlp_dim": 4 * w})
  c.data.train = {
    "name": "synthetic",
    "split": "train",
    "seed": 0,
    "corrupt": {"kind": "noisy", "fraction": arg.noise, "seed": 0},
  }
  test = {"name": "synthetic", "split": "test", "seed": 0}
  if arg.prompts == "captions":
    test["label_templates"] = "captions"
    c.eval.zeroshot_ensemble = "posterior"
  c.eval.datasets = {"clean_test": test}
  c.model.init_checkpoint = arg.init
  c.log_every_steps = 20
  code = arg.code_defaults

  if arg.variant == "pretrain":
    c.total_steps = arg.pretrain_steps
    c.optim.lr = 1e-3
  else:
    c.optim.lr = arg.lr
    c.optim.warmup_frac = 0.05
    c.total_steps = arg.hn_steps + arg.ul_steps
    c.eval.every_steps = c.total_steps
    shared = _ncu_kwargs(code, arg.forget_fraction)
    if arg.variant == "clip":
      c.method = {"name": "clip", "kwargs": {}}
    elif arg.variant == "ga":
      c.method = {
        "name": "ncu_ga",
        "kwargs": {
          "forget_fraction": arg.forget_fraction,
          "forget_count": shared["forget_count"],
          "confidence": shared["confidence"],
          "label_smoothing": 0.1,
          "ascent_weight": arg.ascent_weight,
        },
      }
    else:
      unlearn = {"ncu": "both", "v3": "false_negatives", "v4": "false_positives"}[arg.variant]
      hn = {
        **shared,
        "num_prompts": 8,  # m shared prompt vectors (code: 8)
        "prompt_scale": arg.prompt_scale,
        "lam": 10.0,  # λ of Eq. 6 (code: 10)
        "relation": "code" if code else "paper",
      }
      ul = {
        **shared,
        "num_prompts": 8,
        "prompt_scale": arg.prompt_scale,
        "gamma": 0.7,  # Eq. 10 (code default)
        "epsilon": 0.03,  # Sinkhorn ε (code)
        "max_iterations": 100,  # the code's cap
        "threshold": _sinkhorn_threshold(code, 0.03, arg.batch),  # L1 marginal error
        "normalize_cost": code,  # code divides the cost by its max
        "targets": "code" if code else "paper",
        "sep_on": "all" if code else "retained",
        "unlearn": unlearn,
      }
      hn_frozen, ul_frozen = _frozen(code, arg.layers)
      fresh = arg.stage_optimizer == "fresh" or (arg.stage_optimizer == "auto" and code)
      c.method = {"name": "ncu_unlearn", "kwargs": ul}
      c.stages = [
        {
          "name": "hn",
          "steps": arg.hn_steps,
          "method": {"name": "ncu_hn", "kwargs": hn},
          "frozen": hn_frozen,
        },
        {
          "name": "unlearn",
          "steps": arg.ul_steps,
          "method": {"name": "ncu_unlearn", "kwargs": ul},
          "frozen": ul_frozen,
          "fresh_optimizer": fresh,  # code: a new AdamW for stage 2
        },
      ]

  # The trainer saves only on multiples of every_steps; the last step must be saved for the
  # pre-trained reference to be usable as `init=`.
  c.checkpoint.every_steps = c.total_steps
  if arg.smoke:
    config_lib.apply_smoke(c)
    c.data.image_size = 32
    c.eval.max_examples = 64
    c.eval.every_steps = 4
    if c.stages:
      hn_frozen, ul_frozen = _frozen(code, 2)  # the tiny smoke model has 2 text blocks
      for st, frozen in zip(c.stages, (hn_frozen, ul_frozen), strict=True):
        st["steps"] = 2
        st["frozen"] = frozen
        st["method"]["kwargs"]["num_prompts"] = 2
      c.stages[1]["method"]["kwargs"]["threshold"] = _sinkhorn_threshold(
        code, 0.03, c.data.batch_size
      )
  if arg.init and arg.variant != "pretrain":
    # The architecture, image size, context length and tokenizer are the checkpoint's (a clipjax
    # workdir, e.g. a `configs/base.py:noise=0.4` reference, or an exported base such as
    # assets/bases/base_s0); `width`/`layers` apply to `variant=pretrain` only.
    runs.start_from(c, arg.init)
    if c.stages:
      for st, frozen in zip(c.stages, _frozen(code, _text_layers(c.model)), strict=True):
        st["frozen"] = frozen
  return c


def _text_layers(model_cfg: mlc.ConfigDict) -> int:
  """Text blocks of the model a config section builds (name + overrides)."""
  from clipjax import model as model_lib

  overrides = model_lib.flatten_overrides(model_cfg.overrides.to_dict())
  return model_lib.get_config(model_cfg.name, **overrides).text.layers
