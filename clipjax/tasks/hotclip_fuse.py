"""The `hotclip_fuse` task: fuse an [attack][prompt] grid of submodel workdirs and evaluate.

`python -m clipjax.main --config configs/hotclip_fuse.py --workdir DIR` (see that config) loads
the submodels from their checkpoints one at a time (`clipjax.model.load`), builds the fused
models asked for in `config.fusions` — "hierarchical" (HOT-CLIP Algorithm 1, with optional
intra-attack TeCoA and inter-attack FARE fine-tunes run by the ordinary trainer), "direct_ot",
"average" — plus the output "ensemble", and evaluates every submodel and fused model on clean
and robust zero-shot accuracy (`clipjax.evaluation.robust_accuracy`, the configured attacks).

Writes, under DIR: `fused/<name>/` (a clipjax workdir: `config.json` of the anchor submodel and
`checkpoints/` holding the fused params; `clipjax.model.load` opens it), `export/<name>-<layout>/`
(OpenAI/open_clip or HF layout, `clipjax.model.convert.export`), `summary.json` (per model:
clean/robust accuracy, fusion seconds, peak RSS growth during fusion, map identity mass) and
`results.md` (the table).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from clipjax import measure, runs
from clipjax import model as model_lib
from clipjax.data import pipeline, registry
from clipjax.data.sources import label_sets_of
from clipjax.data.tokenizer import Tokenizer
from clipjax.evaluation import robust_accuracy, zeroshot
from clipjax.fusion import align as align_lib
from clipjax.fusion import hierarchical
from clipjax.fusion import spec as spec_lib
from clipjax.tasks import train as train_task

__all__ = ["FUSIONS", "run"]

FUSIONS = ("hierarchical", "direct_ot", "average", "ensemble")


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


def _label_set(config, source):
  sets = label_sets_of(source)
  if config.eval.label_set not in sets:
    raise ValueError(f"eval.label_set={config.eval.label_set!r} is not one of {sorted(sets)}")
  return sets[config.eval.label_set]


def _identity_mass(infos) -> dict[str, float]:
  vals = []
  stack = [infos]
  while stack:
    x = stack.pop()
    if x is None:
      continue
    if isinstance(x, dict):
      vals += [float(m.identity_mass) for m in x.values() if np.isfinite(m.identity_mass)]
    elif isinstance(x, tuple | list):
      stack.extend(x)
  if not vals:
    return {}
  return {"identity_mass_mean": float(np.mean(vals)), "identity_mass_min": float(np.min(vals))}


def run(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fuses `config.workdirs` per `config.fusions`, evaluates, saves and exports; see module doc."""
  grid = _grid(config)
  unknown = sorted(set(config.fusions) - set(FUSIONS))
  if unknown:
    raise ValueError(f"config.fusions has unknown entries {unknown}; valid: {list(FUSIONS)}")
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
  n_loads = [0]

  def loader(wd: str) -> Callable[[], dict]:
    def load():
      n_loads[0] += 1
      return model_lib.load(wd).params

    return load

  loaders = [[loader(wd) for wd in row] for row in grid]

  # Evaluation data, held on the host once for all models.
  image_size = mcfg.vision.image_size
  tok = Tokenizer(anchor_cfg["data"].get("tokenizer") or None, mcfg.text.context_length)
  source = registry.build_source(config.eval.dataset.to_dict(), image_size)
  ls = _label_set(config, source)
  templates = list(ls.templates) if config.eval.templates == "all" else [ls.templates[0]]
  label_key = f"labels/{config.eval.label_set}"
  batches, seen = [], 0
  for b in pipeline.iterate_eval(
    source, batch_size=config.eval.batch_size, image_size=image_size, tokenize=tok
  ):
    batches.append({"image": np.asarray(b["image"]), "labels": dict(b["labels"]),
                    "valid": np.asarray(b["valid"])})  # fmt: skip
    seen += int(np.sum(b["valid"]))
    if seen >= config.eval.max_examples:
      break
  run_dir.start()
  enc_txt = jax.jit(lambda p, ids: model.encode_text(p, ids).emb)
  clf = zeroshot.build_classifier(
    lambda ids: enc_txt(model.params, ids),
    tok,
    ls.classnames,
    templates,
    logit_scale=float(np.exp(np.asarray(model.params["logit_scale"]))),
  )
  w_cd = jnp.asarray(clf.weights_cd)
  scale = clf.logit_scale
  attacks = [dict(a) for a in config.eval.attacks]

  def evaluate(encode: Callable[[jax.Array], jax.Array]) -> dict[str, Any]:
    res = robust_accuracy(
      lambda x: scale * (encode(x) @ w_cd.T),
      batches,
      attacks,
      key=jax.random.key(config.seed),
      label_key=label_key,
      max_examples=config.eval.max_examples,
    )
    out = {"n": res["n"], "clean_acc": res["clean_acc"], "robust_acc_worst": res["robust_acc"]}
    for a in res["attacks"]:
      out[f"robust_acc/{a['label']}"] = a["robust_acc"]
    out["eval_seconds"] = res["seconds"]
    return out

  def evaluate_params(params: dict) -> dict[str, Any]:
    return evaluate(lambda x: model.encode_image(params, x).emb)

  results: dict[str, dict[str, Any]] = {}
  u_bytes = int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(model.params)))
  if config.base:
    results["base"] = evaluate_params(model_lib.load(config.base).params)
  if config.evaluate_submodels:
    for a, row in enumerate(grid):
      for t, wd in enumerate(row):
        results[f"sub[{a}][{t}]"] = {"workdir": wd, **evaluate_params(model_lib.load(wd).params)}

  def timed(name: str, fn: Callable[[], Any]) -> Any:
    n_loads[0] = 0
    out, seconds, growth = measure.peak_rss_growth(fn)
    info = {"fusion_seconds": seconds, "checkpoint_loads": n_loads[0]}
    if growth is not None:
      info["peak_rss_growth_mb"] = growth / 2**20
    results[name] = info
    return out

  ft = config.finetune
  ft_seconds = [0.0]

  def finetune(*args) -> dict:
    start = time.perf_counter()
    out = _finetune(*args)
    ft_seconds[0] += time.perf_counter() - start
    return out

  fused: dict[str, dict] = {}
  for name in config.fusions:
    if name == "hierarchical":
      intra = inter = None
      if ft.intra_steps > 0:

        def intra(a, params):
          cfg = runs.read_run_config(grid[a][t0])
          out = str(wdir / "finetune" / f"intra_{a}")
          return finetune(params, cfg, cfg["method"], cfg["optim"]["frozen"], ft.intra_steps,
                           out, config.seed)  # fmt: skip

      if ft.inter_steps > 0:

        def inter(params):
          method = {"name": "hotclip_fare", "kwargs": ft.inter_attack.to_dict()}
          frozen = [r"text/.*", r"logit_scale", r"method/.*"]
          out = str(wdir / "finetune" / "inter")
          return finetune(params, anchor_cfg, method, frozen, ft.inter_steps, out, config.seed)

      h = timed(
        name,
        lambda intra=intra, inter=inter: hierarchical.hierarchical_fuse(
          loaders,
          spec=spec,
          options=options,
          anchor_attack=a0,
          anchor_prompt=t0,
          intra_finetune=intra,
          inter_finetune=inter,
        ),
      )
      results[name].update(_identity_mass((h.intra_infos, h.inter_infos)))
      results[name]["finetune_steps"] = {"intra": ft.intra_steps, "inter": ft.inter_steps}
      # fusion_seconds includes the fine-tunes; finetune_seconds is their share.
      results[name]["finetune_seconds"] = ft_seconds[0]
      fused[name] = h.params
    elif name == "direct_ot":
      f = timed(
        name,
        lambda: hierarchical.direct_ot(loaders, spec=spec, options=options, anchor=(a0, t0)),
      )
      results[name].update(_identity_mass(f.infos))
      fused[name] = f.params
    elif name == "average":
      fused[name] = timed(name, lambda: hierarchical.direct_average(loaders, spec=spec))
    else:
      members = [model_lib.load(wd).params for row in grid for wd in row]
      results[name] = {"members": len(members), "forward_passes_per_image": len(members)}
      results[name].update(
        evaluate(
          lambda x, ms=members: hierarchical.ensemble_encode_image(model.encode_image, ms, x)[0]
        )
      )
      del members

  from clipjax.model import convert

  for name, params in fused.items():
    results[name].update(evaluate_params(params))
    path = runs.save_params_workdir(params, anchor_cfg, str(wdir / "fused" / name))
    results[name]["saved"] = path
    for layout in config.export_layouts:
      target = wdir / "export" / f"{name}-{layout}"
      try:
        written = convert.export(params, mcfg, str(target), layout=layout, overwrite=True)
        results[name][f"export/{layout}"] = str(written)
      except ValueError as e:
        results[name][f"export/{layout}"] = f"not exportable: {e}"

  summary = {
    "grid": grid,
    "anchor": [a0, t0],
    "spec_residual": residual,
    "align": config.align.to_dict(),
    "model_param_mb": u_bytes / 2**20,
    "eval": {"label_set": config.eval.label_set, "templates": templates, "attacks": attacks},
    "models": results,
  }
  table = format_table(results, attacks)
  (wdir / "results.md").write_text(table)
  run_dir.write_summary(summary)
  print(table, flush=True)
  return summary


def format_table(results: dict[str, dict[str, Any]], attacks: list[dict]) -> str:
  """Markdown table: model, clean, robust per attack, worst case, fusion time, peak RSS."""
  labels = [a.get("label") or a["name"] for a in attacks]
  head = [
    "model",
    "clean",
    *labels,
    "worst",
    "fusion s (excl. fine-tune)",
    "peak RSS +MB",
    "identity mass",
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

  def f(v, fmt="{:.3f}"):
    return "" if v is None else fmt.format(v)

  for name, r in results.items():
    fuse_s = r.get("fusion_seconds")
    if fuse_s is not None:
      fuse_s -= r.get("finetune_seconds", 0.0)
    row = [name, f(r.get("clean_acc"))]
    row += [f(r.get(f"robust_acc/{lab}")) for lab in labels]
    row += [f(r.get("robust_acc_worst")), f(fuse_s, "{:.2f}"),
            f(r.get("peak_rss_growth_mb"), "{:.1f}"), f(r.get("identity_mass_mean"))]  # fmt: skip
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"
