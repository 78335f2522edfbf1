"""NCU: forget-set selection, stage-1 terms, masked-OT targets, limit cases, freezing, smoke run."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import log_expit, log_softmax, logsumexp

from clipjax import methods, tree
from clipjax import model as model_lib
from clipjax.methods import ncu
from clipjax.methods.base import Embeddings
from clipjax.ot import plans
from clipjax.tasks import train as train_task
from clipjax.train import optim
from clipjax.train.state import TrainState
from clipjax.train.step import train_step

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _emb(rng, n=8, d=6):
  zimg = _unit(rng.normal(size=(n, d))).astype(np.float32)
  ztxt = _unit(zimg + 0.6 * rng.normal(size=(n, d))).astype(np.float32)
  zneg = _unit(rng.normal(size=(n, d))).astype(np.float32)
  return zimg, ztxt, zneg


def _oracle_batch(n=12, noisy=(1, 4, 7, 10), d=16):
  """Texts equal their images except the noisy pairs, whose captions are cycled among them."""
  rng = np.random.default_rng(0)
  zimg = _unit(rng.normal(size=(n, d))).astype(np.float32)
  ztxt = zimg.copy()
  idx = list(noisy)
  ztxt[idx] = zimg[idx[1:] + idx[:1]]
  is_noisy = np.zeros(n, bool)
  is_noisy[idx] = True
  return zimg, ztxt, is_noisy


@pytest.mark.parametrize("confidence", ["both", "i2t"])
def test_forget_selection_finds_the_swapped_pairs(confidence):
  zimg, ztxt, is_noisy = _oracle_batch()
  forget, omega = ncu.select_forget(zimg, ztxt, 20.0, 4, confidence=confidence)
  np.testing.assert_array_equal(np.asarray(forget), is_noisy)
  assert np.all(np.asarray(omega)[is_noisy] < np.asarray(omega)[~is_noisy].min())
  m = ncu.forget_metrics(forget, {"is_noisy": is_noisy})
  assert float(m["forget/precision"]) == 1.0 and float(m["forget/recall"]) == 1.0
  # Half the budget: every pick still noisy, half of the noisy ones found.
  forget2, _ = ncu.select_forget(zimg, ztxt, 20.0, 2, confidence=confidence)
  m2 = ncu.forget_metrics(forget2, {"is_noisy": is_noisy})
  assert float(m2["forget/precision"]) == 1.0 and float(m2["forget/recall"]) == 0.5


def test_confidence_is_eq2_average_of_both_directions():
  zimg, ztxt, _ = _emb(np.random.default_rng(1))
  _, omega = ncu.select_forget(zimg, ztxt, 7.0, 0, confidence="both")
  logits = 7.0 * zimg @ ztxt.T
  i2t = np.diag(np.exp(log_softmax(logits, axis=1)))
  t2i = np.diag(np.exp(log_softmax(logits, axis=0)))
  np.testing.assert_allclose(np.asarray(omega), 0.5 * (i2t + t2i), rtol=1e-5)
  _, omega1 = ncu.select_forget(zimg, ztxt, 7.0, 0, confidence="i2t")
  np.testing.assert_allclose(np.asarray(omega1), i2t, rtol=1e-5)


def test_sep_loss_hinge_values():
  t = np.array([[1.0, 0.0]] * 4, np.float32)
  # cosines 0, -0.5, -1, -0.1 with margins [-0.7, -0.2]: hinges 0.2, 0, 0.3, 0.1.
  neg = np.array(
    [[0.0, 1.0], [-0.5, np.sqrt(0.75)], [-1.0, 0.0], [-0.1, np.sqrt(0.99)]], np.float32
  )
  w = np.ones(4, np.float32)
  val = ncu.sep_loss(t, neg, w, alpha=-0.7, beta=-0.2)
  np.testing.assert_allclose(float(val), 0.6 / 4, rtol=1e-5)
  w2 = np.array([1, 0, 1, 0], np.float32)
  np.testing.assert_allclose(float(ncu.sep_loss(t, neg, w2, alpha=-0.7, beta=-0.2)), 0.25)


def _reflection(d, rng):
  u = _unit(rng.normal(size=(d,)))
  return np.eye(d) - 2.0 * np.outer(u, u)


def test_relation_loss_zero_for_isometric_negatives():
  rng = np.random.default_rng(2)
  _, ztxt, _ = _emb(rng)
  w = np.ones(ztxt.shape[0], np.float32)
  refl = (ztxt @ _reflection(ztxt.shape[1], rng)).astype(np.float32)
  for relation in ("paper", "code"):
    assert float(ncu.relation_loss(ztxt, refl, w, relation=relation)) < 1e-10
  q, _ = np.linalg.qr(rng.normal(size=(ztxt.shape[1],) * 2))
  rot = (ztxt @ q).astype(np.float32)
  assert float(ncu.relation_loss(ztxt, rot, w, relation="code")) < 1e-10
  assert float(ncu.relation_loss(ztxt, rot, w, relation="paper")) > 1e-3  # q is not symmetric
  # Eq. 4 by hand on a random pair of sets, rows weighted by D_RT membership.
  zneg = _unit(rng.normal(size=ztxt.shape)).astype(np.float32)
  keep = np.array([1, 1, 0, 1, 1, 0, 1, 1], np.float32)
  t, g = ztxt[keep > 0], zneg[keep > 0]
  want = sum((t[i] @ g[j] - t[j] @ g[i]) ** 2 for i in range(len(t)) for j in range(len(t)))
  got = ncu.relation_loss(ztxt, zneg, keep, relation="paper")
  np.testing.assert_allclose(float(got), want / len(t), rtol=1e-4)


def test_itm_loss_matches_eq5_by_hand():
  zimg, ztxt, zneg = _emb(np.random.default_rng(3), n=5)
  keep = np.array([1, 0, 1, 1, 1], np.float32)
  s = 4.0
  idx = np.flatnonzero(keep)
  want = 0.0
  for i in idx:
    for j in idx:
      m = 1.0 if i == j else -1.0
      want -= log_expit(m * s * ztxt[i] @ zimg[j]) + log_expit(-m * s * zneg[i] @ zimg[j])
  got = ncu.itm_loss(zimg, ztxt, zneg, s, keep)
  np.testing.assert_allclose(float(got), want / len(idx), rtol=1e-5)


def _unlearn_emb(rng, n=8, is_noisy=None):
  zimg, ztxt, zneg = _emb(rng, n=n)
  batch = {} if is_noisy is None else {"is_noisy": is_noisy}
  return Embeddings(
    zimg=jnp.asarray(zimg),
    ztxt=jnp.asarray(ztxt),
    logit_scale=jnp.asarray(10.0),
    batch=batch,
    extras={"zneg": jnp.asarray(zneg)},
  )


def test_masked_plan_has_exactly_zero_mass_on_masked_entries():
  rng = np.random.default_rng(4)
  zimg, ztxt, zneg = _emb(rng, n=10)
  forget = np.zeros(10, bool)
  forget[[2, 5, 9]] = True
  mask, eye = ncu.unlearn_mask(jnp.asarray(forget))
  mask = np.asarray(mask)
  assert not mask[2, 2] and mask[2, 10] and mask[0, 0] and not mask[0, 10]
  np.testing.assert_array_equal(np.asarray(eye).sum(axis=1), np.ones(10))
  cost = 1.0 - np.asarray(ncu.extended_similarity(zimg, ztxt, zneg))
  res = plans.sinkhorn(
    cost,
    np.full(10, 0.1),
    np.full(11, 1.0 / 11),
    epsilon=0.03,
    grad="stop_gradient",
    max_iterations=2000,
    threshold=1e-6,
    mask_nm=mask,
  )
  plan = np.asarray(res.plan)
  assert np.all(plan[~mask] == 0.0)
  assert float(res.marginal_error) < 1e-5
  # Through the method: the logged masked mass is exactly zero.
  method = methods.get("ncu_unlearn", forget_fraction=0.3, max_iterations=200)
  _, aux, _ = method.loss(_unlearn_emb(rng, n=10), {}, None)
  assert float(aux["plan/masked_mass"]) == 0.0
  assert 0.0 < float(aux["plan/neg_mass_forget"]) <= 1.0


def _ce_with_extra_column(emb):
  zimg, ztxt, zneg = (np.asarray(x, np.float64) for x in (emb.zimg, emb.ztxt, emb.extras["zneg"]))
  s = float(emb.logit_scale)
  n = zimg.shape[0]
  ext = s * np.concatenate([zimg @ ztxt.T, np.sum(zimg * zneg, 1, keepdims=True)], axis=1)
  i2t = -np.mean(log_softmax(ext, axis=1)[np.arange(n), np.arange(n)])
  t2i = -np.mean(log_softmax(ext[:, :n], axis=0)[np.arange(n), np.arange(n)])
  return i2t, t2i


def test_p0_gamma0_is_symmetric_infonce_with_the_extra_column():
  emb = _unlearn_emb(np.random.default_rng(5))
  i2t, t2i = _ce_with_extra_column(emb)
  wide = {"alpha": -2.0, "beta": 2.0, "forget_fraction": 0.0, "gamma": 0.0}  # L_sep = 0
  val, aux, _ = methods.get("ncu_unlearn", **wide).loss(emb, {}, None)
  np.testing.assert_allclose(float(aux["loss_sep"]), 0.0, atol=1e-7)
  np.testing.assert_allclose(float(val), i2t + t2i, rtol=1e-5)  # Eq. 11 sums the directions
  # The released code halves it and averages t2v over n + 1 rows, one of them empty.
  val_code, _, _ = methods.get("ncu_unlearn", targets="code", **wide).loss(emb, {}, None)
  n = emb.zimg.shape[0]
  np.testing.assert_allclose(float(val_code), 0.5 * (i2t + t2i * n / (n + 1)), rtol=1e-5)


def test_gamma0_forget_rows_target_their_negative():
  """With γ = 0 the targets are I: forget rows are pulled to their negative (the FP goal)."""
  emb = _unlearn_emb(np.random.default_rng(6))
  forget, _ = ncu.select_forget(emb.zimg, emb.ztxt, emb.logit_scale, 2, confidence="both")
  forget = np.asarray(forget)
  _, eye = ncu.unlearn_mask(jnp.asarray(forget))
  v2t, t2v = ncu.unlearn_targets(None, eye, jnp.zeros(8), targets="paper")
  v2t, t2v = np.asarray(v2t), np.asarray(t2v)
  assert np.all(v2t[forget, 8] == 1.0)
  np.testing.assert_array_equal(v2t[~forget], np.eye(8, 9)[~forget])  # retained: own caption
  np.testing.assert_allclose(t2v[8], forget / forget.sum())  # negative column, normalised
  assert np.all(t2v[np.flatnonzero(forget)] == 0.0)  # forgotten captions: no target
  s = float(emb.logit_scale)
  zimg, ztxt, zneg = (np.asarray(x, np.float64) for x in (emb.zimg, emb.ztxt, emb.extras["zneg"]))
  ext = s * np.concatenate([zimg @ ztxt.T, np.sum(zimg * zneg, 1, keepdims=True)], axis=1)
  lp = log_softmax(ext, axis=1)
  want_v2t = -np.mean(np.where(forget, lp[:, 8], lp[np.arange(8), np.arange(8)]))
  _, aux, _ = methods.get("ncu_unlearn", forget_fraction=0.25, gamma=0.0).loss(emb, {}, None)
  np.testing.assert_allclose(float(aux["loss_v2t"]), want_v2t, rtol=1e-5)


def test_targets_rows_sum_to_one_in_paper_mode_and_not_in_code_mode():
  rng = np.random.default_rng(7)
  n, k, gamma = 8, 3, 0.7
  zimg, ztxt, zneg = _emb(rng, n=n)
  forget = np.zeros(n, bool)
  forget[[0, 3, 6]] = True
  mask, eye = ncu.unlearn_mask(jnp.asarray(forget))
  cost = 1.0 - np.asarray(ncu.extended_similarity(zimg, ztxt, zneg))
  plan = plans.sinkhorn(
    cost,
    None,
    None,
    epsilon=0.05,
    grad="stop_gradient",
    max_iterations=1000,
    threshold=1e-6,
    mask_nm=mask,
  ).plan
  g = jnp.full((n,), gamma)
  v2t, t2v = (np.asarray(x) for x in ncu.unlearn_targets(plan, eye, g, targets="paper"))
  np.testing.assert_allclose(v2t.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(t2v.sum(1), 1.0, rtol=1e-5)
  v2t_c, t2v_c = (np.asarray(x) for x in ncu.unlearn_targets(plan, eye, g, targets="code"))
  np.testing.assert_allclose(v2t_c.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(t2v_c[n].sum(), gamma + (1 - gamma) * k, rtol=1e-5)
  np.testing.assert_allclose(t2v_c[forget.nonzero()[0]].sum(1), gamma, rtol=1e-5)
  assert np.all(v2t[~mask] == 0) and np.all(t2v.T[~mask] == 0)


def test_ga_reduces_to_clip_loss_without_forget_set_or_smoothing():
  from clipjax import losses

  emb = _unlearn_emb(np.random.default_rng(8))
  val, _, _ = methods.get("ncu_ga", forget_fraction=0.0, label_smoothing=0.0).loss(emb, {}, None)
  want, _ = losses.clip_loss(emb.zimg, emb.ztxt, emb.logit_scale)
  np.testing.assert_allclose(float(val), float(want), rtol=1e-5)
  zimg, ztxt, is_noisy = _oracle_batch()
  e2 = Embeddings(jnp.asarray(zimg), jnp.asarray(ztxt), jnp.asarray(20.0), batch={})
  _, aux, _ = methods.get("ncu_ga", forget_fraction=1 / 3).loss(e2, {}, None)
  assert float(aux["loss_forget"]) > float(aux["loss_retained"])  # swapped pairs are the hard ones


def test_ablations_v3_v4_limit_cases():
  """V3 ignores the forget set in the OT problem; V4 keeps hard targets on retained rows."""
  emb = _unlearn_emb(np.random.default_rng(9))
  wide = {"alpha": -2.0, "beta": 2.0, "max_iterations": 500, "threshold": 1e-6}  # L_sep = 0
  # V3 (false negatives only) at P = 25 % has the OT loss of NCU without a forget set.
  _, v3, _ = methods.get(
    "ncu_unlearn", forget_fraction=0.25, unlearn="false_negatives", **wide
  ).loss(emb, {}, None)
  _, p0, _ = methods.get("ncu_unlearn", forget_fraction=0.0, **wide).loss(emb, {}, None)
  _, full, _ = methods.get("ncu_unlearn", forget_fraction=0.25, **wide).loss(emb, {}, None)
  np.testing.assert_allclose(float(v3["loss_otr"]), float(p0["loss_otr"]), rtol=1e-5)
  assert abs(float(full["loss_otr"]) - float(p0["loss_otr"])) > 1e-2  # the forget set matters
  # V4 (false positives only) without a forget set: every row keeps the hard identity target,
  # so γ = 0.7 still gives symmetric InfoNCE with the extra column.
  i2t, t2i = _ce_with_extra_column(emb)
  val, _, _ = methods.get(
    "ncu_unlearn", forget_fraction=0.0, gamma=0.7, unlearn="false_positives", **wide
  ).loss(emb, {}, None)
  np.testing.assert_allclose(float(val), i2t + t2i, rtol=1e-5)
  ncu_p0 = methods.get("ncu_unlearn", forget_fraction=0.0, gamma=0.7, **wide)
  _, soft, _ = ncu_p0.loss(emb, {}, None)
  assert abs(float(soft["loss_otr"]) - (i2t + t2i)) > 1e-2  # NCU's soft targets differ


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="targets"):
    methods.get("ncu_unlearn", targets="nope")
  with pytest.raises(ValueError, match="forget_fraction"):
    methods.get("ncu_hn", forget_fraction=1.5)
  with pytest.raises(ValueError, match="alpha"):
    methods.get("ncu_hn", alpha=0.0, beta=-0.5)


@pytest.fixture(scope="module")
def tiny():
  model = model_lib.create("tiny", jax.random.key(0), **{"vision.image_size": 16})
  rng = np.random.default_rng(0)
  ids = np.zeros((8, 77), np.int32)
  ids[:, 0] = 49406
  ids[:, 1:5] = rng.integers(1, 400, size=(8, 4))
  ids[:, 5] = 49407
  batch = {
    "image": rng.uniform(size=(8, 16, 16, 3)).astype(np.float32),
    "ids": ids,
    "is_noisy": np.array([0, 1, 0, 0, 1, 0, 0, 0], bool),
  }
  return model, batch


def _one_step(model, params, batch, method, frozen):
  tx = optax.adam(1e-2)
  state = TrainState(np.int32(0), params, tx.init(params), {}, jax.random.PRNGKey(0))
  new, metrics = train_step(
    state,
    batch,
    model=model,
    method=method,
    tx=tx,
    schedule=lambda s: 1e-2,
    trainable=optim.trainable_mask(params, frozen),
  )
  return new.params, metrics


def _ncu_config(arg):
  sys.path.insert(0, REPO)
  from configs import ncu as ncu_config

  return ncu_config, ncu_config.get_config(arg)


def _trainable(params, frozen):
  mask = dict(tree.flatten_with_names(optim.trainable_mask(params, frozen)))
  return {name for name, keep in mask.items() if keep}


def _fake_params(text_layers):
  """A params tree with the tiny model's leaf names and `text_layers` text blocks."""
  names = tree.names(model_lib.create("tiny", jax.random.key(0)).params)
  flat = {n: 0 for n in names if not n.startswith("text/blocks/")}
  block = [n.split("/", 3)[3] for n in names if n.startswith("text/blocks/0/")]
  flat.update({f"text/blocks/{i}/{leaf}": 0 for i in range(text_layers) for leaf in block})
  flat["method/prompts"] = 0
  return tree.unflatten_names(flat)


