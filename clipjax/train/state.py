"""The train state: one explicit pytree passed through the pure step function."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

__all__ = ["TrainState"]


class TrainState(NamedTuple):
  """Everything that changes during training (and is checkpointed).

  Attributes:
    step: int32 scalar, number of optimizer updates applied.
    params: model parameters (plain nested dict, see `clipjax.model`).
    opt_state: optax state.
    method_state: the method's own pytree (queues, EMA teachers; `{}` when stateless).
    rng: PRNG key (typed key array) advanced every step.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  method_state: Any
  rng: jax.Array
