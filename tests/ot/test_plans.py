"""clipjax.ot.plans against POT, scipy oracles, closed forms and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
import scipy.optimize

from clipjax import ot as cot


def _problem(n, m, seed, d=8):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = rng.normal(size=(m, d))
  cost = np.asarray(cot.cosine_cost(x, y), np.float64)
  a = rng.uniform(0.5, 1.0, n)
  b = rng.uniform(0.5, 1.0, m)
  return cost, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("grad", ["stop_gradient", "implicit", "unroll"])
def test_balanced_matches_pot(grad):
  cost, a, b = _problem(7, 9, 0)
  eps = 0.05
  ref = pot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", stopThr=1e-13, numItermax=20000)
  with jax.enable_x64(True):
    r = cot.sinkhorn(
      jnp.asarray(cost),
      jnp.asarray(a),
      jnp.asarray(b),
      epsilon=eps,
      grad=grad,
      max_iterations=2000 if grad != "unroll" else 400,
      threshold=1e-10,
    )
    plan = np.asarray(r.plan)
    assert bool(r.converged)
    assert float(r.marginal_error) < 1e-9
  np.testing.assert_allclose(plan, ref, atol=1e-4, rtol=0)
  assert abs(float(r.transport_cost) - float(np.sum(ref * cost))) < 1e-5
  # ott's regularised cost <P,C> + ε KL(P | a bᵀ), recomputed from POT's plan.
  kl = np.sum(ref * np.log(ref / np.outer(a, b)))
  assert abs(float(r.reg_ot_cost) - (np.sum(ref * cost) + eps * kl)) < 1e-5


def test_balanced_float32_is_close_to_float64_reference():
  cost, a, b = _problem(16, 12, 1)
  ref = pot.sinkhorn(a, b, cost, 0.02, method="sinkhorn_log", stopThr=1e-13, numItermax=20000)
  r = cot.sinkhorn(
    jnp.asarray(cost, jnp.float32),
    jnp.asarray(a, jnp.float32),
    jnp.asarray(b, jnp.float32),
    epsilon=0.02,
    grad="stop_gradient",
    max_iterations=2000,
    threshold=1e-5,
  )
  assert r.plan.dtype == jnp.float32 and bool(r.converged)
  # float32 marginals sum with ~1e-7 relative error per entry: 1e-5 in L1 is the honest floor.
  np.testing.assert_allclose(np.asarray(r.plan), ref, atol=1e-5, rtol=0)
  assert abs(float(r.transport_cost) - np.sum(ref * cost)) < 1e-5


def test_unbalanced_matches_pot_entropy_reg_type():
  cost, a, b = _problem(6, 8, 2)
  eps, rho = 0.05, 0.5
  ref = pot.unbalanced.sinkhorn_unbalanced(
    a,
    b,
    cost,
    eps,
    rho,
    reg_type="entropy",
    method="sinkhorn",
    stopThr=1e-14,
    numItermax=200000,
  )
  tau = cot.tau_from_rho(rho, eps)
  with jax.enable_x64(True):
    r = cot.sinkhorn(
      jnp.asarray(cost),
      jnp.asarray(a),
      jnp.asarray(b),
      epsilon=eps,
      grad="implicit",
      max_iterations=5000,
      threshold=1e-12,
      tau_a=tau,
      tau_b=tau,
    )
    plan = np.asarray(r.plan)
    assert bool(r.converged)
    assert float(r.marginal_error) == 0.0  # no hard constraint
  np.testing.assert_allclose(plan, ref, atol=1e-4, rtol=0)
  assert abs(float(r.transport_cost) - float(np.sum(ref * cost))) < 1e-5
  assert abs(float(r.mass) - ref.sum()) < 1e-8
  assert ref.sum() < 0.95  # the relaxation actually moved mass: the test can tell them apart


def test_masked_entries_get_exactly_zero_mass_and_match_reference():
  cost, a, b = _problem(6, 7, 3)
  rng = np.random.default_rng(3)
  mask = rng.uniform(size=cost.shape) > 0.35
  mask[np.arange(6), np.arange(6)] = True  # keep every row and column feasible
  mask[:, 6] = False
  mask[0, 6] = True
  eps = 0.03
  # Reference: POT in log domain with +inf-like cost on forbidden entries.
  big = np.where(mask, cost, 1e4)
  ref = pot.sinkhorn(a, b, big, eps, method="sinkhorn_log", stopThr=1e-13, numItermax=50000)
  for grad in ("stop_gradient", "unroll"):
    r = cot.sinkhorn(
      jnp.asarray(cost, jnp.float32),
      jnp.asarray(a, jnp.float32),
      jnp.asarray(b, jnp.float32),
      epsilon=eps,
      grad=grad,
      max_iterations=3000 if grad != "unroll" else 600,
      threshold=1e-5,
      mask_nm=jnp.asarray(mask),
    )
    plan = np.asarray(r.plan)
    assert np.all(plan[~mask] == 0.0), grad
    assert np.all(plan[mask] > 0.0), grad
    np.testing.assert_allclose(plan, ref, atol=1e-5, rtol=0)
    assert bool(r.converged)


def test_small_epsilon_approaches_hungarian_assignment():
  rng = np.random.default_rng(4)
  n = 10
  cost = rng.uniform(size=(n, n))
  rows, cols = scipy.optimize.linear_sum_assignment(cost)
  opt = cost[rows, cols].sum() / n
  r = cot.sinkhorn(
    jnp.asarray(cost, jnp.float32),
    epsilon=1e-3,
    grad="stop_gradient",
    max_iterations=20000,
    threshold=1e-4,
  )
  plan = np.asarray(r.plan)
  assert bool(r.converged)
  np.testing.assert_array_equal(np.argmax(plan, axis=1), cols)
  assert abs(float(r.transport_cost) - opt) < 5e-3
  perm = np.zeros((n, n))
  perm[rows, cols] = 1.0 / n
  assert np.abs(plan - perm).sum() < 0.05


def test_one_row_normalisation_is_softmax():
  cost, a, _ = _problem(5, 11, 5)
  eps = 0.07
  r = cot.sinkhorn(
    jnp.asarray(cost, jnp.float32),
    jnp.asarray(a, jnp.float32),
    epsilon=eps,
    grad="unroll",
    max_iterations=1,
    threshold=1e-3,
    tau_b=0.0,
  )
  expected = a[:, None] * np.asarray(jax.nn.softmax(-jnp.asarray(cost, jnp.float32) / eps, 1))
  np.testing.assert_allclose(np.asarray(r.plan), expected, rtol=1e-5, atol=1e-7)


def _fd_check(fn, cost, direction, h=1e-5):
  grad = jax.grad(fn)(cost)
  fd = (fn(cost + h * direction) - fn(cost - h * direction)) / (2 * h)
  return float(jnp.sum(grad * direction)), float(fd)


@pytest.mark.parametrize("grad", ["unroll", "implicit"])
def test_gradients_match_finite_differences(grad):
  cost, a, b = _problem(5, 6, 6)
  rng = np.random.default_rng(6)
  with jax.enable_x64(True):
    w = jnp.asarray(rng.normal(size=cost.shape))
    direction = jnp.asarray(rng.normal(size=cost.shape))

    def fn(c):
      r = cot.sinkhorn(
        c,
        jnp.asarray(a),
        jnp.asarray(b),
        epsilon=0.1,
        grad=grad,
        max_iterations=5 if grad == "unroll" else 3000,
        threshold=1e-12,
      )
      return jnp.sum(r.plan * w) + r.reg_ot_cost

    analytic, numeric = _fd_check(fn, jnp.asarray(cost), direction)
  assert abs(analytic - numeric) < 1e-6 * max(1.0, abs(numeric))


def test_stop_gradient_gives_zero():
  cost, a, b = _problem(5, 6, 8)

  def fn(c):
    r = cot.sinkhorn(
      c,
      jnp.asarray(a, jnp.float32),
      jnp.asarray(b, jnp.float32),
      epsilon=0.1,
      grad="stop_gradient",
      max_iterations=100,
      threshold=1e-5,
    )
    return jnp.sum(r.plan**2) + r.reg_ot_cost + r.transport_cost

  g = jax.grad(fn)(jnp.asarray(cost, jnp.float32))
  assert np.all(np.asarray(g) == 0.0)


def test_no_nan_at_n4096_over_epsilon_range_and_nonconvergence_is_reported():
  rng = np.random.default_rng(9)
  n = 4096
  x = rng.normal(size=(n, 64)).astype(np.float32)
  # Noisy pairs: CLIP-like costs with a weak diagonal (a clean diagonal converges at once).
  y = (x + 1.5 * rng.normal(size=(n, 64))).astype(np.float32)
  cost = cot.cosine_cost(jnp.asarray(x, jnp.bfloat16), jnp.asarray(y))
  assert cost.dtype == jnp.float32

  @jax.jit
  def solve(c, eps):
    r = cot.sinkhorn(c, epsilon=eps, grad="stop_gradient", max_iterations=10, threshold=1e-3)
    finite = jnp.all(jnp.isfinite(r.plan)) & jnp.all(jnp.isfinite(r.f)) & jnp.all(jnp.isfinite(r.g))
    col_err = jnp.sum(jnp.abs(jnp.sum(r.plan, 0) - 1.0 / n))
    return finite, r.converged, r.marginal_error, col_err, r.n_iters

  results = {}
  for eps in (1e-3, 1e-2, 1e-1, 1.0):
    finite, conv, err, col_err, n_iters = solve(cost, eps)
    assert bool(finite), eps
    assert int(n_iters) <= 10
    # The reported error is the real one and `converged` agrees with it.
    assert abs(float(err) - float(col_err)) < 1e-3 + 1e-2 * float(col_err)
    assert bool(conv) == (float(err) < 1e-3), eps
    results[eps] = (bool(conv), float(err))
  assert results[1.0][0]  # large ε converges within 10 iterations
  assert not results[1e-3][0]  # tiny ε cannot: reported, not hidden
  assert not results[1e-2][0]
  assert results[1e-3][1] > 1e-2


def test_jit_does_not_retrace_for_same_shapes():
  traces = []

  @jax.jit
  def solve(c, a):
    traces.append(1)
    return cot.sinkhorn(
      c, a, epsilon=0.05, grad="unroll", max_iterations=3, threshold=1e-3
    ).transport_cost

  cost, a, _ = _problem(6, 7, 10)
  solve(jnp.asarray(cost, jnp.float32), jnp.asarray(a, jnp.float32))
  solve(jnp.asarray(cost + 0.1, jnp.float32), jnp.asarray(a[::-1].copy(), jnp.float32))
  assert len(traces) == 1


def _dbot_kkt(r, a, lo, hi, eps, cost, tol):
  plan = np.asarray(r.plan, np.float64)
  rows, cols = plan.sum(1), plan.sum(0)
  np.testing.assert_allclose(rows, a, atol=tol)
  assert np.all(cols >= lo - tol) and np.all(cols <= hi + tol)
  g = np.asarray(r.g)
  # Complementary slackness: g > 0 only at the lower bound, g < 0 only at the upper bound.
  assert np.all(np.abs(cols[g > 1e-6 * eps] - lo[g > 1e-6 * eps]) < tol)
  assert np.all(np.abs(cols[g < -1e-6 * eps] - hi[g < -1e-6 * eps]) < tol)
  # Stationarity: the plan is a Gibbs kernel scaled by the potentials.
  f = np.asarray(r.f)
  np.testing.assert_allclose(plan, np.exp((f[:, None] + g[None] - cost) / eps), rtol=1e-6)


def test_dbot_satisfies_kkt_and_limits():
  cost, a, b = _problem(8, 6, 11)
  eps, delta = 0.05, 0.3
  with jax.enable_x64(True):
    kw = dict(epsilon=eps, max_iterations=5000, threshold=1e-12)
    r = cot.dbot(
      jnp.asarray(cost), jnp.asarray(a), jnp.asarray(b), delta=delta, grad="stop_gradient", **kw
    )
    assert bool(r.converged)
    lo, hi = (1 - delta) * b, (1 + delta) * b
    _dbot_kkt(r, a, lo, hi, eps, cost, 1e-10)
    g = np.asarray(r.g)
    assert np.any(g > 1e-3) or np.any(g < -1e-3)  # some bound is active: not a trivial case
    # δ = 0 is balanced OT (ott's solver).
    r0 = cot.dbot(
      jnp.asarray(cost), jnp.asarray(a), jnp.asarray(b), delta=0.0, grad="stop_gradient", **kw
    )
    rb = cot.sinkhorn(jnp.asarray(cost), jnp.asarray(a), jnp.asarray(b), grad="implicit", **kw)
    np.testing.assert_allclose(np.asarray(r0.plan), np.asarray(rb.plan), atol=1e-10)
    # A box no bound of which is active leaves the row softmax.
    rinf = cot.dbot(
      jnp.asarray(cost), jnp.asarray(a), jnp.asarray(b), delta=1e3, grad="stop_gradient", **kw
    )
    soft = a[:, None] * np.asarray(jax.nn.softmax(-jnp.asarray(cost) / eps, axis=1))
    np.testing.assert_allclose(np.asarray(rinf.plan), soft, atol=1e-12)
    # Unrolled fixed iterations reach the same solution.
    ru = cot.dbot(
      jnp.asarray(cost),
      jnp.asarray(a),
      jnp.asarray(b),
      delta=delta,
      grad="unroll",
      epsilon=eps,
      max_iterations=3000,
      threshold=1e-12,
    )
    np.testing.assert_allclose(np.asarray(ru.plan), np.asarray(r.plan), atol=1e-10)


def _box_lp(cost, a, lo, hi):
  n, m = cost.shape
  a_eq = np.zeros((n, n * m))
  for i in range(n):
    a_eq[i, i * m : (i + 1) * m] = 1
  col = np.zeros((m, n * m))
  for j in range(m):
    col[j, j::m] = 1
  res = scipy.optimize.linprog(
    cost.ravel(),
    A_ub=np.vstack([col, -col]),
    b_ub=np.concatenate([hi, -lo]),
    A_eq=a_eq,
    b_eq=a,
    bounds=(0, None),
    method="highs",
  )
  assert res.status == 0
  return res.fun


def test_dbot_small_epsilon_approaches_linear_program():
  cost, a, b = _problem(6, 5, 12)
  delta = 0.4
  lp = _box_lp(cost, a, (1 - delta) * b, (1 + delta) * b)
  with jax.enable_x64(True):
    r = cot.dbot(
      jnp.asarray(cost),
      jnp.asarray(a),
      jnp.asarray(b),
      delta=delta,
      epsilon=1e-3,
      grad="stop_gradient",
      max_iterations=100000,
      threshold=1e-9,
    )
    assert bool(r.converged)
    assert 0 <= float(r.transport_cost) - lp < 2e-3


def test_partial_matches_pot_and_exact_limit():
  cost, a, b = _problem(7, 6, 13)
  eps, mass = 0.05, 0.6
  ref = pot.partial.entropic_partial_wasserstein(
    a, b, cost, eps, m=mass, numItermax=200000, stopThr=1e-15
  )
  with jax.enable_x64(True):
    r = cot.partial_ot(
      jnp.asarray(cost),
      jnp.asarray(a),
      jnp.asarray(b),
      mass=mass,
      epsilon=eps,
      grad="stop_gradient",
      max_iterations=100000,
      threshold=1e-12,
    )
    plan = np.asarray(r.plan)
    assert bool(r.converged)
    assert abs(float(r.mass) - mass) < 1e-10
    ru = cot.partial_ot(
      jnp.asarray(cost),
      jnp.asarray(a),
      jnp.asarray(b),
      mass=mass,
      epsilon=eps,
      grad="unroll",
      max_iterations=5000,
      threshold=1e-12,
    )
    np.testing.assert_allclose(np.asarray(ru.plan), plan, atol=1e-10)
    exact = pot.partial.partial_wasserstein(a, b, cost, m=mass)
    rs = cot.partial_ot(
      jnp.asarray(cost),
      jnp.asarray(a),
      jnp.asarray(b),
      mass=mass,
      epsilon=1e-3,
      grad="stop_gradient",
      max_iterations=200000,
      threshold=1e-9,
    )
  np.testing.assert_allclose(plan, ref, atol=1e-4, rtol=0)
  assert abs(float(r.transport_cost) - np.sum(ref * cost)) < 1e-5
  assert np.all(plan.sum(1) <= a + 1e-10) and np.all(plan.sum(0) <= b + 1e-10)
  # The entropic cost is above the LP optimum up to the constraint tolerance (1e-9).
  assert -1e-8 <= float(rs.transport_cost) - np.sum(exact * cost) < 2e-3


def _fgwi_softmax_reference(img, txt, a1, a2, reg, n):
  # Transcription of the reference loop (METHODS.md §1.4) in numpy.
  def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)

  c = 1 - img @ txt.T
  s1, s2 = img @ img.T, txt @ txt.T
  p = softmax(-c / reg)
  for _ in range(n):
    c = c - a1 * a2 * s1 @ p @ s2
    p = softmax(-c / reg)
  return p


def test_fgw_semirelaxed_softmax_matches_reference_loop():
  rng = np.random.default_rng(14)
  img = rng.normal(size=(12, 16))
  txt = rng.normal(size=(5, 16))
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  args = dict(alpha1=0.5, alpha2=0.3, epsilon=0.05)
  ref = _fgwi_softmax_reference(img, txt, 0.5, 0.3, 0.05, 3)
  got = cot.fgw_semirelaxed_softmax(
    jnp.asarray(1 - img @ txt.T, jnp.float32),
    jnp.asarray(img @ img.T, jnp.float32),
    jnp.asarray(txt @ txt.T, jnp.float32),
    num_iters=3,
    **args,
  )
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)
  p0 = _fgwi_softmax_reference(img, txt, 0.5, 0.3, 0.05, 0)
  assert np.abs(ref - p0).max() > 1e-3  # the structural term changes the plan
  zero = cot.fgw_semirelaxed_softmax(
    jnp.asarray(1 - img @ txt.T, jnp.float32),
    jnp.asarray(img @ img.T, jnp.float32),
    jnp.asarray(txt @ txt.T, jnp.float32),
    num_iters=0,
    **args,
  )
  np.testing.assert_allclose(np.asarray(zero), p0, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
  c = jnp.zeros((3, 4))
  with pytest.raises(ValueError, match="b_m"):
    cot.sinkhorn(
      c, b_m=jnp.ones(3) / 3, epsilon=0.1, grad="implicit", max_iterations=5, threshold=1e-3
    )
  with pytest.raises(ValueError, match="grad"):
    cot.sinkhorn(c, epsilon=0.1, grad="backprop", max_iterations=5, threshold=1e-3)
  with pytest.raises(ValueError, match="mask_nm"):
    cot.sinkhorn(
      c,
      epsilon=0.1,
      grad="implicit",
      max_iterations=5,
      threshold=1e-3,
      mask_nm=jnp.ones((4, 3), bool),
    )
  with pytest.raises(ValueError, match="tau_a"):
    cot.sinkhorn(c, epsilon=0.1, grad="implicit", max_iterations=5, threshold=1e-3, tau_a=1.5)
  with pytest.raises(ValueError, match="grad"):
    cot.dbot(c, delta=0.1, epsilon=0.1, grad="implicit", max_iterations=5, threshold=1e-3)
  with pytest.raises(ValueError, match="cost_nm"):
    cot.partial_ot(
      jnp.zeros(3), mass=0.5, epsilon=0.1, grad="unroll", max_iterations=5, threshold=1e-3
    )


def test_kernel_sinkhorn_matches_pot_and_ott_and_reports_nonconvergence():
  cost, a, b = _problem(40, 30, 7)
  a[3] = 0.0  # padding row: no mass, -inf potential
  a /= a.sum()
  eps = 0.05
  rows = a > 0
  ref = np.zeros_like(cost)
  ref[rows] = pot.sinkhorn(
    a[rows], b, cost[rows], eps, method="sinkhorn_log", stopThr=1e-13, numItermax=20000
  )
  with jax.enable_x64(True):
    r = cot.kernel_sinkhorn(
      jnp.asarray(cost),
      jnp.asarray(a),
      jnp.asarray(b),
      epsilon=eps,
      max_iterations=5000,
      threshold=1e-10,
    )
    assert bool(r.converged) and float(r.marginal_error) < 1e-9
    assert int(r.n_iters) % 10 == 0 and int(r.n_iters) < 5000
    np.testing.assert_allclose(np.asarray(r.plan), ref, atol=1e-8, rtol=0)
    assert np.all(np.asarray(r.plan)[3] == 0.0) and np.isneginf(float(r.f[3]))
    # The potentials reproduce the plan: P = exp((f_i + g_j - C_ij)/ε) on valid rows.
    rebuilt = np.exp((np.asarray(r.f)[:, None] + np.asarray(r.g)[None, :] - cost) / eps)
    np.testing.assert_allclose(rebuilt[rows], ref[rows], atol=1e-8, rtol=0)
    ott = cot.sinkhorn(
      jnp.asarray(cost),
      jnp.asarray(a),
      jnp.asarray(b),
      epsilon=eps,
      grad="stop_gradient",
      max_iterations=5000,
      threshold=1e-10,
    )
    assert abs(float(r.reg_ot_cost) - float(ott.reg_ot_cost)) < 1e-8
    assert abs(float(r.transport_cost) - float(np.sum(ref * cost))) < 1e-8
  # Too few iterations: reported, not hidden.
  short = cot.kernel_sinkhorn(
    jnp.asarray(cost, jnp.float32),
    epsilon=0.01,
    max_iterations=2,
    threshold=1e-6,
    inner_iterations=1,
  )
  assert not bool(short.converged) and int(short.n_iters) == 2
  assert float(short.marginal_error) > 1e-6
  # Far beyond kernel mode's range (spread/ε ≈ 2e4): finite, flagged as not converged.
  tiny = cot.kernel_sinkhorn(
    jnp.asarray(cost, jnp.float32), epsilon=1e-4, max_iterations=50, threshold=1e-6
  )
  assert not bool(tiny.converged) and bool(jnp.all(jnp.isfinite(tiny.plan)))
  with pytest.raises(ValueError, match="inner_iterations"):
    cot.kernel_sinkhorn(
      jnp.asarray(cost), epsilon=eps, max_iterations=10, threshold=1e-3, inner_iterations=0
    )
  with pytest.raises(ValueError, match="b_m must have shape"):
    cot.kernel_sinkhorn(
      jnp.asarray(cost), None, jnp.ones(3), epsilon=eps, max_iterations=10, threshold=1e-3
    )


def _pot_unbalanced_objective(plan, cost, a, b, eps, rho_a, rho_b):
  # POT sinkhorn_unbalanced(reg_type='entropy'): <P,C> + ε Σ P (log P - 1) + ρ KL(P1|a) +
  # ρ KL(Pᵀ1|b), generalised KL (POT's nx.kl_div with mass=True).
  nx = pot.backend.NumpyBackend()
  value = np.sum(plan * cost) + eps * np.sum(plan * np.log(plan) - plan)
  for rho, marg, w in ((rho_a, plan.sum(1), a), (rho_b, plan.sum(0), b)):
    if np.isfinite(rho):
      value += rho * nx.kl_div(marg, w, mass=True, eps=0.0)
  return value


@pytest.mark.parametrize(
  ("n", "m", "eps", "rho_a", "rho_b"),
  [(6, 8, 0.05, 0.5, 0.5), (9, 5, 0.2, 0.1, 2.0), (7, 7, 0.02, np.inf, 0.3)],
)
def test_unbalanced_reg_ot_cost_is_pots_objective_and_its_gradient_is_the_plan(
  n, m, eps, rho_a, rho_b
):
  cost, a, b = _problem(n, m, 12 + n)
  a, b = 0.7 * a, 1.3 * b  # unequal total masses: the relaxation is active
  ref = pot.unbalanced.sinkhorn_unbalanced(
    a,
    b,
    cost,
    eps,
    (rho_a, rho_b),
    reg_type="entropy",
    method="sinkhorn",
    stopThr=1e-15,
    numItermax=200000,
  )
  expected = _pot_unbalanced_objective(ref, cost, a, b, eps, rho_a, rho_b)
  tau_a = 1.0 if np.isinf(rho_a) else cot.tau_from_rho(rho_a, eps)
  tau_b = cot.tau_from_rho(rho_b, eps)
  rng = np.random.default_rng(n)
  with jax.enable_x64(True):
    direction = jnp.asarray(rng.normal(size=cost.shape))
    # Unrolling is checked on the family that converges in few iterations (compile time).
    policies = [("implicit", 20000)] + ([("unroll", 300)] if eps >= 0.2 else [])
    for grad, iters in policies:

      def value(c, grad=grad, iters=iters):
        return cot.sinkhorn(
          c,
          jnp.asarray(a),
          jnp.asarray(b),
          epsilon=eps,
          grad=grad,
          max_iterations=iters,
          threshold=1e-13,
          tau_a=tau_a,
          tau_b=tau_b,
        )

      r = value(jnp.asarray(cost))
      np.testing.assert_allclose(np.asarray(r.plan), ref, atol=1e-8, rtol=0)
      assert abs(float(r.reg_ot_cost) - expected) < 1e-9 * max(1.0, abs(expected)), grad
      # Envelope theorem: d(objective)/dC is the plan, and finite differences agree.
      g = jax.grad(lambda c, f=value: f(c).reg_ot_cost)(jnp.asarray(cost))
      np.testing.assert_allclose(np.asarray(g), ref, atol=1e-7, rtol=0, err_msg=grad)
      analytic, numeric = _fd_check(
        lambda c, f=value: f(c).reg_ot_cost, jnp.asarray(cost), direction
      )
      assert abs(analytic - numeric) < 1e-6 * max(1.0, abs(numeric)), grad


def clip_like_problem(seed, n=12, m=10, d=32):
  """Noisy-pair cosine costs with non-uniform marginals (float64 numpy)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = x[:m] + 1.2 * rng.normal(size=(m, d))
  cost = np.asarray(cot.cosine_cost(x, y), np.float64)
  a = rng.uniform(0.5, 1.0, n)
  b = rng.uniform(0.5, 1.0, m)
  return cost, a / a.sum(), b / b.sum()