@pytest.mark.parametrize("code", [False, True])
@pytest.mark.parametrize("layers", [2, 12])
def test_config_trainable_sets_by_path(code, layers):
  ncu_config, c = _ncu_config(f"layers={layers},code_defaults={code}")
  params = _fake_params(layers)
  names = set(tree.names(params))
  text = {n for n in names if n.startswith("text/")}
  hn, ul = (_trainable(params, s["frozen"]) for s in c.stages)
  # Stage 1: prompts + text tower, visual encoder frozen; the code adds the image projection
  # and logit_scale (outside its `model.visual`).
  extra = {"visual/proj", "logit_scale"} if code else set()
  assert hn == {"method/prompts"} | text | extra
  # Stage 2: everything but the prompts; the code also freezes the text positional embedding
  # and blocks 0-4 of 12 (round(5L/12) of L: 1 of 2).
  lower = set()
  if code:
    k = {2: 1, 12: 5}[layers]
    assert ncu_config.code_frozen_blocks(layers) == k
    lower = {"text/positional_embedding"}
    lower |= {n for n in text if any(n.startswith(f"text/blocks/{i}/") for i in range(k))}
  assert ul == names - {"method/prompts"} - lower
  assert c.stages[1]["fresh_optimizer"] == code
  assert c.stages[1]["method"]["kwargs"]["forget_count"] == ("floor" if code else "round")


