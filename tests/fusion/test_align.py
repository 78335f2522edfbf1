"""Fusion tests: specs, transport maps vs POT, OTFusion reference, permutation recovery."""

import jax
import numpy as np
import ot
import pytest

from clipjax import fusion
from clipjax import tree as tree_lib
from clipjax.fusion import align as align_lib
from clipjax.fusion import spec as spec_lib

EXACT = fusion.AlignOptions(solver="exact")


def perm_matrix(perm):
  """Map with new[j] = old[perm[j]]."""
  return np.eye(len(perm), dtype=np.float32)[perm]


def random_maps(spec, config, seed, *, residual=True):
  """Function-preserving random permutation maps for every map of a ViT spec."""
  rng = np.random.default_rng(seed)
  w, heads, mlp = config.vision.width, config.vision.heads, config.vision.mlp_dim
  dh = w // heads
  res = perm_matrix(rng.permutation(w))
  maps = {}
  for b in range(config.vision.layers):
    pi = rng.permutation(heads)
    for name in ("qk", "v"):
      within = [rng.permutation(dh) for _ in range(heads)]
      perm = np.concatenate([pi[h] * dh + within[h] for h in range(heads)])
      maps[f"{name}/{b}"] = perm_matrix(perm)
    maps[f"mlp/{b}"] = perm_matrix(rng.permutation(mlp))
  for name in spec.map_names():
    if name not in maps:
      assert residual, name
      maps[name] = res
  return maps


def visual_close(a, b, atol):
  fa = dict(tree_lib.flatten_with_names(a["visual"]))
  fb = dict(tree_lib.flatten_with_names(b["visual"]))
  return max(float(np.max(np.abs(np.asarray(fa[k]) - np.asarray(fb[k])))) for k in fa) <= atol


def outputs_close(model, p, q, pixels, atol=1e-5):
  fp, fq = model.encode_image(p, pixels), model.encode_image(q, pixels)
  np.testing.assert_allclose(fp.emb, fq.emb, atol=atol)
  np.testing.assert_allclose(fp.tokens, fq.tokens, atol=atol)


def test_vit_forward_matches_encode_image(model, pixels):
  emb, acts = align_lib.vit_forward(model.config, model.params["visual"], pixels)
  np.testing.assert_allclose(emb, model.encode_image(model.params, pixels).emb, atol=1e-5)
  assert acts["mlp/1"].shape == (3, 17, 128)
  assert acts["qk/0"].shape == (3, 34, 32)
  assert acts["res"].shape == (3, 51, 32)


@pytest.mark.parametrize("residual", ["mean", "shared", "none"])
def test_random_permutation_preserves_function(model, pixels, residual):
  spec = fusion.vit_spec_for(model.config, residual=residual, head_mode="per_head")
  maps = random_maps(spec, model.config, 1, residual=residual != "none")
  permuted = fusion.apply_maps(model.params, spec, maps)
  assert not visual_close(permuted, model.params, 1e-2)
  outputs_close(model, permuted, model.params, pixels)
  assert permuted["text"] is model.params["text"]


@pytest.mark.parametrize(
  "residual,head_mode,options",
  [
    ("mean", "per_head", EXACT),
    ("shared", "per_head", EXACT),
    ("none", "per_head", EXACT),
    ("mean", "cross_head", EXACT),
    ("mean", "per_head", fusion.AlignOptions(solver="sinkhorn", epsilon=0.005, max_iterations=500)),
    ("shared", "per_head", fusion.AlignOptions(solver="exact", representation="acts")),
  ],
)
def test_permutation_recovery(model, pixels, residual, head_mode, options):
  spec = fusion.vit_spec_for(model.config, residual=residual, head_mode=head_mode)
  maps = random_maps(spec, model.config, 2, residual=residual != "none")
  permuted = fusion.apply_maps(model.params, spec, maps)
  acts_fn = fusion.vit_activations(model.config, pixels)
  aligned = fusion.align_params(permuted, model.params, spec, options, acts_fn=acts_fn)
  hard = options.solver == "exact"
  for name, m in maps.items():
    # The recovered map undoes the applied one: aligned = Pᵀ P θ = θ.
    np.testing.assert_allclose(aligned.maps[name], m.T, atol=0 if hard else 1e-5, err_msg=name)
  assert visual_close(aligned.params, model.params, 0 if hard else 1e-5)
  fused = fusion.fuse([model.params, permuted], spec=spec, options=options, acts_fn=acts_fn)
  assert visual_close(fused.params, model.params, 0 if hard else 1e-5)
  outputs_close(model, fused.params, model.params, pixels)
  # Plain averaging of the same pair does not compute the original function.
  avg = fusion.fuse([model.params, permuted], method="average", spec=spec).params
  emb_avg = model.encode_image(avg, pixels).emb
  assert np.max(np.abs(emb_avg - model.encode_image(model.params, pixels).emb)) > 1e-2


