"""Fusion tests: specs, transport maps vs POT, OTFusion reference, permutation recovery."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest

from clipjax import config_lib, fusion
from clipjax import tree as tree_lib
from clipjax.fusion import align as align_lib
from clipjax.fusion import spec as spec_lib
from clipjax.model import create

EXACT = fusion.AlignOptions(solver="exact")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def perm_matrix(perm):
  """Map with new[j] = old[perm[j]]."""
  return np.eye(len(perm), dtype=np.float32)[perm]


def visual_close(a, b, atol):
  fa = dict(tree_lib.flatten_with_names(a["visual"]))
  fb = dict(tree_lib.flatten_with_names(b["visual"]))
  return max(float(np.max(np.abs(np.asarray(fa[k]) - np.asarray(fb[k])))) for k in fa) <= atol


def outputs_close(model, p, q, pixels, atol=1e-5):
  fp, fq = model.encode_image(p, pixels), model.encode_image(q, pixels)
  np.testing.assert_allclose(fp.emb, fq.emb, atol=atol)
  np.testing.assert_allclose(fp.tokens, fq.tokens, atol=atol)


def fuse_config():
  return config_lib.load(os.path.join(REPO, "configs", "hotclip_fuse.py"))


@pytest.fixture(scope="module")
def wide():
  """A ViT of width 48 (4 heads of 12 dims), 3 blocks, MLP 192, with random biases and LN."""
  sizes = {"vision.width": 48, "vision.heads": 4, "vision.layers": 3, "vision.mlp_dim": 192}
  clip = create("tiny", 5, **sizes, **{"text.vocab_size": 64, "text.eot_id": 63})
  rng = np.random.default_rng(5)

  def draw(path, x):
    if path[0].key != "visual" or path[-1].key not in ("bias", "scale"):
      return x
    base = 1.0 if path[-1].key == "scale" else 0.0
    return jnp.asarray(base + 0.1 * rng.normal(size=x.shape), jnp.float32)

  return clip, jax.tree.map_with_path(draw, clip.params)


def permute_visual(params, config, seed):
  """A function-preserving permutation of the image tower, written as explicit index gathers.

  The residual stream is permuted by `r` (every leaf that reads or writes it); in block b the
  heads by `pi`, the dims within head h by one permutation shared by q and k and another for v
  (and the out_proj input side), and the MLP units by `m`. `new[..., j] = old[..., idx[j]]`.

  Returns:
    `(params, idx)`: the permuted params (text tower shared) and the index arrays by map name
    ("res", "qk/b", "v/b", "mlp/b").
  """
  rng = np.random.default_rng(seed)
  vis = config.vision
  w, heads, dh = vis.width, vis.heads, vis.width // vis.heads
  v = jax.tree.map(np.asarray, params["visual"])
  r = rng.permutation(w)
  idx = {"res": r}

  def ln(p):
    return {"scale": p["scale"][r], "bias": p["bias"][r]}

  blocks = {}
  for b in range(vis.layers):
    blk = v["blocks"][str(b)]
    pi = rng.permutation(heads)
    qk = np.concatenate([pi[h] * dh + rng.permutation(dh) for h in range(heads)])
    vv = np.concatenate([pi[h] * dh + rng.permutation(dh) for h in range(heads)])
    m = rng.permutation(vis.mlp_dim)
    idx.update({f"qk/{b}": qk, f"v/{b}": vv, f"mlp/{b}": m})
    cols = np.concatenate([qk, w + qk, 2 * w + vv])
    attn, mlp = blk["attn"], blk["mlp"]
    blocks[str(b)] = {
      "ln_1": ln(blk["ln_1"]),
      "attn": {
        "in_proj": {"kernel": attn["in_proj"]["kernel"][r][:, cols],
                    "bias": attn["in_proj"]["bias"][cols]},
        "out_proj": {"kernel": attn["out_proj"]["kernel"][vv][:, r],
                     "bias": attn["out_proj"]["bias"][r]},
      },
      "ln_2": ln(blk["ln_2"]),
      "mlp": {
        "c_fc": {"kernel": mlp["c_fc"]["kernel"][r][:, m], "bias": mlp["c_fc"]["bias"][m]},
        "c_proj": {"kernel": mlp["c_proj"]["kernel"][m][:, r], "bias": mlp["c_proj"]["bias"][r]},
      },
    }  # fmt: skip
  visual = {
    "conv1": {"kernel": v["conv1"]["kernel"][..., r]},
    "class_embedding": v["class_embedding"][r],
    "positional_embedding": v["positional_embedding"][:, r],
    "ln_pre": ln(v["ln_pre"]),
    "blocks": blocks,
    "ln_post": ln(v["ln_post"]),
    "proj": v["proj"][r],
  }
  return {**params, "visual": jax.tree.map(jnp.asarray, visual)}, idx


def max_visual_diff(a, b):
  fa = dict(tree_lib.flatten_with_names(a["visual"]))
  fb = dict(tree_lib.flatten_with_names(b["visual"]))
  assert set(fa) == set(fb)
  return max(float(np.max(np.abs(np.asarray(fa[k]) - np.asarray(fb[k])))) for k in fa)


def default_spec(config, cfg):
  residual = cfg.spec.residual
  if residual == "auto":  # as the hotclip_fuse task resolves it
    residual = "none" if config.vision.pos_embed == "learned+sincos2d" else "mean"
  return fusion.vit_spec_for(config, residual=residual, head_mode=cfg.spec.head_mode)


def test_defaults_recover_a_permuted_copy(wide, pixels):
  """HOT-CLIP's defaults (configs/hotclip_fuse.py) fuse a model with its permuted copy exactly."""
  clip, params = wide
  cfg = fuse_config()
  options = fusion.AlignOptions(**cfg.align.to_dict())
  assert options == fusion.AlignOptions()  # the library defaults are the config's
  assert options.solver == "sinkhorn" and options.epsilon == 0.08
  spec = default_spec(clip.config, cfg)
  assert "res/embed" in spec.map_names()  # residual-stream alignment is on
  permuted, idx = permute_visual(params, clip.config, 7)
  ref = clip.encode_image(params, pixels)
  moved = clip.encode_image(permuted, pixels)
  np.testing.assert_allclose(moved.emb, ref.emb, atol=1e-5)
  assert max_visual_diff(permuted, params) > 0.1
  fused = fusion.fuse([params, permuted], spec=spec, options=options)
  assert max_visual_diff(fused.params, params) <= 1e-4
  out = clip.encode_image(fused.params, pixels)
  np.testing.assert_allclose(out.emb, ref.emb, atol=1e-4)
  np.testing.assert_allclose(out.tokens, ref.tokens, atol=1e-4)
  infos = fused.infos[1]
  assert all(i.converged for i in infos.values())
  # Dividing the cost by its max before the same ε blurs the maps (the former default).
  blurred = fusion.fuse(
    [params, permuted], spec=spec, options=fusion.AlignOptions(cost_scale="max")
  ).params
  assert max_visual_diff(blurred, params) > 1e-2