def test_config_takes_the_architecture_from_init(tmp_path):
  """`init=` a workdir of another size: model, sizes and tokenizer are the checkpoint's, and the
  code's stage-2 frozen blocks are counted on its text tower (6 blocks: 0-2), not `layers`."""
  from clipjax import runs

  overrides = {"embed_dim": 32, "text": {"layers": 6, "width": 32, "heads": 2, "mlp_dim": 64}}
  model = model_lib.create("tiny", jax.random.key(0), **model_lib.flatten_overrides(overrides))
  cfg = {
    "model": {"name": "tiny", "overrides": overrides},
    "data": {"image_size": 24, "context_length": 12, "tokenizer": "clipjax:worlds"},
  }
  init = runs.save_params_workdir(model.params, cfg, str(tmp_path / "init"))
  _, c = _ncu_config(f"init={init},layers=2,code_defaults=True")
  assert c.model.init_checkpoint == init
  assert c.model.overrides.to_dict() == overrides
  assert (c.data.image_size, c.data.context_length, c.data.tokenizer) == (24, 12, "clipjax:worlds")
  frozen = [r for r in c.stages[1]["frozen"] if r.startswith("text/blocks/")]
  assert frozen == [f"text/blocks/{i}/.*" for i in range(3)]
  # The pre-training variant keeps its own architecture.
  _, pre = _ncu_config(f"variant=pretrain,init={init}")
  assert pre.model.overrides.text.layers == 2 and pre.data.image_size == 32


