"""Attack tests: ε-ball/box invariants, analytic worst cases on linear models, orderings."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import attacks

H, W, C = 4, 4, 3
D = H * W * C


def rng(seed):
  return np.random.default_rng(seed)


def key(seed):
  # rbg keys: threefry's PRNG kernels take ~1-2 s each to compile on CPU.
  return jax.random.key(seed, impl="rbg")


def linear_logits(w_dk):
  return lambda x_bhwc: x_bhwc.reshape(x_bhwc.shape[0], D) @ w_dk


def mlp_logits(seed, n_classes=5, hidden=16):
  w1 = jnp.asarray(rng(seed).normal(size=(D, hidden)) * 1.5, jnp.float32)
  w2 = jnp.asarray(rng(seed + 1000).normal(size=(hidden, n_classes)), jnp.float32)
  return lambda x_bhwc: jnp.tanh(x_bhwc.reshape(x_bhwc.shape[0], D) @ w1 - 0.5) @ w2


def ce_only(logits_fn):
  objective = attacks.ce_objective(logits_fn)
  return lambda x, y: objective(x, y)[0]


def margin_only(logits_fn):
  objective = attacks.margin_objective(logits_fn)
  return lambda x, y: objective(x, y)[0]


def interior_images(seed, b):
  return jnp.asarray(rng(seed).uniform(0.3, 0.7, (b, H, W, C)), jnp.float32)


def images(seed, b):
  return jnp.asarray(rng(seed).uniform(0.0, 1.0, (b, H, W, C)), jnp.float32)


def normal(seed, shape):
  return jnp.asarray(rng(seed).normal(size=shape), jnp.float32)


# Shared models and objectives: attacks are jitted with the objective as a static argument, so
# reusing the same function objects (and batch shapes) across tests reuses compilations.
B = 8
MLP = mlp_logits(13)
MLP_CE = attacks.ce_objective(MLP)
MLP_CE_LOSS = ce_only(MLP)
W2 = normal(3, (D, 2))
LIN2_MARGIN = margin_only(linear_logits(W2))


def all_attacks(eps, norm):
  return {
    "fgsm": functools.partial(attacks.fgsm, eps=eps, norm=norm),
    "pgd": functools.partial(attacks.pgd, eps=eps, step_size=eps / 3, steps=7, norm=norm),
    "mim": functools.partial(attacks.mim, eps=eps, step_size=eps / 3, steps=7, norm=norm),
    "apgd": functools.partial(attacks.apgd, eps=eps, steps=12, norm=norm),
  }


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_perturbation_in_ball_and_box(norm):
  x = images(0, B)
  x = x.at[0].set(0.0).at[1].set(1.0)
  y = jnp.arange(B) % 5
  eps = 0.3 if norm == "linf" else 2.0
  for name, attack in all_attacks(eps, norm).items():
    x_adv = attack(MLP_CE, x, y, key=key(2))
    delta = np.asarray(x_adv - x).reshape(B, -1)
    assert np.all(np.asarray(x_adv) >= 0.0) and np.all(np.asarray(x_adv) <= 1.0), name
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= eps * (1 + 1e-6) + 1e-6), (name, size)
    assert np.any(size > 0.5 * eps), name


def test_linf_linear_two_class_reaches_analytic_worst_case():
  """Margin z_1 − z_0 under ℓ∞ rises by exactly ε‖w_1 − w_0‖₁ (interior points)."""
  x = interior_images(4, B)
  y = jnp.zeros(B, jnp.int32)
  eps = 0.05
  objective = LIN2_MARGIN
  expected = objective(x, y) + eps * jnp.sum(jnp.abs(W2[:, 1] - W2[:, 0]))
  for name, attack in all_attacks(eps, "linf").items():
    got = objective(attack(objective, x, y, key=key(5)), y)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)


def test_l2_linear_two_class_reaches_analytic_worst_case():
  x = interior_images(7, B)
  y = jnp.ones(B, jnp.int32)
  eps = 0.1
  objective = LIN2_MARGIN
  expected = objective(x, y) + eps * jnp.linalg.norm(W2[:, 0] - W2[:, 1])
  one_step = attacks.fgsm(objective, x, y, eps=eps, norm="l2")
  np.testing.assert_allclose(objective(one_step, y), expected, rtol=1e-5, atol=1e-5)
  x_pgd = attacks.pgd(objective, x, y, eps=eps, step_size=eps / 2, steps=30, norm="l2", key=key(8))
  np.testing.assert_allclose(objective(x_pgd, y), expected, rtol=1e-3, atol=1e-3)


def test_no_attack_exceeds_multiclass_analytic_bound():
  """max_j (w_j − w_y)·x + ε‖w_j − w_y‖₁ bounds the CW margin; PGD from several starts hits it."""
  n_classes = 6
  w_dk = normal(9, (D, n_classes))
  logits_fn = linear_logits(w_dk)
  x = interior_images(10, 8)
  y = jnp.arange(8) % n_classes
  eps = 0.03
  objective = margin_only(logits_fn)
  diff_bdk = w_dk[None] - w_dk.T[y][:, :, None]
  bound = jnp.max(
    jnp.where(
      jax.nn.one_hot(y, n_classes, dtype=bool),
      -jnp.inf,
      jnp.einsum("bd,bdk->bk", x.reshape(8, D), diff_bdk) + eps * jnp.abs(diff_bdk).sum(1),
    ),
    axis=1,
  )
  for name, attack in all_attacks(eps, "linf").items():
    got = objective(attack(objective, x, y, key=key(11)), y)
    assert np.all(np.asarray(got) <= np.asarray(bound) + 1e-4), name
    if name == "apgd":
      np.testing.assert_allclose(got, bound, rtol=1e-4, atol=1e-4)


def test_pgd_beats_fgsm_and_apgd_beats_pgd_on_mlp():
  x = images(14, B)
  y = jnp.argmax(MLP(x), axis=1)
  eps = 16 / 255
  objective = MLP_CE_LOSS
  loss_fgsm = objective(attacks.fgsm(objective, x, y, eps=eps), y).mean()
  loss_pgd = objective(
    attacks.pgd(objective, x, y, eps=eps, step_size=eps / 4, steps=7, key=key(15)), y
  ).mean()
  loss_apgd = objective(attacks.apgd(objective, x, y, eps=eps, steps=12, key=key(16)), y).mean()
  assert loss_fgsm > objective(x, y).mean()
  assert loss_pgd >= loss_fgsm
  assert loss_apgd >= loss_pgd


def test_margin_loss_moves_where_ce_on_scaled_logits_saturates():
  """Logits 100·w_k·(x − 0.3) with a gap > 104 at x: softmax's other-class mass e^-gap underflows
  to 0 in float32, so the CE gradient is exactly 0 and PGD (no random start) cannot move; the CW
  margin's gradient is w_j − w_y and PGD reaches the analytic worst case of the linear margin."""
  w_dk = np.zeros((D, 2), np.float32)
  w_dk[:, 0] = 0.06
  w_dk[:, 1] = -0.06
  logits_fn = lambda x: 100.0 * linear_logits(jnp.asarray(w_dk))(x - 0.3)
  x = jnp.full((2, H, W, C), 0.5, jnp.float32)
  y = jnp.zeros((2,), jnp.int32)
  gap = float(logits_fn(x)[0, 0] - logits_fn(x)[0, 1])
  assert gap > 104
  ce = attacks.ce_objective(logits_fn)
  margin = attacks.margin_objective(logits_fn)
  grad_ce = jax.grad(lambda z: ce(z, y)[0].sum())(x)
  assert float(jnp.max(jnp.abs(grad_ce))) == 0.0
  eps = 0.4
  kw = dict(eps=eps, step_size=0.1, steps=5, random_start=False)
  np.testing.assert_array_equal(attacks.pgd(ce, x, y, **kw), x)
  x_adv = attacks.pgd(margin, x, y, **kw)
  # The worst case of a linear margin over the ε-ball: every pixel moved by ε against w_0 − w_1.
  np.testing.assert_allclose(x_adv, x - eps, atol=1e-6)
  assert bool(jnp.all(jnp.argmax(logits_fn(x_adv), axis=1) == 1))


