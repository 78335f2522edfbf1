"""The `hotclip_fuse` task: fuse an [attack][prompt] grid of submodel workdirs and evaluate.

`python -m clipjax.main --config configs/hotclip_fuse.py --workdir DIR` (see that config) loads
the submodels from their checkpoints one at a time (`clipjax.model.load`), builds the fused
models asked for in `config.fusions` (`clipjax.fusion.grid`) — "hierarchical" (HOT-CLIP
Algorithm 1, with optional intra-attack TeCoA and inter-attack FARE fine-tunes run by the
ordinary trainer), "direct_ot", "average" — plus the output "ensemble", and evaluates every
submodel and fused model on clean and robust zero-shot accuracy
(`clipjax.evaluation.zeroshot_robustness`, the configured attacks).

Writes, under DIR: `fused/<name>/` (a clipjax workdir: `config.json` of the anchor submodel and
`checkpoints/` holding the fused params; `clipjax.model.load` opens it), `export/<name>-<layout>/`
(OpenAI/open_clip or HF layout, `clipjax.model.convert.export`), `summary.json` (per model:
clean/robust accuracy, fusion seconds, peak RSS growth during fusion, map identity mass) and
`results.md` (the table).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from clipjax import model as model_lib
from clipjax import runs
from clipjax.data import pipeline, registry
from clipjax.data.sources import label_sets_of
from clipjax.data.tokenizer import Tokenizer
from clipjax.evaluation import zeroshot, zeroshot_robustness
from clipjax.fusion import align as align_lib
from clipjax.fusion import grid as grid_lib
from clipjax.fusion import spec as spec_lib
from clipjax.model import convert
from clipjax.tasks import train as train_task

__all__ = ["run"]


def _grid(config: mlc.ConfigDict) -> list[list[str]]:
  grid = [[str(w) for w in row] for row in config.workdirs]
  if not grid or any(not row for row in grid):
    raise ValueError("config.workdirs must be a non-empty [attack][prompt] list of workdirs")
  for a, row in enumerate(grid):
    for t, wd in enumerate(row):
      if not model_lib.is_workdir(wd):
        raise FileNotFoundError(f"config.workdirs[{a}][{t}] = {wd!r} is not a clipjax workdir")
  return grid


def _finetune(
  params: dict, base_cfg: dict, method: dict, frozen: list[str], steps: int, out: str, seed: int
) -> dict:
  """Fine-tunes `params` for `steps` with the trainer (`base_cfg` with `method`, `frozen`)."""
  init = runs.save_params_workdir(params, base_cfg, out + "_init")
  cfg = mlc.ConfigDict(json.loads(json.dumps(base_cfg)))
  cfg.model.init_checkpoint = init
  cfg.method = method
  cfg.stages = []
  cfg.optim.frozen = list(frozen)
  cfg.total_steps = int(steps)
  cfg.seed = seed
  cfg.checkpoint.every_steps = int(steps)
  cfg.checkpoint.async_save = False
  cfg.eval.every_steps = int(steps)
  cfg.eval.max_examples = min(int(cfg.eval.max_examples), 64)
  train_task.run(cfg, out)
  return model_lib.load(out).params


def _finetunes(config: mlc.ConfigDict, grid: list[list[str]], anchor_cfg: dict, wdir) -> tuple:
  """The intra-attack TeCoA and inter-attack FARE fine-tunes of "hierarchical" (None: skipped)."""
  ft, t0 = config.finetune, config.anchor[1]

  def intra(a: int, params: dict) -> dict:
    cfg = runs.read_run_config(grid[a][t0])
    out = str(wdir / "finetune" / f"intra_{a}")
    return _finetune(params, cfg, cfg["method"], cfg["optim"]["frozen"], ft.intra_steps, out,
                     config.seed)  # fmt: skip

  def inter(params: dict) -> dict:
    method = {"name": "hotclip_fare", "kwargs": ft.inter_attack.to_dict()}
    frozen = [r"text/.*", r"logit_scale", r"method/.*"]
    out = str(wdir / "finetune" / "inter")
    return _finetune(params, anchor_cfg, method, frozen, ft.inter_steps, out, config.seed)

  return (intra if ft.intra_steps > 0 else None), (inter if ft.inter_steps > 0 else None)


def _evaluator(config: mlc.ConfigDict, model: Any, anchor_cfg: dict) -> tuple[Callable, list]:
  """`(evaluate, templates)`: `evaluate(encode_image) -> clean/robust zero-shot accuracy` on the
  first `config.eval.max_examples` examples (held on the host once for all models), with the
  anchor's text tower and logit scale as the zero-shot head."""
  mcfg, ev = model.config, config.eval
  tok = Tokenizer(anchor_cfg["data"].get("tokenizer") or None, mcfg.text.context_length)
  source = registry.build_source(ev.dataset.to_dict(), mcfg.vision.image_size)
  sets = label_sets_of(source)
  if ev.label_set not in sets:
    raise ValueError(f"eval.label_set={ev.label_set!r} is not one of {sorted(sets)}")
  ls = sets[ev.label_set]
  templates = list(ls.templates) if ev.templates == "all" else [ls.templates[0]]
  batches, seen = [], 0
  for b in pipeline.iterate_eval(
    source, batch_size=ev.batch_size, image_size=mcfg.vision.image_size, tokenize=tok
  ):
    batches.append({"image": np.asarray(b["image"]), "labels": dict(b["labels"]),
                    "valid": np.asarray(b["valid"])})  # fmt: skip
    seen += int(np.sum(b["valid"]))
    if seen >= ev.max_examples:
      break
  enc_txt = jax.jit(lambda p, ids: model.encode_text(p, ids).emb)
  clf = zeroshot.build_classifier(
    lambda ids: enc_txt(model.params, ids),
    tok,
    ls.classnames,
    templates,
    logit_scale=float(np.exp(np.asarray(model.params["logit_scale"]))),
  )
  evaluate = functools.partial(
    zeroshot_robustness,
    batches=batches,
    weights_cd=jnp.asarray(clf.weights_cd),
    logit_scale=clf.logit_scale,
    attacks=[dict(a) for a in ev.attacks],
    key=jax.random.key(config.seed),
    label_key=f"labels/{ev.label_set}",
    max_examples=ev.max_examples,
  )
  return evaluate, templates