def test_code_frozen_block_mapping():
  ncu_config, _ = _ncu_config("")
  got = [ncu_config.code_frozen_blocks(layers) for layers in (1, 2, 4, 6, 8, 12, 24)]
  assert got == [0, 1, 2, 3, 3, 5, 10]  # round(5L/12), halves up


def test_forget_count_rules():
  assert ncu.num_forget(0.1, 128, "floor") == 12  # the code's int(12.8)
  assert ncu.num_forget(0.1, 128, "round") == 13
  assert ncu.num_forget(0.4, 10, "floor") == ncu.num_forget(0.4, 10, "round") == 4
  with pytest.raises(ValueError, match="forget_count"):
    methods.get("ncu_ga", forget_count="ceil")


@pytest.mark.parametrize("code", [False, True])
def test_stage_switch_freezes_exactly_the_configured_parameters(tiny, code):
  model, batch = tiny
  _, c = _ncu_config(f"smoke,code_defaults={code}")
  hn = methods.get("ncu_hn", num_prompts=2, forget_fraction=0.25)
  ul = methods.get("ncu_unlearn", num_prompts=2, forget_fraction=0.25)
  params = dict(model.params, method=hn.init_params(model, jax.random.key(1)))
  assert params["method"]["prompts"].shape == (2, model.config.text.width)
  names = tree.names(params)
  for method, stage in zip((hn, ul), c.stages, strict=True):
    frozen = stage["frozen"]
    new, metrics = _one_step(model, params, batch, method, frozen)
    assert np.isfinite(float(metrics["loss"]))
    trainable = _trainable(params, frozen)
    before, after = dict(tree.flatten_with_names(params)), dict(tree.flatten_with_names(new))
    for name in names:
      same = np.array_equal(np.asarray(before[name]), np.asarray(after[name]))
      if name not in trainable:
        assert same, f"{name} is frozen but changed"
      elif name != "logit_scale" and "bias" not in name:
        assert not same, f"{name} is trainable but did not change"


