"""The training loop for every method, from a laptop to a TPU pod (a library: no run-dir policy).

`setup(config)` checks the config and builds everything that can fail on bad settings or data
(stages, model, optimizer, shardings, the data iterator) without touching the disk;
`train(trainer, workdir)` then restores the newest intact checkpoint of `workdir/checkpoints`
if any (dropping the metrics.jsonl events logged after it, and running its evaluation if a
kill lost it), trains to `config.total_steps`, appends events to `workdir/metrics.jsonl` and
returns the summary (with the data pipeline's bad-record report under "data"). The step's
`finite` flag is checked at every log step and before every save, and the checkpointer refuses
a non-finite state, so no save path writes one. The `train` task (`clipjax.tasks.train`) owns
the run directory around it.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from etils import epath

from clipjax import checkpointing, config_lib, runs, sharding
from clipjax import methods as methods_lib
from clipjax import metrics as metrics_lib
from clipjax.methods.base import METHOD_PARAMS
from clipjax.train import data_setup, optim, periodic_eval
from clipjax.train.state import TrainState
from clipjax.train.step import train_step

__all__ = ["Stage", "Trainer", "build_model", "build_stages", "setup", "train"]


def build_model(config: mlc.ConfigDict, rng: jax.Array):
  """The run's model: random init, or `config.model.init_checkpoint` (workdir or import)."""
  model = runs.build_model(
    config.model.to_dict(), config.data.image_size, config.data.context_length, rng
  )
  got = (model.config.vision.image_size, model.config.text.context_length)
  want = (config.data.image_size, config.data.context_length)
  if got != want:
    raise ValueError(
      f"model.init_checkpoint {config.model.init_checkpoint!r} has (image_size, context_length)"
      f" = {got}, but config.data asks for {want}; set data.image_size / data.context_length."
    )
  tok, text = data_setup.tokenizer(config), model.config.text
  if (tok.vocab_size, tok.eot_id) != (text.vocab_size, text.eot_id):
    raise ValueError(
      f"data.tokenizer={config.data.tokenizer!r} (vocabulary {tok.vocab_size}, end-of-text id "
      f"{tok.eot_id}) does not fit the model's text tower (vocabulary {text.vocab_size}, "
      f"end-of-text id {text.eot_id}): set data.tokenizer to the merges file the model's "
      "embedding was made for ('' = OpenAI's; 'clipjax:worlds' for the shapes recipes)."
    )
  return model


class Stage(NamedTuple):
  """A contiguous range of steps trained with one method and one set of frozen parameters.

  `fresh_optimizer`: the stage starts from a fresh optimizer state (`optim.fresh_opt_state`:
  zero Adam moments, the schedule keeps the global step) instead of continuing the previous one.
  """

  name: str
  start: int
  end: int
  method: methods_lib.Method
  frozen: tuple[str, ...]
  fresh_optimizer: bool = False


def build_stages(config: mlc.ConfigDict) -> list[Stage]:
  """`config.stages` (or one stage from `config.method` / `config.optim.frozen`)."""
  specs = [s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in config.get("stages", [])]
  if not specs:
    specs = [
      {
        "name": "train",
        "steps": config.total_steps,
        "method": config.method.to_dict(),
        "frozen": list(config.optim.frozen),
      }
    ]
  stages, start = [], 0
  for i, spec in enumerate(specs):
    unknown = set(spec) - {"name", "steps", "method", "frozen", "fresh_optimizer"}
    if unknown:
      raise ValueError(f"config.stages[{i}] has unknown keys {sorted(unknown)}.")
    method_spec = spec.get("method", config.method.to_dict())
    method = methods_lib.get(method_spec["name"], **dict(method_spec.get("kwargs", {})))
    end = start + int(spec["steps"])
    frozen = tuple(spec.get("frozen", config.optim.frozen))
    fresh = spec.get("fresh_optimizer", False)
    if not isinstance(fresh, bool):
      raise ValueError(f"config.stages[{i}].fresh_optimizer must be True/False, got {fresh!r}.")
    stages.append(Stage(spec.get("name", f"stage{i}"), start, end, method, frozen, fresh))
    start = end
  if start != config.total_steps:
    raise ValueError(
      f"config.stages add up to {start} steps but config.total_steps is {config.total_steps}."
    )
  return stages


def _init_params(model, stages: list[Stage], rng: jax.Array) -> dict[str, Any]:
  params = dict(model.params)
  extra: dict[str, Any] = {}
  for stage in stages:
    if stage.method.init_params is None:
      continue
    for k, v in stage.method.init_params(model, rng).items():
      if k not in extra:
        extra[k] = v
  if extra:
    params[METHOD_PARAMS] = extra
  return params


