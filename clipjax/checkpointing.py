"""The only module that calls orbax.

`Checkpointer` wraps an async `orbax.checkpoint.CheckpointManager` holding three items per step:
the train state (`state`), the data iterator position (`data_iter`, grain's per-process JSON)
and `checksums` (JSON: one 32-bit checksum of the bits of every array of the state). Orbax writes
into `N.orbax-checkpoint-tmp` and renames on commit, so a run killed during a save never leaves
a checkpoint that a restart would pick up; `max_to_keep`/`keep_period` retention.

What is saved is always good: `save` refuses a state with a NaN/Inf (or overflowing) value, so
retention never trades a good checkpoint for a bad one. What is restored is checked: the
checksums are recomputed from the restored arrays (orbax checksums only its shard index, not
the data), and the state must be finite. `restore_latest` falls back to the newest step that
passes and moves the rejected ones to `checkpoints/rejected/` (kept, never deleted), so a
resumed run can write those steps again.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from clipjax import tree as tree_lib
from clipjax.metrics import NonFiniteError

__all__ = [
  "CheckpointError",
  "Checkpointer",
  "PreemptionFlag",
  "checksums",
  "restore_params",
  "saved_steps",
]

_ITEMS = ("state", "data_iter", "checksums")
_T = TypeVar("_T")


class CheckpointError(RuntimeError):
  """A checkpoint step that cannot be used: unreadable, corrupted or non-finite."""

  def __init__(self, step: int | None, reason: str):
    super().__init__(reason if step is None else f"checkpoint step {step}: {reason}")
    self.step = step


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """uint32 sum of the leaf's 32-bit words, each times an odd weight unique to its position.

  Integer addition mod 2**32 is exact in any order, so the sum does not depend on sharding;
  changing any one value changes it (the weights are odd, hence invertible mod 2**32).
  """
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size >= 4:  # 8-byte values become two words (a trailing axis)
    words = jax.lax.bitcast_convert_type(x, jnp.uint32)
  else:
    words = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * size}")).astype(jnp.uint32)
  index = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(words.ndim)):
    index += jax.lax.broadcasted_iota(jnp.uint32, words.shape, d) * jnp.uint32(stride % 2**32)
    stride *= words.shape[d]
  weights = (2 * index + 1) * jnp.uint32(0x9E3779B1)
  return jnp.sum(words * weights, dtype=jnp.uint32)


@jax.jit
def _inspect(tree: Any) -> tuple[jax.Array, list[jax.Array]]:
  return tree_lib.all_finite(tree), [_leaf_checksum(x) for x in jax.tree.leaves(tree)]


def _finite_and_checksums(tree: Any) -> tuple[bool, dict[str, int]]:
  finite, sums = jax.device_get(_inspect(tree))
  return bool(finite), {n: int(c) for n, c in zip(tree_lib.names(tree), sums, strict=True)}


def checksums(tree: Any) -> dict[str, int]:
  """`{leaf name: uint32 checksum of its bits}` (what a checkpoint records for its state)."""
  return _finite_and_checksums(tree)[1]


def _verify(step: int, state: Any, saved: dict[str, int] | None) -> None:
  """Raises `CheckpointError` unless `state` matches the `saved` checksums and is finite."""
  finite, got = _finite_and_checksums(state)
  if saved is None:
    print(
      f"Warning: checkpoint step {step} has no checksums (written before clipjax recorded "
      "them): its bytes cannot be verified.",
      file=sys.stderr,
      flush=True,
    )
  else:
    saved = {k: v for k, v in saved.items() if k in got}  # partial restores (params only)
    bad = sorted(k for k in got if saved.get(k) != got[k])
    if bad:
      shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
      raise CheckpointError(
        step,
        f"checksum mismatch in {len(bad)} of {len(got)} arrays ({shown}): its files changed "
        "after they were written (disk or copy corruption)",
      )
  if not finite:
    raise CheckpointError(step, "the state holds NaN/Inf (or overflowing) values")


def _error_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _newest_good(steps: list[int], load: Callable[[int], _T]) -> tuple[int, _T, list[str]]:
  """Tries `load(step)` from the newest step down; returns the first that works.

  Returns:
    (step, loaded, messages about the newer steps that were rejected).

  Raises:
    CheckpointError: every step was rejected (the message lists why, step by step).
  """
  rejected = []
  for step in sorted(steps, reverse=True):
    try:
      return step, load(step), rejected
    except CheckpointError as e:
      rejected.append(str(e))
    except Exception as e:  # orbax/tensorstore raise many types for truncated/unreadable files
      rejected.append(str(CheckpointError(step, f"cannot be read ({_error_line(e)})")))
  raise CheckpointError(
    None, "No usable checkpoint; every step was rejected:\n  " + "\n  ".join(rejected)
  )


class PreemptionFlag:
  """SIGTERM or Ctrl-C (SIGINT) -> a flag the loop polls, so the trainer can save and exit cleanly.

  A second Ctrl-C exits at once (exit status 130) without waiting for that save; orbax commits
  a checkpoint by renaming it, so an interrupted save is never picked up by a resume.
  With `jax.distributed` initialised, JAX's own notifier handles SIGTERM and the sync point
  is `CheckpointManager.reached_preemption` (installing a Python handler would replace
  JAX's and the hosts would disagree), so this class installs nothing then.
  """

  def __init__(self, distributed: bool):
    self.distributed = distributed
    self.requested: str | None = None
    self._previous: dict[int, Any] = {}
    if not distributed:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handler)

  def _handler(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested == "SIGINT":
      print("\nSecond Ctrl-C: exiting now.", file=sys.stderr, flush=True)
      os._exit(128 + signal.SIGINT)
    if signum == signal.SIGINT:
      print(
        "\nCtrl-C: saving a checkpoint after this step, then exiting (Ctrl-C again to exit now).",
        file=sys.stderr,
        flush=True,
      )
    self.requested = self.requested or signal.Signals(signum).name

  def restore_handler(self) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}


class _IteratorState:
  """Adapts an iterator with dict `get_state`/`set_state` to grain's checkpoint handler.

  grain's handler stores non-grain iterators as the bytes their `get_state` returns and calls
  `start_prefetch` after restoring; clipjax's `TrainIterator` speaks JSON-able dicts.
  """

  def __init__(self, it: Any):
    self._it = it

  def get_state(self) -> bytes:
    return json.dumps(self._it.get_state()).encode()

  def set_state(self, state: bytes) -> None:
    self._it.set_state(json.loads(state.decode()))

  def start_prefetch(self) -> None:
    pass


def _iter_item(it: Any) -> Any:
  return it if isinstance(it, grain.DatasetIterator) else _IteratorState(it)


class Checkpointer:
  """Train-state + data-iterator checkpoints in `directory` (e.g. `workdir/checkpoints`).

  Args:
    directory: checkpoint root (local path or gs://).
    save_every: save when `step % save_every == 0` (and always on `force=True`).
    max_to_keep: keep the newest this many.
    keep_period: additionally keep every step divisible by this (None: none).
    async_save: write in a background thread.
  """

  def __init__(
    self,
    directory: str,
    *,
    save_every: int,
    max_to_keep: int = 3,
    keep_period: int | None = None,
    async_save: bool = True,
  ):
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.save_every = save_every
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      keep_period=keep_period,
      save_interval_steps=1,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
      create=True,
    )
    self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.save_every == 0

  def save(
    self, step: int, state: Any, data_iter: Any | None = None, *, force: bool = False
  ) -> bool:
    """Saves if due (or forced). Returns whether a save was started.

    Raises:
      NonFiniteError: `state` holds a NaN/Inf (or overflowing) value; nothing is written.
    """
    if not force and not self.should_save(step):
      return False
    if step in self._mngr.all_steps():
      return False
    finite, sums = _finite_and_checksums(state)
    if not finite:
      raise NonFiniteError(
        f"Refusing to checkpoint step {step}: the state holds NaN/Inf (or overflowing) values. "
        f"Checkpoints kept in {self.directory}: steps {self.all_steps()}."
      )
    items = {"state": ocp.args.StandardSave(state), "checksums": ocp.args.JsonSave(sums)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(_iter_item(data_iter))
    return self._mngr.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state: Any, data_iter: Any | None = None) -> Any:
    """Restores `state` into the structure/shardings of `abstract_state`; `data_iter` in place.

    Raises:
      CheckpointError: the restored arrays do not match the recorded checksums, or are not
        finite. (Unreadable files raise orbax's or tensorstore's own errors.)
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    has_sums = _has_checksums(self.directory, step)
    if has_sums:
      items["checksums"] = ocp.args.JsonRestore()
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(_iter_item(data_iter))
    restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    _verify(step, restored.state, restored.checksums if has_sums else None)
    return restored.state

  def restore_latest(
    self, abstract_state: Any, data_iter: Any | None = None
  ) -> tuple[int | None, Any]:
    """Restores the newest step that reads back intact and finite; (None, None) if none saved.

    Newer steps that fail are reported and moved to `directory/rejected/` so that the resumed
    run can write them again. If every step fails, raises `CheckpointError` listing why (and
    moves nothing): starting over silently would throw the run's progress away.
    """
    steps = self.all_steps()
    if not steps:
      return None, None
    step, state, rejected = _newest_good(
      steps, lambda s: self.restore(s, abstract_state, data_iter)
    )
    if rejected:
      moved = self._reject([s for s in steps if s > step])
      print(
        "\n".join(rejected) + f"\nResuming from step {step}, the newest intact checkpoint; "
        f"moved the rejected step(s) to {moved}.",
        file=sys.stderr,
        flush=True,
      )
    return step, state

  def _reject(self, steps: list[int]) -> str:
    """Moves step directories to `directory/rejected/<step>[.n]` (process 0); returns that dir."""
    root = epath.Path(self.directory)
    dest = root / "rejected"
    if jax.process_index() == 0:
      dest.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target, n = dest / str(step), 0
        while target.exists():
          n += 1
          target = dest / f"{step}.{n}"
        (root / str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("clipjax_reject_checkpoints")
    self._mngr.reload()
    return str(dest)

  def reached_preemption(self, step: int) -> bool:
    return self._mngr.reached_preemption(step)

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def _has_checksums(directory: str, step: int) -> bool:
  return (epath.Path(directory) / str(step) / "checksums").exists()


def restore_params(directory: str, step: int | None = None) -> Any:
  """Reads only `state.params` from a clipjax checkpoint dir (`workdir/checkpoints`).

  The params are verified against the recorded checksums and must be finite. Without `step`,
  the newest step that passes is used (with a message naming the rejected newer ones).
  """
  directory = directory if "://" in directory else os.path.abspath(directory)
  mngr = ocp.CheckpointManager(directory, item_names=_ITEMS)

  def load(s: int) -> Any:
    items = {"state": ocp.args.StandardRestore()}
    has_sums = _has_checksums(directory, s)
    if has_sums:
      items["checksums"] = ocp.args.JsonRestore()
    restored = mngr.restore(s, args=ocp.args.Composite(**items))
    state = restored.state
    params = state["params"] if isinstance(state, dict) else state.params
    _verify(s, {"params": params}, restored.checksums if has_sums else None)
    return jax.tree.map(np.asarray, params)

  try:
    steps = list(mngr.all_steps()) if step is None else [step]
    if not steps:
      raise FileNotFoundError(f"No checkpoint found in {directory!r}.")
    used, params, rejected = _newest_good(steps, load)
  finally:
    mngr.close()
  if rejected:
    print("\n".join(rejected) + f"\nUsing step {used}.", file=sys.stderr, flush=True)
  return params


def saved_steps(directory: str) -> list[int]:
  """Committed checkpoint steps in `directory` (sorted; empty if it does not exist)."""
  if not epath.Path(directory).is_dir():
    return []
  return sorted(ocp.utils.checkpoint_steps(directory))