def test_stage1_eq5_retain_term_trains_the_text_tower(tiny):
  """The first term of Eq. 5 ("retain the original CLIP knowledge") has a text-tower gradient."""
  model, batch = tiny
  hn = methods.get("ncu_hn", num_prompts=2, forget_fraction=0.25)
  params = dict(model.params, method=hn.init_params(model, jax.random.key(1)))
  n = batch["ids"].shape[0]
  m_nn = 2.0 * jnp.eye(n) - 1.0

  def retain_term(p):
    emb = hn.forward(model, p, batch, jax.random.key(0))
    logits = emb.logit_scale * emb.ztxt @ emb.zimg.T
    return -jnp.sum(jax.nn.log_sigmoid(m_nn * logits)) / n

  grads = dict(tree.flatten_with_names(jax.grad(retain_term)(params)))
  assert float(jnp.max(jnp.abs(grads["method/prompts"]))) == 0.0  # the prompts cannot help it

  def text_grad_norm(frozen):
    keep = _trainable(params, frozen)
    return sum(
      float(jnp.sum(g**2)) for k, g in grads.items() if k.startswith("text/") and k in keep
    )

  for code in (False, True):
    _, c = _ncu_config(f"smoke,code_defaults={code}")
    assert text_grad_norm(c.stages[0]["frozen"]) > 0.0
  # The former paper setting (only the prompts train) left this term without any gradient.
  assert text_grad_norm([r"visual/.*", r"text/.*", r"logit_scale"]) == 0.0


