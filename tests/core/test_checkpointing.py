import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import checkpointing
from clipjax.train.state import TrainState


def _state(seed):
  k = jax.random.PRNGKey(seed)
  params = {"w": jax.random.normal(k, (4, 3)), "b": {"x": jnp.arange(3.0)}}
  return TrainState(
    step=jnp.asarray(seed, jnp.int32),
    params=params,
    opt_state=(jax.tree.map(jnp.zeros_like, params),),
    method_state={},
    rng=jax.random.PRNGKey(seed + 100),
  )


def test_save_restore_bit_identical_and_retention(tmp_path):
  ck = checkpointing.Checkpointer(str(tmp_path / "ckpt"), save_every=2, max_to_keep=2)
  for step in range(1, 7):
    ck.save(step, _state(step))
  ck.wait()
  assert ck.all_steps() == [4, 6]
  abstract = jax.eval_shape(lambda: _state(0))
  restored = ck.restore(6, abstract)
  ck.close()
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(_state(6))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  params = checkpointing.restore_params(str(tmp_path / "ckpt"))
  np.testing.assert_array_equal(params["w"], _state(6).params["w"])


def test_partial_checkpoint_is_ignored(tmp_path):
  root = tmp_path / "ckpt"
  ck = checkpointing.Checkpointer(str(root), save_every=1)
  ck.save(1, _state(1))
  ck.close()
  # What a SIGKILL during an async save leaves behind.
  os.makedirs(root / "2.orbax-checkpoint-tmp")
  ck = checkpointing.Checkpointer(str(root), save_every=1)
  assert ck.latest_step() == 1
  ck.close()


def test_restore_params_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    checkpointing.restore_params(str(tmp_path / "nothing"))
