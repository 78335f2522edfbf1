"""Evaluation task: zero-shot classification and retrieval of any model on a list of datasets.

`python -m clipjax.main --config configs/eval.py --config.checkpoint=PATH --workdir DIR`
evaluates a clipjax workdir or an imported OpenAI / open_clip / HF checkpoint and writes
`DIR/summary.json`, `DIR/results.md` and `DIR/metrics.jsonl`. The trainer's periodic evaluation
calls `evaluate_datasets` too.

Per dataset (a data spec, see `clipjax.data.registry`): zero-shot top-1/top-5/balanced accuracy
for every label set of the source (held-out classes reported separately), and image↔text
Recall@1/5/10 with one caption per image where the source has captions. Templated captions
repeat across images, so retrieval counts a hit when the retrieved caption's token ids are
identical to the ground truth's (`match="identical"`); every metric has a `/chance` entry.

Every process evaluates the whole (capped) dataset on its local devices, and only process 0
writes: evaluation sets are small next to training, and this keeps the code free of
cross-host gathers of embeddings.
"""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from clipjax import metrics as metrics_lib
from clipjax import runs, sharding
from clipjax.data import pipeline, registry
from clipjax.data.sources import label_sets_of
from clipjax.data.tokenizer import Tokenizer
from clipjax.evaluation import metrics as eval_metrics
from clipjax.evaluation import retrieval, robustness, zeroshot

__all__ = [
  "Head",
  "evaluate_datasets",
  "evaluate_robustness",
  "format_markdown",
  "run",
]


class Head:
  """The first `n` examples of a source (label sets and flags forwarded)."""

  def __init__(self, source: Any, n: int):
    self.source = source
    self.n = min(int(n), len(source))
    self.name = getattr(source, "name", type(source).__name__)
    self.label_sets = label_sets_of(source)
    self.flag_keys = getattr(source, "flag_keys", ())

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < self.n:
      raise IndexError(f"{self.name}: index {index} out of range [0, {self.n})")
    return self.source[index]


def _padded_fn(fn, mesh):
  """Runs a jitted `fn(params, x)` on rows padded to a multiple of the mesh size."""
  jfn = jax.jit(fn)
  shard = sharding.batch_sharding(mesh)

  def call(params, x):
    x = np.asarray(x)
    n = x.shape[0]
    pad = (-n) % mesh.size
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    return np.asarray(jfn(params, jax.device_put(x, shard)))[:n]

  return call


@functools.cache
def _tokenizer(merges_path: str | None, context_length: int) -> Tokenizer:
  return Tokenizer(merges_path, context_length=context_length)


def _host_params(params: Any) -> Any:
  params = {k: v for k, v in params.items() if k != "method"}
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params, tiled=True)
  return jax.device_get(params)


