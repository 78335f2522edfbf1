"""Square Attack: ε-ball/box invariant, analytic worst case of a linear model, monotone search,
determinism, early stopping, the p schedule and the registry entry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import attacks

H, W, C = 4, 4, 3
D = H * W * C
B = 6


def key(seed):
  # rbg keys: threefry's PRNG kernels take ~1-2 s each to compile on CPU.
  return jax.random.key(seed, impl="rbg")


def rng(seed):
  return np.random.default_rng(seed)


W_LIN = jnp.asarray(rng(3).normal(size=(D, 2)), jnp.float32)
W1 = jnp.asarray(rng(4).normal(size=(D, 16)) * 1.5, jnp.float32)
W2 = jnp.asarray(rng(5).normal(size=(16, 5)), jnp.float32)


def linear_logits(x_bhwc):
  return x_bhwc.reshape(x_bhwc.shape[0], D) @ W_LIN


def mlp_logits(x_bhwc):
  return jnp.tanh(x_bhwc.reshape(x_bhwc.shape[0], D) @ W1 - 0.5) @ W2


_LIN_MARGIN = attacks.margin_objective(linear_logits)
# Plain loss (no success flag): the search never stops early.
LIN_MARGIN = lambda x, y: _LIN_MARGIN(x, y)[0]
MLP_MARGIN = attacks.margin_objective(mlp_logits)


def test_p_schedule_matches_the_paper():
  # Budget 10000: halvings after queries 10, 50, 200, ..., 8000 (inclusive bounds).
  for i, want in [
    (0, 0.8),
    (10, 0.8),
    (11, 0.4),
    (50, 0.4),
    (51, 0.2),
    (500, 0.1),
    (501, 0.05),
    (9999, 0.8 / 512),
  ]:
    np.testing.assert_allclose(float(attacks.square_p(0.8, i, 10000)), want, rtol=1e-6)
  # Rescaled to the budget: with 1000 queries, update 2 is "query 20".
  np.testing.assert_allclose(float(attacks.square_p(0.8, 1, 1000)), 0.8, rtol=1e-6)
  np.testing.assert_allclose(float(attacks.square_p(0.8, 2, 1000)), 0.4, rtol=1e-6)


def test_perturbation_in_ball_and_box_and_deterministic():
  x = jnp.asarray(rng(0).uniform(size=(B, H, W, C)), jnp.float32)
  x = x.at[0].set(0.0).at[1].set(1.0)
  y = jnp.arange(B) % 5
  eps = 8 / 255
  kw = dict(eps=eps, n_queries=60, p_init=0.8)
  res = attacks.square_search(MLP_MARGIN, x, y, key=key(0), **kw)
  delta = np.asarray(res.x_adv_bhwc - x)
  assert np.abs(delta).max() <= eps * (1 + 1e-5)
  assert float(res.x_adv_bhwc.min()) >= 0.0 and float(res.x_adv_bhwc.max()) <= 1.0
  # ℓ∞ Square only ever uses the vertices ±ε (clipped to the box).
  inner = (np.asarray(x) > eps) & (np.asarray(x) < 1 - eps)
  np.testing.assert_allclose(np.abs(delta[inner]), eps, rtol=1e-5)
  again = attacks.square_search(MLP_MARGIN, x, y, key=key(0), **kw)
  np.testing.assert_array_equal(res.x_adv_bhwc, again.x_adv_bhwc)
  np.testing.assert_array_equal(res.queries_b, again.queries_b)
  other = attacks.square_search(MLP_MARGIN, x, y, key=key(1), **kw)
  assert not np.array_equal(res.x_adv_bhwc, other.x_adv_bhwc)
  # Success flags are the objective's at the returned point; successful examples stopped early.
  pred = np.argmax(np.asarray(mlp_logits(res.x_adv_bhwc)), axis=1)
  np.testing.assert_array_equal(res.success_b, pred != np.asarray(y))
  assert np.all(np.asarray(res.queries_b)[~np.asarray(res.success_b)] == 60)
  assert np.all(np.asarray(res.queries_b) >= 1)


def test_finds_linear_worst_case_and_never_decreases_the_objective():
  x = jnp.asarray(rng(1).uniform(0.3, 0.7, (B, H, W, C)), jnp.float32)
  y = jnp.zeros((B,), jnp.int32)
  eps = 0.05
  res = attacks.square_search(LIN_MARGIN, x, y, eps=eps, n_queries=800, p_init=0.3, key=key(2))
  # max over the ε-cube of (w1 - w0)·(x + δ) is attained at δ = ε·sign(w1 - w0).
  best_delta = eps * jnp.sign(W_LIN[:, 1] - W_LIN[:, 0]).reshape(H, W, C)
  np.testing.assert_allclose(res.x_adv_bhwc, x + best_delta[None], atol=1e-6)
  np.testing.assert_allclose(res.loss_b, LIN_MARGIN(res.x_adv_bhwc, y), rtol=1e-5)
  best_qb = np.asarray(res.best_qb)
  assert not np.isnan(best_qb).any()  # no success flag: the whole budget is used
  assert np.all(np.diff(best_qb, axis=0) >= 0.0)
  assert np.all(best_qb[-1] > best_qb[0])
  np.testing.assert_array_equal(res.queries_b, 800)


def test_registry_builds_square_with_eot_and_rejects_l2():
  x = jnp.asarray(rng(2).uniform(size=(B, H, W, C)), jnp.float32)
  y = jnp.arange(B) % 5
  attack, full = attacks.build_attack(
    {"name": "square", "eps": 4 / 255, "n_queries": 20}, mlp_logits
  )
  assert full["p_init"] == 0.8 and full["loss"] == "margin" and full["norm"] == "linf"
  x_adv = attack(x, y, key(3))
  assert float(jnp.max(jnp.abs(x_adv - x))) <= 4 / 255 * (1 + 1e-5)
  noisy = attacks.Stochastic(lambda z, k: mlp_logits(z) + 0.01 * jax.random.normal(k, (B, 5)))
  attack, full = attacks.build_attack(
    {"name": "square", "eps": 4 / 255, "n_queries": 10, "eot_draws": 2}, noisy
  )
  assert attack(x, y, key(4)).shape == x.shape
  with pytest.raises(ValueError, match="linf"):
    attacks.build_attack({"name": "square", "eps": 1.0, "norm": "l2"}, mlp_logits)
  with pytest.raises(ValueError, match="n_queries"):
    attacks.build_attack({"name": "square", "eps": 1.0, "n_queries": 0}, mlp_logits)