@pytest.mark.parametrize("residual", ["mean", "shared"])
def test_spec_applies_the_explicit_permutation(wide, residual):
  """The spec's rules contract exactly the axes that `permute_visual` gathers."""
  clip, params = wide
  spec = fusion.vit_spec_for(clip.config, residual=residual, head_mode="per_head")
  permuted, idx = permute_visual(params, clip.config, 8)
  maps = {}
  for name in spec.map_names():
    key = name if name in idx else "res"
    maps[name] = perm_matrix(idx[key])
  assert max_visual_diff(fusion.apply_maps(params, spec, maps), permuted) == 0


def test_alignment_activations_are_the_models_own(wide, pixels):
  clip, params = wide
  acts_fn = fusion.vit_activations(clip, pixels)
  acts = acts_fn(params)
  _, own = clip.image_intermediates(params, pixels)
  layers = clip.config.vision.layers
  np.testing.assert_array_equal(acts["res/embed"], own["embed"])
  states = [own["embed"]] + [own[f"blocks/{b}/out"] for b in range(layers)]
  np.testing.assert_array_equal(acts["res"], np.concatenate(states, axis=1))
  for b in range(layers):
    blk = f"blocks/{b}/"
    qk = np.concatenate([own[blk + "attn/q"], own[blk + "attn/k"]], axis=1)
    np.testing.assert_array_equal(acts[f"qk/{b}"], qk)
    np.testing.assert_array_equal(acts[f"v/{b}"], own[blk + "attn/v"])
    np.testing.assert_array_equal(acts[f"attn_out/{b}"], own[blk + "attn_out"])
    np.testing.assert_array_equal(acts[f"mlp/{b}"], own[blk + "mlp/hidden"])
    np.testing.assert_array_equal(acts[f"mlp_out/{b}"], own[blk + "mlp_out"])
  spec = fusion.vit_spec_for(clip.config, residual="mean", head_mode="per_head")
  shared = fusion.vit_spec_for(clip.config, residual="shared", head_mode="per_head")
  solved = {n for sp in (spec, shared) for g in sp.groups if g.kind != "combine" for n in g.outputs}
  assert solved <= set(acts)
  # Every activation moves with its map's units under the explicit permutation.
  permuted, idx = permute_visual(params, clip.config, 9)
  moved = acts_fn(permuted)
  for name, a in acts.items():
    key = name if name in idx else "res"
    np.testing.assert_allclose(moved[name], np.asarray(a)[..., idx[key]], atol=2e-5, err_msg=name)
  aligned = fusion.align_params(
    permuted, params, spec, fusion.AlignOptions(solver="exact", representation="acts"),
    acts_fn=acts_fn,
  )  # fmt: skip
  assert max_visual_diff(aligned.params, params) == 0


@pytest.mark.parametrize("residual", ["mean", "shared", "none"])
def test_random_permutation_preserves_function(model, pixels, residual):
  spec = fusion.vit_spec_for(model.config, residual=residual, head_mode="per_head")
  maps = fusion.random_permutation_maps(spec, model.config, np.random.default_rng(1))
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
  maps = fusion.random_permutation_maps(spec, model.config, np.random.default_rng(2))
  permuted = fusion.apply_maps(model.params, spec, maps)
  acts_fn = fusion.vit_activations(model, pixels)
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
  opts = fusion.AlignOptions(solver="sinkhorn", epsilon=0.2, threshold=1e-8)
  got = fusion.align_params(model, anchor, spec, opts).params
  want = reference_otfusion(model, anchor, 0.2)
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
