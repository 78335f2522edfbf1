"""OT-CLIP: limit cases of the OT loss family, OT inference oracles, and a config smoke run."""

import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from scipy.special import kl_div, log_softmax

from clipjax import losses
from clipjax import methods as methods_lib
from clipjax.methods import otclip
from clipjax.methods.base import Embeddings
from clipjax.ot import plans

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _pair(n=6, d=5, seed=0, noise=1.0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  zi = _unit(jax.random.normal(k1, (n, d)))
  zt = _unit(zi + noise * jax.random.normal(k2, (n, d)))
  return zi, zt


def _method(**kw):
  base = dict(
    loss="entropic",
    temperature="logit_scale",
    epsilon=0.01,
    num_iters=5,
    grad="unroll",
    direction="both",
    ot_weight=1.0,
    infonce_weight=0.0,
  )
  base.update(kw)
  return methods_lib.get("otclip", **base)


def test_one_row_normalisation_is_uot_rho_b0_and_entropic_k1_is_column_then_row():
  zi, zt = _pair(n=8, noise=0.8, seed=3)
  n, scale = 8, 9.0
  logits = scale * np.asarray(zi @ zt.T, np.float64)
  # Oracle: InfoNCE by hand; exp(-C/ε) = exp(-1/ε) exp(logits) and the constant cancels.
  infonce = {
    "i2t": -np.mean(np.diag(log_softmax(logits, axis=1))),
    "t2i": -np.mean(np.diag(log_softmax(logits, axis=0))),
  }
  for direction, ref in infonce.items():
    # UOT with a free column marginal and one iteration = one row normalisation.
    v, _ = otclip.ot_clip_loss(
      zi, zt, 1.0 / scale, kind="uot", direction=direction, num_iters=1, rho_b=0.0
    )
    np.testing.assert_allclose(v, ref, rtol=1e-6)
  # DBOT with a box so wide no column bound is active: the same row softmax.
  v, _ = otclip.ot_clip_loss(zi, zt, 1.0 / scale, kind="dbot", direction="i2t", num_iters=1,
                             delta=1e6)  # fmt: skip
  np.testing.assert_allclose(v, infonce["i2t"], rtol=1e-6)
  # Entropic K = 1 is a column normalisation (to 1/n) followed by a row normalisation (to 1/n).
  kern = np.exp(logits - logits.max())
  col = kern / kern.sum(0, keepdims=True) / n
  plan = col / col.sum(1, keepdims=True) / n
  k1 = -np.mean(np.log(n * np.diag(plan)))
  v, _ = otclip.ot_clip_loss(zi, zt, 1.0 / scale, kind="entropic", direction="i2t", num_iters=1)
  np.testing.assert_allclose(v, k1, rtol=1e-5)
  assert abs(k1 - infonce["i2t"]) > 0.01 * infonce["i2t"]


def test_both_directions_is_symmetric_infonce_through_the_method():
  zi, zt = _pair(n=8)
  emb = Embeddings(zimg=zi, ztxt=zt, logit_scale=jnp.asarray(12.0))
  m = _method(loss="uot", num_iters=1, rho_b=0.0)
  v, aux, _ = m.loss(emb, m.init(5), None)
  ref, _ = losses.clip_loss(zi, zt, 12.0)
  np.testing.assert_allclose(v, ref, rtol=1e-6)
  assert {"ot_i2t/converged", "ot_t2i/n_iters", "ot_i2t/entropy", "ot_t2i/diag_mass"} <= set(aux)
  # InfoNCE added with weight w adds exactly w * InfoNCE.
  m2 = _method(loss="uot", num_iters=1, rho_b=0.0, infonce_weight=0.5)
  v2, _, _ = m2.loss(emb, {}, None)
  np.testing.assert_allclose(v2, 1.5 * ref, rtol=1e-6)


def test_converged_entropic_plan_matches_pot_and_kl_formula():
  zi, zt = _pair(n=5, noise=0.5)
  eps = 0.2
  cost = np.asarray(1.0 - zi @ zt.T, np.float64)
  out = otclip.ot_plan(jnp.asarray(cost / eps), None, None, kind="entropic", num_iters=2000,
                       grad="implicit", threshold=1e-7)  # fmt: skip
  u = np.full(5, 0.2)
  ref = pot.sinkhorn(u, u, cost, eps, numItermax=10000, stopThr=1e-12)
  np.testing.assert_allclose(out.plan, ref, atol=1e-6)
  v, _ = otclip.ot_clip_loss(zi, zt, eps, kind="entropic", direction="i2t", num_iters=2000,
                             grad="implicit", threshold=1e-7)  # fmt: skip
  np.testing.assert_allclose(v, -np.mean(np.log(5 * np.diag(ref))), rtol=1e-4)


def test_kl_to_identity_is_the_generalised_kl_with_its_mass_term():
  n = 5
  eye = np.eye(n) / n
  rng = np.random.default_rng(0)
  # scipy's kl_div(x, y) = x log(x/y) - x + y, summed: the generalised KL, mass term included.
  for plan in (rng.uniform(0.01, 0.5, (n, n)), 2.0 * eye + 1e-3, 0.5 * eye + 1e-3):
    got = otclip.kl_to_identity(jnp.asarray(plan, jnp.float32))
    np.testing.assert_allclose(got, np.sum(kl_div(eye, plan)), rtol=1e-5)
  # c·I/N: -log c + c - 1 >= 0, minimised at c = 1 (without the mass term: -log c, unbounded).
  for c in (0.5, 2.0, 10.0):
    got = otclip.kl_to_identity(jnp.asarray(c * eye, jnp.float32))
    np.testing.assert_allclose(got, -math.log(c) + c - 1.0, rtol=1e-5)


def test_kl_to_identity_zero_at_identity_and_dbot_zero_delta_is_balanced():
  np.testing.assert_allclose(otclip.kl_to_identity(jnp.eye(4) / 4), 0.0, atol=1e-7)
  zi, zt = _pair(n=6, noise=0.7)
  kw = dict(direction="i2t", num_iters=400)
  a, _ = otclip.ot_clip_loss(zi, zt, 0.3, kind="dbot", delta=0.0, **kw)
  b, _ = otclip.ot_clip_loss(zi, zt, 0.3, kind="entropic", **kw)
  np.testing.assert_allclose(a, b, rtol=1e-5)


def test_fgw_reduces_to_entropic_as_weight_goes_to_zero():
  zi, zt = _pair(n=6, noise=0.7)
  kw = dict(direction="both", num_iters=5)
  ent, _ = otclip.ot_clip_loss(zi, zt, 0.1, kind="entropic", **kw)
  f0, _ = otclip.ot_clip_loss(zi, zt, 0.1, kind="fgw", alpha=0.0, outer_iters=3, **kw)
  np.testing.assert_allclose(f0, ent, rtol=1e-6)
  diffs = [
    abs(float(otclip.ot_clip_loss(zi, zt, 0.1, kind="fgw", alpha=a, outer_iters=3, **kw)[0]) - ent)
    for a in (1e-1, 1e-2, 1e-3)
  ]
  assert diffs[0] > 1e-4 and diffs[0] > diffs[1] > diffs[2]
  assert diffs[2] < 2e-2 * diffs[0]  # linear in α


def test_ufgw_limits_are_fgw_and_uot():
  zi, zt = _pair(n=6, noise=0.7)
  kw = dict(direction="both", num_iters=5, outer_iters=3)

  def loss(kind, **k):
    return float(otclip.ot_clip_loss(zi, zt, 0.1, kind=kind, **kw, **k)[0])

  fgw = loss("fgw", alpha=0.1)
  # ρ = ∞ (hard marginals) is FGW exactly; finite ρ → ∞ converges to it, the gap shrinking ~1/ρ.
  np.testing.assert_allclose(loss("ufgw", alpha=0.1), fgw, rtol=1e-6)
  gaps = [abs(loss("ufgw", alpha=0.1, rho_a=r, rho_b=r) - fgw) for r in (1.0, 1e2, 1e4)]
  assert gaps[0] > 1e-3 and gaps[1] < 0.05 * gaps[0] and gaps[2] < 0.05 * gaps[1], gaps
  # α = 0 (no structure term) is UOT at the same ρ, which differs from the balanced losses.
  uot = loss("uot", rho_a=1.0, rho_b=0.5)
  np.testing.assert_allclose(loss("ufgw", alpha=0.0, rho_a=1.0, rho_b=0.5), uot, rtol=1e-6)
  assert abs(uot - loss("entropic")) > 1e-3
  assert abs(loss("ufgw", alpha=0.1, rho_a=1.0, rho_b=0.5) - uot) > 1e-4


def test_ufgw_mass_stays_bounded_up_to_alpha_10():
  zi, zt = _pair(n=24, d=16, noise=0.3)  # well aligned
  eps = 1.0 / 16.5
  masses = {}
  for grad, iters in (("unroll", 5), ("implicit", 500)):
    kw = dict(kind="ufgw", direction="i2t", rho_a=1.0, rho_b=1.0, outer_iters=10)
    kw.update(grad=grad, num_iters=iters, threshold=1e-6)

    def loss(a, b, alpha, kw=kw):
      v, aux = otclip.ot_clip_loss(a, b, eps, alpha=alpha, **kw)
      return v, aux["ot_i2t/mass"]

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    masses[grad] = []
    for alpha in (0.0, 0.1, 1.0, 10.0):
      (v, mass), grads = vg(zi, zt, alpha)
      assert all(bool(jnp.all(jnp.isfinite(x))) for x in (v, mass, *grads)), (grad, alpha)
      masses[grad].append(float(mass))
    # The structure cost G >= 0 only removes mass: never above the α = 0 (UOT) plan's.
    m = masses[grad]
    assert all(m1 <= m0 + 1e-5 for m0, m1 in zip(m, m[1:], strict=False)), masses
    assert m[-1] > 0.05, masses
  # Control: the similarity form -α Σx P Σy with the same relaxed marginals diverges.
  cost = (1.0 - zi @ zt.T) / eps
  sx, sy = zi @ zi.T / eps, zt @ zt.T
  kw = dict(epsilon=1.0, grad="stop_gradient", max_iterations=500, threshold=1e-6)
  out = plans.sinkhorn(cost, tau_a=0.5, tau_b=0.5, **kw)
  for _ in range(9):
    out = plans.sinkhorn(cost - 10.0 * sx @ out.plan @ sy, tau_a=0.5, tau_b=0.5, **kw)
  assert not float(out.mass) < 2.0 * masses["implicit"][0], float(out.mass)


def _ufgw_objective(cost, sx, sy, alpha, rho, plan):
  """The ε-scaled UFGW objective of the module docstring, GW by its 4-index definition."""
  n = cost.shape[0]
  dx, dy = 1.0 - sx, 1.0 - sy
  sq = (dx[:, None, :, None] - dy[None, :, None, :]) ** 2
  gw = 0.5 * jnp.einsum("ijkl,ij,kl->", sq, plan, plan)
  u = jnp.full((n,), 1.0 / n)

  def kl(x, y):
    return jnp.sum(x * jnp.log(x / y) - x + y)

  entropy = jnp.sum(plan * (jnp.log(plan) - 1.0))
  marginals = rho * (kl(plan.sum(1), u) + kl(plan.sum(0), u))
  return jnp.sum(cost * plan) + 0.5 * alpha * gw + entropy + marginals


def test_ufgw_fixed_point_is_stationary_and_tends_to_fgw():
  zi, zt = _pair(n=12, d=8, noise=0.5)
  eps = 0.1
  cost = (1.0 - zi @ zt.T) / eps
  sx, sy = zi @ zi.T, zt @ zt.T
  kw = dict(num_iters=5000, grad="implicit", threshold=1e-7, outer_iters=30)
  for alpha in (0.5, 2.0):
    out = otclip.ot_plan(cost, sx, sy, kind="ufgw", rho_a=1.0, rho_b=1.0, alpha=alpha / eps, **kw)
    grad = jax.grad(lambda p, a=alpha: _ufgw_objective(cost, sx, sy, a / eps, 1.0, p))(out.plan)
    # Stationary: the gradient w.r.t. log P vanishes (P > 0 everywhere).
    assert float(jnp.sum(jnp.abs(out.plan * grad))) < 1e-5
  alpha = 2.0 / eps
  fgw = otclip.ot_plan(cost, sx, sy, kind="fgw", alpha=alpha, **kw).plan
  # Balanced FGW = the paper's similarity form (same converged linearisation steps).
  sk = dict(epsilon=1.0, grad="stop_gradient", max_iterations=5000, threshold=1e-7)
  sim_form = plans.sinkhorn(cost, **sk)
  for _ in range(29):
    sim_form = plans.sinkhorn(cost - alpha * sx @ sim_form.plan @ sy, **sk)
  np.testing.assert_allclose(sim_form.plan, fgw, atol=1e-6)
  gaps = []
  for rho in (1e1, 1e3):
    ufgw = otclip.ot_plan(cost, sx, sy, kind="ufgw", rho_a=rho, rho_b=rho, alpha=alpha, **kw)
    gaps.append(float(jnp.sum(jnp.abs(ufgw.plan - fgw))))
  assert gaps[1] < 0.03 * gaps[0] and gaps[1] < 5e-3, gaps  # ~1/ρ


@pytest.mark.parametrize("kind", otclip.LOSSES)
def test_permutation_invariance(kind):
  zi, zt = _pair(n=7, noise=0.6)
  perm = np.array([3, 0, 6, 1, 5, 2, 4])
  kw = dict(kind=kind, num_iters=4, rho_a=2.0, rho_b=2.0, alpha=0.2, outer_iters=2)
  a, _ = otclip.ot_clip_loss(zi, zt, 0.1, **kw)
  b, _ = otclip.ot_clip_loss(zi[perm], zt[perm], 0.1, **kw)
  np.testing.assert_allclose(a, b, rtol=1e-5)


# ufgw shares fgw's structure loop and uot's relaxed marginals, both covered here.
@pytest.mark.parametrize("kind", ("entropic", "dbot", "uot", "fgw"))
def test_gradients_finite_small_eps_large_scale_degenerate_batches(kind):
  zi, zt = _pair(n=6, noise=0.4)
  kw = dict(kind=kind, num_iters=5, rho_a=1.0, rho_b=1.0, alpha=0.1, outer_iters=2)
  # Temperature = 1/scale, differentiated too; one compilation per batch shape.
  vg = jax.jit(
    jax.value_and_grad(lambda a, b, s: otclip.ot_clip_loss(a, b, 1.0 / s, **kw)[0], (0, 1, 2))
  )

  def finite(out):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))

  for scale in (1e3, 100.0):  # ε = 1e-3 and logit_scale = 100
    assert finite(vg(zi, zt, scale)), scale
  # Identical embeddings: every plan entry equal (balanced variants: loss = log N), no NaN.
  same = jnp.tile(zi[:1], (6, 1))
  (v, grads) = vg(same, same, 100.0)
  assert finite((v, grads))
  if kind in ("entropic", "dbot", "fgw"):
    np.testing.assert_allclose(v, math.log(6), rtol=1e-5)
  # A batch of one: the plan is the identity, loss 0 for balanced variants.
  (v1, grads1) = vg(zi[:1], zt[:1], 100.0)
  assert finite((v1, grads1))
  if kind in ("entropic", "dbot", "fgw"):
    np.testing.assert_allclose(v1, 0.0, atol=1e-6)


