"""Shared classifiers for the evaluation tests."""

import jax.numpy as jnp
import numpy as np
import pytest

H, W, C = 4, 4, 3
D = H * W * C


def _linear_two_class(seed=0, n=12):
  """Two classes, logits x·w and −x·w on [n, 4, 4, 3] images in [0.3, 0.7]: the ℓ∞ margin of
  example i is |x_i·w| / ‖w‖₁ (FGSM and PGD reach it exactly). Returns logits_fn, x, y (the
  correct labels), the margins and w."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(D,)).astype(np.float32)
  w_dk = jnp.asarray(np.stack([w, -w], axis=1))
  logits_fn = lambda x: x.reshape(x.shape[0], D) @ w_dk
  x = rng.uniform(0.3, 0.7, size=(n, H, W, C)).astype(np.float32)
  y = (x.reshape(n, D) @ w < 0).astype(np.int32)
  radius = np.abs(x.reshape(n, D) @ w) / np.abs(w).sum()
  return logits_fn, x, y, radius, w


@pytest.fixture
def linear_two_class():
  """`(seed=0, n=12) -> (logits_fn, x, y, radius, w)`: a linear classifier with known margins."""
  return _linear_two_class