def test_fresh_opt_state_restarts_adam_but_not_the_schedule():
  params = {"w": jnp.ones((3,)), "b": jnp.zeros(())}
  _, c = _ncu_config("smoke")
  tx = optim.make_optimizer(c.optim, params, 20)
  state = tx.init(params)
  for _ in range(5):
    _, state = tx.update({"w": jnp.full((3,), 0.5), "b": jnp.ones(())}, state, params)
  fresh = optim.fresh_opt_state(tx, state, params)
  sched = [x for x in jax.tree.leaves(fresh, is_leaf=_is_sched) if _is_sched(x)]
  adam = [x for x in jax.tree.leaves(fresh, is_leaf=_is_adam) if _is_adam(x)]
  assert len(sched) == 1 and int(sched[0].count) == 5
  assert len(adam) == 1 and int(adam[0].count) == 0
  assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves((adam[0].mu, adam[0].nu)))
  old_adam = [x for x in jax.tree.leaves(state, is_leaf=_is_adam) if _is_adam(x)][0]
  assert int(old_adam.count) == 5 and float(jnp.max(jnp.abs(old_adam.mu["w"]))) > 0


def _is_sched(x):
  return isinstance(x, optax.ScaleByScheduleState)


def _is_adam(x):
  return isinstance(x, optax.ScaleByAdamState)


