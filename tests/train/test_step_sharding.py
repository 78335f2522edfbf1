"""Sharded train step == single-device train step; no recompilation after step 1."""

import functools

import jax
import ml_collections as mlc
import numpy as np
import pytest

import clipjax.model as model_lib
from clipjax import methods, sharding
from clipjax.train import optim
from clipjax.train.state import TrainState
from clipjax.train.step import forward, train_step

OPTIM = mlc.ConfigDict(
  {
    "lr": 1e-3,
    "end_lr_frac": 0.0,
    "warmup_frac": 0.0,
    "b1": 0.9,
    "b2": 0.98,
    # Adam's update g / (|g| + eps) has slope up to 1 / eps in g: with eps = 1e-6, a 1e-7
    # reduction-order difference in a near-zero gradient moves the update by 0.1. eps = 1e-3
    # keeps the update 1e3-Lipschitz, so parameters inherit the gradient tolerance (below).
    "eps": 1e-3,
    "weight_decay": 0.1,
    "clip_grad_norm": 1.0,
    "grad_accum_steps": 1,
    "wd_exclude": [r".*/bias", r".*/scale", r".*embedding.*", r"logit_.*"],
  }
)


def _batch(rng, b=16):
  ids = np.zeros((b, 77), np.int32)
  ids[:, 0] = 49406
  for i in range(b):
    n = 2 + i % 5
    ids[i, 1 : 1 + n] = rng.integers(1, 1000, n)
    ids[i, 1 + n] = 49407
  return {"image": rng.random((b, 32, 32, 3), dtype=np.float32), "ids": ids}


def _run(devices, mesh_cfg, steps=2, method_name="clip", frozen=()):
  optim_cfg = mlc.ConfigDict(OPTIM.to_dict())
  model = model_lib.create("tiny", jax.random.key(0))
  method = methods.get(method_name)
  tx = optim.make_optimizer(optim_cfg, model.params, 10)
  mesh = sharding.make_mesh(mesh_cfg, devices=devices)
  params_host = jax.device_get(model.params)
  abstract_params = jax.eval_shape(lambda: params_host)
  state_sh = TrainState(
    step=sharding.replicated(mesh),
    params=sharding.param_shardings(abstract_params, mesh, fsdp_min_size=256),
    opt_state=sharding.param_shardings(
      jax.eval_shape(tx.init, abstract_params), mesh, fsdp_min_size=256
    ),
    method_state={},
    rng=sharding.replicated(mesh),
  )
  init = jax.jit(
    lambda p: TrainState(np.int32(0), p, tx.init(p), {}, jax.random.PRNGKey(1)),
    out_shardings=state_sh,
  )
  state = init(params_host)
  traces = []

  def counted(*a, **k):
    traces.append(1)
    return train_step(*a, **k)

  step_fn = jax.jit(
    functools.partial(
      counted,
      model=model,
      method=method,
      tx=tx,
      schedule=optim.make_schedule(optim_cfg, 10),
      trainable=optim.trainable_mask(model.params, list(frozen)),
    ),
    in_shardings=(state_sh, sharding.batch_sharding(mesh)),
    out_shardings=(state_sh, sharding.replicated(mesh)),
    donate_argnums=0,
  )
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    batch = sharding.make_global_batch(mesh, _batch(rng))
    state, m = step_fn(state, batch)
    losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params), len(traces), state


def _grads(devices, mesh_cfg):
  model = model_lib.create("tiny", jax.random.key(0))
  method = methods.get("clip")
  mesh = sharding.make_mesh(mesh_cfg, devices=devices)
  p_sh = sharding.param_shardings(model.params, mesh, fsdp_min_size=256)

  def loss(p, b):
    return method.loss(forward(model, p, b, needs_tokens=False), {}, None)[0]

  fn = jax.jit(
    jax.value_and_grad(loss),
    in_shardings=(p_sh, sharding.batch_sharding(mesh)),
    out_shardings=(sharding.replicated(mesh), p_sh),
  )
  batch = sharding.make_global_batch(mesh, _batch(np.random.default_rng(5)))
  return jax.device_get(fn(jax.device_get(model.params), batch))


