"""Helpers shared by `configs/*.py`: `:arg` parsing, smoke overrides, validation.

Configs are plain `ml_collections.ConfigDict` data. Each `configs/<x>.py` defines
`get_config(arg: str | None)`; the string after ':' in `--config configs/x.py:arg` is a
comma-separated list of `key=value` or bare flags, e.g. `smoke` or `variant=B/32,smoke`.
"""

from __future__ import annotations

import ast
import difflib
from typing import Any

import ml_collections as mlc

__all__ = ["apply_smoke", "diff_configs", "parse_arg", "validate_train_config"]


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
  config.model.overrides = mlc.ConfigDict()
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