@pytest.mark.parametrize("code", [False, True])
def test_smoke_config_runs_both_stages(tmp_path, monkeypatch, code):
  ncu_config, c = _ncu_config(f"smoke,code_defaults={code}")
  c.eval.datasets = {}  # evaluation is covered by the trainer's tests; keep this one short
  assert [s["name"] for s in c.stages] == ["hn", "unlearn"]
  resets, real = [], optim.fresh_opt_state

  def fresh(*args):
    resets.append(1)  # traced once if the loop restarts the optimizer at stage 2
    return real(*args)

  monkeypatch.setattr(optim, "fresh_opt_state", fresh)
  summary = train_task.run(c, str(tmp_path))
  assert len(resets) == (1 if code else 0)
  assert summary["finished"]
  events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [e for e in events if e.get("kind") == "train"]
  assert [e["stage"] for e in train] == ["hn", "hn", "unlearn", "unlearn"]
  assert all("forget/precision" in e for e in train)
  assert "loss_itm" in train[0] and "plan/masked_mass" in train[-1]
  assert train[-1]["plan/masked_mass"] == 0.0
  for variant in ("ga", "v3", "v4", "clip", "pretrain"):
    assert ncu_config.get_config(f"smoke,variant={variant}").total_steps == 4


def _official_sinkhorn(p, q, cost, mask, reg, niter=100, tol=1e-4):
  """The released code's log-domain loop in float64: a row then a column update per iteration,
  stopping when Σ|Δu| < tol (u in cost units) or after `niter` iterations."""
  u, v = np.zeros_like(p), np.zeros_like(q)

  def log_plan(u, v):
    return np.where(mask, (u[:, None] + v[None, :] - cost) / reg, -1e6)

  for _ in range(niter):
    u_prev = u
    u = reg * (np.log(p) - logsumexp(log_plan(u, v), axis=1)) + u
    v = reg * (np.log(q) - logsumexp(log_plan(u, v), axis=0)) + v
    if np.sum(np.abs(u - u_prev)) < tol:
      break
  return np.exp(log_plan(u, v))


