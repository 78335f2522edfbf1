"""clipjax.ot.batched: hand-written kernel path vs ott vs POT, padding, chunking, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

from clipjax import ot as cot


def _sets(a, b, n, m, d, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(a, n, d)).astype(np.float32)
  y = rng.normal(size=(b, m, d)).astype(np.float32)
  lx = rng.integers(2, n + 1, size=a)
  ly = rng.integers(2, m + 1, size=b)
  lx[0], ly[0] = n, m
  wx = (np.arange(n)[None] < lx[:, None]).astype(np.float32)
  wy = (np.arange(m)[None] < ly[:, None]).astype(np.float32)
  # Garbage (large, not NaN) values in padding must not leak into results.
  x[wx == 0] = 1e3
  y[wy == 0] = -1e3
  return x, wx, y, wy


KW = dict(epsilon=0.1, num_iters=60)


@pytest.mark.parametrize(("solver", "lse_mode"), [("kernel", True), ("ott", True), ("ott", False)])
def test_set_ot_matches_pot_on_the_unpadded_problem(solver, lse_mode):
  x, wx, y, wy = _sets(1, 1, 6, 9, 4, 0)
  lx, ly = 4, 5
  wx[0, lx:] = 0
  wy[0, ly:] = 0
  r = cot.set_ot(
    jnp.asarray(x[0]),
    jnp.asarray(y[0]),
    jnp.asarray(wx[0]),
    jnp.asarray(wy[0]),
    solver=solver,
    grad="stop_gradient",
    lse_mode=lse_mode,
    **KW,
  )
  cost = np.asarray(cot.cosine_cost(x[0, :lx], y[0, :ly]), np.float64)
  ref = pot.sinkhorn(
    np.ones(lx) / lx,
    np.ones(ly) / ly,
    cost,
    0.1,
    method="sinkhorn_log",
    stopThr=1e-14,
    numItermax=10000,
  )
  plan = np.asarray(r.plan)
  assert np.all(plan[lx:] == 0) and np.all(plan[:, ly:] == 0)
  np.testing.assert_allclose(plan[:lx, :ly], ref, atol=1e-6)
  assert abs(float(r.cost) - np.sum(ref * cost)) < 1e-5
  assert float(r.marginal_error) < 1e-5


def test_kernel_path_equals_ott_at_equal_iterations():
  x, wx, y, wy = _sets(3, 4, 5, 7, 6, 1)
  kw = dict(chunk_size=5, epsilon=0.05, num_iters=7, grad="stop_gradient")
  rk = cot.pairwise_set_ot(x, wx, y, wy, solver="kernel", **kw)
  ro = cot.pairwise_set_ot(x, wx, y, wy, solver="ott", **kw)
  # Few iterations: not converged, so this compares the iterates themselves.
  assert float(rk.marginal_error.max()) > 1e-4
  np.testing.assert_allclose(np.asarray(rk.cost), np.asarray(ro.cost), atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(rk.marginal_error), np.asarray(ro.marginal_error), atol=1e-5
  )


def test_pairwise_equals_indexed_equals_loop_and_chunking_is_invisible():
  x, wx, y, wy = _sets(5, 3, 4, 6, 5, 2)
  one = jax.jit(lambda *v: cot.set_ot(*v, solver="kernel", grad="stop_gradient", **KW).cost)
  loop = np.array([[float(one(x[i], y[j], wx[i], wy[j])) for j in range(3)] for i in range(5)])
  for chunk in (1, 4, 100):
    r = cot.pairwise_set_ot(
      x, wx, y, wy, chunk_size=chunk, solver="kernel", grad="stop_gradient", **KW
    )
    assert r.cost.shape == (5, 3)
    np.testing.assert_allclose(np.asarray(r.cost), loop, atol=1e-6)
  ia, ib = jnp.array([4, 0, 2, 2]), jnp.array([1, 2, 0, 2])
  ri = cot.indexed_set_ot(
    x, wx, y, wy, ia, ib, chunk_size=3, solver="kernel", grad="stop_gradient", **KW
  )
  np.testing.assert_allclose(np.asarray(ri.cost), loop[np.asarray(ia), np.asarray(ib)], atol=1e-6)


def test_empty_sets_and_bfloat16_give_no_nan():
  x, wx, y, wy = _sets(2, 2, 4, 5, 3, 3)
  wx[1] = 0.0  # an all-padding set
  r = cot.pairwise_set_ot(
    jnp.asarray(x, jnp.bfloat16),
    wx,
    y,
    wy,
    chunk_size=4,
    solver="kernel",
    grad="stop_gradient",
    **KW,
  )
  assert r.cost.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(r.cost))) and np.all(np.asarray(r.cost[1]) == 0)
  ro = cot.pairwise_set_ot(x, wx, y, wy, chunk_size=4, solver="ott", grad="stop_gradient", **KW)
  assert np.all(np.isfinite(np.asarray(ro.cost)))


def test_unrolled_gradient_matches_finite_differences_and_padding_gets_none():
  x, wx, y, wy = _sets(2, 2, 4, 5, 3, 4)
  with jax.enable_x64(True):
    x, wx, y, wy = (jnp.asarray(v, jnp.float64) for v in (x, wx, y, wy))

    def fn(xx, solver):
      r = cot.pairwise_set_ot(
        xx, wx, y, wy, chunk_size=2, epsilon=0.1, num_iters=20, solver=solver, grad="unroll"
      )
      return jnp.sum(r.cost * jnp.array([[1.0, -2.0], [0.5, 3.0]]))

    direction = jnp.asarray(np.random.default_rng(4).normal(size=x.shape)) * wx[..., None]
    for solver in ("kernel",):  # ott's unrolled gradient is checked in test_plans.py
      g = jax.grad(fn)(x, solver)
      h = 1e-6
      fd = (fn(x + h * direction, solver) - fn(x - h * direction, solver)) / (2 * h)
      assert abs(float(jnp.sum(g * direction)) - float(fd)) < 1e-6 * max(1, abs(float(fd)))
      assert bool(jnp.all(jnp.isfinite(g)))
      assert bool(jnp.all(g[wx == 0] == 0))
    g0 = jax.grad(
      lambda xx: jnp.sum(
        cot.pairwise_set_ot(
          xx, wx, y, wy, chunk_size=2, solver="kernel", grad="stop_gradient", **KW
        ).cost
      )
    )(x)
    assert bool(jnp.all(g0 == 0))


def test_no_retrace_for_same_shapes():
  traces = []
  x, wx, y, wy = _sets(3, 3, 4, 5, 3, 5)

  @jax.jit
  def run(x, y):
    traces.append(1)
    return cot.pairwise_set_ot(
      x, wx, y, wy, chunk_size=4, solver="kernel", grad="stop_gradient", **KW
    ).cost

  run(x, y)
  run(x + 1, y * 2)
  assert len(traces) == 1


def test_bad_shapes_raise():
  x, wx, y, wy = _sets(2, 2, 4, 5, 3, 6)
  with pytest.raises(ValueError, match="wy_bm"):
    cot.pairwise_set_ot(
      x, wx, y, wy[:, :3], chunk_size=2, solver="kernel", grad="stop_gradient", **KW
    )
  with pytest.raises(ValueError, match="solver"):
    cot.set_ot(x[0], y[0], wx[0], wy[0], solver="pot", grad="stop_gradient", **KW)