@dataclasses.dataclass
class Trainer:
  """Everything `train` needs, built and checked by `setup` (nothing on disk yet)."""

  config: mlc.ConfigDict
  mesh: jax.sharding.Mesh
  stages: list[Stage]
  model: Any
  params0: dict[str, Any]
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state_shardings: TrainState
  abstract: TrainState
  train_iter: Any

  def init_state(self, params: Any) -> TrainState:
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=self.tx.init(params),
      method_state=self.stages[0].method.init(self.model.config.embed_dim),
      rng=jax.random.PRNGKey(self.config.seed + 1),
    )

  def close(self) -> None:
    self.train_iter.close()


def setup(config: mlc.ConfigDict) -> Trainer:
  """Checks `config` and builds the run's pieces, the data iterator last; writes nothing.

  Raises on a bad config (naming the key) or a bad data spec before any file exists, so a
  failed start leaves no trace in the run directory.
  """
  mesh = sharding.make_mesh(config.mesh)
  config_lib.validate_train_config(config, mesh.size)
  stages = build_stages(config)
  model = build_model(config, jax.random.key(config.seed))
  params0 = _init_params(model, stages, jax.random.key(config.seed + 2))
  tx = optim.make_optimizer(config.optim, params0, config.total_steps)
  schedule = optim.make_schedule(config.optim, config.total_steps)
  trainer = Trainer(config, mesh, stages, model, params0, tx, schedule, None, None, None)
  abstract = jax.eval_shape(trainer.init_state, params0)
  trainer.state_shardings = TrainState(
    step=sharding.replicated(mesh),
    params=sharding.param_shardings(abstract.params, mesh),
    opt_state=sharding.param_shardings(abstract.opt_state, mesh),
    method_state=jax.tree.map(lambda _: sharding.replicated(mesh), abstract.method_state),
    rng=sharding.replicated(mesh),
  )
  trainer.abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    abstract,
    trainer.state_shardings,
  )
  trainer.train_iter = data_setup.train_iterator(config, jax.process_index(), jax.process_count())
  return trainer


def train(trainer: Trainer, workdir: str) -> dict[str, Any]:
  """Trains from the latest checkpoint in `workdir/checkpoints` (or step 0); returns the summary.

  The caller owns `trainer` (and closes it). Checkpoints and metrics.jsonl go under `workdir`.
  """
  config = trainer.config
  is_main = jax.process_index() == 0
  distributed = jax.process_count() > 1
  wdir = epath.Path(workdir)
  writer = metrics_lib.MetricWriter(
    str(wdir), enabled=is_main, tensorboard=config.get("tensorboard", False)
  )
  preempt = checkpointing.PreemptionFlag(distributed)
  ckpt = None
  try:
    ckpt = checkpointing.Checkpointer(
      str(wdir / "checkpoints"),
      save_every=config.checkpoint.every_steps,
      max_to_keep=config.checkpoint.max_to_keep,
      keep_period=config.checkpoint.get("keep_period") or None,
      async_save=config.checkpoint.get("async_save", True),
    )
    return _train_loop(trainer, ckpt, writer, preempt, is_main=is_main, distributed=distributed)
  finally:
    if ckpt is not None:
      ckpt.close()
    writer.close()
    preempt.restore_handler()