@pytest.mark.parametrize("pos_cos", [0.3, 0.8])  # CLIP-like / well-separated batches
def test_code_mode_plan_matches_the_official_100_iteration_accuracy(pos_cos):
  _, c = _ncu_config("code_defaults=True")
  kw = dict(c.stages[1]["method"]["kwargs"])
  n, d = c.data.batch_size, 64
  rng = np.random.default_rng(0)
  zimg = _unit(rng.normal(size=(n, d)))
  k = pos_cos / np.sqrt(1.0 - pos_cos**2)
  ztxt = _unit(k * zimg + rng.normal(size=(n, d)) / np.sqrt(d))
  noisy = rng.choice(n, n // 5, replace=False)
  ztxt[noisy] = ztxt[np.roll(noisy, 1)]
  zneg = _unit(-0.5 * ztxt + rng.normal(size=(n, d)) / np.sqrt(d))
  zimg, ztxt, zneg = (x.astype(np.float32) for x in (zimg, ztxt, zneg))
  emb = Embeddings(zimg=zimg, ztxt=ztxt, logit_scale=jnp.float32(100.0), extras={"zneg": zneg})
  method = methods.get("ncu_unlearn", **kw)
  _, aux, _ = method.loss(emb, {}, None)
  # The official plan on the same problem: same forget set, cost / max, uniform marginals.
  k_fg = ncu.num_forget(kw["forget_fraction"], n, kw["forget_count"])
  forget, _ = ncu.select_forget(zimg, ztxt, 100.0, k_fg, confidence=kw["confidence"])
  mask, _ = ncu.unlearn_mask(forget)
  mask = np.asarray(mask)
  sim = np.asarray(ncu.extended_similarity(zimg, ztxt, zneg), np.float64)
  cost = (1.0 - sim) / np.max(1.0 - sim)
  p, q = np.full(n, 1.0 / n), np.full(n + 1, 1.0 / (n + 1))
  plan = _official_sinkhorn(p, q, cost, mask, kw["epsilon"])
  official = np.abs(plan.sum(1) - p).sum() + np.abs(plan.sum(0) - q).sum()
  ours = float(aux["ot/marginal_error"])
  assert ours <= 1.25 * official, (ours, official)
  assert ours >= 0.2 * official, (ours, official)  # as accurate, not a different solver budget
  if pos_cos == 0.3:
    # The official loop stops on its own rule here, far below the paper mode's 1e-3.
    assert official < 0.1 * 1e-3 and int(aux["ot/n_iters"]) < 100


def test_config_prompts_captions_is_the_reference_bases_evaluation():
  """prompts=captions evaluates as configs/base.py does (caption prompts, posterior rule), so a
  grid's base row and its fine-tunes share one protocol; anything else is refused."""
  from clipjax import config_lib

  _, default = _ncu_config("")
  _, cap = _ncu_config("prompts=captions")
  recipe = config_lib.apply_shapes_recipe(config_lib.train_config())
  assert "label_templates" not in default.eval.datasets.clean_test
  assert default.eval.zeroshot_ensemble == "mean"
  assert cap.eval.datasets.clean_test.to_dict() == recipe.eval.datasets.shapes_test.to_dict()
  assert cap.eval.zeroshot_ensemble == recipe.eval.zeroshot_ensemble == "posterior"
  with pytest.raises(ValueError, match="prompts"):
    _ncu_config("prompts=rich")
