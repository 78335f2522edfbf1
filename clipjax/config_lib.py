"""Helpers shared by `configs/*.py`: `:arg` parsing, smoke overrides, validation.

Configs are plain `ml_collections.ConfigDict` data. Each `configs/<x>.py` defines
`get_config(arg: str | None)`; the string after ':' in `--config configs/x.py:arg` is a
comma-separated list of `key=value` or bare flags, e.g. `smoke` or `variant=B/32,smoke`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import types
from typing import Any

import ml_collections as mlc

from clipjax.data.tokenizer import Tokenizer

__all__ = [
  "QUICKSTART_STEPS",
  "SHAPES_WORLDS",
  "apply_shapes_recipe",
  "apply_smoke",
  "diff_configs",
  "load",
  "load_module",
  "parse_arg",
  "shapes_context_length",
  "shapes_world",
  "train_config",
  "unknown_key",
  "validate_train_config",
]


def _literal(v: str) -> Any:
  try:
    return ast.literal_eval(v)
  except (ValueError, SyntaxError):
    return v


def parse_arg(arg: str | None, **defaults: Any) -> mlc.ConfigDict:
  """Parses `'k=v,flag'` into a ConfigDict typed by `defaults`.

  Bare words set a boolean default to True. Unknown keys are an error with a suggestion,
  so `:smok` fails instead of silently training the full config.

  Args:
    arg: the text after ':' in the config path, or None.
    **defaults: the accepted keys and their default values (their types are enforced).
  """
  out = mlc.ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      close = difflib.get_close_matches(key, list(defaults), n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"Unknown config argument {key!r}; accepted: {sorted(defaults)}.{hint}")
    if not has_value:
      if not isinstance(defaults[key], bool):
        raise ValueError(f"Config argument {key!r} needs a value ({key}=...).")
      out[key] = True
      continue
    default = defaults[key]
    parsed = _literal(value.strip())
    if isinstance(default, bool):
      if not isinstance(parsed, bool):
        raise ValueError(f"Config argument {key!r} expects True/False, got {value!r}.")
    elif isinstance(default, str):
      parsed = value.strip()
    elif isinstance(default, int | float) and not isinstance(parsed, int | float):
      raise ValueError(f"Config argument {key!r} expects a number, got {value!r}.")
    elif isinstance(default, float):
      parsed = float(parsed)
    out[key] = parsed
  return out


def load_module(path: str | os.PathLike) -> types.ModuleType:
  """The config file `path` as a module (what `--config path` executes); errors name the file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found")
  name = "_clipjax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise AttributeError(f"config file {path!r} defines no get_config()")
  return module


def load(spec: str | os.PathLike) -> mlc.ConfigDict:
  """The config `--config spec` names: `path` or `path:arg` (ml_collections' config-file form).

  Example: `load("configs/base.py:seed=1")` is `configs/base.py`'s `get_config("seed=1")`.
  """
  path, _, arg = os.fspath(spec).partition(":")
  module = load_module(path)
  return module.get_config(arg) if arg else module.get_config()


def unknown_key(config: Any, dotted: str) -> str | None:
  """Why `dotted` (e.g. "optim.lrr") names no key of `config`, or None if it does.

  The message names the bad key, the closest keys at its level (always, however far off the
  typo) and every valid key at that level.
  """
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
    where = ".".join(parts[:i]) or "the config"
    if not hasattr(node, "keys"):
      return f"config key {dotted!r}: {where!r} is a value ({type(node).__name__}), not a section"
    keys = sorted(str(k) for k in node)
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=3, cutoff=0.0)
      return (
        f"unknown config key {'.'.join(parts[: i + 1])!r}; closest: "
        f"{', '.join(close) or '(none)'}. Valid keys in {where}: {', '.join(keys)}"
      )
    node = node[part]
  return None


def apply_smoke(config: mlc.ConfigDict) -> mlc.ConfigDict:
  """Shrinks a training config to a few seconds of work (the `:smoke` variant).

  Keeps every code path (evaluation, checkpointing, logging) but at tiny sizes.
  """
  config.total_steps = 4
  config.log_every_steps = 1
  config.checkpoint.every_steps = 2
  config.eval.every_steps = 4
  config.eval.max_examples = 64
  config.data.batch_size = 16
  config.data.image_size = 32
  config.model.name = "tiny"
  # The model shrinks to the variant's defaults, but keeps the vocabulary of its tokenizer.
  text = config.model.overrides.get("text") or {}
  vocab = {k: text[k] for k in ("vocab_size", "eot_id") if k in text}
  config.model.overrides = mlc.ConfigDict({"text": vocab} if vocab else {})
  return config