def test_bad_kwargs_raise():
  with pytest.raises(ValueError, match="loss must be one of"):
    _method(loss="sinkhorn")
  with pytest.raises(ValueError, match="temperature"):
    _method(temperature="learned")
  zi, zt = _pair()
  with pytest.raises(ValueError, match=r"\[N, d\]"):
    otclip.ot_clip_loss(zi, zt[:3], 0.1, kind="entropic", num_iters=1)


# --- inference ---------------------------------------------------------------------------------


def _clusters(n_per=(12, 4, 2), d=6, seed=1, spread=0.25):
  """Class embeddings T and images drawn around them; returns x, t, labels."""
  rng = np.random.default_rng(seed)
  t = np.asarray(_unit(jnp.asarray(rng.standard_normal((len(n_per), d)))))
  labels = np.repeat(np.arange(len(n_per)), n_per)
  x = t[labels] + spread * rng.standard_normal((labels.size, d))
  return np.asarray(_unit(jnp.asarray(x)), np.float32), t.astype(np.float32), labels


def test_fgw_zeroshot_zero_iters_is_argmax_and_ott_reference_runs():
  x, t, labels = _clusters()
  p = otclip.fgw_zeroshot(x, t, alpha1=0.5, alpha2=0.5, epsilon=0.05, num_iters=0)
  np.testing.assert_array_equal(np.argmax(p, 1), np.argmax(x @ t.T, 1))
  np.testing.assert_allclose(np.sum(p, 1), 1.0, rtol=1e-5)
  p3 = otclip.fgw_zeroshot(x, t, alpha1=0.5, alpha2=0.5, epsilon=0.05, num_iters=3)
  assert np.mean(np.argmax(p3, 1) == labels) >= np.mean(np.argmax(x @ t.T, 1) == labels)
  ref = otclip.fgw_zeroshot_ott(x, t, fused_penalty=1.0, epsilon=0.05)
  assert ref.shape == (x.shape[0], t.shape[0]) and bool(jnp.all(jnp.isfinite(ref)))