@pytest.mark.parametrize(
  "options",
  [EXACT, fusion.AlignOptions(solver="sinkhorn", epsilon=0.01, max_iterations=500)],
  ids=["exact", "sk"],
)
def test_self_fusion_is_identity(model, options):
  spec = fusion.vit_spec_for(model.config, residual="mean", head_mode="per_head")
  fused = fusion.fuse([model.params, model.params], spec=spec, options=options)
  assert visual_close(fused.params, model.params, 0 if options.solver == "exact" else 1e-5)
  fused = fusion.fuse([model.params, model.params], [0.3, 0.7], spec=spec, options=options)
  assert visual_close(fused.params, model.params, 1e-6 if options.solver == "exact" else 1e-5)
  info = fused.infos[1]
  assert all(i.identity_mass > 1 - 1e-5 for i in info.values())
  # Small-ε Sinkhorn between unrelated heads converges slowly; only exact is always converged.
  assert all(i.converged for i in info.values()) or options.solver == "sinkhorn"


def test_weights_one_zero_return_anchor_without_loading(model):
  spec = fusion.vit_spec_for(model.config, residual="mean", head_mode="per_head")
  other = jax.tree.map(lambda x: np.asarray(x) + 1.0, model.params)

  def never():
    raise AssertionError("a weight-0 model must not be loaded")

  fused = fusion.fuse_stream([lambda: model.params, never], [1, 0], spec=spec, options=EXACT)
  same = jax.tree.map(lambda a, b: np.array_equal(a, b), fused.params, model.params)
  assert all(jax.tree.leaves(same))
  fused = fusion.fuse([other, model.params], [0, 1], anchor=1, spec=spec, options=EXACT)
  assert visual_close(fused.params, model.params, 0)


def test_weighted_average_and_outside_policy(model):
  spec = fusion.vit_spec_for(model.config, residual="mean", head_mode="per_head")
  other = jax.tree.map(lambda x: np.asarray(x) + 1.0, model.params)
  fused = fusion.fuse([model.params, other], [0.25, 0.75], method="average", spec=spec).params
  want = model.params["visual"]["proj"] + 0.75
  np.testing.assert_allclose(fused["visual"]["proj"], want, rtol=1e-6, atol=1e-6)
  assert fused["text"] is model.params["text"]
  both = fusion.fuse([model.params, other], [1, 3], method="average", outside="average").params
  np.testing.assert_allclose(both["logit_scale"], model.params["logit_scale"] + 0.75, rtol=1e-6)


def test_transport_map_matches_pot():
  rng = np.random.default_rng(0)
  cost = rng.uniform(size=(7, 7)).astype(np.float32)
  opts = fusion.AlignOptions(solver="sinkhorn", epsilon=0.05, cost_scale="none", threshold=1e-6)
  map_mn, info = fusion.transport_map(cost, opts)
  u = np.full(7, 1 / 7)
  plan = ot.sinkhorn(u, u, cost.astype(np.float64), reg=0.05, stopThr=1e-12, numItermax=100000)
  np.testing.assert_allclose(map_mn, (plan / plan.sum(0)).T, atol=2e-5)
  np.testing.assert_allclose(map_mn.sum(1), 1.0, atol=1e-6)
  assert info.converged
  hard, _ = fusion.transport_map(cost, EXACT)
  np.testing.assert_array_equal(hard, 7 * ot.emd(u, u, cost.astype(np.float64)).T)


def test_head_maps_recover_block_permutation():
  rng = np.random.default_rng(3)
  heads, dh = 3, 4
  n = heads * dh
  x = rng.normal(size=(n, 5))
  pi = rng.permutation(heads)
  perm = np.concatenate([pi[h] * dh + rng.permutation(dh) for h in range(heads)])
  cost = align_lib.pairwise_cost(x[perm], x, EXACT)
  maps, info = align_lib.head_transport_maps([cost, cost], heads, EXACT)
  np.testing.assert_array_equal(maps[0], perm_matrix(perm).T)
  assert info.size == heads