def evaluate_datasets(
  model: Any,
  params: Any,
  datasets: dict[str, dict[str, Any]],
  *,
  image_size: int,
  context_length: int,
  batch_size: int,
  max_examples: int,
  tokenizer: str = "",
) -> dict[str, float]:
  """Zero-shot and retrieval metrics, flat: `{dataset}/zeroshot/{label set}/acc1`, ...

  Args:
    model: a `clipjax.model.CLIP` (its `params` are not used; `params` is).
    params: model parameters (a method's extra `params["method"]` is ignored).
    datasets: name -> data spec (`clipjax.data.registry.build_source`).
    image_size: evaluation resolution (resize + centre crop).
    context_length: tokens per caption/prompt.
    batch_size: images per batch (per process).
    max_examples: evaluate at most this many examples per dataset (the first ones).
    tokenizer: merges file of the model's vocabulary ("" = the shipped OpenAI one).
  """
  local_mesh = sharding.make_mesh({"data": -1}, devices=jax.local_devices())
  host_params = _host_params(params)
  enc_img = _padded_fn(lambda p, x: model.encode_image(p, x).emb, local_mesh)
  enc_txt = _padded_fn(lambda p, x: model.encode_text(p, x).emb, local_mesh)
  tok = _tokenizer(tokenizer or None, context_length)
  if tok.eot_id != model.config.text.eot_id or tok.vocab_size > model.config.text.vocab_size:
    raise ValueError(
      f"Tokenizer {tok.merges_path} (vocab {tok.vocab_size}, eot {tok.eot_id}) does not fit the"
      f" model's text tower (vocab {model.config.text.vocab_size}, eot "
      f"{model.config.text.eot_id}); pass the model's merges file as the tokenizer."
    )
  logit_scale = float(np.exp(np.asarray(host_params["logit_scale"])))
  out: dict[str, float] = {}
  for ds_name, spec in datasets.items():
    t0 = time.perf_counter()
    source = Head(registry.build_source(dict(spec), image_size), max_examples)
    label_sets = label_sets_of(source)
    batches = pipeline.iterate_eval(
      source, batch_size=batch_size, image_size=image_size, tokenize=tok
    )
    zimg, ztxt, ids, labels = [], [], [], {k: [] for k in label_sets}
    for batch in batches:
      keep = np.asarray(batch["valid"])
      zimg.append(enc_img(host_params, batch["image"])[keep])
      ztxt.append(enc_txt(host_params, batch["ids"])[keep])
      ids.append(np.asarray(batch["ids"])[keep])
      for k in label_sets:
        labels[k].append(np.asarray(batch["labels"][k])[keep])
    if not zimg:
      raise ValueError(f"eval dataset {ds_name!r} has no examples")
    zimg_nd, ztxt_nd, ids_nl = map(np.concatenate, (zimg, ztxt, ids))
    n = zimg_nd.shape[0]
    for ls_name, ls in label_sets.items():
      labels_n = np.concatenate(labels[ls_name])
      keep = labels_n >= 0
      if not keep.any():
        continue
      clf = zeroshot.build_classifier(
        lambda x: enc_txt(host_params, x), tok, ls.classnames, ls.templates,
        logit_scale=logit_scale,
      )  # fmt: skip
      subsets = {}
      if ls.held_out:
        held = set(ls.held_out)
        subsets = {
          "held_out": sorted(held),
          "seen": [c for c in range(clf.num_classes) if c not in held],
        }
      scores = zeroshot.zeroshot_scores(zimg_nd[keep], clf)
      res = eval_metrics.classification_metrics(scores, labels_n[keep], class_subsets=subsets)
      prefix = f"{ds_name}/zeroshot/{ls_name}"
      for k, v in res.items():
        out[f"{prefix}/{k}"] = v
      chance = 1.0 / clf.num_classes
      out[f"{prefix}/acc1/chance"] = chance
      out[f"{prefix}/acc5/chance"] = min(1.0, 5 * chance)
      out[f"{prefix}/mean_per_class_recall/chance"] = chance
      for sub in subsets:
        out[f"{prefix}/{sub}/acc1/chance"] = chance
    rec = retrieval.recall_at_k(
      zimg_nd, ztxt_nd, np.arange(n), ks=(1, 5, 10), match="identical", ids_ml=ids_nl
    )
    distinct = len(np.unique(ids_nl, axis=0))
    for k in (1, 5, 10):
      for direction in ("image_retrieval", "text_retrieval"):
        key = f"{ds_name}/retrieval/{direction}_recall@{k}"
        out[key] = rec[f"{direction}_recall@{k}"]
        # Random ranking: P(one of the matching items within the top k).
        out[f"{key}/chance"] = min(1.0, k / distinct)
    out[f"{ds_name}/n"] = float(n)
    out[f"{ds_name}/distinct_captions"] = float(distinct)
    out[f"{ds_name}/images_per_s"] = n / (time.perf_counter() - t0)
  return out