def test_prior_sinkhorn_uniform_prior_is_balanced_sinkhorn_and_matches_pot():
  x, t, _ = _clusters()
  eps = 0.05
  s_u, diag = otclip.prior_sinkhorn(x, t, np.ones(3), epsilon=eps)
  s_none, _ = otclip.prior_sinkhorn(x, t, None, epsilon=eps)
  np.testing.assert_allclose(s_u, s_none, atol=1e-6)
  assert float(diag["ot/converged"]) == 1.0
  prior = np.array([12.0, 4.0, 2.0]) / 18.0
  s_p, _ = otclip.prior_sinkhorn(x, t, prior, epsilon=eps)
  n = x.shape[0]
  ref = pot.sinkhorn(np.full(n, 1.0 / n), prior, (1.0 - x @ t.T).astype(np.float64), eps,
                     numItermax=20000, stopThr=1e-12)  # fmt: skip
  np.testing.assert_allclose(np.asarray(s_p) / n, ref, atol=2e-5)
  np.testing.assert_allclose(np.sum(s_p, 0) / n, prior, atol=1e-3)


def test_score_fn_plugs_into_zeroshot_hook():
  from clipjax.evaluation import zeroshot

  x, t, labels = _clusters()
  clf = zeroshot.ZeroShotClassifier(t, ("a", "b", "c"), ("{}",))
  for rule, kw in (
    ("argmax", {}),
    ("fgw", dict(alpha1=0.3, alpha2=0.3, epsilon=0.05, num_iters=2)),
    ("prior", dict(prior_c=np.array([12.0, 4.0, 2.0]), epsilon=0.05)),
  ):
    s = zeroshot.zeroshot_scores(x, clf, score_fn=otclip.score_fn(rule, **kw))
    assert s.shape == (x.shape[0], 3)
    assert np.mean(np.argmax(s, 1) == labels) > 0.8, rule
  with pytest.raises(ValueError, match="rule must be one of"):
    otclip.score_fn("lp")