def _train_loop(trainer, ckpt, writer, preempt, *, is_main, distributed) -> dict[str, Any]:
  config, mesh, stages = trainer.config, trainer.mesh, trainer.stages
  model, state_shardings, train_iter = trainer.model, trainer.state_shardings, trainer.train_iter
  latest, state = ckpt.restore_latest(trainer.abstract, data_iter=train_iter)
  if latest is not None:
    if is_main:
      print(f"Resumed from {ckpt.directory} at step {latest}.", flush=True)
  else:
    state = jax.jit(trainer.init_state, out_shardings=state_shardings)(trainer.params0)
  # Steps after the restored one are trained (and logged) again: drop their old events.
  logged_evals = {
    e["step"]: e for e in writer.truncate_after(latest or 0) if e.get("kind") == "eval"
  }

  # One compiled step per stage, built on first use. `model` is bound statically; its encode
  # functions read only the `params` argument, so parameters are never baked in as constants.
  step_fns: dict[int, Any] = {}

  def step_fn_for(i: int):
    if i not in step_fns:
      stage = stages[i]
      step_fns[i] = jax.jit(
        functools.partial(
          train_step,
          model=model,
          method=stage.method,
          tx=trainer.tx,
          schedule=trainer.schedule,
          grad_accum_steps=config.optim.grad_accum_steps,
          trainable=optim.trainable_mask(trainer.params0, stage.frozen),
        ),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
      )
    return step_fns[i]

  fresh_opt = jax.jit(
    lambda st: st._replace(opt_state=optim.fresh_opt_state(trainer.tx, st.opt_state, st.params)),
    in_shardings=(state_shardings,),
    out_shardings=state_shardings,
    donate_argnums=0,
  )

  evaluator = periodic_eval.Evaluator(config, model)
  step = int(jax.device_get(state.step))
  first_step = step
  progress = metrics_lib.Progress(config.total_steps, config.data.batch_size, enabled=is_main)
  # Wall time of steps after the first (compiling) one, minus evaluation time; with async
  # dispatch only the whole span is meaningful, not the time of one dispatch.
  timed_start, eval_seconds, timed_steps, rates = None, 0.0, 0, {}
  eval_metrics: dict[str, Any] = {}
  stopped_early = False
  if latest is not None and evaluator.due(latest):
    if _all_hosts(latest in logged_evals):
      logged = logged_evals.get(latest, {})
      eval_metrics = {k: v for k, v in logged.items() if k not in ("step", "kind")}
    else:  # killed after the checkpoint committed, before its evaluation was written
      if is_main:
        print(f"Running the evaluation of step {latest} that the last run did not log.")
      eval_metrics = evaluator(state.params, latest)
      writer.write(latest, eval_metrics, kind="eval")
  # The step's `finite` flags since the last check, and-ed on device (no host sync per step).
  finite_since, checked_step = None, step
  bad_reported = train_iter.stats.bad

  def check_finite(host_metrics: dict[str, Any]) -> None:
    nonlocal finite_since, checked_step
    if finite_since is None:
      return
    finite = bool(jax.device_get(finite_since))
    finite_since = None
    try:
      metrics_lib.check_finite(host_metrics, step, state_finite=finite, since=checked_step)
    except metrics_lib.NonFiniteError as e:
      ckpt.wait()
      raise metrics_lib.NonFiniteError(
        f"{e} Checkpoints in {ckpt.directory}: steps {ckpt.all_steps()}."
      ) from None
    checked_step = step

  progress.start(step)
  while step < config.total_steps:
    stage_index = next(i for i, s in enumerate(stages) if s.start <= step < s.end)
    if is_main and len(stages) > 1 and step in (first_step, stages[stage_index].start):
      print(f"Stage {stages[stage_index].name!r}: steps {step}..{stages[stage_index].end}.")
    if step == stages[stage_index].start and stages[stage_index].fresh_optimizer:
      # Also on a resume at the boundary: the checkpoint holds the previous stage's state.
      state = fresh_opt(state)
    t0 = time.perf_counter()
    local = next(train_iter)
    batch = sharding.make_global_batch(mesh, data_setup.model_inputs(local))
    state, step_metrics = step_fn_for(stage_index)(state, batch)
    ok = step_metrics.pop("finite")
    finite_since = ok if finite_since is None else finite_since & ok
    step += 1
    if step == first_step + 1:
      jax.block_until_ready(step_metrics)
      if is_main:
        print(f"First step (incl. compilation) took {time.perf_counter() - t0:.1f}s.", flush=True)
      progress.start(step)
      timed_start = time.perf_counter()
    else:
      timed_steps += 1
    due_save = ckpt.should_save(step) or step == config.total_steps
    if step % config.log_every_steps == 0 or due_save:
      host_metrics = jax.device_get(step_metrics)
      check_finite(host_metrics)
      rates = progress.update(step, host_metrics) or rates
      if is_main and train_iter.stats.bad > bad_reported:
        print(train_iter.stats.describe(since=bad_reported), flush=True)
        bad_reported = train_iter.stats.bad
      writer.write(
        step,
        {**host_metrics, **rates, **data_setup.stats(train_iter)},
        kind="train",
        stage=stages[stage_index].name,
      )
    if due_save:
      ckpt.save(step, state, train_iter, force=step == config.total_steps)
    if evaluator.due(step):
      t_eval = time.perf_counter()
      eval_metrics = evaluator(state.params, step)
      eval_seconds += time.perf_counter() - t_eval
      writer.write(step, eval_metrics, kind="eval")
      if is_main and step < config.total_steps:  # the final table is printed by the task
        print(periodic_eval.format_table(eval_metrics, step), flush=True)
    if preempt.requested or (distributed and ckpt.reached_preemption(step)):
      if is_main:
        why = preempt.requested or "preemption notice"
        print(f"Preemption requested ({why}): saving step {step} and exiting.", flush=True)
      check_finite({})
      ckpt.save(step, state, train_iter, force=True)
      stopped_early = True
      break
  jax.block_until_ready(state)
  train_time = time.perf_counter() - timed_start - eval_seconds if timed_start else 0.0
  return {
    "step": step,
    "finished": step >= config.total_steps and not stopped_early,
    "train_seconds_excl_first_step_and_eval": train_time,
    "steps_per_s": timed_steps / train_time if train_time else None,
    "examples_per_s": timed_steps * config.data.batch_size / train_time if train_time else None,
    "data": train_iter.stats.summary(),
    **eval_metrics,
  }


def _all_hosts(flag: bool) -> bool:
  """`flag` as process 0 sees it (it alone reads metrics.jsonl), on every process."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))
