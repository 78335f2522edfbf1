"""COLA's robust-evaluation protocol: clean, transfer and adaptive accuracy of COLA and ablations.

The `cola_eval` task (`clipjax.tasks.cola_eval`) runs it on a checkpoint; everything here works
on callables and arrays. The classifiers (`build_classifiers`) are the plain zero-shot classifier
(`base`) and every COLA variant (`clipjax.methods.cola.ColaConfig`); `evaluate` measures, on
images `x` with labels `y`:

* clean accuracy (one deterministic view draw per batch); robust accuracy counts an example
  only if it is also correct on that clean draw, so only clean-correct examples are attacked
  (padded to constant batch shapes);
* `transfer` (the paper's non-adaptive protocol): adversarial examples of each attack computed
  on `base`, then classified by every classifier;
* `adaptive`: each attack run end-to-end through the variant (gradients through the views,
  projection, entropy weights and Sinkhorn; EOT over `eot_draws` view draws per gradient, or
  per query for the black-box Square attack), the random views used for the prediction being a
  fresh draw;
* `worst_case` per threat model (ε, norm): an example is robust only if it survives every
  attack of that ε under both protocols (`worst_case`);
* `masking_check`: black-box (Square) minus white-box robust accuracy per classifier; a clearly
  negative gap is evidence of gradient masking.

`overhead` measures COLA's cost beyond its N image-encoder passes and `format_results` renders
the markdown table. Each finished step (a transfer attack, or an (attack, variant) adaptive
attack) goes to a `Store` and is read back from it, so a caller that persists the store resumes
an interrupted evaluation.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from clipjax import measure
from clipjax.attacks import Stochastic, build_attack
from clipjax.data import registry, transforms
from clipjax.evaluation.zeroshot import build_classifier, encode_texts
from clipjax.methods import cola

__all__ = [
  "BLACK_BOX",
  "Classifiers",
  "MemoryStore",
  "Store",
  "build_classifiers",
  "check_ball",
  "evaluate",
  "format_results",
  "load_examples",
  "overhead",
  "text_side",
  "threat_name",
  "worst_case",
]

BLACK_BOX = ("square",)
"""Attacks that only query the classifier (no gradients): the gradient-masking check."""

_print = functools.partial(print, flush=True)


class Classifiers(NamedTuple):
  """The classifiers under evaluation (from `build_classifiers`).

  Attributes:
    fns: name -> logits function; `"base"` (first) is the plain zero-shot classifier
      `pixels_bhwc -> logits_bk`, the variants are `Stochastic(fn(pixels_bhwc, key))`.
    predict: name -> jitted `(pixels_bhwc, key) -> labels_b` (the key is unused by `base`).
    variants: variant name -> its `cola.ColaConfig`.
  """

  fns: dict[str, Callable | Stochastic]
  predict: dict[str, Callable[[jax.Array, jax.Array], jax.Array]]
  variants: dict[str, cola.ColaConfig]


class Store(Protocol):
  """Where `evaluate` keeps each finished step's results (JSON-able dicts), keyed by step name."""

  def get(self, step: str) -> dict[str, Any] | None: ...

  def put(self, step: str, value: dict[str, Any]) -> None: ...


class MemoryStore:
  """A `Store` in memory: nothing survives the process."""

  def __init__(self):
    self.steps: dict[str, dict[str, Any]] = {}

  def get(self, step: str) -> dict[str, Any] | None:
    return self.steps.get(step)

  def put(self, step: str, value: dict[str, Any]) -> None:
    self.steps[step] = value


def load_examples(
  spec: dict[str, Any], label_set: str, image_size: int, max_examples: int
) -> tuple[np.ndarray, np.ndarray, Any]:
  """First `max_examples` images ([n, s, s, 3] float32 in [0, 1]), labels and the label set."""
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
  """Encodes COLA's per-class prompts into a padded [K, M, d] `cola.ColaText`."""
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


