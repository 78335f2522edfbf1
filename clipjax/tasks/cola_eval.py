"""The ``cola_eval`` task: clean and robust accuracy of COLA and its ablations on a checkpoint.

``run(config, workdir)`` (dispatched by ``clipjax.main`` for ``config.task == "cola_eval"``,
see ``configs/cola.py``):

1. builds the model as the trainer does (``config.model``, ``config.data.image_size`` /
   ``context_length``; ``config.model.init_checkpoint`` = a clipjax workdir or a checkpoint file;
   a clipjax workdir brings its own model, image size, context length and, unless
   ``config.data.tokenizer`` is set, tokenizer from its config.json);
2. reads the first ``config.eval.max_examples`` examples of ``config.eval.dataset`` and the label
   set ``config.eval.label_set`` (its class names and templates; optional descriptions from
   ``config.cola.descriptions_path``);
3. evaluates the plain zero-shot classifier (``base``) and every COLA variant in
   ``config.cola.variants`` (``ColaConfig`` overrides of ``config.cola.base``):

   * clean accuracy (one deterministic view draw from ``config.seed``); robust accuracy
     counts an example only if it is also correct on that clean draw, so only clean-correct
     examples are attacked (padded to constant batch shapes);
   * ``transfer`` (the paper's non-adaptive protocol): adversarial examples of each attack in
     ``config.attacks`` computed on ``base``, then classified by every classifier;
   * ``adaptive``: each attack run end-to-end through the variant (gradients through the
     views, projection, entropy weights and Sinkhorn; EOT over ``config.eot_draws`` view draws
     per gradient, or per query for the black-box Square attack), the random views used for
     the prediction being a fresh draw;
   * ``worst_case`` per threat model (ε, norm): an example is robust only if it survives every
     attack of that ε under both protocols;
   * ``masking_check``: black-box (Square) minus white-box robust accuracy per classifier; a
     clearly negative gap is evidence of gradient masking.

4. measures COLA's overhead beyond the N image-encoder passes, and writes ``summary.json`` (with
   ``robust_examples``: per step ``"<attack>/transfer"`` → classifier → indices, and
   ``"<attack>/adaptive/<variant>"`` → indices, of the examples left correct) and ``results.md``
   (a markdown table) to ``workdir``.

Adaptive attacks through COLA take minutes per (variant, attack) on a CPU. After each transfer
attack and each adaptive (attack, variant) the results so far, per example, are saved to
``workdir/results.partial.json``; rerunning the same config in the same workdir resumes from it
(a different config there is refused by ``clipjax.runs.open_run``, naming the file). It is
removed once ``summary.json`` is written.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from etils import epath

from clipjax import measure, runs
from clipjax import model as model_lib
from clipjax.attacks import Stochastic, build_attack
from clipjax.data import registry, transforms
from clipjax.data.tokenizer import Tokenizer
from clipjax.evaluation.zeroshot import build_classifier, encode_texts
from clipjax.methods import cola

__all__ = ["BLACK_BOX", "load_examples", "merges_path", "run", "text_side"]

BLACK_BOX = ("square",)
"""Attacks that only query the classifier (no gradients): the gradient-masking check."""


def load_examples(
  spec: dict[str, Any], label_set: str, image_size: int, max_examples: int
) -> tuple[np.ndarray, np.ndarray, Any]:
  """First ``max_examples`` images ([n, s, s, 3] float32 in [0, 1]), labels and the label set."""
  source = registry.build_source(spec, image_size)
  sets = getattr(source, "label_sets", None) or {}
  if label_set not in sets:
    raise ValueError(
      f"eval.label_set {label_set!r} not offered by {spec.get('name')!r}; available: {sorted(sets)}"
    )
  n = min(int(max_examples), len(source))
  images, labels = [], []
  for i in range(n):
    ex = source[i]
    img = transforms.as_uint8_rgb(ex["image"], f"{spec.get('name')}[{i}]")
    if img.shape[:2] != (image_size, image_size):
      img = transforms.resize_center_crop(img, image_size)
    images.append(img)
    labels.append(int(ex["labels"][label_set]))
  x = np.stack(images).astype(np.float32) / np.float32(255.0)
  return x, np.asarray(labels, np.int32), sets[label_set]


def text_side(
  encode_text, tokenize, classnames, templates, descriptions, *, max_descriptions, num_components
) -> cola.ColaText:
  """Encodes COLA's per-class prompts into a padded [K, M, d] :class:`cola.ColaText`."""
  prompts_k = cola.class_prompts(
    classnames, templates, descriptions, max_descriptions=max_descriptions
  )
  flat = [p for ps in prompts_k for p in ps]
  emb = encode_texts(encode_text, tokenize, flat)
  m = max(len(ps) for ps in prompts_k)
  z_kmd = np.zeros((len(prompts_k), m, emb.shape[1]), np.float32)
  mask_km = np.zeros((len(prompts_k), m), bool)
  start = 0
  for k, ps in enumerate(prompts_k):
    z_kmd[k, : len(ps)] = emb[start : start + len(ps)]
    mask_km[k, : len(ps)] = True
    start += len(ps)
  return cola.build_text(z_kmd, mask_km, num_components)