def _alignment_images(anchor_cfg: dict, model: Any, n: int) -> np.ndarray:
  """The first `n` images of the anchor's training data ([n, s, s, 3]): what activation-based
  alignment (`align.representation="acts"`) compares units on (never the evaluation images)."""
  if n < 1:
    raise ValueError(f"acts_examples={n} must be >= 1 for align.representation='acts'")
  size = model.config.vision.image_size
  tok = Tokenizer(anchor_cfg["data"].get("tokenizer") or None, model.config.text.context_length)
  source = registry.build_source(dict(anchor_cfg["data"]["train"]), size)
  images, seen = [], 0
  for b in pipeline.iterate_eval(source, batch_size=min(n, 256), image_size=size, tokenize=tok):
    images.append(np.asarray(b["image"])[np.asarray(b["valid"])])
    seen += len(images[-1])
    if seen >= n:
      break
  return np.concatenate(images)[:n]


def run(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fuses `config.workdirs` per `config.fusions`, evaluates, saves and exports; see module doc."""
  grid = _grid(config)
  unknown = sorted(set(config.fusions) - set(grid_lib.FUSIONS))
  if unknown:
    raise ValueError(
      f"config.fusions has unknown entries {unknown}; valid: {list(grid_lib.FUSIONS)}"
    )
  run_dir = runs.open_run(workdir, config, task="hotclip_fuse")
  wdir = run_dir.path
  leftovers = [wdir / d for d in ("fused", "finetune") if (wdir / d).exists()]
  if leftovers:
    raise ValueError(
      f"Refusing to fuse into {workdir!r}: it already holds {[str(p) for p in leftovers]} from "
      "a run of this config, and hotclip_fuse does not resume. Delete them to start over, or "
      "use another --workdir."
    )
  a0, t0 = int(config.anchor[0]), int(config.anchor[1])
  anchor_cfg = runs.read_run_config(grid[a0][t0])
  model = model_lib.load(grid[a0][t0])
  mcfg = model.config
  residual = config.spec.residual
  if residual == "auto":
    residual = "none" if mcfg.vision.pos_embed == "learned+sincos2d" else "mean"
  spec = spec_lib.vit_spec_for(mcfg, residual=residual, head_mode=config.spec.head_mode)
  options = align_lib.AlignOptions(**config.align.to_dict())

  evaluate, templates = _evaluator(config, model, anchor_cfg)
  acts_fn = None
  if options.representation == "acts":
    pixels = _alignment_images(anchor_cfg, model, int(config.acts_examples))
    acts_fn = align_lib.vit_activations(model, pixels)
  run_dir.start()

  def load(wd: str) -> dict:
    return model_lib.load(wd).params

  def evaluate_params(params: dict) -> dict[str, Any]:
    return evaluate(lambda x: model.encode_image(params, x).emb)

  def save_and_export(name: str, params: dict) -> dict[str, str]:
    out = {"saved": runs.save_params_workdir(params, anchor_cfg, str(wdir / "fused" / name))}
    for layout in config.export_layouts:
      target = wdir / "export" / f"{name}-{layout}"
      try:
        written = convert.export(params, mcfg, str(target), layout=layout, overwrite=True)
        out[f"export/{layout}"] = str(written)
      except ValueError as e:
        out[f"export/{layout}"] = f"not exportable: {e}"
    return out

  results: dict[str, dict[str, Any]] = {}
  if config.base:
    results["base"] = evaluate_params(load(config.base))
  if config.evaluate_submodels:
    for a, row in enumerate(grid):
      for t, wd in enumerate(row):
        results[f"sub[{a}][{t}]"] = {"workdir": wd, **evaluate_params(load(wd))}
  intra, inter = _finetunes(config, grid, anchor_cfg, wdir)
  results |= grid_lib.fuse_and_evaluate(
    config.fusions,
    [[functools.partial(load, wd) for wd in row] for row in grid],
    spec=spec,
    options=options,
    anchor=(a0, t0),
    encode_image=model.encode_image,
    evaluate=evaluate,
    intra_finetune=intra,
    inter_finetune=inter,
    on_fused=save_and_export,
    acts_fn=acts_fn,
  )
  if "hierarchical" in results:
    ft = config.finetune
    results["hierarchical"]["finetune_steps"] = {"intra": ft.intra_steps, "inter": ft.inter_steps}
  attacks = [dict(a) for a in config.eval.attacks]
  summary = {
    "grid": grid,
    "anchor": [a0, t0],
    "spec_residual": residual,
    "align": config.align.to_dict(),
    "model_param_mb": sum(np.asarray(x).nbytes for x in jax.tree.leaves(model.params)) / 2**20,
    "eval": {"label_set": config.eval.label_set, "templates": templates, "attacks": attacks},
    "models": results,
  }
  table = grid_lib.format_table(results, attacks)
  (wdir / "results.md").write_text(table)
  run_dir.write_summary(summary)
  print(table, flush=True)
  return summary
