"""OTCCLIP and its baselines (CLIP, RoCLIP-style, SafeCLIP-style) on poisoned synthetic data.

Commands:
  python -m clipjax.main --config configs/otcclip.py --workdir /tmp/otc            # otcclip
  python -m clipjax.main --config configs/otcclip.py:method=roclip --workdir /tmp/ro
  python -m clipjax.main --config configs/otcclip.py:method=clip,steps=600 --workdir /tmp/c
  python -m clipjax.main --config configs/otcclip.py:smoke --workdir /tmp/otc_smoke

Arguments (`:k=v,...`): method (otcclip | roclip | safeclip | clip), attack (poison |
backdoor), steps, batch, seed, poison_seed, targets (T target images), captions (K captions per
target), bd_fraction / bd_target / patch_fraction (backdoor: poisoned fraction, colour+shape
target class, trigger side / image side), train_size (clean training pairs), bank_size,
match_alpha (otcclip), image_size, width / layers (both towers), smoke.
Training data: the shapes world with, on the colour+shape label set, either RoCLIP-protocol
targeted poisoning (`clipjax.data.corrupt.TargetedPoisoning`; ASR = zero-shot accuracy on
`asr_source()`) or a checkerboard patch-trigger backdoor (`clipjax.data.corrupt.Backdoor`; ASR =
zero-shot accuracy on `triggered_source(test split)`). `python scripts/reproduce.py otcclip`
trains and scores these runs. Every method hyper-parameter is explicit below; the re-matching
cadence is in steps, derived from the epoch length like RoCLIP's break_epoch = 2.
"""

import ml_collections as mlc

from clipjax import config_lib

METHOD_NAMES = ("otcclip", "roclip", "safeclip", "clip")
ATTACKS = ("poison", "backdoor")
WORLDS = ("shapes", "distinct")


def poison_spec(*, train_size: int, targets: int, captions: int, seed: int, poison_seed: int):
  """The poisoned training data spec (also used to rebuild the ASR source)."""
  return {
    "name": "synthetic",
    "split": "train",
    "seed": seed,
    "num_examples": train_size,
    "corrupt": {
      "kind": "poison",
      "label_set": "colour+shape",
      "num_targets": targets,
      "captions_per_target": captions,
      "seed": poison_seed,
    },
  }


def backdoor_spec(
  *,
  train_size: int,
  fraction: float,
  target_class: int,
  patch_fraction: float,
  seed: int,
  poison_seed: int,
) -> dict:
  """The backdoored training data spec (also used to rebuild the triggered test set)."""
  return {
    "name": "synthetic",
    "split": "train",
    "seed": seed,
    "num_examples": train_size,
    "corrupt": {
      "kind": "backdoor",
      "fraction": fraction,
      "label_set": "colour+shape",
      "target_class": target_class,
      "seed": poison_seed,
      "patch_fraction": patch_fraction,
      "corner": "bottom_right",
      "caption_pool": 256,
    },
  }


ABLATIONS = {
  "full": {},
  # Attribution (issue 20): global-cosine re-matching on the same pool with the same losses.
  "global_match": {"matching": "global"},
  "global_match_only": {"matching": "global", "inter_weight": 0.0, "intra_weight": 0.0},
  # OT re-ranking without the inter/intra terms.
  "match_only": {"inter_weight": 0.0, "intra_weight": 0.0},
  # Each alignment term alone on top of CLIP (no re-matching), and both.
  "inter_only": {"matching": "none", "intra_weight": 0.0},
  "intra_only": {"matching": "none", "inter_weight": 0.0},
  "no_match": {"matching": "none"},
  # The intra term as first implemented (minimised by collapsing an item's tokens).
  "intra_distance": {"intra_mode": "distance"},
}
"""OTCCLIP variants (`variant=`): overrides of the full method's fields."""

TRUTH_LABELS = ("colour+shape", "size", "position")
"""Label sets sent to the train step; equal labels in all of them = an equivalent caption."""