def evaluate_robustness(
  model: Any,
  params: Any,
  datasets: dict[str, dict[str, Any]],
  *,
  label_set: str,
  attacks: list[dict[str, Any]],
  image_size: int,
  context_length: int,
  batch_size: int,
  max_examples: int,
  tokenizer: str = "",
  seed: int = 0,
) -> dict[str, float]:
  """Clean and robust zero-shot accuracy under white-box attacks (pixel space, [0, 1]).

  The attacked function is the undefended zero-shot classifier, `logit_scale · cos` with the
  model's own logit scale; each attack spec goes to `clipjax.attacks.build_attack`.
  Keys: `{dataset}/robust/{label set}/clean_acc`, `.../{attack label}/robust_acc`,
  `.../worst_case/robust_acc`, plus examples/s.
  """
  host_params = _host_params(params)
  tok = _tokenizer(tokenizer or None, context_length)
  enc_txt = jax.jit(lambda p, x: model.encode_text(p, x).emb)
  logit_scale = float(np.exp(np.asarray(host_params["logit_scale"])))
  out: dict[str, float] = {}
  for ds_name, spec in datasets.items():
    source = Head(registry.build_source(dict(spec), image_size), max_examples)
    sets = label_sets_of(source)
    if label_set not in sets:
      raise ValueError(f"robustness.label_set {label_set!r} not in {ds_name!r}: {sorted(sets)}")
    ls = sets[label_set]
    clf = zeroshot.build_classifier(
      lambda x: enc_txt(host_params, x), tok, ls.classnames, ls.templates, logit_scale=logit_scale
    )
    weights_cd = jnp.asarray(clf.weights_cd)

    def logits_fn(x_bhwc, w=weights_cd):
      return logit_scale * model.encode_image(host_params, x_bhwc).emb @ w.T

    batches = pipeline.iterate_eval(
      source, batch_size=batch_size, image_size=image_size, tokenize=tok
    )
    res = robustness.robust_accuracy(
      logits_fn,
      batches,
      attacks,
      key=jax.random.key(seed),
      label_key=f"labels/{label_set}",
      max_examples=max_examples,
    )
    prefix = f"{ds_name}/robust/{label_set}"
    out[f"{prefix}/clean_acc"] = res["clean_acc"]
    out[f"{prefix}/worst_case/robust_acc"] = res["robust_acc"]
    for a in res["attacks"]:
      out[f"{prefix}/{a['label']}/robust_acc"] = a["robust_acc"]
    out[f"{prefix}/n"] = float(res["n"])
    out[f"{prefix}/examples_per_s"] = res["examples_per_second"]
    out[f"{prefix}/clean_acc/chance"] = 1.0 / clf.num_classes
  return out


def format_markdown(metrics: dict[str, Any], title: str) -> str:
  """Markdown table: metric, value, chance."""
  lines = [f"# {title}", "", "| metric | value | chance |", "|---|---|---|"]
  for k, v in sorted(metrics.items()):
    if k.endswith("/chance") or not isinstance(v, int | float):
      continue
    chance = metrics.get(f"{k}/chance")
    value = f"{v:.4f}" if not (isinstance(v, float) and math.isnan(v)) else "nan"
    lines.append(f"| {k} | {value} | {'' if chance is None else f'{chance:.4f}'} |")
  return "\n".join(lines) + "\n"


def run(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
  """The `eval` task: load `config.checkpoint`, evaluate `config.datasets`, write results."""
  if not config.checkpoint:
    raise ValueError("config.checkpoint is empty: pass --config.checkpoint=PATH (a clipjax "
                     "workdir or an OpenAI/open_clip/HF checkpoint).")  # fmt: skip
  model = runs.load_model(config.checkpoint)
  image_size = config.image_size or model.config.vision.image_size
  context_length = config.context_length or model.config.text.context_length
  metrics = evaluate_datasets(
    model,
    model.params,
    config.datasets.to_dict(),
    image_size=image_size,
    context_length=context_length,
    batch_size=config.batch_size,
    max_examples=config.max_examples,
    tokenizer=config.tokenizer,
  )
  if config.robustness.attacks:
    metrics.update(
      evaluate_robustness(
        model,
        model.params,
        config.datasets.to_dict(),
        label_set=config.robustness.label_set,
        attacks=[dict(a) for a in config.robustness.attacks],
        image_size=image_size,
        context_length=context_length,
        batch_size=config.batch_size,
        max_examples=config.robustness.max_examples,
        tokenizer=config.tokenizer,
      )
    )
  if jax.process_index() == 0:
    wdir = epath.Path(workdir)
    wdir.mkdir(parents=True, exist_ok=True)
    (wdir / "config.json").write_text(config.to_json_best_effort(sort_keys=True, indent=2))
    summary = {"checkpoint": config.checkpoint, **metrics}
    (wdir / "summary.json").write_text(json.dumps(metrics_lib.to_python(summary), indent=2))
    table = format_markdown(metrics, f"Evaluation of {config.checkpoint}")
    (wdir / "results.md").write_text(table)
    metrics_lib.MetricWriter(str(wdir)).write(0, metrics, kind="eval")
    print(table, flush=True)
  return metrics