def diff_configs(old: dict[str, Any], new: dict[str, Any], keys: list[str]) -> list[str]:
  """Lists `dotted.key: old -> new` for every leaf under the dotted `keys` that differs."""

  def get(d, dotted):
    for part in dotted.split("."):
      d = d.get(part) if isinstance(d, dict) else None
    return d

  def walk(prefix, a, b, out):
    if isinstance(a, dict) and isinstance(b, dict):
      for k in sorted(set(a) | set(b)):
        walk(f"{prefix}.{k}", a.get(k), b.get(k), out)
    elif a != b:
      out.append(f"{prefix}: {a!r} -> {b!r}")

  out: list[str] = []
  for k in keys:
    walk(k, get(old, k), get(new, k), out)
  return out


def validate_train_config(config: mlc.ConfigDict, num_devices: int) -> None:
  """Raises `ValueError` naming the offending key for inconsistent settings."""
  problems = []
  if config.total_steps <= 0:
    problems.append(f"total_steps must be > 0, got {config.total_steps}")
  bs = config.data.batch_size
  accum = config.optim.grad_accum_steps
  if bs % accum:
    problems.append(f"data.batch_size={bs} must be divisible by optim.grad_accum_steps={accum}")
  elif (bs // accum) % num_devices:
    problems.append(
      f"data.batch_size / optim.grad_accum_steps = {bs // accum} must be divisible by the "
      f"number of devices ({num_devices})"
    )
  if not 0.0 <= config.optim.warmup_frac <= 1.0:
    problems.append(f"optim.warmup_frac must be in [0, 1], got {config.optim.warmup_frac}")
  if problems:
    raise ValueError("Invalid config:\n  " + "\n  ".join(problems))


def train_config() -> mlc.ConfigDict:
  """The full training config skeleton (quickstart values); experiment configs edit a copy.

  Every key the trainer reads is here with a one-line comment, so `--config.x=y` overrides
  and typos are checked against one schema.
  """
  c = mlc.ConfigDict()
  c.task = "train"
  c.seed = 0
  c.total_steps = 1000  # optimizer steps (the schedule spans them)
  c.log_every_steps = 50  # console line + metrics.jsonl event
  c.distributed = "auto"  # jax.distributed.initialize(): "auto", "on" or "off"
  c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}  # -1: all remaining devices
  c.tensorboard = False  # also write tensorboardX events (pip install 'clipjax[tb]')

  c.model = mlc.ConfigDict()
  c.model.name = "tiny"  # a key of clipjax.model.VARIANTS
  c.model.init_checkpoint = ""  # clipjax workdir or OpenAI/open_clip/HF checkpoint to start from
  c.model.reinit = []  # regexes of parameters drawn afresh instead of taken from init_checkpoint
  # Width-128 towers; fixed 2-D sin-cos positions and mean pooling are what lets a tiny ViT
  # learn position words on CPU (shared/QUICKSTART-NOTES.md).
  c.model.overrides = {
    "embed_dim": 128,
    "vision": {
      "patch_size": 8,
      "width": 128,
      "layers": 4,
      "heads": 4,
      "mlp_dim": 512,
      "pool": "mean",
      "pos_embed": "learned+sincos2d",
    },
    "text": {"width": 128, "layers": 4, "heads": 4, "mlp_dim": 512},
  }

  c.data = mlc.ConfigDict()
  c.data.train = {"name": "synthetic", "split": "train", "seed": 0}  # see clipjax.train.data_setup
  c.data.batch_size = 128  # global batch
  c.data.image_size = 48  # model input resolution (overrides model vision.image_size)
  # BPE merges file, or "clipjax:<name>" for a shipped one ("": the init checkpoint's own if it
  # is a clipjax run, else OpenAI's vocabulary, shipped with clipjax)
  c.data.tokenizer = ""
  c.data.context_length = 32  # tokens per caption (overrides model text.context_length)
  c.data.train_labels = []  # label sets sent to the train step as batch["labels/<name>"]
  c.data.augment = False  # random-resized-crop/flip would destroy position words
  c.data.num_workers = 0  # grain workers; 0 is fastest on 2 cores
  c.data.max_bad_fraction = 0.01  # stop if more records than this are undecodable

  c.method = mlc.ConfigDict()
  c.method.name = "clip"  # a key of clipjax.methods.REGISTRY
  c.method.kwargs = mlc.ConfigDict()

  c.optim = mlc.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.end_lr_frac = 0.0
  c.optim.warmup_frac = 0.05
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.eps = 1e-6
  c.optim.weight_decay = 0.1
  c.optim.clip_grad_norm = 1.0
  c.optim.grad_accum_steps = 1
  c.optim.wd_exclude = [r".*/bias", r".*/scale", r".*embedding.*", r"logit_.*"]  # no weight decay
  c.optim.frozen = []  # regexes of parameters that are not trained

  c.checkpoint = mlc.ConfigDict()
  c.checkpoint.every_steps = 250
  c.checkpoint.max_to_keep = 2
  c.checkpoint.keep_period = 0  # also keep every N-th step (0: none)
  c.checkpoint.async_save = True

  c.eval = mlc.ConfigDict()
  c.eval.every_steps = 500  # and always at the end
  c.eval.batch_size = 256
  c.eval.max_examples = 1000  # per dataset
  c.eval.datasets = {"shapes_test": {"name": "synthetic", "split": "test", "seed": 0}}
  c.eval.zeroshot_ensemble = "mean"  # class prompts: "mean" (CLIP) or "posterior" (their mass)

  c.stages = []  # optional [{"name", "steps", "method": {...}, "frozen": [...]}, ...]
  return c