def mlp_params(seed):
  rng = np.random.default_rng(seed)
  dims = [(4, 6), (6, 5), (5, 3)]
  return {
    f"fc{i}": {"kernel": rng.normal(size=d).astype(np.float32), "bias": rng.normal(size=d[1])}
    for i, d in enumerate(dims, 1)
  }


def reference_otfusion(model, anchor, eps):
  """OTFusion appendix C.1 eqs. 14-16 written with [out, in] matrices and POT's Sinkhorn."""
  out, t_prev = {}, None
  for name, last in (("fc1", False), ("fc2", False), ("fc3", True)):
    w_a, b_a = model[name]["kernel"].T.astype(np.float64), model[name]["bias"]
    w_b, b_b = anchor[name]["kernel"].T.astype(np.float64), anchor[name]["bias"]
    if t_prev is not None:
      w_a = w_a @ t_prev @ np.diag(1 / t_prev.sum(0))
    if last:
      out[name] = {"kernel": w_a.T, "bias": b_a}
      break
    x = np.concatenate([w_a, b_a[:, None]], 1)
    y = np.concatenate([w_b, b_b[:, None]], 1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    cost /= cost.max()
    u = np.full(len(x), 1 / len(x))
    t = ot.sinkhorn(u, u, cost, reg=eps, stopThr=1e-12, numItermax=100000)
    beta_inv = np.diag(1 / t.sum(0))
    out[name] = {"kernel": (beta_inv @ t.T @ w_a).T, "bias": beta_inv @ t.T @ b_a}
    t_prev = t
  return out


def test_generic_mlp_spec_matches_reference_otfusion():
  spec = fusion.FusionSpec(
    root="",
    rules=(
      fusion.AxisRule(r"fc1/(kernel|bias)", -1, "h1", "out"),
      fusion.AxisRule(r"fc2/kernel", 0, "h1", "in"),
      fusion.AxisRule(r"fc2/(kernel|bias)", -1, "h2", "out"),
      fusion.AxisRule(r"fc3/kernel", 0, "h2", "in"),
    ),
    groups=(fusion.Group("h1", "solve"), fusion.Group("h2", "solve")),
  )
  model, anchor = mlp_params(0), mlp_params(1)
  opts = fusion.AlignOptions(solver="sinkhorn", epsilon=0.05, threshold=1e-8)
  got = fusion.align_params(model, anchor, spec, opts).params
  want = reference_otfusion(model, anchor, 0.05)
  for name in want:
    for leaf in ("kernel", "bias"):
      np.testing.assert_allclose(got[name][leaf], want[name][leaf], atol=5e-5, err_msg=name)


@pytest.mark.parametrize("residual", ["mean", "shared"])
def test_vit_spec_covers_the_tower_and_keeps_proj_output(model, residual):
  spec = fusion.vit_spec_for(model.config, residual=residual, head_mode="per_head")
  bindings, sizes = fusion.resolve(spec, model.params)
  assert set(bindings) == set(tree_lib.names(model.params["visual"]))
  final = "res/2/in" if residual == "mean" else "res"
  assert [(b.axis, b.group) for b in bindings["proj"]] == [(0, final)]
  assert {b.role for b in bindings["blocks/1/mlp/c_proj/kernel"]} == {"in"} | (
    {"out"} if residual == "mean" else set()
  )
  assert sizes["mlp/1"] == 128 and sizes["qk/0"] == 32


def test_spec_errors(model):
  good = fusion.vit_spec_for(model.config, residual="mean", head_mode="per_head")
  bad_rule = fusion.AxisRule("ln_pst/scale", 0, "res/embed", "in")
  typo = spec_lib.FusionSpec("visual", (*good.rules, bad_rule), good.groups)
  with pytest.raises(ValueError, match="ln_pst"):
    fusion.resolve(typo, model.params)
  late = spec_lib.FusionSpec("visual", good.rules, tuple(reversed(good.groups)))
  with pytest.raises(ValueError, match="computed later|not an earlier map"):
    fusion.resolve(late, model.params)
  with pytest.raises(ValueError, match="sincos"):
    fusion.vit_spec(2, 2, residual="mean", head_mode="per_head", pos_embed="learned+sincos2d")
  with pytest.raises(ValueError, match="epsilon"):
    fusion.AlignOptions(solver="sinkhorn", epsilon=None)
  with pytest.raises(KeyError, match="visual"):
    fusion.resolve(good, {"text": {}})
