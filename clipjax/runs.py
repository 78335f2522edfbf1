"""Run directories: who owns one, what it holds, and model construction from them.

Every task (`clipjax.tasks`) writes into its `--workdir` through this module, under one contract:

* `config.json`: the config of the run, with its `task`, written atomically (temp file + rename)
  only after the task has checked its config and data, so a failed start leaves at most this
  file and never a half-written one.
* `summary.json`: one JSON object written atomically at the end, `{"task": ..., "finished":
  bool, ...the task's results}`.
* Anything else the task saves (`checkpoints/`, `results.md`, figures, partial progress).

A directory *holds results* once it has anything beyond `config.json`, `metrics.jsonl` and an
empty `checkpoints/`. Such a directory is owned by the task and config in its `config.json`:
`open_run` refuses, before anything is written, another task there, or the same task with a
config that the task's `compare` rejects, naming what the directory holds and the way out.
A directory that holds no results (a failed start) is taken over by the new run. A directory
with results but no readable `config.json` is refused: nobody can tell which run it is.

Model construction: a clipjax workdir holds `config.json` and `checkpoints/` (orbax); anything
else given as a checkpoint path is an imported OpenAI / open_clip / HF checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
from etils import epath

from clipjax import checkpointing
from clipjax import metrics as metrics_lib
from clipjax import tree as tree_lib

__all__ = [
  "Run",
  "build_model",
  "checkpoint_settings",
  "start_from",
  "config_diffs",
  "open_run",
  "read_json",
  "read_run_config",
  "trained_tokenizer",
  "save_params_workdir",
  "write_json",
]

CONFIG = "config.json"
SUMMARY = "summary.json"
EXPORTED_TOKENIZER = "bpe.txt.gz"  # the merges file beside an exported checkpoint
# What a run that failed to start may leave behind: none of it is a result worth protecting.
_NOT_RESULTS = frozenset({CONFIG, CONFIG + ".tmp", "metrics.jsonl", "tb"})


def write_json(path: epath.Path | str, obj: Any) -> None:
  """Writes `obj` as strict JSON atomically: a reader sees the old file or the new one, never a
  part; non-finite floats become "NaN"/"Infinity" strings (`metrics.dumps`)."""
  path = epath.Path(path)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(metrics_lib.dumps(obj, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def read_json(path: epath.Path) -> dict[str, Any]:
  """A JSON object from `path`; a truncated or non-object file is an error naming it."""
  text = path.read_text()
  try:
    out = metrics_lib.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(
      f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}; "
      f"{len(text)} characters): it was probably cut short by an interrupted write. "
      "Restore it from a copy, or use a new --workdir."
    ) from e
  if not isinstance(out, dict):
    raise ValueError(f"{path} holds a JSON {type(out).__name__}, not an object.")
  return out


def config_diffs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """`dotted.key: old -> new` for every leaf that differs between two config dicts."""
  out: list[str] = []

  def walk(prefix, a, b):
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      for k in sorted(set(a) | set(b)):
        walk(f"{prefix}.{k}" if prefix else str(k), a.get(k), b.get(k))
    elif a != b:
      out.append(f"{prefix}: {a!r} -> {b!r}")

  walk("", old, new)
  return out


@dataclasses.dataclass(frozen=True)
class Run:
  """A checked run directory (from `open_run`); nothing is written until `start`.

  Attributes:
    path: the directory.
    task: the task writing it.
    config: the new run's config dict (what `start` writes to `config.json`).
    previous: the `config.json` already there (None if none).
    results: what the directory already holds (names), empty for a new or failed-start run.
    checkpoint_steps: committed checkpoint steps in `path/checkpoints`.
  """

  path: epath.Path
  task: str
  config: dict[str, Any]
  previous: dict[str, Any] | None
  results: tuple[str, ...]
  checkpoint_steps: tuple[int, ...]

  @property
  def resuming(self) -> bool:
    """Whether this run continues one that saved results here (same task, compatible config)."""
    return bool(self.results)

  def start(self) -> None:
    """Creates the directory and writes `config.json` (process 0 only)."""
    if jax.process_index() != 0:
      return
    self.path.mkdir(parents=True, exist_ok=True)
    if self.previous is not None and not self.results and self.previous != self.config:
      print(f"{self.path / CONFIG} was left by a run that saved nothing: replaced.", flush=True)
    write_json(self.path / CONFIG, self.config)

  def write_summary(self, summary: Mapping[str, Any]) -> None:
    """Writes `summary.json` = `{"task", "finished", **summary}` (process 0 only).

    `finished` is True unless `summary` says otherwise (a preempted training run).
    """
    if jax.process_index() != 0:
      return
    write_json(self.path / SUMMARY, {"finished": True, **summary, "task": self.task})


def _held_results(wdir: epath.Path, steps: tuple[int, ...]) -> tuple[str, ...]:
  if not wdir.is_dir():
    return ()
  out = []
  for p in sorted(wdir.iterdir(), key=lambda p: p.name):
    if p.name in _NOT_RESULTS:
      continue
    if p.name == "checkpoints" and p.is_dir():
      if steps:
        out.append(f"checkpoints/ (steps {list(steps)})")
      elif any(p.iterdir()):
        out.append("checkpoints/ (no finished checkpoint)")
      continue
    out.append(p.name + ("/" if p.is_dir() else ""))
  return tuple(out)


def open_run(
  workdir: str,
  config: Any,
  *,
  task: str,
  compare: Callable[[dict[str, Any], dict[str, Any]], list[str]] = config_diffs,
) -> Run:
  """Checks that `task` with `config` may write into `workdir`; writes nothing.

  Args:
    workdir: the run directory (need not exist).
    config: the run's `ConfigDict` (or dict).
    task: the task name recorded in `config.json`.
    compare: `(old config dict, new config dict) -> differences that forbid continuing`; by
      default every difference.

  Raises:
    ValueError: the directory holds results of another task, or of this task with a config
      `compare` rejects, or results without a readable `config.json`; the message names what
      is there and the way out.
  """
  wdir = epath.Path(workdir)
  as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  if hasattr(config, "to_json_best_effort"):
    as_dict = json.loads(config.to_json_best_effort())
  new = {**as_dict, "task": task}
  steps = tuple(checkpointing.saved_steps(str(wdir / "checkpoints")))
  results = _held_results(wdir, steps)
  previous = None
  config_path = wdir / CONFIG
  if config_path.exists():
    previous = read_json(config_path)
  elif results:
    raise ValueError(
      f"Refusing to write into {workdir!r}: it holds {', '.join(results)} but no {CONFIG}, so "
      "nothing tells which run wrote it. Use another --workdir."
    )
  if previous is None or not results:
    return Run(wdir, task, new, previous, (), steps)
  old_task = previous.get("task", "train")
  if old_task != task:
    raise ValueError(
      f"Refusing to write into {workdir!r}: it holds the results of a {old_task!r} run "
      f"({', '.join(results)}), and this is a {task!r} run, which would overwrite them. "
      f"Use another --workdir (e.g. {str(wdir).rstrip('/')}_{task})."
    )
  diffs = compare(previous, new)
  if diffs:
    raise ValueError(
      f"Refusing to continue the {task!r} run in {workdir!r} (it holds {', '.join(results)}): "
      "its config.json differs from this run in\n  "
      + "\n  ".join(diffs)
      + "\nUse another --workdir, or restore the previous settings."
    )
  return Run(wdir, task, new, previous, results, steps)


def save_params_workdir(params: dict, run_config: dict[str, Any], path: str) -> str:
  """Writes `params` as a clipjax workdir (`config.json` + `checkpoints/` at step 0).

  Args:
    params: model params (no `method` entry).
    run_config: a training config dict describing the architecture (e.g. a submodel's
      `config.json`); `clipjax.model.load(path)` rebuilds the model from it.
    path: the new workdir (must not hold checkpoints yet).
  """
  wdir = epath.Path(path)
  if (wdir / "checkpoints").exists():
    raise FileExistsError(f"{path!r} already holds checkpoints; use a new workdir")
  wdir.mkdir(parents=True, exist_ok=True)
  write_json(wdir / CONFIG, {"task": "train", **run_config})
  ckpt = checkpointing.Checkpointer(str(wdir / "checkpoints"), save_every=1, async_save=False)
  try:
    ckpt.save(0, {"params": jax.device_get(params)}, force=True)
    ckpt.wait()
  finally:
    ckpt.close()
  return str(wdir)


def trained_tokenizer(path: str) -> str:
  """The tokenizer a checkpoint was trained with, as a `data.tokenizer` value.

  `data.tokenizer` of a clipjax run; the `bpe.txt.gz` beside an exported checkpoint directory
  (`scripts/export_base.py` puts one there); else "" (OpenAI's).
  """
  import clipjax.model as model_lib

  if model_lib.is_workdir(path):
    return (read_run_config(path).get("data") or {}).get("tokenizer") or ""
  exported = epath.Path(path) / EXPORTED_TOKENIZER
  return str(exported) if exported.exists() else ""


def checkpoint_settings(path: str) -> dict[str, Any]:
  """The `model` and `data` settings a run starting from checkpoint `path` must share with it.

  Returns `{"model": {"name", "overrides"}, "data": {"image_size", "context_length",
  "tokenizer"}}`. For a clipjax workdir they are its `config.json`'s. For an imported checkpoint
  (e.g. an exported base in `assets/bases/`) they describe the config inferred from its weights:
  "tiny" with every field that differs from it as an override, so a fine-tune's own
  `config.json` rebuilds the same architecture, and the tokenizer beside the checkpoint.
  """
  import clipjax.model as model_lib

  if model_lib.is_workdir(path):
    cfg = read_run_config(path)
    data = cfg["data"]
    return {
      "model": {"name": cfg["model"]["name"], "overrides": cfg["model"].get("overrides") or {}},
      "data": {k: data[k] for k in ("image_size", "context_length", "tokenizer")},
    }
  config = model_lib.load(path).config
  ref = model_lib.get_config("tiny")
  overrides: dict[str, Any] = {}
  for f in dataclasses.fields(config):
    value, default = getattr(config, f.name), getattr(ref, f.name)
    if dataclasses.is_dataclass(value):
      skip = {"vision": "image_size", "text": "context_length"}[f.name]
      sub = {
        g.name: getattr(value, g.name)
        for g in dataclasses.fields(value)
        if g.name != skip and getattr(value, g.name) != getattr(default, g.name)
      }
      if sub:
        overrides[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in sub.items()}
    elif value != default:
      overrides[f.name] = value
  return {
    "model": {"name": "tiny", "overrides": overrides},
    "data": {
      "image_size": config.vision.image_size,
      "context_length": config.text.context_length,
      "tokenizer": trained_tokenizer(path),
    },
  }


def start_from(config: Any, path: str) -> None:
  """Points a run config (`ml_collections.ConfigDict`) at checkpoint `path`, in place.

  Sets `model.init_checkpoint` and takes the model section (replacing the config's own
  overrides: an exported base loads with its sin-cos table folded into learned positions, which
  a recipe's `pos_embed` override would add again), image size, context length and tokenizer
  from `checkpoint_settings(path)`.
  """
  settings = checkpoint_settings(path)
  config.model.init_checkpoint = path
  config.model.name = settings["model"]["name"]
  config.model.overrides = settings["model"]["overrides"]
  config.data.update(settings["data"])


def read_run_config(workdir: str) -> dict[str, Any]:
  """The `config.json` of a run directory; errors name the file."""
  path = epath.Path(workdir) / CONFIG
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a clipjax workdir?")
  return read_json(path)


def build_model(
  model_cfg: dict[str, Any], image_size: int, context_length: int, rng: jax.Array
) -> Any:
  """`clipjax.model.create` from a `config.model` dict; the data sizes override the model's.

  With `model_cfg["init_checkpoint"]` set, starts from that clipjax workdir or imported
  checkpoint instead of a random init; `model_cfg["reinit"]` (regexes of parameter names, e.g.
  `["visual/.*"]`) then draws those parameters afresh from `rng` (a new image tower against a
  trained text tower, as in OT fusion's different-initialisation control).
  """
  import clipjax.model as model_lib

  overrides = model_lib.flatten_overrides(dict(model_cfg.get("overrides") or {}))
  overrides["vision.image_size"] = image_size
  overrides["text.context_length"] = context_length
  init = model_cfg.get("init_checkpoint") or ""
  reinit = list(model_cfg.get("reinit") or [])
  if not init:
    if reinit:
      raise ValueError(f"model.reinit={reinit} needs a model.init_checkpoint to start from")
    return model_lib.create(model_cfg["name"], rng, **overrides)
  model = model_lib.load(init) if model_lib.is_workdir(init) else model_lib.load(init, **overrides)
  if not reinit:
    return model
  # Leaves named by model.reinit are drawn afresh from `rng`; the rest keep the checkpoint's.
  mask = tree_lib.match_mask(model.params, reinit)
  fresh = model.init_params(rng)
  params = jax.tree.map(lambda m, new, old: new if m else old, mask, fresh, model.params)
  return dataclasses.replace(model, params=params)
