"""Attacks by name, built from plain config dicts, and a per-example worst-case ensemble.

`build_attack(spec, logits_fn)` turns e.g. `{"name": "pgd", "eps": 1/255, "step_size": 1/255,
"steps": 10}` into `attack(x_bhwc, labels_b, key) -> x_adv_bhwc` (untargeted, against the true
labels), and returns the spec with every default filled in so that results can echo it.

`logits_fn` is a deterministic `logits_fn(x_bhwc) -> logits_bc`, or, for a randomised defence,
`Stochastic(fn)` with `fn(x_bhwc, key) -> logits_bc`; the attack objective is then averaged over
`eot_draws` draws (EOT).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from clipjax.attacks import autopgd as apgd_lib
from clipjax.attacks import core, iterative, losses
from clipjax.attacks import square as square_lib
from clipjax.attacks.eot import Stochastic, eot

__all__ = ["ATTACK_DEFAULTS", "OBJECTIVES", "build_attack", "worst_case"]

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
  eps, norm = full["eps"], full["norm"]
  if eps < 0:
    raise ValueError(f"attack {name!r}: eps must be >= 0, got {eps}")
  if full.get("steps") is not None and full["steps"] < 1:
    raise ValueError(f"attack {name!r}: steps must be >= 1, got {full['steps']}")
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
    if full["n_queries"] < 1:
      raise ValueError(f"attack 'square': n_queries must be >= 1, got {full['n_queries']}")
    if norm != "linf":
      raise ValueError(f"attack 'square': only norm 'linf' is implemented, got {norm!r}")
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
  if full["restarts"] < 1:
    raise ValueError(f"attack {name!r}: restarts must be >= 1, got {full['restarts']}")

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