KERNEL_RATIOS = (80, 100, 125, 150, 200, 250, 300)


def test_kernel_sinkhorn_never_reports_convergence_for_a_wrong_plan():
  # (max C - min C)/ε from 80 to 300 in float32: kernel entries down to e^-300 underflow, and
  # an unguarded kernel solver converged to wrong plans with errors < 1e-4 at 100-150.
  solve = jax.jit(
    lambda c, a, b, eps: cot.kernel_sinkhorn(
      c, a, b, epsilon=eps, max_iterations=5000, threshold=1e-4
    )
  )
  converged = 0
  for ratio in KERNEL_RATIOS:
    for seed in range(3):
      cost, a, b = clip_like_problem(seed)
      eps = (cost.max() - cost.min()) / ratio
      ref = pot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", stopThr=1e-12, numItermax=100000)
      r = solve(*(jnp.asarray(v, jnp.float32) for v in (cost, a, b)), eps)
      if bool(r.converged):
        converged += 1
        assert np.abs(np.asarray(r.plan, np.float64) - ref).sum() < 5e-3, (ratio, seed)
      # Beyond float32's exp range the log-domain solver must have taken over.
      shifted = cost - cost.min(0)
      if shifted.max() / eps > 88:
        assert bool(r.log_domain), (ratio, seed)
      if ratio == 80:
        assert not bool(r.log_domain)  # in range: the fast path is kept
  assert converged == 3 * len(KERNEL_RATIOS)  # the guard costs no convergence