def test_partial_ot_selective_drops_outliers():
  x, t, labels = _clusters(n_per=(6, 6, 6), spread=0.2)
  # Two outliers far from every class (antipodal to the mean class direction).
  far = -np.asarray(_unit(jnp.asarray(t.sum(0, keepdims=True))))
  x = np.concatenate([x, far, far], 0).astype(np.float32)
  pred, conf, sel = otclip.partial_ot_selective(x, t, coverage=0.8, epsilon=0.05)
  n = x.shape[0]
  assert int(np.sum(sel)) == math.ceil(0.8 * n)
  assert not sel[-1] and not sel[-2]
  assert np.all((conf >= 0) & (conf <= 1 + 1e-4))
  # The clustered images are all classified right, so every selective risk is 0.
  assert np.all(np.asarray(pred[:-2]) == labels)


def test_smoke_config_trains_through_loop(tmp_path):
  sys.path.insert(0, REPO)
  from clipjax.tasks import train as train_task
  from configs import otclip as otclip_config

  c = otclip_config.get_config("loss=fgw,smoke")
  c.eval.datasets = {}
  summary = train_task.run(c, str(tmp_path))
  assert summary["finished"] and summary["step"] == c.total_steps
  events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [e for e in events if e.get("kind") == "train"]
  assert train and all(math.isfinite(e["loss"]) for e in train)
  assert any("ot_i2t/diag_mass" in k for k in train[-1])