QUICKSTART_STEPS = 1000
"""Optimizer steps of the quickstart (about 10 minutes on 2 CPU cores; docs/results.md)."""

SHAPES_WORLDS: dict[str, dict[str, Any]] = {
  "shapes": {},
  "distinct": {"second_object": True},
  "longtail": {"long_tail": 10.0},
  "many": {
    "shapes": ("circle", "square", "triangle", "star", "cross", "diamond", "ring"),
    "colours": (
      "red",
      "green",
      "blue",
      "yellow",
      "purple",
      "orange",
      "cyan",
      "pink",
      "white",
      "black",
      "brown",
    ),
    "num_held_out": 7,
    "label_templates": "rich",
  },
}
"""Options of `clipjax.data.synthetic.SyntheticShapes` for each named world (configs/base.py)."""


def shapes_world(world: str, split: str, seed: int = 0) -> dict[str, Any]:
  """The data spec of split `split` of the named shapes world (a key of `SHAPES_WORLDS`)."""
  if world not in SHAPES_WORLDS:
    raise ValueError(f"Unknown world {world!r}; valid worlds: {sorted(SHAPES_WORLDS)}.")
  return {"name": "synthetic", "split": split, "seed": seed, **SHAPES_WORLDS[world]}


def shapes_context_length(world: str) -> int:
  """Tokens per caption that fit every caption of the named world (with sot/eot)."""
  return 32 if SHAPES_WORLDS[world].get("second_object") else 16


def apply_shapes_recipe(config: mlc.ConfigDict, world: str = "shapes") -> mlc.ConfigDict:
  """The tuned tiny-CLIP recipe on a shapes world (quickstart and reference bases).

  `train_config()` holds the model; this sets what the sweep in docs/results.md chose on top,
  with training and test data from the named world (a key of `SHAPES_WORLDS`).
  """
  config.total_steps = QUICKSTART_STEPS
  # Templated captions need little text depth: 2 text blocks cost 0.79 CPU-s per step against
  # 1.03 with 4, and the steps saved go to the image tower (docs/results.md, the sweep).
  config.model.overrides.text.layers = 2
  # The worlds' own BPE (OpenAI's, restricted to the words the built-in worlds use): the same
  # token splits with a 757-row embedding instead of 49,408, so the model is 5 MB, not 30, and
  # a step is ~10 % faster (docs/results.md, the sweep).
  config.data.tokenizer = "clipjax:worlds"
  vocab = Tokenizer(config.data.tokenizer).vocab_size
  config.model.overrides.text.vocab_size = vocab
  config.model.overrides.text.eot_id = vocab - 1
  config.data.train = shapes_world(world, "train")
  config.data.context_length = shapes_context_length(world)
  # Zero-shot prompts: every caption the world writes of a class, a class scored by its
  # captions' share of the image->text softmax (selected on the val split over the default and
  # rich prompt sets and over averaging the captions: docs/results.md, "Prompt sets").
  config.eval.datasets = {
    "shapes_test": {**shapes_world(world, "test"), "label_templates": "captions"}
  }
  config.eval.zeroshot_ensemble = "posterior"
  return config