def build_classifiers(
  encode_image: Callable[[jax.Array], jax.Array],
  encode_text: Callable[[jax.Array], jax.Array],
  tokenize: Callable[[list[str]], Any],
  classnames: Sequence[str],
  templates: Sequence[str],
  *,
  base: Mapping[str, Any],
  variants: Mapping[str, Mapping[str, Any]],
  descriptions: Mapping[str, list[str]] | None,
  max_descriptions: int,
) -> Classifiers:
  """The zero-shot classifier `base` and one COLA classifier per variant.

  Args:
    encode_image: `pixels_bhwc in [0, 1] -> emb_bd` (differentiable).
    encode_text: `ids_bl -> emb_bd`.
    tokenize: `list[str] -> ids [n, L]`.
    classnames: the label set's class names.
    templates: its prompt templates.
    base: `ColaConfig` fields shared by the variants (`logit_scale` also scales `base`).
    variants: variant name -> overrides of `base`.
    descriptions: optional class name -> descriptions (`cola.load_descriptions`).
    max_descriptions: descriptions kept per class.
  """
  configs = {
    name: cola.ColaConfig.from_dict({**base, **dict(over)}) for name, over in variants.items()
  }
  text = text_side(
    encode_text,
    tokenize,
    classnames,
    templates,
    descriptions,
    max_descriptions=max_descriptions,
    num_components=cola.ColaConfig.from_dict(base).num_components,
  )
  logit_scale = base["logit_scale"]
  clf = build_classifier(encode_text, tokenize, classnames, templates, logit_scale=logit_scale)
  weights = jnp.asarray(clf.weights_cd)
  fns: dict[str, Any] = {"base": lambda px: logit_scale * encode_image(px) @ weights.T}
  for name, vcfg in configs.items():
    vtext = cola.build_text(text.z_kmd, text.mask_km, vcfg.num_components)
    fns[name] = Stochastic(cola.cola_classifier(encode_image, vtext, vcfg))

  def predict(fn, x, k):
    if isinstance(fn, Stochastic):
      return jnp.argmax(fn.fn(x, k), axis=1)
    return jnp.argmax(fn(x), axis=1)

  predictors = {name: jax.jit(lambda x, k, fn=fn: predict(fn, x, k)) for name, fn in fns.items()}
  return Classifiers(fns, predictors, configs)


def _batches(x, y, batch_size):
  for start in range(0, x.shape[0], batch_size):
    yield x[start : start + batch_size], y[start : start + batch_size]


def _subset_batches(x, y, idx, batch_size):
  """Batches of `x[idx]` padded to `batch_size` (first row repeated) with a `valid` mask.

  Constant batch shapes: one compilation per attack and classifier.
  """
  out = []
  for start in range(0, len(idx), batch_size):
    sel = idx[start : start + batch_size]
    valid = np.arange(batch_size) < len(sel)
    sel = np.concatenate([sel, np.full(batch_size - len(sel), sel[0])])
    out.append({"image": x[sel], "label": y[sel], "valid": valid})
  return out


def check_ball(x_adv: np.ndarray, x: np.ndarray, spec: Mapping[str, Any], what: str) -> None:
  """Raises AssertionError unless `x_adv` lies in [0, 1] and in the attack's ε-ball around `x`.

  Args:
    x_adv: [b, ...] adversarial images.
    x: [b, ...] the images attacked.
    spec: the attack's full spec (`eps`, `norm` "linf" or "l2").
    what: the attack's name in the error.
  """
  delta = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(x.shape[0], -1)
  size = np.abs(delta).max(1) if spec["norm"] == "linf" else np.linalg.norm(delta, axis=1)
  if x_adv.min() < 0.0 or x_adv.max() > 1.0 or size.max() > spec["eps"] * (1 + 1e-5) + 1e-6:
    raise AssertionError(
      f"attack {what}: perturbation {size.max():.3g} (eps {spec['eps']:.3g}) or pixels "
      f"[{x_adv.min():.3g}, {x_adv.max():.3g}] out of bounds"
    )


def _mask(indices: list[int], n: int) -> np.ndarray:
  out = np.zeros(n, bool)
  out[np.asarray(indices, np.int64)] = True
  return out


