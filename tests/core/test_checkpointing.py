import gc
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from clipjax import checkpointing, metrics
from clipjax.train.state import TrainState


def _state(seed):
  k = jax.random.PRNGKey(seed)
  params = {"w": jax.random.normal(k, (64, 32)), "b": {"x": jnp.arange(3.0)}}
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


def _abstract():
  return jax.eval_shape(lambda: _state(0))


def _data_files(root, step):
  """The state's array data files of `step`, largest first."""
  files = list((root / str(step) / "state").glob("ocdbt.process_*/d/*"))
  return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def test_checksums_see_one_changed_value_and_ignore_sharding():
  state = _state(3)
  sums = checkpointing.checksums(state)
  assert set(sums) == {"step", "params/w", "params/b/x", "opt_state/0/w", "opt_state/0/b/x", "rng"}
  w = np.asarray(state.params["w"]).copy()
  w[2, 1] = np.nextafter(w[2, 1], np.float32(np.inf))  # one ulp
  changed = checkpointing.checksums(state._replace(params={**state.params, "w": w}))
  assert [k for k in sums if sums[k] != changed[k]] == ["params/w"]
  swapped = w.copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  assert checkpointing.checksums({"w": swapped}) != checkpointing.checksums({"w": w})
  mesh = jax.make_mesh((4,), ("d",))
  big = jnp.arange(64.0).reshape(16, 4)
  sharded = jax.device_put(big, jax.NamedSharding(mesh, jax.P("d")))
  assert checkpointing.checksums({"x": sharded}) == checkpointing.checksums({"x": np.asarray(big)})


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e30])
def test_save_refuses_non_finite_or_overflowing_state(tmp_path, bad):
  ck = checkpointing.Checkpointer(str(tmp_path / "ckpt"), save_every=1)
  ck.save(1, _state(1))
  state = _state(2)
  poisoned = state._replace(opt_state=(jax.tree.map(lambda x: x.at[0].set(bad), state.params),))
  with pytest.raises(metrics.NonFiniteError, match=r"Refusing to checkpoint step 2.*steps \[1\]"):
    ck.save(2, poisoned)
  ck.close()
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["1"]


def _corrupt(path, how):
  data = bytearray(path.read_bytes())
  if how == "truncate":
    path.write_bytes(bytes(data[: len(data) // 2]))
  else:
    mid = len(data) // 2
    data[mid - 128 : mid + 128] = bytes(255 - b for b in data[mid - 128 : mid + 128])
    path.write_bytes(bytes(data))


# A failed orbax restore leaves its other array reads' coroutines to the garbage collector.
_ORPHANED_READS = "ignore::pytest.PytestUnraisableExceptionWarning"


@pytest.mark.filterwarnings(_ORPHANED_READS)
@pytest.mark.parametrize("how", ["bytes", "truncate"])
def test_corrupted_newest_step_falls_back_to_previous(tmp_path, capsys, how):
  root = tmp_path / "ckpt"
  ck = checkpointing.Checkpointer(str(root), save_every=1, max_to_keep=3)
  for step in (1, 2):
    ck.save(step, _state(step))
  ck.close()
  _corrupt(_data_files(root, 2)[0], how)
  ck = checkpointing.Checkpointer(str(root), save_every=1)
  step, restored = ck.restore_latest(_abstract())
  gc.collect()  # the orphaned reads' warnings, while the filter above applies
  assert step == 1
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(_state(1)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  err = capsys.readouterr().err
  assert "checkpoint step 2:" in err and "Resuming from step 1" in err
  # The rejected step is kept aside, and the resumed run can write step 2 again.
  assert (root / "rejected" / "2").is_dir() and ck.all_steps() == [1]
  assert ck.save(2, _state(2))
  ck.close()
  np.testing.assert_array_equal(checkpointing.restore_params(str(root))["w"], _state(2).params["w"])


@pytest.mark.filterwarnings(_ORPHANED_READS)
def test_restore_rejects_non_finite_state_and_every_step_bad_is_an_error(tmp_path):
  root = tmp_path / "ckpt"
  ck = checkpointing.Checkpointer(str(root), save_every=1)
  ck.save(1, _state(1))
  nan = _state(2)._replace(params={"w": jnp.full((64, 32), jnp.nan), "b": {"x": jnp.zeros(3)}})
  # What an older clipjax (no finiteness guard, no checksums) could leave behind.
  ck._mngr.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(nan)))
  ck.close()
  ck = checkpointing.Checkpointer(str(root), save_every=1)
  step, _ = ck.restore_latest(_abstract())
  assert step == 1
  ck.close()
  np.testing.assert_array_equal(checkpointing.restore_params(str(root))["w"], _state(1).params["w"])
  _corrupt(_data_files(root, 1)[0], "bytes")
  ck = checkpointing.Checkpointer(str(root), save_every=1)
  with pytest.raises(checkpointing.CheckpointError, match=r"(?s)No usable.*step 1: checksum"):
    ck.restore_latest(_abstract())
  assert ck.all_steps() == [1]  # nothing moved when there is nothing to resume from
  ck.close()
  gc.collect()