def _batches(x, y, batch_size):
  for start in range(0, x.shape[0], batch_size):
    yield {"image": x[start : start + batch_size], "label": y[start : start + batch_size]}


def _subset_batches(x, y, idx, batch_size):
  """Batches of ``x[idx]`` padded to ``batch_size`` (first row repeated) with a ``valid`` mask.

  Constant batch shapes: one compilation per attack and classifier.
  """
  out = []
  for start in range(0, len(idx), batch_size):
    sel = idx[start : start + batch_size]
    valid = np.arange(batch_size) < len(sel)
    sel = np.concatenate([sel, np.full(batch_size - len(sel), sel[0])])
    out.append({"image": x[sel], "label": y[sel], "valid": valid})
  return out


def _check_ball(x_adv, x, spec, what):
  """Asserts that adversarial images lie in [0, 1] and in the attack's ε-ball."""
  delta = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(x.shape[0], -1)
  size = np.abs(delta).max(1) if spec["norm"] == "linf" else np.linalg.norm(delta, axis=1)
  if x_adv.min() < 0.0 or x_adv.max() > 1.0 or size.max() > spec["eps"] * (1 + 1e-5) + 1e-6:
    raise AssertionError(
      f"attack {what}: perturbation {size.max():.3g} (eps {spec['eps']:.3g}) or pixels "
      f"[{x_adv.min():.3g}, {x_adv.max():.3g}] out of bounds"
    )


def merges_path(config: mlc.ConfigDict) -> str | None:
  """``config.data.tokenizer``, else the checkpoint workdir's, else None (OpenAI's, shipped)."""
  path = config.data.get("tokenizer") or ""
  init = config.model.get("init_checkpoint") or ""
  if not path and init and model_lib.is_workdir(init):
    path = runs.read_run_config(init).get("data", {}).get("tokenizer") or ""
  return path or None


class _Progress:
  """Per-step results of an unfinished run (``results.partial.json``), so a rerun resumes.

  Only a run of the same config gets here (``clipjax.runs.open_run`` refuses any other).
  """

  def __init__(self, wdir: epath.Path):
    self.path = wdir / "results.partial.json"
    self.state: dict[str, Any] = {"steps": {}}
    if self.path.exists():
      self.state = runs.read_json(self.path)
      print(f"resuming from {self.path}: {len(self.state['steps'])} attack steps done", flush=True)

  def get(self, step: str) -> dict[str, Any] | None:
    return self.state["steps"].get(step)

  def put(self, step: str, value: dict[str, Any]) -> None:
    self.state["steps"][step] = value
    runs.write_json(self.path, self.state)

  def finish(self) -> None:
    self.path.unlink(missing_ok=True)


def _mask(indices: list[int], n: int) -> np.ndarray:
  out = np.zeros(n, bool)
  out[np.asarray(indices, np.int64)] = True
  return out


