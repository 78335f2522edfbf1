"""Evaluation suite: zero-shot classification and retrieval of any model on a list of datasets.

`evaluate_datasets` is what the `eval` task (`clipjax.tasks.eval`) and the trainer's periodic
evaluation (`clipjax.train.periodic_eval`) both call; `evaluate_robustness` adds white-box
attacks.

Per dataset (a data spec, see `clipjax.data.registry`): zero-shot top-1/top-5/balanced accuracy
for every label set of the source (held-out classes reported separately), and image↔text
Recall@1/5/10 with one caption per image where the source has captions, under CLIP_benchmark's
names and definition (a caption matches only its own image), and, since templated captions repeat
across images, also with a hit whenever the retrieved caption's token ids are identical to the
ground truth's (`..._recall_identical@K`, see `clipjax.evaluation.retrieval`); every metric has a
`/chance` entry.
Optionally (see `configs/eval.py`):

* selective classification (`{ds}/selective/{label set}/{selector}/risk@{s}`, `aurc`): the
  error rate among the ⌈s·n⌉ most confident test images, confidence = maximum softmax
  probability of the zero-shot logits (`msp`) or OT-CLIP's partial-OT rule (`partial_ot`, one
  solve per coverage); the risk–coverage curves go to `summary.json["curves"]`;
* linear probe (`{ds}/linear_probe/{label set}/acc1`, `.../{k}shot/acc1`): logistic regression on
  frozen image embeddings of the dataset's `train_split`, weight decay chosen on a validation
  split (`clipjax.evaluation.linear_probe`), tested on the evaluated images;
* attack success rate, automatically for a spec with `corrupt` of kind `poison` or `backdoor`
  (`{ds}/asr/{label set}/asr`). The clean metrics of such a spec are computed on uncorrupted
  images: for `poison` the split its target images come from (`image_split`), for `backdoor`
  the spec's own source. Poison ASR = fraction of the target images classified as their
  adversarial class (`TargetedPoisoning.asr_source()`; `target_to_true` = classified as their
  true class); backdoor ASR = fraction of the evaluated images outside the target class that
  are classified as the target class once triggered (`Backdoor.triggered_source`;
  `clean_to_target` = the same images untriggered).

Every process evaluates the whole (capped) dataset on its local devices, and only process 0
writes: evaluation sets are small next to training, and this keeps the code free of
cross-host gathers of embeddings.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from clipjax import metrics as metrics_lib
from clipjax import sharding
from clipjax.data import corrupt, pipeline, registry
from clipjax.data.sources import label_sets_of
from clipjax.data.tokenizer import Tokenizer
from clipjax.evaluation import metrics as eval_metrics
from clipjax.evaluation import retrieval, robustness, zeroshot
from clipjax.evaluation.linear_probe import linear_probe as fit_linear_probe
from clipjax.methods.base import model_params

__all__ = [
  "LINEAR_PROBE_DEFAULTS",
  "SELECTIVE_DEFAULTS",
  "SELECTORS",
  "Head",
  "check_datasets",
  "evaluate_datasets",
  "evaluate_robustness",
  "format_markdown",
  "selective_metrics",
  "tokenizer_for",
]

# The options of `evaluate_datasets(linear_probe=...)`; configs/eval.py documents each one.
LINEAR_PROBE_DEFAULTS: dict[str, Any] = {
  "train_split": "train",
  "max_train": 2000,
  "label_sets": [],
  "k_shots": [],
  "l2_grid": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
  "val_fraction": 0.2,
  "seed": 0,
  "max_iter": 1000,
}
# The options of `evaluate_datasets(selective=...)`; configs/eval.py documents each one.
SELECTIVE_DEFAULTS: dict[str, Any] = {
  "coverages": [0.5, 0.8],
  "label_sets": [],
  "selectors": ["msp"],
  "partial_ot_epsilon": 0.05,
  "curve_points": 10,
}
SELECTORS = ("msp", "partial_ot")
_CURVE_MAX_POINTS = 200


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


def tokenizer_for(model: Any, merges_path: str, context_length: int) -> Tokenizer:
  """The tokenizer of `merges_path` ("" = the shipped OpenAI one), checked against the model.

  Raises:
    ValueError: its vocabulary or end-of-text id does not fit the model's text tower.
  """
  tok = _tokenizer(merges_path or None, context_length)
  if tok.eot_id != model.config.text.eot_id or tok.vocab_size > model.config.text.vocab_size:
    raise ValueError(
      f"Tokenizer {tok.merges_path} (vocab {tok.vocab_size}, eot {tok.eot_id}) does not fit the"
      f" model's text tower (vocab {model.config.text.vocab_size}, eot "
      f"{model.config.text.eot_id}); pass the model's merges file as the tokenizer."
    )
  return tok


def _host_params(params: Any) -> Any:
  params = model_params(params)
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params, tiled=True)
  return jax.device_get(params)


def _options(given: Mapping[str, Any], defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
  """`defaults` updated with `given`; unknown keys are an error naming them."""
  given = dict(given)
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"{what}: unknown options {unknown}; valid: {sorted(defaults)}")
  return {**defaults, **given}


def _chosen_label_sets(wanted: list[str], have: dict[str, Any], what: str) -> list[str]:
  """`wanted` (all of `have` when empty), each checked against `have`."""
  if not wanted:
    return list(have)
  missing = [ls for ls in wanted if ls not in have]
  if missing:
    raise ValueError(f"{what}.label_sets {missing} not in the dataset's label sets {sorted(have)}")
  return list(wanted)


class _Embedded(NamedTuple):
  """Embeddings of one (capped) source: images, captions, caption token ids, labels."""

  zimg_nd: np.ndarray
  ztxt_nd: np.ndarray
  ids_nl: np.ndarray
  labels: dict[str, np.ndarray]


def _resize(model: Any) -> dict[str, str]:
  """The model's eval resize (`iterate_eval` keywords): open_clip's, from its checkpoint."""
  v = model.config.vision
  return {"interpolation": v.interpolation, "resize_mode": v.resize_mode}


def _embed(
  source, what, *, enc_img, enc_txt, host_params, tok, batch_size, image_size, resize, progress
):
  label_sets = label_sets_of(source)
  batches = pipeline.iterate_eval(
    source, batch_size=batch_size, image_size=image_size, tokenize=tok, **resize
  )
  shown = metrics_lib.StageProgress(
    f"embed {what}", len(batches), "batches", enabled=progress and jax.process_index() == 0
  )
  zimg, ztxt, ids, labels = [], [], [], {k: [] for k in label_sets}
  for i, batch in enumerate(batches):
    shown.update(i)
    keep = np.asarray(batch["valid"])
    zimg.append(enc_img(host_params, batch["image"])[keep])
    ztxt.append(enc_txt(host_params, batch["ids"])[keep])
    ids.append(np.asarray(batch["ids"])[keep])
    for k in label_sets:
      labels[k].append(np.asarray(batch["labels"][k])[keep])
  shown.update(len(batches))
  if not zimg:
    raise ValueError(f"{what} has no examples")
  return _Embedded(
    *map(np.concatenate, (zimg, ztxt, ids)), {k: np.concatenate(v) for k, v in labels.items()}
  )


def _clean_source(built: Any) -> Any:
  """What the clean metrics of a spec are computed on (see the module docstring)."""
  if isinstance(built, corrupt.TargetedPoisoning):
    return built.image_source
  if isinstance(built, corrupt.Backdoor):
    return built.source
  return built


def _softmax_rows(logits_nc: np.ndarray) -> np.ndarray:
  z_nc = logits_nc - logits_nc.max(axis=1, keepdims=True)
  e_nc = np.exp(z_nc)
  return e_nc / e_nc.sum(axis=1, keepdims=True)


def _thin(coverage_n: np.ndarray, risk_n: np.ndarray) -> dict[str, list[float]]:
  """At most `_CURVE_MAX_POINTS` points of a curve (always keeping the last), for summary.json."""
  n = coverage_n.size
  idx = np.unique(np.round(np.linspace(0, n - 1, min(n, _CURVE_MAX_POINTS))).astype(int))
  return {"coverage": coverage_n[idx].tolist(), "risk": risk_n[idx].tolist()}


def selective_metrics(
  zimg_nd: np.ndarray,
  labels_n: np.ndarray,
  classifier: zeroshot.ZeroShotClassifier,
  *,
  coverages: list[float],
  selectors: list[str],
  partial_ot_epsilon: float,
  curve_points: int,
) -> tuple[dict[str, float], dict[str, dict[str, list[float]]]]:
  """Selective zero-shot classification: risk at given coverages and risk–coverage curves.

  `msp`: keep the ⌈s·n⌉ images with the highest maximum softmax probability of the zero-shot
  logits; its curve covers every k = 1..n and `aurc` is the mean risk over them. `partial_ot`:
  OT-CLIP's entropic partial-OT rule (`clipjax.methods.otclip.partial_ot_selective`, ε =
  `partial_ot_epsilon`), which solves one problem per coverage; its curve has `curve_points`
  coverages evenly spaced in (0, 1] plus the asked ones, and no `aurc`.

  Args:
    zimg_nd: [n, d] image embeddings.
    labels_n: [n] true classes.
    classifier: the zero-shot text side.
    coverages: coverages s in (0, 1] to report `risk@{s}` at.
    selectors: subset of `SELECTORS`.
    partial_ot_epsilon: entropic regularisation of the partial-OT selector.
    curve_points: coverages of the partial-OT curve.

  Returns:
    `(metrics, curves)`: `{"{selector}/risk@{s}": ..., "msp/aurc": ...}` and
    `{selector: {"coverage": [...], "risk": [...]}}`.
  """
  bad = sorted(set(selectors) - set(SELECTORS))
  if bad or not selectors:
    raise ValueError(f"selective.selectors {list(selectors)}: each must be one of {SELECTORS}")
  if any(not 0.0 < s <= 1.0 for s in coverages):
    raise ValueError(f"selective.coverages must lie in (0, 1], got {list(coverages)}")
  labels_n = np.asarray(labels_n)
  out: dict[str, float] = {}
  curves: dict[str, dict[str, list[float]]] = {}
  if "msp" in selectors:
    probs_nc = _softmax_rows(zeroshot.zeroshot_scores(zimg_nd, classifier).astype(np.float64))
    conf_n, correct_n = probs_nc.max(axis=1), probs_nc.argmax(axis=1) == labels_n
    for k, v in eval_metrics.selective_risk(conf_n, correct_n, coverages).items():
      out[f"msp/{k}"] = v
    curves["msp"] = _thin(*eval_metrics.risk_coverage_curve(conf_n, correct_n))
  if "partial_ot" in selectors:
    # Imported here: the OT solvers are only needed when this selector is asked for.
    from clipjax.methods import otclip

    grid = sorted({*np.linspace(1.0 / curve_points, 1.0, curve_points).round(6), *coverages})
    pts = []
    for s in grid:
      pred_n, _, sel_n = otclip.partial_ot_selective(
        zimg_nd, classifier.weights_cd, coverage=float(s), epsilon=partial_ot_epsilon
      )
      pred_n, sel_n = np.asarray(pred_n), np.asarray(sel_n)
      risk = float(np.mean(pred_n[sel_n] != labels_n[sel_n]))
      pts.append((float(sel_n.mean()), risk))
      if s in coverages:
        out[f"partial_ot/risk@{s:g}"] = risk
    curves["partial_ot"] = {"coverage": [p[0] for p in pts], "risk": [p[1] for p in pts]}
  return out, curves


def _asr_metrics(
  built: Any,
  clean: _Embedded,
  classifier_for: Callable[[str], zeroshot.ZeroShotClassifier],
  embed: Callable[[Any, str], _Embedded],
  prefix: str,
) -> dict[str, float]:
  """Attack success rate of a poisoned / backdoored spec (see the module docstring)."""
  out: dict[str, float] = {}
  ls = built.label_set
  clf = classifier_for(ls)
  if isinstance(built, corrupt.TargetedPoisoning):
    targets = built.poison_targets
    emb = embed(built.asr_source(), "poison targets")
    pred_n = zeroshot.zeroshot_scores(emb.zimg_nd, clf).argmax(axis=1)
    adv_n = np.array([t["target_label"] for t in targets])
    res = robustness.poisoning_success_rate(pred_n, adv_n, np.ones(adv_n.shape, bool))
    out[f"{prefix}/{ls}/target_to_true"] = float(
      np.mean(pred_n == np.array([t["true_label"] for t in targets]))
    )
  else:
    if ls not in clean.labels:
      raise ValueError(f"{prefix}: the evaluated source has no label set {ls!r}")
    # The triggered source lists the evaluated source's non-target images in order, so its
    # first m are exactly the non-target images among the evaluated (capped) ones.
    off_target_n = clean.labels[ls] != built.target_class
    m = int(off_target_n.sum())
    if m == 0:
      raise ValueError(f"{prefix}: every evaluated image is of the backdoor's target class")
    emb = embed(Head(built.triggered_source(built.source), m), "triggered images")
    pred_n = zeroshot.zeroshot_scores(emb.zimg_nd, clf).argmax(axis=1)
    target_n = np.full(pred_n.shape, built.target_class)
    res = robustness.attack_success_rate(pred_n, target_n)
    clean_pred_n = zeroshot.zeroshot_scores(clean.zimg_nd[off_target_n], clf).argmax(axis=1)
    out[f"{prefix}/{ls}/clean_to_target"] = float(np.mean(clean_pred_n == built.target_class))
  out[f"{prefix}/{ls}/asr"] = res["asr"]
  out[f"{prefix}/{ls}/n"] = float(res["n"])
  return out


def _probe_train_spec(ds_name: str, spec: Mapping[str, Any], train_split: str) -> dict:
  """The data spec the linear probe of `ds_name` is fitted on; errors before any work."""
  train_spec = {k: v for k, v in spec.items() if k != "corrupt"}
  if "split" not in train_spec:
    raise ValueError(
      f"linear_probe: dataset {ds_name!r} spec has no 'split' to replace by "
      f"linear_probe.train_split={train_split!r}"
    )
  corruption = dict(spec.get("corrupt") or {})
  if corruption.get("kind") == "poison":
    test_split = corruption.get("image_split", "test")
  else:
    test_split = train_spec["split"]
  if test_split == train_split:
    raise ValueError(
      f"linear_probe: dataset {ds_name!r} is evaluated on split {test_split!r}, the same as "
      f"linear_probe.train_split; pick another split to fit the probe on"
    )
  return {**train_spec, "split": train_split}


def _linear_probe_metrics(
  ds_name: str,
  train_spec: Mapping[str, Any],
  test: _Embedded,
  label_sets: dict[str, Any],
  opts: dict[str, Any],
  embed: Callable[[Any, str], _Embedded],
  image_size: int,
) -> dict[str, float]:
  """Linear probe of every chosen label set (see `LINEAR_PROBE_DEFAULTS`)."""
  source = Head(registry.build_source(dict(train_spec), image_size), opts["max_train"])
  train = embed(source, f"linear-probe training split of {ds_name!r}")
  out: dict[str, float] = {}
  for ls in _chosen_label_sets(list(opts["label_sets"]), label_sets, "linear_probe"):
    if ls not in train.labels:
      raise ValueError(f"linear_probe: the {opts['train_split']!r} split has no label set {ls!r}")
    keep_tr, keep_te = train.labels[ls] >= 0, test.labels[ls] >= 0
    if not keep_tr.any() or not keep_te.any():
      continue
    num_classes = len(label_sets[ls].classnames)
    data = {
      "train": (train.zimg_nd[keep_tr], train.labels[ls][keep_tr]),
      "test": (test.zimg_nd[keep_te], test.labels[ls][keep_te]),
    }
    prefix = f"{ds_name}/linear_probe/{ls}"
    for k in [None, *opts["k_shots"]]:
      try:
        res = fit_linear_probe(
          data["train"],
          data["test"],
          num_classes=num_classes,
          l2_grid=list(opts["l2_grid"]),
          val_fraction=opts["val_fraction"],
          k_shot=k,
          seed=opts["seed"],
          max_iter=opts["max_iter"],
        )
      except ValueError as e:
        raise ValueError(
          f"linear_probe of {prefix} (k_shot={k}, {len(data['train'][1])} training examples): {e}"
        ) from e
      key = prefix if k is None else f"{prefix}/{k}shot"
      out[f"{key}/acc1"] = res["acc1"]
      out[f"{key}/acc1/chance"] = 1.0 / num_classes
      out[f"{key}/best_l2"] = res["best_l2"]
      out[f"{key}/n_train"] = float(res["n_train"])
      out[f"{key}/converged"] = float(res["converged"])
  return out


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
  linear_probe: Mapping[str, Any] | None = None,
  selective: Mapping[str, Any] | None = None,
  extras: dict[str, Any] | None = None,
  progress: bool = False,
  on_dataset: Callable[[str, dict[str, float]], None] | None = None,
  zeroshot_ensemble: str = "mean",
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
    linear_probe: None (off) or options overriding `LINEAR_PROBE_DEFAULTS`.
    selective: None (off) or options overriding `SELECTIVE_DEFAULTS`.
    extras: if given, filled with `extras["embeddings"][dataset] = {"zimg_nd": [n, d],
      "ztxt_nd": [n, d], "ids_nl": [n, L]}` (the evaluated images and captions, in dataset
      order) and, with `selective`, `extras["curves"]["{dataset}/selective/{label set}/
      {selector}"] = {"coverage": [...], "risk": [...]}`.
    progress: print per-stage progress lines with ETA (`clipjax.metrics.StageProgress`).
    on_dataset: called as `on_dataset(name, metrics so far)` when a dataset is done (the eval
      task saves finished parts with it).
    zeroshot_ensemble: how a class's prompts combine, "mean" or "posterior"
      (`zeroshot.build_classifier`); MSP selection follows it, partial-OT selection reads the
      averaged directions either way.
  """
  lp_opts, probe_specs = None, {}
  if linear_probe is not None:
    lp_opts = _options(linear_probe, LINEAR_PROBE_DEFAULTS, "linear_probe")
    # Checked for every dataset before any work.
    probe_specs = {
      name: _probe_train_spec(name, spec, lp_opts["train_split"]) for name, spec in datasets.items()
    }
  sel_opts = None
  if selective is not None:
    sel_opts = _options(selective, SELECTIVE_DEFAULTS, "selective")
  local_mesh = sharding.make_mesh({"data": -1}, devices=jax.local_devices())
  host_params = _host_params(params)
  enc_img = _padded_fn(lambda p, x: model.encode_image(p, x).emb, local_mesh)
  enc_txt = _padded_fn(lambda p, x: model.encode_text(p, x).emb, local_mesh)
  tok = tokenizer_for(model, tokenizer, context_length)
  logit_scale = float(np.exp(np.asarray(host_params["logit_scale"])))
  embed = functools.partial(
    _embed, enc_img=enc_img, enc_txt=enc_txt, host_params=host_params, tok=tok,
    batch_size=batch_size, image_size=image_size, resize=_resize(model), progress=progress,
  )  # fmt: skip
  out: dict[str, float] = {}
  for ds_name, spec in datasets.items():
    t0 = time.perf_counter()
    built = registry.build_source(dict(spec), image_size)
    source = Head(_clean_source(built), max_examples)
    label_sets = label_sets_of(source)
    emb = embed(source, f"eval dataset {ds_name!r}")
    zimg_nd, ztxt_nd, ids_nl = emb.zimg_nd, emb.ztxt_nd, emb.ids_nl
    n = zimg_nd.shape[0]

    @functools.cache
    def classifier_for(ls_name, label_sets=label_sets):
      ls = label_sets[ls_name]
      return zeroshot.build_classifier(
        lambda x: enc_txt(host_params, x), tok, ls.classnames, ls.templates,
        logit_scale=logit_scale, ensemble=zeroshot_ensemble,
      )  # fmt: skip

    for ls_name, ls in label_sets.items():
      labels_n = emb.labels[ls_name]
      keep = labels_n >= 0
      if not keep.any():
        continue
      clf = classifier_for(ls_name)
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
      out[f"{prefix}/acc5/chance"] = 5 * chance if clf.num_classes >= 5 else float("nan")
      out[f"{prefix}/mean_per_class_recall/chance"] = chance
      for sub in subsets:
        out[f"{prefix}/{sub}/acc1/chance"] = chance
    distinct = len(np.unique(ids_nl, axis=0))
    for match, n_targets in (("index", n), ("identical", distinct)):
      rec = retrieval.recall_at_k(
        zimg_nd, ztxt_nd, np.arange(n), ks=(1, 5, 10), match=match, ids_ml=ids_nl
      )
      for key, v in rec.items():
        if "recall" in key or key.startswith("tied"):
          out[f"{ds_name}/retrieval/{key}"] = v
      for k in (1, 5, 10):
        for direction in ("image_retrieval", "text_retrieval"):
          key = f"{ds_name}/retrieval/{direction}_recall{retrieval.metric_suffix(match)}@{k}"
          # Random ranking: P(one of the matching items within the top k).
          out[f"{key}/chance"] = min(1.0, k / n_targets)
    out[f"{ds_name}/n"] = float(n)
    out[f"{ds_name}/distinct_captions"] = float(distinct)
    out[f"{ds_name}/images_per_s"] = n / (time.perf_counter() - t0)
    if sel_opts is not None:
      for ls_name in _chosen_label_sets(list(sel_opts["label_sets"]), label_sets, "selective"):
        keep = emb.labels[ls_name] >= 0
        if not keep.any():
          continue
        clf = classifier_for(ls_name)
        res, curves = selective_metrics(
          zimg_nd[keep], emb.labels[ls_name][keep], clf,
          coverages=list(sel_opts["coverages"]), selectors=list(sel_opts["selectors"]),
          partial_ot_epsilon=sel_opts["partial_ot_epsilon"],
          curve_points=sel_opts["curve_points"],
        )  # fmt: skip
        prefix = f"{ds_name}/selective/{ls_name}"
        for k, v in res.items():
          out[f"{prefix}/{k}"] = v
          if "/risk@" in k:
            out[f"{prefix}/{k}/chance"] = 1.0 - 1.0 / clf.num_classes
        if extras is not None:
          for sel, curve in curves.items():
            extras.setdefault("curves", {})[f"{prefix}/{sel}"] = curve
    if isinstance(built, corrupt.TargetedPoisoning | corrupt.Backdoor):
      out.update(_asr_metrics(built, emb, classifier_for, embed, f"{ds_name}/asr"))
    if lp_opts is not None:
      probe = _linear_probe_metrics(
        ds_name, probe_specs[ds_name], emb, label_sets, lp_opts, embed, image_size
      )
      out.update(probe)
    if extras is not None:
      extras.setdefault("embeddings", {})[ds_name] = {
        "zimg_nd": zimg_nd,
        "ztxt_nd": ztxt_nd,
        "ids_nl": ids_nl,
      }
    if on_dataset is not None:
      on_dataset(ds_name, dict(out))
  return out


