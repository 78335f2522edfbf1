"""The `eval` task: zero-shot and retrieval (optionally selective, linear probe, robustness).

`python -m clipjax.main --config configs/eval.py --config.checkpoint=PATH --workdir DIR`
evaluates a clipjax workdir or an imported OpenAI / open_clip / HF checkpoint with
`clipjax.evaluation.suite` and writes `DIR/summary.json`, `DIR/results.md`,
`DIR/metrics.jsonl` and PNG figures (`config.plots`). DIR is claimed through `clipjax.runs`:
a directory holding another run (a training run, or an evaluation with another config) is
refused before anything is read or written, and nothing is written until the evaluation is done.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from absl import logging
from etils import epath

from clipjax import metrics as metrics_lib
from clipjax import runs
from clipjax.evaluation import plots
from clipjax.evaluation.suite import evaluate_datasets, evaluate_robustness, format_markdown

__all__ = ["run"]


def _write_figures(wdir: epath.Path, extras: dict[str, Any]) -> list[str]:
  """Writes the figures next to summary.json and returns their paths.

  Robustness and risk–coverage curves come from summary.json (`plots.plot_workdir`); for the
  first dataset, PCA of image vs caption embeddings and histograms of the similarities of
  matching vs non-matching pairs (its first 2000 images).
  """
  written = plots.plot_workdir(str(wdir))
  embeddings = extras.get("embeddings") or {}
  first = next(iter(embeddings), None)
  if first is not None:
    zimg_nd, ztxt_nd, ids_nl = (embeddings[first][k] for k in ("zimg_nd", "ztxt_nd", "ids_nl"))
    safe = plots.safe_filename(first)
    written.append(
      plots.plot_embedding_pca(
        zimg_nd, ztxt_nd, os.fspath(wdir / f"pca_{safe}.png"),
        title=f"{first}: image vs caption embeddings (PCA)",
      )
    )  # fmt: skip
    zimg_nd, ztxt_nd, ids_nl = zimg_nd[:2000], ztxt_nd[:2000], ids_nl[:2000]
    sim_nn = zimg_nd @ ztxt_nd.T
    # Templated captions repeat: a pair is negative only if the caption texts differ.
    same_nn = np.all(ids_nl[:, None, :] == ids_nl[None, :, :], axis=-1)
    neg_m = sim_nn[~same_nn]
    if neg_m.size > 20_000:
      neg_m = np.random.default_rng(0).choice(neg_m, size=20_000, replace=False)
    if neg_m.size:
      written.append(
        plots.plot_similarity_histograms(
          np.diagonal(sim_nn), neg_m, os.fspath(wdir / f"similarity_{safe}.png"),
          title=f"{first}: image–caption cosine similarity",
        )
      )  # fmt: skip
  return written


def run(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
  """Loads `config.checkpoint`, evaluates `config.datasets`, writes the results to `workdir`."""
  if not config.checkpoint:
    raise ValueError("config.checkpoint is empty: pass --config.checkpoint=PATH (a clipjax "
                     "workdir or an OpenAI/open_clip/HF checkpoint).")  # fmt: skip
  run_dir = runs.open_run(workdir, config, task="eval")
  model = runs.load_model(config.checkpoint)
  image_size = config.image_size or model.config.vision.image_size
  context_length = config.context_length or model.config.text.context_length
  lp_opts = config.linear_probe.to_dict()
  sel_opts = config.selective.to_dict()
  extras: dict[str, Any] = {}
  metrics = evaluate_datasets(
    model,
    model.params,
    config.datasets.to_dict(),
    image_size=image_size,
    context_length=context_length,
    batch_size=config.batch_size,
    max_examples=config.max_examples,
    tokenizer=config.tokenizer,
    linear_probe=lp_opts if lp_opts.pop("enabled") else None,
    selective=sel_opts if sel_opts.pop("enabled") else None,
    extras=extras,
  )
  attacks = [dict(a) for a in config.robustness.attacks]
  if attacks:
    metrics.update(
      evaluate_robustness(
        model,
        model.params,
        config.datasets.to_dict(),
        label_set=config.robustness.label_set,
        attacks=attacks,
        image_size=image_size,
        context_length=context_length,
        batch_size=config.batch_size,
        max_examples=config.robustness.max_examples,
        tokenizer=config.tokenizer,
      )
    )
  # Written only now: a run that fails on its config or data leaves nothing behind.
  run_dir.start()
  if jax.process_index() == 0:
    wdir = run_dir.path
    summary: dict[str, Any] = {"checkpoint": config.checkpoint, **metrics}
    if attacks:
      summary["attacks"] = {a.get("label") or a["name"]: a for a in attacks}
    if extras.get("curves"):
      summary["curves"] = extras["curves"]
    metrics_lib.MetricWriter(str(wdir)).write(0, metrics, kind="eval")
    table = format_markdown(metrics, f"Evaluation of {config.checkpoint}")
    (wdir / "results.md").write_text(table)
    run_dir.write_summary(summary)
    print(table, flush=True)
    if config.plots and importlib.util.find_spec("matplotlib") is None:
      logging.warning(
        "config.plots=True but matplotlib is not installed (pip install 'clipjax[plot]'): "
        "no figures written."
      )
    elif config.plots:
      for path in _write_figures(wdir, extras):
        print(f"figure: {path}", flush=True)
  return metrics