def test_fixed_kernel_solver_never_returns_a_wrong_plan_with_a_small_error():
  # Fixed iterations report `marginal_error`; across (max C - min C)/ε in [80, 300] in float32 a
  # small error must mean the right plan (unguarded kernel mode: wrong plans at 100-150).
  solve = jax.jit(
    lambda c, a, b, eps: cot.fixed_sinkhorn(
      c, a, b, epsilon=eps, num_iters=4000, solver="kernel", grad="stop_gradient"
    )
  )
  batch = jax.jit(
    lambda c, a, b, eps: cot.fixed_sinkhorn_batch(
      c, a, b, epsilon=eps, num_iters=4000, solver="kernel", grad="stop_gradient"
    )
  )
  small = 0
  for ratio in KERNEL_RATIOS:
    probs = [clip_like_problem(seed) for seed in range(3)]
    eps = max(c.max() - c.min() for c, _, _ in probs) / ratio
    refs = [
      pot.sinkhorn(a, b, c, eps, method="sinkhorn_log", stopThr=1e-12, numItermax=100000)
      for c, a, b in probs
    ]
    stacked = [jnp.asarray(np.stack(v), jnp.float32) for v in zip(*probs, strict=True)]
    rb = batch(*stacked, eps)
    for i, ((c, a, b), ref) in enumerate(zip(probs, refs, strict=True)):
      r = solve(*(jnp.asarray(v, jnp.float32) for v in (c, a, b)), eps)
      for plan, err in ((r.plan, r.marginal_error), (rb.plan[i], rb.marginal_error[i])):
        if float(err) < 1e-3:
          small += 1
          assert np.abs(np.asarray(plan, np.float64) - ref).sum() < 5e-3, (ratio, i)
      if (c - c.min(0)).max() / eps > 88:
        assert bool(r.log_domain) and bool(rb.log_domain[i]), (ratio, i)
      if ratio == 80:
        assert not bool(r.log_domain) and not bool(rb.log_domain[i])
  assert small >= 0.6 * 2 * 3 * len(KERNEL_RATIOS), small  # not vacuous