def test_zero_margin_model_is_always_broken():
  """Clean points on the decision boundary (tie, argmax picks the label) fall to any attack."""
  w_dk = normal(17, (D, 3))
  w_dk = w_dk.at[:, 1].set(w_dk[:, 0] + 0.5 * normal(18, (D,)))
  x = interior_images(19, 4)
  offset_bk = linear_logits(w_dk)(x) - jnp.array([[0.0, 0.0, -10.0]])
  logits_fn = lambda z: linear_logits(w_dk)(z) - offset_bk
  y = jnp.zeros(4, jnp.int32)
  assert np.all(np.asarray(jnp.argmax(logits_fn(x), axis=1)) == 0)
  eps = 1e-2
  objective = attacks.ce_objective(logits_fn)
  for name, attack in all_attacks(eps, "linf").items():
    if name == "mim":
      continue
    x_adv = attack(objective, x, y, key=key(20))
    assert np.all(np.asarray(jnp.argmax(logits_fn(x_adv), axis=1)) != 0), name
  x_adv = attacks.apgd(attacks.dlr_objective(logits_fn), x, y, eps=eps, steps=12, key=key(21))
  assert np.all(np.asarray(jnp.argmax(logits_fn(x_adv), axis=1)) != 0)


def test_targeted_pgd_reaches_target():
  n_classes = 5
  w_dk = normal(21, (D, n_classes))
  logits_fn = linear_logits(w_dk)
  x = interior_images(22, 10)
  target = (jnp.argmax(logits_fn(x), axis=1) + 1) % n_classes
  objective = attacks.ce_objective(logits_fn, targeted=True)
  x_adv = attacks.pgd(objective, x, target, eps=0.3, step_size=0.05, steps=20, key=key(23))
  np.testing.assert_array_equal(jnp.argmax(logits_fn(x_adv), axis=1), target)
  assert np.all(np.asarray(objective(x_adv, target)[1]))