MESHES = [{"data": 8}, {"data": 2, "fsdp": 4}, {"data": 4, "tensor": 2}]
# The largest reductions the compared values depend on (tiny model, batch 16): the forward's
# widest contraction (MLP width 128) for the loss; for the gradients the sum over the batch's
# 16 x 77 text tokens (data parallelism splits exactly that sum across devices).
LOSS_REDUCTION = 128
GRAD_REDUCTION = 16 * 77
STEPS, LR = 2, 1e-3


def _max_abs_diffs(a_tree, b_tree):
  pairs = zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True)
  return [(float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))) for a, b in pairs]


@pytest.mark.parametrize("mesh_cfg", MESHES)
def test_sharded_loss_and_grads_match_single_device(mesh_cfg, reorder_tol):
  ref_loss, ref_grads = _grads(jax.devices()[:1], {"data": 1})
  loss, grads = _grads(jax.devices(), mesh_cfg)
  assert abs(loss - ref_loss) <= reorder_tol(abs(ref_loss), LOSS_REDUCTION)
  for diff, scale in _max_abs_diffs(grads, ref_grads):
    assert diff <= reorder_tol(scale, GRAD_REDUCTION)


@pytest.mark.parametrize("mesh_cfg", MESHES)
def test_sharded_train_steps_match_single_device(mesh_cfg, reorder_tol):
  ref_losses, ref_params, _, _ = _run(jax.devices()[:1], {"data": 1}, steps=STEPS)
  losses, params, n_traces, state = _run(jax.devices(), mesh_cfg, steps=STEPS)
  assert abs(losses[0] - ref_losses[0]) <= reorder_tol(abs(ref_losses[0]), LOSS_REDUCTION)
  # Each Adam step moves a parameter by at most lr / eps (= 1, see OPTIM) times the gradient
  # difference; the second loss adds what those parameter differences change.
  param_tol = STEPS * LR / OPTIM.eps * reorder_tol(1.0, GRAD_REDUCTION)
  for diff, _ in _max_abs_diffs(params, ref_params):
    assert diff <= param_tol
  assert abs(losses[1] - ref_losses[1]) <= 2 * reorder_tol(abs(ref_losses[1]), LOSS_REDUCTION)
  assert n_traces == 1, "train_step was retraced after the first step"
  if "fsdp" in mesh_cfg:
    spec = state.params["visual"]["blocks"]["0"]["mlp"]["c_fc"]["kernel"].sharding.spec
    assert "fsdp" in tuple(spec), spec


def test_frozen_parameters_do_not_change():
  model = model_lib.create("tiny", jax.random.key(0))
  _, params, _, _ = _run(jax.devices()[:1], {"data": 1}, frozen=[r"visual/.*"])
  for a, b in zip(jax.tree.leaves(params["visual"]), jax.tree.leaves(model.params["visual"])):
    np.testing.assert_array_equal(a, b)
  changed = [
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(params["text"]), jax.tree.leaves(model.params["text"]))
  ]
  assert any(changed)


def test_grad_accumulation_equals_mean_of_microbatch_grads():
  model = model_lib.create("tiny", jax.random.key(0))
  method = methods.get("clip")
  cfg = mlc.ConfigDict(OPTIM.to_dict())
  cfg.clip_grad_norm = 0.0
  cfg.weight_decay = 0.0
  batch = _batch(np.random.default_rng(3), b=8)
  apply = model

  def loss(p, b):
    return method.loss(forward(apply, p, b, needs_tokens=False), {}, None)[0]

  g1 = jax.grad(loss)(model.params, {k: v[:4] for k, v in batch.items()})
  g2 = jax.grad(loss)(model.params, {k: v[4:] for k, v in batch.items()})
  expected = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  # SGD with lr 1 exposes the averaged gradient as the update.
  import optax

  tx = optax.sgd(1.0)
  state = TrainState(np.int32(0), model.params, tx.init(model.params), {}, jax.random.PRNGKey(0))
  new, _ = train_step(
    state, batch, model=apply, method=method, tx=tx, schedule=lambda s: 1.0, grad_accum_steps=2
  )
  upd = jax.tree.map(lambda a, b: a - b, model.params, new.params)
  upd["logit_scale"] = expected["logit_scale"]  # clamped to ln 100 after the update
  for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=1e-5)
