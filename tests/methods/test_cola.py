"""COLA: limit cases (zero-shot), projection, invariances, entropy weights vs POT, views, smoke."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest

from clipjax.methods import cola

D = 12
# Every test uses the same shapes (K=4 classes, M=3 descriptions, N=5 views, B=2 images) and the
# jitted functions below, so compilations are shared across tests (eager op-by-op execution of
# the Sinkhorn loops and vmaps was most of this file's CPU time).
K, M, N, B = 4, 3, 5, 2
SCORES = jax.jit(cola.cola_scores, static_argnames="cfg")
VIEWS = jax.jit(cola.make_views, static_argnames="cfg")
PROJECT = jax.jit(cola.project)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _setup(k=K, m=M, n=N, b=B, seed=0):
  rng = np.random.default_rng(seed)
  z_kmd = _unit(rng.normal(size=(k, m, D))).astype(np.float32)
  x_bnd = _unit(rng.normal(size=(b, n, D))).astype(np.float32)
  return z_kmd, x_bnd


def _cfg(**kw):
  base = dict(num_views=1, num_components=256, projection=False, marginals="uniform", num_iters=50)
  return cola.ColaConfig(**{**base, **kw})


def test_reduces_to_zero_shot_with_one_view_one_template():
  z_kmd, x_bnd = _setup(n=1)
  # One template per class: descriptions 1..M-1 are masked out (padding must change nothing).
  mask_km = np.zeros((K, M), bool)
  mask_km[:, 0] = True
  text = cola.build_text(z_kmd, mask_km, 256)
  expect_bk = 100.0 * np.einsum("bd,kd->bk", x_bnd[:, 0], z_kmd[:, 0])
  for marginals in ("uniform", "entropy"):
    out = SCORES(jnp.asarray(x_bnd), text, _cfg(marginals=marginals))
    np.testing.assert_allclose(out.scores_bk, expect_bk, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.argmax(out.scores_bk, 1), np.argmax(expect_bk, 1))


def test_projection_idempotent_and_fixes_text_features():
  z_kmd, x_bnd = _setup(k=3, m=2)  # 6 features in R^12: C = 6 covers their span
  text = cola.build_text(z_kmd, None, 256)
  assert text.basis_dc.shape == (D, 6)
  np.testing.assert_allclose(text.basis_dc.T @ text.basis_dc, np.eye(6), atol=1e-5)
  z_fd = jnp.asarray(z_kmd.reshape(-1, D))
  x_nd = jnp.asarray(x_bnd.reshape(-1, D))  # 10 rows, as many as z_fd plus 4
  np.testing.assert_allclose(PROJECT(z_fd, text.basis_dc), z_fd, atol=1e-5)
  px = PROJECT(x_nd, text.basis_dc)
  np.testing.assert_allclose(PROJECT(px, text.basis_dc), px, atol=1e-5)
  # The residual is orthogonal to every text feature.
  np.testing.assert_allclose((x_nd - px) @ z_fd.T, 0.0, atol=1e-5)
  # Fewer components: Π is the orthogonal projector onto the top singular directions.
  t2 = cola.build_text(z_kmd, None, 2)
  u, _, _ = np.linalg.svd(z_kmd.reshape(-1, D).T)
  np.testing.assert_allclose(PROJECT(x_nd, t2.basis_dc), x_nd @ u[:, :2] @ u[:, :2].T, atol=1e-5)


def test_invariant_to_permuting_views_and_descriptions():
  z_kmd, x_bnd = _setup()
  mask_km = np.ones((K, M), bool)
  mask_km[1, 2] = False
  cfg = _cfg(num_views=N, projection=True, marginals="entropy", num_components=5)
  ref = SCORES(jnp.asarray(x_bnd), cola.build_text(z_kmd, mask_km, 5), cfg).scores_bk
  # View 0 is the centre view (used for the description weights): permute views 1..N-1 only.
  perm_n = np.array([0, 3, 1, 4, 2])
  perm_m = np.array([2, 0, 1])
  text_p = cola.build_text(z_kmd[:, perm_m], mask_km[:, perm_m], 5)
  got = SCORES(jnp.asarray(x_bnd[:, perm_n]), text_p, cfg).scores_bk
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def _entropy(logits):
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return -(p * np.log(p)).sum(-1)


def _softmax(v):
  e = np.exp(v - v.max())
  return e / e.sum()


def test_entropy_weights_and_ot_match_pot():
  z_kmd, x_bnd = _setup()
  cfg = _cfg(num_views=N, marginals="entropy", num_iters=300, epsilon=0.1)
  text = cola.build_text(z_kmd, None, 256)
  out = SCORES(jnp.asarray(x_bnd), text, cfg)
  for i in range(B):
    cos_nkm = np.einsum("nd,kmd->nkm", x_bnd[i].astype(np.float64), z_kmd.astype(np.float64))
    logit_nkm = 100.0 * cos_nkm
    mean_nk = logit_nkm.mean(2)
    a_n = _softmax(-_entropy(mean_nk) / 0.5)
    np.testing.assert_allclose(out.view_weights_bn[i], a_n, rtol=1e-4, atol=1e-6)
    for k in range(K):
      h_m = []
      for m in range(M):
        v = mean_nk[0].copy()
        v[k] = logit_nkm[0, k, m]
        h_m.append(_entropy(v))
      b_m = _softmax(-np.asarray(h_m) / 0.5)
      cost_nm = 1.0 - cos_nkm[:, k]
      plan = ot.sinkhorn(a_n, b_m, cost_nm, reg=0.1, numItermax=5000, stopThr=1e-12)
      expect = 100.0 * (1.0 - np.sum(plan * cost_nm))
      np.testing.assert_allclose(out.scores_bk[i, k], expect, rtol=1e-4)
  assert float(jnp.max(out.marginal_error_bk)) < 1e-3


@pytest.mark.parametrize("k", [1, 2, 7])
def test_replaced_entropy_matches_the_direct_form(k):
  # The O(B·K² + B·K·M) form against materialising every replaced vector (float64 NumPy), at
  # CLIP's logit scale (differences of ~100 between entries: any cancellation would show).
  rng = np.random.default_rng(k)
  v_bk = (100.0 * rng.uniform(-1, 1, size=(3, k))).astype(np.float32)
  w_bkm = (100.0 * rng.uniform(-1, 1, size=(3, k, 5))).astype(np.float32)
  w_bkm[0, 0, 0] = v_bk[0].max() + 80.0  # the replacement dominates
  w_bkm[1, 0, 1] = v_bk[1].min() - 80.0  # the replacement vanishes
  got = jax.jit(cola.replaced_entropy)(v_bk, w_bkm)
  expect = np.zeros((3, k, 5))
  for b in range(3):
    for y in range(k):
      for m in range(5):
        v = v_bk[b].astype(np.float64).copy()
        v[y] = w_bkm[b, y, m]
        expect[b, y, m] = _entropy(v)
  np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)

  def direct(v, w):  # the materialised form in JAX, for the gradient
    repl = jnp.where(jnp.eye(k, dtype=bool)[None, :, None, :], w[..., None], v[:, None, None, :])
    logp = jax.nn.log_softmax(repl, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

  weights = jnp.asarray(rng.normal(size=(3, k, 5)).astype(np.float32))
  grads = [
    jax.grad(lambda v, w, f=f: jnp.sum(weights * f(v, w)), argnums=(0, 1))(v_bk, w_bkm)
    for f in (cola.replaced_entropy, direct)
  ]
  for g, g_ref in zip(*grads):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_no_ot_ablation_is_mean_of_view_logits():
  z_kmd, x_bnd = _setup()
  text = cola.build_text(z_kmd, None, 256)
  out = SCORES(jnp.asarray(x_bnd), text, _cfg(num_views=N, use_ot=False))
  expect = 100.0 * np.einsum("bnd,kmd->bk", x_bnd, z_kmd) / (N * M)
  np.testing.assert_allclose(out.scores_bk, expect, rtol=1e-5, atol=1e-4)


def test_views_identity_determinism_and_gradient():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(2, 8, 8, 3)).astype(np.float32))
  same = cola.ColaConfig(num_views=3, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False)
  v = VIEWS(x, jax.random.key(0), same)
  assert v.shape == (2, 3, 8, 8, 3)
  np.testing.assert_allclose(v, jnp.broadcast_to(x[:, None], v.shape), atol=1e-5)
  cfg = cola.ColaConfig(num_views=3, crop_scale=(0.3, 1.0))
  v1 = VIEWS(x, jax.random.key(1), cfg)
  np.testing.assert_array_equal(v1, VIEWS(x, jax.random.key(1), cfg))
  assert not np.allclose(v1, VIEWS(x, jax.random.key(2), cfg))
  np.testing.assert_array_equal(v1[:, 0], x)
  assert float(v1.min()) >= 0.0 and float(v1.max()) <= 1.0
  grad = jax.jit(
    jax.grad(lambda x: jnp.sum(cola.make_views(x, jax.random.key(1), cfg)[:, 1:] ** 2))
  )
  g = grad(x)
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


def test_classifier_gradient_through_ot():
  z_kmd, _ = _setup(k=3, m=2)
  text = cola.build_text(z_kmd, None, 256)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(4 * 4 * 3, D)).astype(np.float32))
  enc = lambda p: p.reshape(p.shape[0], -1) @ w
  x = jnp.full((2, 4, 4, 3), 0.5)
  for grad in ("unroll", "envelope"):
    cfg = cola.ColaConfig(num_views=3, num_iters=5, ot_grad=grad)
    fn = cola.cola_classifier(enc, text, cfg)
    g = jax.jit(jax.grad(lambda x, fn=fn: fn(x, jax.random.key(0))[:, 0].sum()))(x)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


def test_bad_inputs_are_named(tmp_path):
  with pytest.raises(ValueError, match="marginals"):
    cola.ColaConfig(marginals="entropic")
  with pytest.raises(ValueError, match="unknown COLA options"):
    cola.ColaConfig.from_dict({"num_view": 3})
  path = tmp_path / "d.json"
  path.write_text(json.dumps({"circel": ["round"]}))
  with pytest.raises(ValueError, match="circel"):
    cola.load_descriptions(path, ["circle", "square"])
  path.write_text(json.dumps({"circle": ["round, no corners"]}))
  descs = cola.load_descriptions(path, ["circle", "square"])
  prompts = cola.class_prompts(["circle", "square"], ["a {}.", "one {}."], descs)
  assert prompts == [
    ["a circle.", "one circle.", "a circle. round, no corners"],
    ["a square.", "one square."],
  ]
  with pytest.raises(ValueError, match="no valid text feature"):
    cola.build_text(np.ones((2, 2, 4)), np.array([[True, False], [False, False]]), 4)


def test_tokenizer_comes_from_the_config_else_the_checkpoint_workdir(tmp_path):
  from clipjax.tasks import cola_eval as cola_task

  wdir = tmp_path / "run"
  (wdir / "checkpoints").mkdir(parents=True)
  (wdir / "config.json").write_text(json.dumps({"data": {"tokenizer": "/m/run.txt.gz"}}))
  config = _smoke_config()
  assert cola_task.merges_path(config) is None  # random init: OpenAI's merges
  config.model.init_checkpoint = str(wdir)
  assert cola_task.merges_path(config) == "/m/run.txt.gz"
  config.data.tokenizer = "/m/mine.txt.gz"
  assert cola_task.merges_path(config) == "/m/mine.txt.gz"


def _config(arg):
  import pathlib

  from clipjax import config_lib

  return config_lib.load(f"{pathlib.Path(__file__).parents[2]}/configs/cola.py:{arg}")


def _smoke_config():
  return _config("smoke")


def test_config_pgd_objective_is_selectable():
  from clipjax.attacks import complete_spec

  c = _config("attacks=pgd,eps=1+4,loss=ce+margin")
  assert [(a["label"], a["loss"]) for a in c.attacks] == [
    ("pgd_eps1", "ce"),
    ("pgd_eps4", "ce"),
    ("pgd-margin_eps1", "margin"),
    ("pgd-margin_eps4", "margin"),
  ]
  for a in c.attacks:
    complete_spec({k: v for k, v in a.items() if k != "label"})
  with pytest.raises(ValueError, match="loss"):
    _config("loss=hinge")


def test_config_many_world_has_more_text_features_than_width():
  """world=many: 77 classes x 12 prompts (924 text features) > the embedding width, so Π keeps
  min(C, width) directions and is the identity unless components < width; views_proj (views + Π,
  no OT) pairs with cola_no_proj."""
  from clipjax.data import registry

  c = _config("world=many")
  assert c.eval.label_set == "colour+shape"
  lset = registry.build_source(c.eval.dataset.to_dict(), 32).label_sets["colour+shape"]
  width = c.model.overrides.get("embed_dim") or 0
  assert len(lset.classnames) * len(lset.templates) == 924 > max(width, 256)
  assert c.cola.variants["views_proj"].to_dict() == {"use_ot": False, "projection": True}
  assert _config("world=many,components=64").cola.base["num_components"] == 64
  with pytest.raises(ValueError, match="world"):
    _config("world=mars")


def test_config_rich_templates_give_the_shapes_world_more_text_features_than_width():
  from clipjax.data import registry

  c = _config("label_set=colour+shape,templates=rich,components=64")
  lset = registry.build_source(c.eval.dataset.to_dict(), 32).label_sets["colour+shape"]
  assert len(lset.classnames) * len(lset.templates) == 30 * 12
  default = _config("label_set=colour+shape")
  lset = registry.build_source(default.eval.dataset.to_dict(), 32).label_sets["colour+shape"]
  assert len(lset.templates) == 3
  for bad in ("templates=fancy", "world=digits,templates=rich"):
    with pytest.raises(ValueError, match="templates must be"):
      _config(bad)


def test_config_smoke_runs_in_process_and_resumes(tmp_path, monkeypatch):
  from clipjax import config_lib, runs
  from clipjax.attacks import Stochastic
  from clipjax.evaluation import cola_protocol
  from clipjax.tasks import cola_eval as cola_task

  config = _smoke_config()
  assert config.task == "cola_eval"
  # A clipjax workdir brings its own context length (16 here, 32 in the COLA config).
  train = config_lib.apply_smoke(config_lib.train_config())
  train.data.context_length = 16
  assert config.data.context_length != 16
  model = runs.build_model(train.model.to_dict(), train.data.image_size, 16, jax.random.key(0))
  config.model.init_checkpoint = runs.save_params_workdir(
    model.params, train.to_dict(), str(tmp_path / "ckpt")
  )
  out = cola_task.run(config, str(tmp_path / "fresh"))
  assert out["n"] == 4 and set(out["clean"]) == {"base", "cola"}
  assert set(out["adaptive"]["pgd"]) == {"base", "cola"}
  assert set(out["adaptive"]["square"]) == {"base"}  # transfer-only spec
  for acc in [*out["clean"].values(), *out["transfer"]["pgd"].values()]:
    assert 0.0 <= acc <= 1.0
  # Worst case over all attacks of one ε: never above any single protocol's robust accuracy.
  worst = out["worst_case"]["linf eps=4/255"]
  for name in ("base", "cola"):
    for label in ("pgd", "square"):
      assert worst[name] <= out["transfer"][label][name]
    assert worst[name] <= out["adaptive"]["pgd"][name]
  check = out["masking_check"]["linf eps=4/255"]["base"]
  assert check == {
    "black_box": out["transfer"]["square"]["base"],
    "white_box": out["transfer"]["pgd"]["base"],
    "gap": out["transfer"]["square"]["base"] - out["transfer"]["pgd"]["base"],
  }
  assert (tmp_path / "fresh" / "results.md").read_text().startswith("| classifier")
  for name, indices in out["robust_examples"]["pgd/transfer"].items():
    assert len(indices) == round(out["transfer"]["pgd"][name] * out["n"])
  assert len(out["robust_examples"]["pgd/adaptive/cola"]) == round(
    out["adaptive"]["pgd"]["cola"] * out["n"]
  )

  # An interrupted run resumes from results.partial.json and matches the fresh run.
  real_build, real_put = cola_protocol.build_attack, cola_task._Progress.put
  calls = []

  def put_then_die(self, step, value):
    real_put(self, step, value)
    raise KeyboardInterrupt  # stands in for a kill right after the first saved step

  def counted(spec, fn):
    attack, full = real_build(spec, fn)

    def wrapped(*args):
      calls.append((spec["name"], isinstance(fn, Stochastic)))
      return attack(*args)

    return wrapped, full

  wdir = tmp_path / "resumed"
  monkeypatch.setattr(cola_task._Progress, "put", put_then_die)
  with pytest.raises(KeyboardInterrupt):
    cola_task.run(config, str(wdir))
  monkeypatch.setattr(cola_task._Progress, "put", real_put)
  partial = json.loads((wdir / "results.partial.json").read_text())
  assert list(partial["steps"]) == ["pgd/transfer"]
  assert not (wdir / "summary.json").exists()

  # A different config in that workdir is refused, naming the progress file.
  other = _smoke_config()
  other.seed = 1
  with pytest.raises(ValueError, match="results.partial.json"):
    cola_task.run(other, str(wdir))

  calls.clear()
  monkeypatch.setattr(cola_protocol, "build_attack", counted)
  resumed = cola_task.run(config, str(wdir))
  # The transfer PGD on the base classifier was not recomputed; everything after it was.
  assert ("pgd", False) not in calls
  assert ("square", False) in calls
  assert not (wdir / "results.partial.json").exists()
  for key in ("clean", "transfer", "adaptive", "worst_case", "masking_check", "robust_examples"):
    assert resumed[key] == out[key], key
