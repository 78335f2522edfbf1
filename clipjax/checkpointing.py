"""The only module that calls orbax.

`Checkpointer` wraps an async `orbax.checkpoint.CheckpointManager` holding two items per step:
the train state (`state`) and the data iterator position (`data_iter`, grain's per-process JSON).
Orbax writes into `N.orbax-checkpoint-tmp` and renames on commit, so a run killed during a save
never leaves a checkpoint that a restart would pick up; `max_to_keep`/`keep_period` retention.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

__all__ = ["Checkpointer", "PreemptionFlag", "restore_params", "saved_steps"]


class PreemptionFlag:
  """SIGTERM -> a flag the loop polls, so the trainer can save and exit cleanly.

  With `jax.distributed` initialised, JAX's own notifier handles SIGTERM and the sync point
  is `CheckpointManager.reached_preemption` (installing a Python handler would replace
  JAX's and the hosts would disagree), so this class installs nothing then.
  """

  def __init__(self, distributed: bool):
    self.distributed = distributed
    self.requested = False
    self._previous = None
    if not distributed:
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore_handler(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


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
    self._mngr = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "data_iter")
    )

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.save_every == 0

  def save(
    self, step: int, state: Any, data_iter: Any | None = None, *, force: bool = False
  ) -> bool:
    """Saves if due (or forced). Returns whether a save was started."""
    if not force and not self.should_save(step):
      return False
    if step in self._mngr.all_steps():
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(_iter_item(data_iter))
    return self._mngr.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state: Any, data_iter: Any | None = None) -> Any:
    """Restores `state` into the structure/shardings of `abstract_state`; `data_iter` in place."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(_iter_item(data_iter))
    restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    return restored.state

  def reached_preemption(self, step: int) -> bool:
    return self._mngr.reached_preemption(step)

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def restore_params(directory: str, step: int | None = None) -> Any:
  """Reads only `state.params` from a clipjax checkpoint dir (`workdir/checkpoints`)."""
  directory = directory if "://" in directory else os.path.abspath(directory)
  mngr = ocp.CheckpointManager(directory, item_names=("state", "data_iter"))
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint found in {directory!r}.")
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  finally:
    mngr.close()
  state = restored.state
  params = state["params"] if isinstance(state, dict) else state.params
  return jax.tree.map(lambda x: x, params)


def saved_steps(directory: str) -> list[int]:
  """Committed checkpoint steps in `directory` (sorted; empty if it does not exist)."""
  if not epath.Path(directory).is_dir():
    return []
  return sorted(ocp.utils.checkpoint_steps(directory))
