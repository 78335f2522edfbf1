"""Run directories and model construction from configs, shared by the trainer and evaluator.

A clipjax workdir holds `config.json` (the run's config) and `checkpoints/` (orbax). Anything
else given as a checkpoint path is an imported OpenAI / open_clip / HF checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath

__all__ = ["build_model", "flatten_overrides", "is_workdir", "load_model", "read_run_config"]


def flatten_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
  """`{"vision": {"pool": "mean"}}` -> `{"vision.pool": "mean"}` (dotted keys kept)."""
  out = {}
  for k, v in overrides.items():
    if isinstance(v, dict):
      out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
    else:
      out[k] = v
  return out


def is_workdir(path: str) -> bool:
  p = epath.Path(path)
  return (p / "checkpoints").is_dir() and (p / "config.json").exists()


def read_run_config(workdir: str) -> dict[str, Any]:
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a clipjax workdir?")
  return json.loads(path.read_text())


def build_model(
  model_cfg: dict[str, Any], image_size: int, context_length: int, rng: jax.Array
) -> Any:
  """`clipjax.model.create` from a `config.model` dict; the data sizes override the model's.

  With `model_cfg["init_checkpoint"]` set, starts from that clipjax workdir or imported
  checkpoint instead of a random init.
  """
  import clipjax.model as model_lib

  overrides = flatten_overrides(dict(model_cfg.get("overrides") or {}))
  overrides["vision.image_size"] = image_size
  overrides["text.context_length"] = context_length
  init = model_cfg.get("init_checkpoint") or ""
  if not init:
    return model_lib.create(model_cfg["name"], rng, **overrides)
  if is_workdir(init):
    return load_model(init)
  return model_lib.load(init, **overrides)


def load_model(path: str, step: int | None = None) -> Any:
  """A trained clipjax workdir (latest or given step) or an imported checkpoint file/dir."""
  import clipjax.model as model_lib
  from clipjax import checkpointing

  if not is_workdir(path):
    return model_lib.load(path)
  cfg = read_run_config(path)
  abstract = model_lib.abstract(
    cfg["model"]["name"],
    **{
      **flatten_overrides(dict(cfg["model"].get("overrides") or {})),
      "vision.image_size": cfg["data"]["image_size"],
      "text.context_length": cfg["data"]["context_length"],
    },
  )
  params = checkpointing.restore_params(str(epath.Path(path) / "checkpoints"), step)
  params = {k: v for k, v in params.items() if k != "method"}
  return dataclasses.replace(abstract, params=jax.tree.map(jnp.asarray, params))
