"""Attacks by name, built from plain config dicts, and a per-example worst-case ensemble.

`build_attack(spec, logits_fn)` turns e.g. `{"name": "pgd", "eps": 1/255, "step_size": 1/255,
"steps": 10}` into `attack(x_bhwc, labels_b, key) -> x_adv_bhwc` (untargeted, against the true
labels), and returns the spec with every default filled in so that results can echo it.

`logits_fn` is a deterministic `logits_fn(x_bhwc) -> logits_bc`, or, for a randomised defence,
`Stochastic(fn)` with `fn(x_bhwc, key) -> logits_bc`; the attack objective is then averaged over
`eot_draws` draws (EOT).

`parse_attacks("pgd:eps=4/255,steps=10;apgd-ce:eps=4/255")` reads the compact form used on the
command line (`--config.robustness.attacks=...`): attacks separated by ';', each `name` or
`name:key=value,...`; values are numbers, fractions (`4/255`), true/false or words. A PGD/MIM
attack without `step_size` gets 2.5·eps/steps (Madry et al. 2018), and every attack gets a
`label` such as "pgd10@4" (name, steps, ε in 1/255) unless it sets one.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from clipjax.attacks import autopgd as apgd_lib
from clipjax.attacks import core, iterative, losses
from clipjax.attacks import square as square_lib
from clipjax.attacks.eot import Stochastic, eot

__all__ = [
  "ATTACK_DEFAULTS",
  "OBJECTIVES",
  "build_attack",
  "complete_spec",
  "parse_attacks",
  "worst_case",
]

AttackFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

OBJECTIVES = {
  "ce": losses.ce_objective,
  "margin": losses.margin_objective,
  "dlr": losses.dlr_objective,
}

ATTACK_DEFAULTS: dict[str, dict[str, Any]] = {
  "fgsm": {"eps": None, "norm": "linf", "loss": "ce"},
  "pgd": {
    "eps": None,
    "step_size": None,
    "steps": None,
    "norm": "linf",
    "loss": "ce",
    "random_start": True,
  },
  "mim": {
    "eps": None,
    "step_size": None,
    "steps": None,
    "norm": "linf",
    "loss": "ce",
    "decay": 1.0,
  },
  "apgd-ce": {"eps": None, "steps": 100, "norm": "linf"},
  "apgd-dlr": {"eps": None, "steps": 100, "norm": "linf"},
  "apgd-t": {"eps": None, "steps": 100, "norm": "linf", "n_target_classes": 9},
  # Black-box (queries only); defaults: AutoAttack's standard Square (paper ImageNet ℓ∞: 10000
  # queries, p_init 0.05).
  "square": {"eps": None, "n_queries": 5000, "p_init": 0.8, "norm": "linf", "loss": "margin"},
}
_COMMON = {"restarts": 1, "eot_draws": 1}


def _objective(loss: str, logits_fn, eot_draws: int):
  if loss not in OBJECTIVES:
    raise ValueError(f"unknown attack loss {loss!r}; valid: {sorted(OBJECTIVES)}")
  builder = OBJECTIVES[loss]
  if isinstance(logits_fn, Stochastic):

    def keyed(x_bhwc, labels_b, key):
      return builder(lambda z: logits_fn.fn(z, key))(x_bhwc, labels_b)

    return eot(keyed, eot_draws)
  return builder(logits_fn)


def complete_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
  """Validates an attack spec (without building it) and fills in every default.

  Raises:
    ValueError: unknown attack or field, a missing required field, or an invalid value (the
      message names the attack and the field).
  """
  name = spec.get("name")
  if name not in ATTACK_DEFAULTS:
    raise ValueError(f"unknown attack {name!r}; valid: {sorted(ATTACK_DEFAULTS)}")
  allowed = {**ATTACK_DEFAULTS[name], **_COMMON}
  unknown = sorted(set(spec) - set(allowed) - {"name"})
  if unknown:
    raise ValueError(f"attack {name!r}: unknown fields {unknown}; valid: {sorted(allowed)}")
  full = {"name": name, **allowed, **{k: v for k, v in spec.items() if k != "name"}}
  missing = sorted(k for k, v in full.items() if v is None)
  if missing:
    raise ValueError(f"attack {name!r}: missing required fields {missing}")
  core.check_norm(full["norm"])
  if full["eps"] < 0:
    raise ValueError(f"attack {name!r}: eps must be >= 0, got {full['eps']}")
  for key in ("steps", "restarts", "eot_draws", "n_queries"):
    if full.get(key) is not None and full[key] < 1:
      raise ValueError(f"attack {name!r}: {key} must be >= 1, got {full[key]}")
  if name == "square" and full["norm"] != "linf":
    raise ValueError(f"attack 'square': only norm 'linf' is implemented, got {full['norm']!r}")
  return full


def _value(text: str, where: str) -> Any:
  low = text.strip().lower()
  if low in ("true", "false"):
    return low == "true"
  try:
    return int(low)
  except ValueError:
    pass
  num, slash, den = low.partition("/")
  try:
    return float(num) / float(den) if slash else float(low)
  except (ValueError, ZeroDivisionError):
    pass
  if not re.fullmatch(r"[a-z_][\w-]*", low):
    raise ValueError(f"{where}: cannot read value {text!r} (a number, a/b, true/false or a word)")
  return text.strip()


def _label(full: Mapping[str, Any]) -> str:
  steps = full.get("steps") or ""
  return f"{full['name']}{steps}@{full['eps'] * 255:.3g}"


def parse_attacks(text: str) -> list[dict[str, Any]]:
  """Attack specs from the compact form (module docstring); "" or "none" -> [].

  Each returned spec is validated (`complete_spec`) and carries a `label`.

  Raises:
    ValueError: naming the offending attack and token.
  """
  text = text.strip()
  if text.lower() in ("", "none"):
    return []
  specs = []
  for i, part in enumerate(p.strip() for p in text.split(";")):
    where = f"attack {i + 1} {part!r}"
    name, _, args = part.partition(":")
    spec: dict[str, Any] = {"name": name.strip().lower()}
    for item in filter(None, (a.strip() for a in args.split(","))):
      key, eq, value = item.partition("=")
      if not eq or not key.strip():
        raise ValueError(f"{where}: {item!r} is not key=value")
      if key.strip() in spec:
        raise ValueError(f"{where}: {key.strip()!r} given twice")
      spec[key.strip()] = value.strip() if key.strip() == "label" else _value(value, where)
    label = spec.pop("label", None)
    if spec["name"] in ("pgd", "mim") and "step_size" not in spec and "steps" in spec:
      spec["step_size"] = 2.5 * spec.get("eps", 0.0) / max(int(spec["steps"]), 1)
    try:
      full = complete_spec(spec)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    specs.append({**spec, "label": label or _label(full)})
  labels = [s["label"] for s in specs]
  if len(set(labels)) != len(labels):
    raise ValueError(f"attack labels must be unique (set label=...): {labels}")
  return specs


def build_attack(
  spec: Mapping[str, Any], logits_fn: Callable | Stochastic
) -> tuple[AttackFn, dict[str, Any]]:
  """Builds an untargeted attack from a config dict.

  Args:
    spec: `{"name": one of ATTACK_DEFAULTS, ...}` with the fields of that attack (those whose
      default is None are required) plus optional `restarts` (independent random runs, worst
      case kept per example) and `eot_draws` (draws per gradient for a `Stochastic` logits_fn).
    logits_fn: the classifier under attack (plain or `Stochastic`).

  Returns:
    `(attack, full_spec)`: `attack(x_bhwc, labels_b, key) -> x_adv_bhwc` and the spec with all
    defaults filled in.
  """
  full = complete_spec(spec)
  name, eps, norm = full["name"], full["eps"], full["norm"]
  stochastic = isinstance(logits_fn, Stochastic)

  if name in ("fgsm", "pgd", "mim"):
    objective = _objective(full["loss"], logits_fn, full["eot_draws"])
    if name == "fgsm":
      single = lambda x, y, k: iterative.fgsm(objective, x, y, eps=eps, norm=norm, key=k)
    elif name == "pgd":
      single = lambda x, y, k: iterative.pgd(
        objective,
        x,
        y,
        eps=eps,
        step_size=full["step_size"],
        steps=full["steps"],
        norm=norm,
        random_start=full["random_start"],
        key=k,
      )
    else:
      single = lambda x, y, k: iterative.mim(
        objective,
        x,
        y,
        eps=eps,
        step_size=full["step_size"],
        steps=full["steps"],
        decay=full["decay"],
        norm=norm,
        key=k,
      )
  elif name == "square":
    objective = _objective(full["loss"], logits_fn, full["eot_draws"])
    single = lambda x, y, k: square_lib.square(
      objective, x, y, eps=eps, n_queries=full["n_queries"], p_init=full["p_init"], key=k
    )
  elif name in ("apgd-ce", "apgd-dlr"):
    objective = _objective(name.removeprefix("apgd-"), logits_fn, full["eot_draws"])
    single = lambda x, y, k: apgd_lib.apgd(
      objective, x, y, eps=eps, steps=full["steps"], key=k, norm=norm
    )
  else:
    if stochastic:
      raise ValueError("attack 'apgd-t' needs a deterministic logits_fn (use apgd-ce with EOT)")
    single = lambda x, y, k: apgd_lib.apgd_targeted(
      logits_fn,
      x,
      y,
      eps=eps,
      steps=full["steps"],
      key=k,
      norm=norm,
      n_target_classes=full["n_target_classes"],
    )

  if full["restarts"] == 1:
    return single, full

  def restarted(x_bhwc, labels_b, key):
    keys = jax.random.split(key, full["restarts"])
    runs = [lambda x, y, _, k=k: single(x, y, k) for k in keys]
    return worst_case(runs, _misclassified(logits_fn), x_bhwc, labels_b, key)[0]

  return restarted, full


def _misclassified(logits_fn):
  if isinstance(logits_fn, Stochastic):
    return lambda x, y, key: jax.numpy.argmax(logits_fn.fn(x, key), axis=1) != y
  return lambda x, y, key: jax.numpy.argmax(logits_fn(x), axis=1) != y


def worst_case(
  attacks: Sequence[AttackFn],
  success_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
  x_bhwc: jax.Array,
  labels_b: jax.Array,
  key: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Runs several attacks and keeps, per example, the first one that succeeds.

  Args:
    attacks: `attack(x_bhwc, labels_b, key) -> x_adv_bhwc`, tried in order.
    success_fn: `success_fn(x_adv_bhwc, labels_b, key) -> bool_b` (e.g. misclassified).
    x_bhwc: clean images.
    labels_b: true classes.
    key: PRNG key (split between attacks).

  Returns:
    `(x_adv_bhwc, success_b)`; examples no attack broke keep the last attack's output.
  """
  if not attacks:
    raise ValueError("worst_case needs at least one attack")
  x_adv = x_bhwc
  done_b = jax.numpy.zeros(x_bhwc.shape[:1], bool)
  for attack in attacks:
    key, k_att, k_eval = jax.random.split(key, 3)
    cand = attack(x_bhwc, labels_b, k_att)
    success_b = success_fn(cand, labels_b, k_eval)
    x_adv = core.select_b(done_b, x_adv, cand)
    done_b = done_b | success_b
  return x_adv, done_b