def test_apgd_targeted_breaks_weak_model():
  logits_fn = mlp_logits(24, n_classes=6)
  x = images(25, 8)
  y = jnp.argmax(logits_fn(x), axis=1)
  x_adv = attacks.apgd_targeted(
    logits_fn, x, y, eps=0.25, steps=10, key=key(26), n_target_classes=3
  )
  assert np.abs(np.asarray(x_adv - x)).max() <= 0.25 + 1e-6
  assert np.all(np.asarray(jnp.argmax(logits_fn(x_adv), axis=1)) != np.asarray(y))


def test_apgd_checkpoints_follow_paper():
  """w_j = ⌈p_j N⌉ with p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
  p, prev, expected = 0.22, 0.0, []
  while np.ceil(p * 100 - 1e-9) <= 100:
    expected.append(int(np.ceil(p * 100 - 1e-9)) - 1)
    p, prev = p + max(p - prev - 0.03, 0.06), p
  got = [it for it, _ in attacks.apgd_checkpoints(100)]
  assert got == expected


def test_eot_of_deterministic_objective_equals_plain():
  x = images(28, B)
  y = jnp.arange(B) % 5
  plain = MLP_CE
  stochastic = attacks.eot(lambda z, labels, key: plain(z, labels), draws=3)
  kw = dict(eps=0.05, step_size=0.01, steps=7, key=key(29))
  np.testing.assert_array_equal(attacks.pgd(plain, x, y, **kw), attacks.pgd(stochastic, x, y, **kw))
  np.testing.assert_array_equal(
    attacks.apgd(plain, x, y, eps=0.05, steps=12, key=key(30)),
    attacks.apgd(stochastic, x, y, eps=0.05, steps=12, key=key(30)),
  )


def test_eot_averages_random_draws():
  """Loss w·(x + noise) has gradient w for every draw; the EOT loss is the mean over draws."""
  w_d = normal(31, (D,))

  def noisy(x_bhwc, labels, key):
    noise = jax.random.normal(key, x_bhwc.shape)
    return (x_bhwc + noise).reshape(x_bhwc.shape[0], D) @ w_d

  x = interior_images(32, 2)
  averaged = attacks.eot(noisy, draws=5)
  k = key(33)
  expected = jnp.mean(jnp.stack([noisy(x, None, kr) for kr in jax.random.split(k, 5)]), axis=0)
  np.testing.assert_allclose(averaged.fn(x, None, k), expected, rtol=1e-5)
  grad = jax.grad(lambda z: averaged.fn(z, None, k).sum())(x)
  np.testing.assert_allclose(grad.reshape(2, D), jnp.broadcast_to(w_d, (2, D)), rtol=1e-5)
  with pytest.raises(ValueError, match="key"):
    attacks.fgsm(averaged, x, None, eps=0.1)


def _wide_noisy_objective(hidden):
  """A randomised objective whose per-draw residuals ([b, hidden] activations) dominate memory."""
  w1 = normal(40, (D, hidden)) / np.sqrt(D)
  w2 = normal(41, (hidden, 5))

  def draw(x_bhwc, labels, key):
    noise = 0.1 * jax.random.normal(key, x_bhwc.shape)
    h = jnp.tanh((x_bhwc + noise).reshape(x_bhwc.shape[0], D) @ w1)
    logits = jnp.tanh(h) @ w2
    return attacks.ce_objective(lambda _: logits)(x_bhwc, labels)

  return draw


def test_eot_gradient_memory_does_not_grow_with_draws():
  """Compiled temp memory of one EOT gradient: equal for 2 and 16 draws (one draw live at a time),
  while differentiating the lax.map average directly grows with the draws."""
  from clipjax.attacks import core

  draw = _wide_noisy_objective(hidden=4096)
  x = images(42, 32)
  y = jnp.arange(32) % 5
  k = key(43)

  def temp_bytes(fn):
    return jax.jit(fn).lower(x).compile().memory_analysis().temp_size_in_bytes

  def accumulated(r):
    return temp_bytes(lambda z: core.evaluate(attacks.eot(draw, r), z, y, k))

  def through_map(r):
    return temp_bytes(lambda z: jax.grad(lambda v: attacks.eot(draw, r).fn(v, y, k)[0].sum())(z))

  one_draw_activation = 32 * 4096 * 4
  assert abs(accumulated(16) - accumulated(2)) < one_draw_activation // 8
  assert through_map(16) - through_map(2) > 10 * one_draw_activation  # the old behaviour


def test_eot_accumulated_gradient_equals_mean_over_draws():
  draw = _wide_noisy_objective(hidden=32)
  x = images(44, B)
  y = jnp.arange(B) % 5
  k = key(45)
  objective = attacks.eot(draw, 6)
  loss, success, grad = attacks.eot_value_and_grad(objective, x, y, k)
  ref_grad = jax.grad(lambda z: objective.fn(z, y, k)[0].sum())(x)
  ref_loss, ref_success = objective.fn(x, y, k)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  np.testing.assert_array_equal(success, ref_success)
  # ... and is the plain mean of the per-draw gradients.
  per_draw = [
    jax.grad(lambda z, kr=kr: draw(z, y, kr)[0].sum())(x) for kr in jax.random.split(k, 6)
  ]
  np.testing.assert_allclose(grad, jnp.mean(jnp.stack(per_draw), 0), rtol=1e-5, atol=1e-7)


def test_bpda_straight_through():
  f = attacks.bpda(lambda x: jnp.round(x * 4) / 4)
  x = jnp.array([0.1, 0.4, 0.9])
  np.testing.assert_allclose(f(x), jnp.array([0.0, 0.5, 1.0]))
  np.testing.assert_allclose(jax.grad(lambda z: f(z).sum())(x), jnp.ones(3))


def test_attacks_jit_without_recompiling():
  objective = MLP_CE
  traces = []

  def run(x, y, key):
    traces.append(1)
    return attacks.pgd(objective, x, y, eps=0.03, step_size=0.01, steps=7, key=key)

  jitted = jax.jit(run)
  x = images(35, B)
  y = jnp.arange(B) % 5
  out1 = jitted(x, y, key(36))
  jitted(x * 0.5, y, key(37))
  assert len(traces) == 1
  np.testing.assert_allclose(out1, run(x, y, key(36)), atol=1e-6)


def test_registry_specs_and_errors():
  logits_fn = mlp_logits(38)
  attack, spec = attacks.build_attack(
    {"name": "pgd", "eps": 0.03, "step_size": 0.01, "steps": 2, "restarts": 2}, logits_fn
  )
  assert spec == {
    "name": "pgd",
    "eps": 0.03,
    "step_size": 0.01,
    "steps": 2,
    "norm": "linf",
    "loss": "ce",
    "random_start": True,
    "restarts": 2,
    "eot_draws": 1,
  }
  x = images(39, 3)
  x_adv = attack(x, jnp.arange(3), key(40))
  assert np.abs(np.asarray(x_adv - x)).max() <= 0.03 + 1e-6
  specs = {
    "fgsm": {"eps": 0.1, "norm": "l2"},
    "mim": {"eps": 0.1, "step_size": 0.02, "steps": 3, "loss": "margin"},
    "apgd-ce": {"eps": 0.1, "steps": 5},
    "apgd-dlr": {"eps": 0.1, "steps": 5, "restarts": 2},
    "apgd-t": {"eps": 0.1, "steps": 5, "n_target_classes": 2},
  }
  for name, fields in specs.items():  # tracing (no compilation) catches wiring errors
    attack, _ = attacks.build_attack({"name": name, **fields}, MLP)
    out = jax.eval_shape(attack, x, jnp.arange(3), key(41))
    assert out.shape == x.shape, name
  with pytest.raises(ValueError, match="unknown attack 'cw'"):
    attacks.build_attack({"name": "cw", "eps": 0.1}, logits_fn)
  with pytest.raises(ValueError, match=r"missing required fields \['steps'\]"):
    attacks.build_attack({"name": "pgd", "eps": 0.1, "step_size": 0.1}, logits_fn)
  with pytest.raises(ValueError, match="unknown fields"):
    attacks.build_attack({"name": "fgsm", "eps": 0.1, "stepz": 1}, logits_fn)
  with pytest.raises(ValueError, match="eps must be >= 0"):
    attacks.build_attack({"name": "fgsm", "eps": -0.1}, logits_fn)
  with pytest.raises(ValueError, match="norm"):
    attacks.build_attack({"name": "fgsm", "eps": 0.1, "norm": "l1"}, logits_fn)


def test_compact_attack_strings():
  specs = attacks.parse_attacks(
    " pgd:eps=4/255,steps=10 ; apgd-ce:eps=4/255;fgsm:eps=1/255,label=f1 "
  )
  assert specs == [
    {
      "name": "pgd",
      "eps": 4 / 255,
      "steps": 10,
      "step_size": 2.5 * (4 / 255) / 10,
      "label": "pgd10@4",
    },
    {"name": "apgd-ce", "eps": 4 / 255, "label": "apgd-ce100@4"},
    {"name": "fgsm", "eps": 1 / 255, "label": "f1"},
  ]
  specs = attacks.parse_attacks("mim:eps=0.5/255,steps=3,step_size=0.1/255,norm=l2")
  assert specs[0]["norm"] == "l2" and specs[0]["step_size"] == pytest.approx(0.1 / 255)
  assert attacks.parse_attacks("") == attacks.parse_attacks("none") == []
  assert attacks.parse_attacks("square:eps=0.1,n_queries=20,restarts=2")[0]["n_queries"] == 20
  errors = {
    "pgd:eps=4/255": r"attack 1 'pgd:eps=4/255'.*missing required fields \['step_size', 'steps'\]",
    "fgsm:eps=1/255;cw:eps=1": r"attack 2 'cw:eps=1'.*unknown attack 'cw'",
    "fgsm:eps": r"'eps' is not key=value",
    "fgsm:eps=1/0": r"cannot read value '1/0'",
    "fgsm:eps=1,eps=2": "given twice",
    "pgd:eps=1,steps=0": "steps must be >= 1",
    "fgsm:eps=1;fgsm:eps=1": "labels must be unique",
  }
  for text, match in errors.items():
    with pytest.raises(ValueError, match=match):
      attacks.parse_attacks(text)


def test_more_steps_never_repair_an_example():
  """Gradient-masking check: with success tracking, PGD's broken set only grows with steps."""
  x = images(41, B)
  y = jnp.argmax(MLP(x), axis=1)
  eps = 0.06
  broken = []
  for steps in (1, 3, 7):
    x_adv = attacks.pgd(MLP_CE, x, y, eps=eps, step_size=eps / 3, steps=steps, key=key(42))
    broken.append(np.asarray(jnp.argmax(MLP(x_adv), axis=1) != y))
  assert np.all(broken[0] <= broken[1]) and np.all(broken[1] <= broken[2])
  assert broken[0].sum() < broken[2].sum() < B
