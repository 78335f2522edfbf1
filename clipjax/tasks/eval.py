"""The `eval` task: zero-shot and retrieval (optionally selective, linear probe, robustness).

`python -m clipjax.main --config configs/eval.py --config.checkpoint=PATH --workdir DIR`
evaluates a clipjax workdir or an imported OpenAI / open_clip / HF checkpoint with
`clipjax.evaluation.suite` and writes `DIR/summary.json`, `DIR/results.md`,
`DIR/metrics.jsonl` and PNG figures (`config.plots`). DIR is claimed through `clipjax.runs`:
a directory holding another run (a training run, or an evaluation with another config) is
refused before anything is read or written; `config.json` is written once the config and the
datasets have been checked, and finished parts are saved as they finish (see `run`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from absl import logging
from etils import epath

from clipjax import metrics as metrics_lib
from clipjax import model as model_lib
from clipjax import runs
from clipjax.attacks import parse_attacks
from clipjax.evaluation import plots
from clipjax.evaluation.suite import (
  check_datasets,
  evaluate_datasets,
  evaluate_robustness,
  format_markdown,
  tokenizer_for,
)

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


def _attacks(config: mlc.ConfigDict) -> list[dict[str, Any]]:
  """`config.robustness.attacks`: the compact string (`clipjax.attacks.parse_attacks`)."""
  spec = config.robustness.attacks
  if not isinstance(spec, str):
    raise ValueError(
      f"config.robustness.attacks must be a string such as 'pgd:eps=4/255,steps=10;"
      f"apgd-ce:eps=4/255' (or 'none'), got {type(spec).__name__}"
    )
  try:
    return parse_attacks(spec)
  except ValueError as e:
    raise ValueError(f"config.robustness.attacks: {e}") from None


def run(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
  """Loads `config.checkpoint`, evaluates `config.datasets`, writes the results to `workdir`.

  The config (attacks, datasets and their label sets, options) is checked before any work;
  `config.json` is written once it passes. Each finished part (a dataset's clean metrics, its
  attacks) is added to `metrics.jsonl` and to `summary.json` (`"finished": false` until the
  end) as it finishes, so an interrupted evaluation keeps what it computed. Every stage prints
  progress lines with an ETA.
  """
  if not config.checkpoint:
    raise ValueError("config.checkpoint is empty: pass --config.checkpoint=PATH (a clipjax "
                     "workdir or an OpenAI/open_clip/HF checkpoint).")  # fmt: skip
  run_dir = runs.open_run(workdir, config, task="eval")
  attacks = _attacks(config)
  model = model_lib.load(config.checkpoint)
  image_size = config.image_size or model.config.vision.image_size
  context_length = config.context_length or model.config.text.context_length
  datasets = config.datasets.to_dict()
  # "" means the tokenizer the checkpoint was trained with (a clipjax run's), else OpenAI's.
  tokenizer = config.tokenizer or runs.trained_tokenizer(config.checkpoint)
  tokenizer_for(model, tokenizer, context_length)
  check_datasets(
    datasets, image_size, robustness_label_set=config.robustness.label_set if attacks else None
  )
  lp_opts = config.linear_probe.to_dict()
  sel_opts = config.selective.to_dict()
  run_dir.start()
  chief = jax.process_index() == 0
  wdir = run_dir.path
  writer = metrics_lib.MetricWriter(str(wdir), enabled=chief)
  summary: dict[str, Any] = {"checkpoint": config.checkpoint}
  if attacks:
    summary["attacks"] = {a["label"]: a for a in attacks}

  def save(stage: str) -> Callable[[str, dict[str, float]], None]:
    def done(ds_name: str, so_far: dict[str, float]) -> None:
      new = {k: v for k, v in so_far.items() if k.startswith(f"{ds_name}/")}
      writer.write(0, new, kind="eval", stage=stage, dataset=ds_name)
      summary.update(new)
      run_dir.write_summary({**summary, "finished": False})

    return done

  extras: dict[str, Any] = {}
  metrics = evaluate_datasets(
    model,
    model.params,
    datasets,
    image_size=image_size,
    context_length=context_length,
    batch_size=config.batch_size,
    max_examples=config.max_examples,
    tokenizer=tokenizer,
    linear_probe=lp_opts if lp_opts.pop("enabled") else None,
    selective=sel_opts if sel_opts.pop("enabled") else None,
    extras=extras,
    progress=True,
    on_dataset=save("clean"),
    zeroshot_ensemble=config.zeroshot_ensemble,
  )
  if attacks:
    metrics.update(
      evaluate_robustness(
        model,
        model.params,
        datasets,
        label_set=config.robustness.label_set,
        attacks=attacks,
        image_size=image_size,
        context_length=context_length,
        batch_size=config.batch_size,
        max_examples=config.robustness.max_examples,
        tokenizer=tokenizer,
        progress=True,
        on_dataset=save("robustness"),
      )
    )
  if chief:
    summary.update(metrics)
    if extras.get("curves"):
      summary["curves"] = extras["curves"]
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
