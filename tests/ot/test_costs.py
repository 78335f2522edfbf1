"""clipjax.ot.costs against numpy/scipy."""

import jax.numpy as jnp
import numpy as np
import scipy.spatial.distance as ssd

from clipjax import ot as cot


def test_cosine_and_sqeuclidean_match_scipy():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
  np.testing.assert_allclose(
    np.asarray(cot.cosine_cost(x, y)), ssd.cdist(x, y, "cosine"), atol=1e-6
  )
  np.testing.assert_allclose(
    np.asarray(cot.sqeuclidean_cost(x, y)), ssd.cdist(x, y, "sqeuclidean"), rtol=1e-5, atol=1e-5
  )
  c = np.asarray(cot.cosine_cost(x, y, max_scale=True))
  np.testing.assert_allclose(
    c, ssd.cdist(x, y, "cosine") / ssd.cdist(x, y, "cosine").max(), atol=1e-6
  )
  assert c.max() == 1.0


def test_bfloat16_inputs_give_float32_cost_and_zero_rows_stay_finite():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 8)).astype(np.float32)
  x[1] = 0.0
  c = cot.cosine_cost(jnp.asarray(x, jnp.bfloat16), jnp.asarray(x, jnp.bfloat16))
  assert c.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(c)))
  np.testing.assert_allclose(np.asarray(c)[1], 1.0)