def method_spec(
  name: str,
  *,
  steps_per_epoch: int,
  total_steps: int,
  context_length: int,
  bank_size: int,
  match_alpha: float,
  variant: str = "full",
  enqueue: str = "matching",
  cross_aug: bool = True,
) -> dict:
  """`config.method` for one of `METHOD_NAMES` (`variant` only for otcclip; `enqueue` and
  `cross_aug` only for roclip, published defaults)."""
  e = steps_per_epoch
  cadence = {"match_start": e, "match_period": 2 * e, "match_duration": e}
  aug = {"aug_shift": 2, "aug_jitter": 0.1, "token_dropout": 0.1}
  if name == "clip":
    return {"name": "clip", "kwargs": {}}
  if name == "roclip":
    return {
      "name": "roclip",
      "kwargs": {
        "pool": "bank",
        "bank_size": bank_size,
        **cadence,
        "enqueue": enqueue,  # published: the bank is written on re-matching epochs only
        "cross_aug": cross_aug,  # published README command: --cross_aug
        **aug,
        "truth_labels": list(TRUTH_LABELS),
      },
    }
  if name == "safeclip":
    # Published: 5 in-modal + 1 CLIP warm-up epochs of 32, scaled to this run's length.
    return {
      "name": "safeclip",
      "kwargs": {
        "unimodal_steps": round(total_steps * 5 / 32),
        "clip_warmup_steps": max(1, round(total_steps * 1 / 32)),
        "steps_per_epoch": e,
        "first_threshold": 0.9,
        "safe_growth": 0.01,
        "safe_max": 0.85,
        "gmm_iters": 10,
        **aug,
      },
    }
  if name == "otcclip":
    if variant not in ABLATIONS:
      raise ValueError(f"variant must be one of {sorted(ABLATIONS)}, got {variant!r}")
    kwargs = {
      "matching": "ot",
      "pool": "bank+batch",
      "bank_size": bank_size,
      "context_length": context_length,
      "enqueue": "always",
      "shortlist_k": 8,
      "match_alpha": match_alpha,
      **cadence,
      "ot_epsilon": 0.05,
      "ot_iters": 30,
      "ot_solver": "kernel",
      "ot_chunk": 4096,
      "exclude_sos": True,
      "exclude_eot": False,
      "clip_weight": 1.0,
      "inter_weight": 0.1,
      "inter_temperature": 0.05,
      "inter_batch": 32,
      "intra_weight": 0.1,
      # Non-collapsing (clipjax/methods/otcclip.py); "distance" is the intra_distance variant.
      "intra_mode": "divergence",
      **aug,
      "cross_aug": False,
      "truth_labels": list(TRUTH_LABELS),
    }
    kwargs.update(ABLATIONS[variant])
    return {"name": "otcclip", "kwargs": kwargs}
  raise ValueError(f"method must be one of {METHOD_NAMES}, got {name!r}")


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(
    arg,
    method="otcclip",
    attack="poison",
    steps=600,
    batch=128,
    seed=0,
    poison_seed=0,
    targets=8,
    captions=50,
    bd_fraction=0.05,
    bd_target=0,
    patch_fraction=0.125,
    train_size=20000,
    bank_size=1024,
    match_alpha=0.5,
    variant="full",  # otcclip: a key of ABLATIONS
    enqueue="matching",  # roclip: "matching" (published) or "always"
    cross_aug=True,  # roclip: RoCLIP's --cross_aug (published README command)
    world="shapes",  # "shapes" or "distinct" (captions tell images apart: second_object)
    image_size=48,
    width=128,
    layers=4,
    smoke=False,
  )
  if arg.method not in METHOD_NAMES:
    raise ValueError(f"method must be one of {METHOD_NAMES}, got {arg.method!r}")
  if arg.attack not in ATTACKS:
    raise ValueError(f"attack must be one of {ATTACKS}, got {arg.attack!r}")
  if arg.world not in WORLDS:
    raise ValueError(f"world must be one of {WORLDS}, got {arg.world!r}")
  world = config_lib.SHAPES_WORLDS[arg.world]
  c = config_lib.train_config()
  c.seed = arg.seed
  c.total_steps = arg.steps
  c.log_every_steps = 25
  c.data.batch_size = arg.batch
  c.data.image_size = arg.image_size
  ov = c.model.overrides
  ov.embed_dim = arg.width
  ov.vision.update(width=arg.width, layers=arg.layers, mlp_dim=4 * arg.width)
  ov.text.update(width=arg.width, layers=arg.layers, mlp_dim=4 * arg.width)
  c.data.train_labels = list(TRUTH_LABELS)
  c.eval.every_steps = 0
  c.eval.max_examples = 1000
  c.eval.datasets = {"shapes_test": config_lib.shapes_world(arg.world, "test")}
  train_size, targets, captions, bank = arg.train_size, arg.targets, arg.captions, arg.bank_size
  if arg.smoke:
    config_lib.apply_smoke(c)
    train_size, targets, captions, bank = 400, 2, 4, 32
  if arg.attack == "poison":
    c.data.train = poison_spec(
      train_size=train_size,
      targets=targets,
      captions=captions,
      seed=0,
      poison_seed=arg.poison_seed,
    )
    c.data.train.update(world)
    n_train = train_size + targets * captions
  else:
    c.data.train = backdoor_spec(
      train_size=train_size,
      fraction=arg.bd_fraction,
      target_class=arg.bd_target,
      patch_fraction=arg.patch_fraction,
      seed=0,
      poison_seed=arg.poison_seed,
    )
    c.data.train.update(world)
    n_train = train_size
  steps_per_epoch = max(1, n_train // c.data.batch_size)
  if arg.smoke:
    steps_per_epoch = 1
  c.method = method_spec(
    arg.method,
    steps_per_epoch=steps_per_epoch,
    total_steps=c.total_steps,
    context_length=c.data.context_length,
    bank_size=bank,
    match_alpha=arg.match_alpha,
    variant=arg.variant,
    enqueue=arg.enqueue,
    cross_aug=arg.cross_aug,
  )
  return c
