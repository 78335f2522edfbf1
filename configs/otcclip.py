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


def method_spec(
  name: str, *, steps_per_epoch: int, context_length: int, bank_size: int, match_alpha: float
) -> dict:
  """`config.method` for one of `METHOD_NAMES`."""
  e = steps_per_epoch
  cadence = {"match_start": e, "match_period": 2 * e, "match_duration": e}
  if name == "clip":
    return {"name": "clip", "kwargs": {}}
  if name == "roclip":
    return {"name": "roclip", "kwargs": {"pool": "bank", "bank_size": bank_size, **cadence}}
  if name == "safeclip":
    return {
      "name": "safeclip",
      "kwargs": {
        "unimodal_steps": e // 2,
        "clip_warmup_steps": e // 2,
        "steps_per_epoch": e,
        "safe_init": 0.5,
        "safe_growth": 0.01,
        "safe_max": 0.85,
        "gmm_iters": 10,
        "aug_shift": 2,
        "aug_jitter": 0.1,
        "token_dropout": 0.1,
      },
    }
  if name == "otcclip":
    return {
      "name": "otcclip",
      "kwargs": {
        "pool": "bank+batch",
        "bank_size": bank_size,
        "context_length": context_length,
        "shortlist_k": 8,
        "match_alpha": match_alpha,
        **cadence,
        "ot_epsilon": 0.05,
        "ot_iters": 30,
        "ot_solver": "kernel",
        "ot_chunk": 4096,
        "exclude_sos": True,
        "exclude_eot": False,
        "inter_weight": 0.1,
        "inter_temperature": 0.05,
        "inter_batch": 32,
        "intra_weight": 0.1,
        "intra_mode": "distance",
        "aug_shift": 2,
        "aug_jitter": 0.1,
        "token_dropout": 0.1,
      },
    }
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
    image_size=48,
    width=128,
    layers=4,
    smoke=False,
  )
  if arg.method not in METHOD_NAMES:
    raise ValueError(f"method must be one of {METHOD_NAMES}, got {arg.method!r}")
  if arg.attack not in ATTACKS:
    raise ValueError(f"attack must be one of {ATTACKS}, got {arg.attack!r}")
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
  c.eval.every_steps = 0
  c.eval.max_examples = 1000
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
    n_train = train_size
  steps_per_epoch = max(1, n_train // c.data.batch_size)
  if arg.smoke:
    steps_per_epoch = 1
  c.method = method_spec(
    arg.method,
    steps_per_epoch=steps_per_epoch,
    context_length=c.data.context_length,
    bank_size=bank,
    match_alpha=arg.match_alpha,
  )
  return c