def evaluate(
  classifiers: Classifiers,
  x: np.ndarray,
  y: np.ndarray,
  attacks: Sequence[Mapping[str, Any]],
  *,
  key: jax.Array,
  batch_size: int,
  adaptive_variants: Container[str],
  eot_draws: int,
  store: Store | None = None,
  on_clean: Callable[[dict[str, float]], None] | None = None,
  log: Callable[[str], None] = _print,
) -> dict[str, Any]:
  """Clean, transfer, adaptive and worst-case accuracy of every classifier (see module doc).

  Args:
    classifiers: from `build_classifiers`.
    x: [n, s, s, 3] float32 images in [0, 1].
    y: [n] int labels.
    attacks: attack specs (`clipjax.attacks.build_attack`) with optional `label` (default the
      name) and `adaptive` (default True; False: transfer only). A spec's own `eot_draws`
      overrides `eot_draws`.
    key: PRNG key of the views and attacks.
    batch_size: examples per batch (attacked subsets are padded to it).
    adaptive_variants: variants attacked adaptively.
    eot_draws: view draws averaged per gradient in the adaptive attacks.
    store: where finished steps are kept and found (`"<label>/transfer"`,
      `"<label>/adaptive/<variant>"`); a step already there is not recomputed. None: memory.
    on_clean: called with the clean accuracies before the first attack.
    log: receives one line per finished step.

  Returns:
    `clean`, `transfer` and `adaptive` (attack label -> classifier -> accuracy),
    `adaptive_seconds`, `attack_seconds` (clean pass included), `robust_examples` (step ->
    classifier -> indices for transfer steps, or indices for adaptive steps, of the examples
    left correct), `worst_case` and `masking_check` (see `worst_case`).
  """
  store = MemoryStore() if store is None else store
  t0 = time.perf_counter()
  n_all = int(x.shape[0])
  batches = list(_batches(x, y, batch_size))
  keys = [jax.random.fold_in(key, i) for i in range(len(batches))]

  def accuracy(name, xs, ks):
    predict = classifiers.predict[name]
    correct = [np.asarray(predict(xb, kb)) == yb for (xb, yb), kb in zip(xs, ks, strict=True)]
    return np.concatenate(correct)

  out: dict[str, Any] = {"clean": {}, "transfer": {}, "adaptive": {}, "adaptive_seconds": {}}
  clean_correct = {}
  robust_ex: dict[str, dict[str, np.ndarray]] = {}  # attack label -> classifier -> [n] bool
  threat: dict[str, tuple[float, str, bool]] = {}  # attack label -> (eps, norm, black-box)
  examples: dict[str, Any] = {}  # step -> the indices it left correct
  for name in classifiers.fns:
    clean_correct[name] = accuracy(name, batches, keys)
    out["clean"][name] = float(np.mean(clean_correct[name]))
  log(f"clean: {out['clean']}")
  if on_clean is not None:
    on_clean(out["clean"])

  for spec in attacks:
    spec = dict(spec)
    label = spec.pop("label", None) or spec["name"]
    run_adaptive = spec.pop("adaptive", True)
    # Non-adaptive: attack the undefended zero-shot classifier, classify its examples.
    attack, full = build_attack(spec, classifiers.fns["base"])
    threat[label] = (float(full["eps"]), full["norm"], full["name"] in BLACK_BOX)
    ok = robust_ex.setdefault(label, {})
    step = f"{label}/transfer"
    done = store.get(step)
    if done is None:
      done = {"row": {}, "ok": {}}
      attack = jax.jit(attack)
      # Only examples some classifier gets right clean can count as robust: attack those only.
      idx_any = np.flatnonzero(np.logical_or.reduce(list(clean_correct.values())))
      sub = _subset_batches(x, y, idx_any, batch_size)
      adv = []
      for i, b in enumerate(sub):
        k_att = jax.random.fold_in(jax.random.fold_in(key, 1), i)
        adv.append((np.asarray(attack(b["image"], b["label"], k_att)), b["label"]))
      valid = np.concatenate([b["valid"] for b in sub]) if sub else np.zeros(0, bool)
      k_eval = [jax.random.fold_in(jax.random.fold_in(key, 2), i) for i in range(len(sub))]
      for name in classifiers.fns:
        survived = np.zeros(n_all, bool)
        if sub:
          survived[idx_any] = accuracy(name, adv, k_eval)[valid]
        robust = clean_correct[name] & survived
        done["row"][name] = float(np.mean(robust))
        done["ok"][name] = np.flatnonzero(robust).tolist()
      store.put(step, done)
    examples[step] = done["ok"]
    for name in classifiers.fns:
      ok[name] = _mask(done["ok"][name], n_all)
    out["transfer"][label] = row = done["row"]
    log(f"transfer {label}: {row}")
    # Adaptive: the attack through each classifier (EOT for the randomised ones; a spec's own
    # eot_draws overrides eot_draws; a spec with "adaptive": False is transfer-only).
    row = {"base": row["base"]}
    seconds_row = out["adaptive_seconds"].setdefault(label, {})
    for name, fn in classifiers.fns.items():
      if name == "base" or name not in adaptive_variants or not run_adaptive:
        continue
      step = f"{label}/adaptive/{name}"
      done = store.get(step)
      if done is None:
        aspec = {"eot_draws": eot_draws, **spec}
        idx = np.flatnonzero(clean_correct[name])
        survived = np.zeros(n_all, bool)
        start = time.perf_counter()
        if idx.size:
          attack_fn, afull = build_attack(aspec, fn)
          attack_fn = jax.jit(attack_fn)
          k_adapt = jax.random.fold_in(key, 3)
          sub = _subset_batches(x, y, idx, batch_size)
          adv = []
          for i, b in enumerate(sub):
            x_adv = np.asarray(attack_fn(b["image"], b["label"], jax.random.fold_in(k_adapt, i)))
            check_ball(x_adv, b["image"], afull, f"{label}/{name}")
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
        store.put(step, done)
      examples[step] = done["ok"]
      row[name] = done["acc"]
      seconds_row[name] = done["seconds"]
      ok[name] = ok[name] & _mask(done["ok"], n_all)
      log(f"adaptive {label} {name}: {row[name]:.3f} ({done['seconds']:.0f}s)")
    out["adaptive"][label] = row
  out["attack_seconds"] = time.perf_counter() - t0
  out["robust_examples"] = examples
  out["worst_case"], out["masking_check"] = worst_case(robust_ex, threat, out["adaptive"])
  return out


