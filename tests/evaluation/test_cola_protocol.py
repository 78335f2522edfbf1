"""COLA's robust-evaluation protocol on classifiers with a closed-form ℓ∞ robustness radius."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.attacks import Stochastic
from clipjax.evaluation import cola_protocol


def _classifiers(logits_fn):
  """`base` and a "randomised" variant that ignores its key (the same decision rule)."""
  fns = {"base": logits_fn, "same": Stochastic(lambda px, key: logits_fn(px))}
  predict = {
    "base": jax.jit(lambda x, k: jnp.argmax(logits_fn(x), axis=1)),
    "same": jax.jit(lambda x, k: jnp.argmax(fns["same"].fn(x, k), axis=1)),
  }
  return cola_protocol.Classifiers(fns, predict, {})


def test_evaluate_matches_the_closed_form_and_resumes_from_its_store(linear_two_class, monkeypatch):
  logits_fn, x, y, radius, _ = linear_two_class(n=10)
  y[0] = 1 - y[0]  # one example wrong clean: never robust
  eps = float(np.quantile(radius, 0.5))
  assert np.min(np.abs(radius - eps)) > 1e-5
  attacks = [{"name": "fgsm", "eps": eps, "label": "fgsm"}]
  store, clean_seen = cola_protocol.MemoryStore(), []
  kw = dict(key=jax.random.key(0), batch_size=4, adaptive_variants=["same"], eot_draws=1)
  out = cola_protocol.evaluate(
    _classifiers(logits_fn), x, y, attacks, store=store, on_clean=clean_seen.append, **kw
  )
  robust = (np.arange(len(y)) > 0) & (radius > eps)  # FGSM is the exact ℓ∞ attack here
  assert clean_seen == [out["clean"]] and out["clean"] == {"base": 0.9, "same": 0.9}
  assert out["transfer"]["fgsm"] == {"base": robust.mean(), "same": robust.mean()}
  assert out["adaptive"]["fgsm"] == {"base": robust.mean(), "same": robust.mean()}
  assert out["robust_examples"]["fgsm/transfer"]["base"] == np.flatnonzero(robust).tolist()
  assert out["robust_examples"]["fgsm/adaptive/same"] == np.flatnonzero(robust).tolist()
  assert out["worst_case"] == {
    cola_protocol.threat_name(eps, "linf"): {"base": robust.mean(), "same": robust.mean()}
  }
  assert out["masking_check"] == {}  # no black-box attack
  assert set(store.steps) == {"fgsm/transfer", "fgsm/adaptive/same"}

  # A second run on the same store attacks nothing and gives the same results.
  real_build = cola_protocol.build_attack

  def no_attack(spec, fn):
    def attack(*args):
      raise AssertionError("recomputed a stored step")

    return attack, real_build(spec, fn)[1]

  monkeypatch.setattr(cola_protocol, "build_attack", no_attack)
  again = cola_protocol.evaluate(_classifiers(logits_fn), x, y, attacks, store=store, **kw)
  for key in ("clean", "transfer", "adaptive", "robust_examples", "worst_case"):
    assert again[key] == out[key], key


def test_worst_case_is_per_example_and_masking_compares_black_and_white_box():
  t, f = True, False
  robust_ex = {  # attack label -> classifier -> [n] bool
    "pgd4": {"base": np.array([t, t, f, f]), "cola": np.array([t, t, t, f])},
    "square4": {"base": np.array([t, f, t, f]), "cola": np.array([t, f, f, f])},
    "pgd1": {"base": np.array([t, t, t, t])},  # cola not attacked at ε = 1
  }
  threat = {
    "pgd4": (4 / 255, "linf", f),
    "square4": (4 / 255, "linf", t),
    "pgd1": (1 / 255, "linf", f),
  }
  adaptive = {"pgd4": {"base": 0.5, "cola": 0.75}, "square4": {"base": 0.5}, "pgd1": {}}
  worst, masking = cola_protocol.worst_case(robust_ex, threat, adaptive)
  # Robust at ε = 4 under both attacks: examples {0} for base, {0} for cola.
  assert worst == {"linf eps=1/255": {"base": 1.0}, "linf eps=4/255": {"base": 0.25, "cola": 0.25}}
  # Square was transfer-only for cola: no black-box accuracy, no check for it.
  assert masking == {"linf eps=4/255": {"base": {"black_box": 0.5, "white_box": 0.5, "gap": 0.0}}}


def test_check_ball_names_the_attack():
  x = np.full((2, 2, 2, 3), 0.5, np.float32)
  spec = {"eps": 0.1, "norm": "linf"}
  cola_protocol.check_ball(x + 0.1, x, spec, "pgd/cola")  # on the boundary: fine
  with pytest.raises(AssertionError, match=r"attack pgd/cola: perturbation 0\.2"):
    cola_protocol.check_ball(x + 0.2, x, spec, "pgd/cola")
  with pytest.raises(AssertionError, match="pixels"):
    cola_protocol.check_ball(np.where(x > 0, 1.05, x), np.full_like(x, 0.99), spec, "sq")
  l2 = {"eps": 0.5, "norm": "l2"}
  delta = np.zeros_like(x)
  delta[:, 0, 0, 0] = 0.4
  cola_protocol.check_ball(x + delta, x, l2, "l2")
  delta[:, 0, 0, 1] = 0.4  # norm 0.57 > 0.5 although every pixel moves < 0.5
  with pytest.raises(AssertionError, match="l2"):
    cola_protocol.check_ball(x + delta, x, l2, "l2")
