"""Shared tiny model for the fusion tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax.model import create


@pytest.fixture(scope="session")
def model():
  """The tiny CLIP with a 64-token vocabulary (the text tower is copied, never fused)."""
  return create("tiny", jax.random.key(0), **{"text.vocab_size": 64, "text.eot_id": 63})


@pytest.fixture(scope="session")
def pixels():
  """[3, 32, 32, 3] random images in [0, 1]."""
  return jnp.asarray(np.random.default_rng(0).uniform(size=(3, 32, 32, 3)), jnp.float32)