def run(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates COLA per ``config`` (see module docstring); returns the results dict."""
  run_dir = runs.open_run(workdir, config, task="cola_eval")
  model = runs.build_model(
    config.model.to_dict(),
    config.data.image_size,
    config.data.context_length,
    jax.random.key(config.seed),
  )
  params = model.params
  image_size = model.config.vision.image_size
  context_length = model.config.text.context_length
  ev = config.eval
  x_all, y_all, lset = load_examples(
    ev.dataset.to_dict(), ev.label_set, image_size, ev.max_examples
  )

  tok = Tokenizer(merges_path(config), context_length=context_length)
  tokenize = lambda texts: tok(texts)
  encode_text = jax.jit(lambda ids: model.encode_text(params, ids).emb)
  encode_image = lambda px: model.encode_image(params, px).emb

  ccfg = config.cola
  descriptions = None
  if ccfg.descriptions_path:
    descriptions = cola.load_descriptions(ccfg.descriptions_path, lset.classnames)
  base_cfg = ccfg.base.to_dict()
  variants = {
    name: cola.ColaConfig.from_dict({**base_cfg, **dict(over)})
    for name, over in ccfg.variants.to_dict().items()
  }
  text = text_side(
    encode_text,
    tokenize,
    lset.classnames,
    lset.templates,
    descriptions,
    max_descriptions=ccfg.max_descriptions,
    num_components=cola.ColaConfig.from_dict(base_cfg).num_components,
  )
  clf = build_classifier(
    encode_text, tokenize, lset.classnames, lset.templates, logit_scale=ccfg.base.logit_scale
  )
  weights = jnp.asarray(clf.weights_cd)
  base_fn = lambda px: ccfg.base.logit_scale * encode_image(px) @ weights.T
  classifiers: dict[str, Any] = {"base": base_fn}
  for name, vcfg in variants.items():
    vtext = cola.build_text(text.z_kmd, text.mask_km, vcfg.num_components)
    classifiers[name] = Stochastic(cola.cola_classifier(encode_image, vtext, vcfg))

  key = jax.random.key(config.seed)
  bs = ev.batch_size

  def predict(fn, x, k):
    if isinstance(fn, Stochastic):
      return jnp.argmax(fn.fn(x, k), axis=1)
    return jnp.argmax(fn(x), axis=1)

  predictors = {
    name: jax.jit(lambda x, k, fn=fn: predict(fn, x, k)) for name, fn in classifiers.items()
  }

  def accuracy(name, xs, ks):
    correct = [
      np.asarray(predictors[name](xb, kb)) == yb for (xb, yb), kb in zip(xs, ks, strict=True)
    ]
    return np.concatenate(correct)

  n_all = int(x_all.shape[0])
  batches = [(b["image"], b["label"]) for b in _batches(x_all, y_all, bs)]
  keys = [jax.random.fold_in(key, i) for i in range(len(batches))]
  results: dict[str, Any] = {
    "n": int(x_all.shape[0]),
    "num_classes": len(lset.classnames),
    "label_set": ev.label_set,
    "variants": {n: dataclasses.asdict(v) for n, v in variants.items()},
    "clean": {},
    "transfer": {},
    "adaptive": {},
    "adaptive_seconds": {},
  }
  t0 = time.perf_counter()
  clean_correct = {}
  robust_ex: dict[str, dict[str, np.ndarray]] = {}  # attack label -> classifier -> [n] bool
  threat: dict[str, tuple[float, str, bool]] = {}  # attack label -> (eps, norm, black-box)
  for name in classifiers:
    clean_correct[name] = accuracy(name, batches, keys)
    results["clean"][name] = float(np.mean(clean_correct[name]))
  print(f"clean: {results['clean']}", flush=True)
  # Config, data, model and tokenizer have all worked: claim the directory.
  run_dir.start()
  wdir = run_dir.path
  progress = _Progress(wdir)

  for spec in config.attacks:
    spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
    label = spec.pop("label", None) or spec["name"]
    run_adaptive = spec.pop("adaptive", True)
    # Non-adaptive: attack the undefended zero-shot classifier, classify its examples.
    attack, full = build_attack(spec, base_fn)
    threat[label] = (float(full["eps"]), full["norm"], full["name"] in BLACK_BOX)
    ok = robust_ex.setdefault(label, {})
    done = progress.get(f"{label}/transfer")
    if done is None:
      done = {"row": {}, "ok": {}}
      attack = jax.jit(attack)
      # Only examples some classifier gets right clean can count as robust: attack those only.
      idx_any = np.flatnonzero(np.logical_or.reduce(list(clean_correct.values())))
      sub = _subset_batches(x_all, y_all, idx_any, bs)
      adv = []
      for i, b in enumerate(sub):
        k_att = jax.random.fold_in(jax.random.fold_in(key, 1), i)
        adv.append((np.asarray(attack(b["image"], b["label"], k_att)), b["label"]))
      valid = np.concatenate([b["valid"] for b in sub]) if sub else np.zeros(0, bool)
      k_eval = [jax.random.fold_in(jax.random.fold_in(key, 2), i) for i in range(len(sub))]
      for name in classifiers:
        survived = np.zeros(n_all, bool)
        if sub:
          survived[idx_any] = accuracy(name, adv, k_eval)[valid]
        robust = clean_correct[name] & survived
        done["row"][name] = float(np.mean(robust))
        done["ok"][name] = np.flatnonzero(robust).tolist()
      progress.put(f"{label}/transfer", done)
    for name in classifiers:
      ok[name] = _mask(done["ok"][name], n_all)
    results["transfer"][label] = row = done["row"]
    print(f"transfer {label}: {row}", flush=True)
    # Adaptive: the attack through each classifier (EOT for the randomised ones; a spec's own
    # eot_draws overrides config.eot_draws; a spec with "adaptive": False is transfer-only).
    row = {"base": row["base"]}
    seconds_row = results["adaptive_seconds"].setdefault(label, {})
    for name, fn in classifiers.items():
      if name == "base" or name not in config.adaptive_variants or not run_adaptive:
        continue
      done = progress.get(f"{label}/adaptive/{name}")
      if done is None:
        aspec = {"eot_draws": config.eot_draws, **spec}
        idx = np.flatnonzero(clean_correct[name])
        survived = np.zeros(n_all, bool)
        start = time.perf_counter()
        if idx.size:
          attack_fn, afull = build_attack(aspec, fn)
          attack_fn = jax.jit(attack_fn)
          k_adapt = jax.random.fold_in(key, 3)
          sub = _subset_batches(x_all, y_all, idx, bs)
          adv = []
          for i, b in enumerate(sub):
            x_adv = np.asarray(attack_fn(b["image"], b["label"], jax.random.fold_in(k_adapt, i)))
            _check_ball(x_adv, b["image"], afull, f"{label}/{name}")
            adv.append((x_adv, b["label"]))
          valid = np.concatenate([b["valid"] for b in sub])
          k_pred = [jax.random.fold_in(jax.random.fold_in(k_adapt, i), 1) for i in range(len(sub))]
          survived[idx] = accuracy(name, adv, k_pred)[valid]
        adaptive_ok = clean_correct[name] & survived
        done = {
          "acc": float(np.mean(adaptive_ok)),
          "ok": np.flatnonzero(adaptive_ok).tolist(),
          "seconds": time.perf_counter() - start,
        }
        progress.put(f"{label}/adaptive/{name}", done)
      row[name] = done["acc"]
      seconds_row[name] = done["seconds"]
      ok[name] = ok[name] & _mask(done["ok"], n_all)
      print(f"adaptive {label} {name}: {row[name]:.3f} ({done['seconds']:.0f}s)", flush=True)
    results["adaptive"][label] = row
  results["attack_seconds"] = time.perf_counter() - t0
  # Indices of the examples each step left correct (paired comparisons, cross-run worst cases).
  results["robust_examples"] = {step: v["ok"] for step, v in progress.state["steps"].items()}
  results["worst_case"], results["masking_check"] = _worst_case(results, robust_ex, threat)

  # Overhead of each variant's prediction beyond its N image-encoder passes (the predictors
  # are already compiled for this batch shape; one encoder compilation per N).
  x_b = jnp.asarray(batches[0][0])
  enc = jax.jit(encode_image)
  timing = {}
  for name, vcfg in variants.items():
    n_views = vcfg.num_views
    views = jnp.asarray(
      np.repeat(np.asarray(x_b)[:, None], n_views, axis=1).reshape((-1,) + x_b.shape[1:])
    )
    t_enc = measure.time_calls(enc, views).wall
    t_full = measure.time_calls(predictors[name], x_b, keys[0]).wall
    timing[name] = {"encoder_s": t_enc, "cola_s": t_full, "overhead": t_full / t_enc - 1.0}
  results["timing"] = timing
  (wdir / "results.md").write_text(format_results(results))
  run_dir.write_summary(results)
  progress.finish()
  print(format_results(results), flush=True)
  return results


def _threat_name(eps: float, norm: str) -> str:
  return f"{norm} eps={eps * 255:.3g}/255"


def _worst_case(results, robust_ex, threat):
  """Per threat model (ε, norm): per-example worst case over every attack and protocol, and
  the gradient-masking check (black-box minus best white-box robust accuracy).

  An example counts as robust only if it is correct clean and under every transfer and
  adaptive attack of that threat model. The masking check compares, per classifier, the
  lowest robust accuracy of the black-box attacks with that of the gradient attacks (adaptive
  ones for the defences; for ``base`` transfer and adaptive coincide): a clearly negative gap
  (black-box stronger) is evidence of gradient masking.
  """
  worst, masking = {}, {}
  for group in sorted({t[:2] for t in threat.values()}):
    labels = [lb for lb, t in threat.items() if t[:2] == group]
    gname = _threat_name(*group)
    names = set.intersection(*(set(robust_ex[lb]) for lb in labels))
    worst[gname] = {
      name: float(np.mean(np.logical_and.reduce([robust_ex[lb][name] for lb in labels])))
      for name in sorted(names)
    }
    black = [lb for lb in labels if threat[lb][2]]
    white = [lb for lb in labels if not threat[lb][2]]
    if not black or not white:
      continue
    check = {}
    for name in sorted(names):

      def acc(lbs, name=name):
        vals = [results["adaptive"][lb].get(name) for lb in lbs]
        vals = [v for v in vals if v is not None]
        return min(vals) if vals else None

      bb, wb = acc(black), acc(white)
      if bb is not None and wb is not None:
        check[name] = {"black_box": bb, "white_box": wb, "gap": bb - wb}
    masking[gname] = check
  return worst, masking


def format_results(results: dict[str, Any]) -> str:
  """Markdown table: clean, transfer and adaptive robust accuracy per classifier."""
  names = list(results["clean"])
  attacks = list(results["transfer"])
  head = ["classifier", "clean"]
  worst = results.get("worst_case", {})
  for a in attacks:
    head += [f"{a} transfer", f"{a} adaptive"]
  head += [f"worst case {g}" for g in worst]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name in names:
    cells = [name, f"{results['clean'][name]:.3f}"]
    for a in attacks:
      cells.append(f"{results['transfer'][a][name]:.3f}")
      ad = results["adaptive"][a].get(name)
      cells.append("—" if ad is None else f"{ad:.3f}")
    for g in worst.values():
      cells.append(f"{g[name]:.3f}" if name in g else "—")
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"n = {results['n']}, label set {results['label_set']!r}")
  for g, check in results.get("masking_check", {}).items():
    for name, c in check.items():
      lines.append(
        f"- masking check {g} {name}: black-box {c['black_box']:.3f} vs white-box "
        f"{c['white_box']:.3f} (gap {c['gap']:+.3f})"
      )
  for name, t in results.get("timing", {}).items():
    lines.append(
      f"- {name}: N encoder passes {t['encoder_s'] * 1e3:.1f} ms, full COLA "
      f"{t['cola_s'] * 1e3:.1f} ms (overhead {100 * t['overhead']:+.0f} %)"
    )
  return "\n".join(lines) + "\n"