def overhead(
  classifiers: Classifiers,
  encode_image: Callable[[jax.Array], jax.Array],
  x_b: np.ndarray,
  key: jax.Array,
) -> dict[str, dict[str, float]]:
  """Per variant: wall seconds of its N image-encoder passes and of its prediction on `x_b`.

  `x_b` should have the evaluation's batch shape, for which the predictors are already compiled
  (one encoder compilation per N). Returns variant -> `encoder_s`, `cola_s` and `overhead`
  (`cola_s / encoder_s - 1`).
  """
  x_b = jnp.asarray(x_b)
  enc = jax.jit(encode_image)
  k_b = jax.random.fold_in(key, 0)
  timing = {}
  for name, vcfg in classifiers.variants.items():
    n_views = vcfg.num_views
    views = jnp.asarray(
      np.repeat(np.asarray(x_b)[:, None], n_views, axis=1).reshape((-1,) + x_b.shape[1:])
    )
    t_enc = measure.time_calls(enc, views).wall
    t_full = measure.time_calls(classifiers.predict[name], x_b, k_b).wall
    timing[name] = {"encoder_s": t_enc, "cola_s": t_full, "overhead": t_full / t_enc - 1.0}
  return timing


def threat_name(eps: float, norm: str) -> str:
  """`"linf eps=4/255"`: a threat model's name in `worst_case` and the results table."""
  return f"{norm} eps={eps * 255:.3g}/255"


def worst_case(
  robust_ex: Mapping[str, Mapping[str, np.ndarray]],
  threat: Mapping[str, tuple[float, str, bool]],
  adaptive: Mapping[str, Mapping[str, float]],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
  """Per threat model (ε, norm): the per-example worst case, and the gradient-masking check.

  An example counts as robust only if it is correct clean and under every transfer and
  adaptive attack of that threat model. The masking check compares, per classifier, the
  lowest robust accuracy of the black-box attacks with that of the gradient attacks (adaptive
  ones for the defences; for `base` transfer and adaptive coincide): a clearly negative gap
  (black-box stronger) is evidence of gradient masking.

  Args:
    robust_ex: attack label -> classifier -> [n] bool, correct clean and under every protocol
      of that attack.
    threat: attack label -> (eps, norm, black-box).
    adaptive: attack label -> classifier -> adaptive robust accuracy.

  Returns:
    `(worst, masking)`: threat name -> classifier -> worst-case accuracy (classifiers every
    attack of the threat model evaluated), and threat name -> classifier -> `black_box`,
    `white_box`, `gap` (only for threat models with both kinds of attack).
  """
  worst, masking = {}, {}
  for group in sorted({t[:2] for t in threat.values()}):
    labels = [lb for lb, t in threat.items() if t[:2] == group]
    gname = threat_name(*group)
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
        vals = [adaptive[lb].get(name) for lb in lbs]
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
