"""clipjax.ot.gromov against POT with the ε / α conversions written in its docstring."""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot

from clipjax import ot as cot


def _spaces(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(7, 3))
  y = rng.normal(size=(9, 3))
  cx, cy, m = pot.dist(x, x), pot.dist(y, y), pot.dist(x, y)
  return cx / cx.max(), cy / cy.max(), m / m.max(), np.ones(7) / 7, np.ones(9) / 9


def _solve(cx, cy, **kw):
  return cot.gromov_wasserstein(
    jnp.asarray(cx),
    jnp.asarray(cy),
    max_iterations=100,
    threshold=1e-9,
    sinkhorn_max_iterations=3000,
    sinkhorn_threshold=1e-10,
    **kw,
  )


def test_entropic_gw_matches_pot_at_twice_epsilon():
  cx, cy, _, a, b = _spaces(0)
  eps_pot = 0.1
  ref = pot.gromov.entropic_gromov_wasserstein(
    cx, cy, a, b, "square_loss", epsilon=eps_pot, max_iter=1000, tol=1e-12
  )
  with jax.enable_x64(True):
    r = _solve(cx, cy, epsilon=cot.gw_epsilon_from_pot(eps_pot))
    plan = np.asarray(r.plan)
    assert float(r.marginal_error) < 1e-8
    naive = np.asarray(_solve(cx, cy, epsilon=eps_pot).plan)
  np.testing.assert_allclose(plan, ref, atol=1e-4, rtol=0)
  ref_gw = 0.5 * pot.gromov.gwloss(*pot.gromov.init_matrix(cx, cy, a, b, "square_loss"), ref)
  assert abs(float(r.gw_cost) - ref_gw) < 1e-5
  assert np.abs(naive - ref).max() > 1e-3  # the conversion matters: same ε is a different problem


def test_entropic_fgw_matches_pot_with_alpha_mapping():
  cx, cy, m, a, b = _spaces(1)
  alpha, eps_pot = 0.3, 0.1
  ref = pot.gromov.entropic_fused_gromov_wasserstein(
    m, cx, cy, a, b, "square_loss", epsilon=eps_pot, alpha=alpha, max_iter=1000, tol=1e-12
  )
  lam, eps = cot.fgw_params_from_pot(alpha, eps_pot)
  assert (lam, eps) == ((1 - alpha) / (2 * alpha), eps_pot / (2 * alpha))
  with jax.enable_x64(True):
    r = _solve(cx, cy, cost_xy_nm=jnp.asarray(m), fused_penalty=lam, epsilon=eps)
    plan = np.asarray(r.plan)
    naive = np.asarray(
      _solve(cx, cy, cost_xy_nm=jnp.asarray(m), fused_penalty=1 - alpha, epsilon=eps_pot).plan
    )
    assert float(r.marginal_error) < 1e-8
  np.testing.assert_allclose(plan, ref, atol=1e-4, rtol=0)
  gw = 0.5 * pot.gromov.gwloss(*pot.gromov.init_matrix(cx, cy, a, b, "square_loss"), ref)
  assert abs(float(r.objective) - (gw + lam * np.sum(ref * m))) < 1e-5
  assert np.abs(naive - ref).max() > 1e-3


def test_gw_under_jit_float32_reports_diagnostics():
  cx, cy, m, _, _ = _spaces(2)

  @jax.jit
  def run(cx, cy, m):
    r = cot.gromov_wasserstein(
      cx,
      cy,
      cost_xy_nm=m,
      fused_penalty=0.5,
      epsilon=0.05,
      max_iterations=20,
      threshold=1e-6,
      sinkhorn_max_iterations=500,
      sinkhorn_threshold=1e-6,
    )
    return r.plan, r.diagnostics()

  plan, diag = run(*(jnp.asarray(v, jnp.float32) for v in (cx, cy, m)))
  assert plan.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(plan)))
  assert 1 <= int(diag["gw/n_iters"]) <= 20
  assert float(diag["gw/marginal_error"]) < 1e-4