def check_datasets(
  datasets: Mapping[str, Mapping[str, Any]],
  image_size: int,
  *,
  robustness_label_set: str | None = None,
) -> dict[str, list[str]]:
  """Builds every dataset's source (cheap: no images are read) and checks the label sets.

  Args:
    datasets: name -> data spec.
    image_size: as the evaluation will use it.
    robustness_label_set: with attacks configured, the label set they classify ("" = each
      dataset's first); None = no attacks.

  Returns:
    name -> its label sets.

  Raises:
    ValueError: no datasets, a spec that does not build (the message names the dataset), a
      named robustness label set a dataset lacks, or attacks with no label set anywhere.
  """
  if not datasets:
    raise ValueError("config.datasets is empty: nothing to evaluate")
  out = {}
  for name, spec in datasets.items():
    try:
      built = registry.build_source(dict(spec), image_size)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
      raise ValueError(f"config.datasets.{name}: {e}") from e
    out[name] = list(label_sets_of(_clean_source(built)))
  if robustness_label_set:
    lacking = {n: sets for n, sets in out.items() if robustness_label_set not in sets}
    if lacking:
      raise ValueError(
        f"robustness.label_set {robustness_label_set!r} is not a label set of "
        f"{sorted(lacking)} (they have {lacking}); set --config.robustness.label_set= (empty: "
        "each dataset's first label set)"
      )
  elif robustness_label_set is not None and not any(out.values()):
    raise ValueError(
      "robustness.attacks are set but no dataset has a label set to attack (a folder dataset "
      "gets one from a `label` column); pass --config.robustness.attacks=none"
    )
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
  progress: bool = False,
  on_dataset: Callable[[str, dict[str, float]], None] | None = None,
) -> dict[str, float]:
  """Clean and robust zero-shot accuracy under white-box attacks (pixel space, [0, 1]).

  The attacked function is the undefended zero-shot classifier, `logit_scale · cos` with the
  model's own logit scale; each attack spec goes to `clipjax.attacks.build_attack`.
  `label_set` "" attacks each dataset's first label set (datasets without one are skipped).
  Keys: `{dataset}/robust/{label set}/clean_acc`, `.../{attack label}/robust_acc` (and its
  `.../{attack label}/eps`), `.../worst_case/robust_acc`, plus examples/s. `progress` and
  `on_dataset` as in `evaluate_datasets`.
  """
  host_params = _host_params(params)
  tok = tokenizer_for(model, tokenizer, context_length)
  enc_txt = jax.jit(lambda p, x: model.encode_text(p, x).emb)
  logit_scale = float(np.exp(np.asarray(host_params["logit_scale"])))
  out: dict[str, float] = {}
  for ds_name, spec in datasets.items():
    source = Head(_clean_source(registry.build_source(dict(spec), image_size)), max_examples)
    sets = label_sets_of(source)
    if label_set and label_set not in sets:
      raise ValueError(f"robustness.label_set {label_set!r} not in {ds_name!r}: {sorted(sets)}")
    if not sets:
      continue
    ls_name = label_set or next(iter(sets))
    ls = sets[ls_name]
    clf = zeroshot.build_classifier(
      lambda x: enc_txt(host_params, x), tok, ls.classnames, ls.templates, logit_scale=logit_scale
    )
    weights_cd = jnp.asarray(clf.weights_cd)

    def logits_fn(x_bhwc, w=weights_cd):
      return logit_scale * model.encode_image(host_params, x_bhwc).emb @ w.T

    batches = pipeline.iterate_eval(
      source, batch_size=batch_size, image_size=image_size, tokenize=tok, **_resize(model)
    )
    shown = metrics_lib.StageProgress(
      f"attack {ds_name}/{ls_name} ({len(attacks)} attacks)", len(source), "images",
      enabled=progress and jax.process_index() == 0,
    )  # fmt: skip
    shown.update(0)
    res = robustness.robust_accuracy(
      logits_fn,
      batches,
      attacks,
      key=jax.random.key(seed),
      label_key=f"labels/{ls_name}",
      max_examples=max_examples,
      progress=shown.update,
    )
    prefix = f"{ds_name}/robust/{ls_name}"
    out[f"{prefix}/clean_acc"] = res["clean_acc"]
    out[f"{prefix}/worst_case/robust_acc"] = res["robust_acc"]
    for a in res["attacks"]:
      out[f"{prefix}/{a['label']}/robust_acc"] = a["robust_acc"]
      out[f"{prefix}/{a['label']}/eps"] = float(a["spec"]["eps"])
    out[f"{prefix}/n"] = float(res["n"])
    out[f"{prefix}/examples_per_s"] = res["examples_per_second"]
    out[f"{prefix}/clean_acc/chance"] = 1.0 / clf.num_classes
    if on_dataset is not None:
      on_dataset(ds_name, dict(out))
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
