"""The HOT-CLIP grid experiment's library: cost accounting, identity mass, build order, table."""

import time

import jax
import numpy as np
import pytest

from clipjax import fusion
from clipjax.fusion import grid as grid_lib
from clipjax.fusion.align import MapInfo

EXACT = fusion.AlignOptions(solver="exact")


def _info(mass):
  return MapInfo(size=4, transport_cost=0.0, identity_mass=mass, converged=True, n_iters=0)


@pytest.fixture(scope="module")
def spec(model):
  return fusion.vit_spec_for(model.config, residual="mean", head_mode="per_head")


@pytest.fixture(scope="module")
def host_params(model):
  return jax.tree.map(np.asarray, model.params)


def test_identity_mass_summarises_nested_infos_and_skips_anchors_and_nan():
  intra = ((None, {"a": _info(1.0), "b": _info(0.5)}), ({"a": _info(float("nan"))}, None))
  inter = (None, {"a": _info(0.75)})
  assert grid_lib.identity_mass((intra, inter)) == {
    "identity_mass_mean": 0.75,
    "identity_mass_min": 0.5,
  }
  assert grid_lib.identity_mass([None, {"x": _info(float("nan"))}]) == {}


def test_fuse_grid_counts_loads_and_separates_the_finetunes(host_params, spec):
  calls = []

  def intra(a, params):
    calls.append(("intra", a))
    time.sleep(0.05)
    return params

  def inter(params):
    calls.append(("inter",))
    time.sleep(0.05)
    return params

  loaders = [[lambda: host_params] * 2] * 2
  params, info = grid_lib.fuse_grid(
    "hierarchical",
    loaders,
    spec=spec,
    options=EXACT,
    anchor=(0, 0),
    intra_finetune=intra,
    inter_finetune=inter,
  )
  assert sorted(calls) == [("inter",), ("intra", 0), ("intra", 1)]
  assert info["checkpoint_loads"] == 4
  assert 0.15 <= info["finetune_seconds"] <= info["fusion_seconds"]
  # Identical submodels: every exact map is the identity.
  assert info["identity_mass_mean"] == info["identity_mass_min"] == 1.0
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(host_params), strict=True):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-6)

  _, info = grid_lib.fuse_grid("average", loaders, spec=spec, options=EXACT, anchor=(0, 0))
  assert info["checkpoint_loads"] == 4
  assert "finetune_seconds" not in info and "identity_mass_mean" not in info
  with pytest.raises(ValueError, match=r"'ensemble'.*hierarchical"):
    grid_lib.fuse_grid("ensemble", loaders, spec=spec, options=EXACT, anchor=(0, 0))


def test_fuse_and_evaluate_builds_in_order_and_evaluates_each(model, host_params, spec, pixels):
  rng = np.random.default_rng(0)
  other = jax.tree.map(
    lambda x: x + np.float32(0.01) * rng.normal(size=x.shape).astype(np.float32), host_params
  )
  other = {**other, "text": host_params["text"]}
  loaders = [[lambda: host_params], [lambda: other]]
  embs, fused_names = {}, []

  def evaluate(encode):
    emb = np.asarray(encode(pixels))
    return {"emb_norm": float(np.linalg.norm(emb))}

  def on_fused(name, params):
    fused_names.append(name)
    embs[name] = np.asarray(model.encode_image(params, pixels).emb)
    return {"saved": f"/x/{name}"}

  results = grid_lib.fuse_and_evaluate(
    ["ensemble", "average", "direct_ot"],
    loaders,
    spec=spec,
    options=EXACT,
    anchor=(0, 0),
    encode_image=model.encode_image,
    evaluate=evaluate,
    on_fused=on_fused,
  )
  assert list(results) == ["ensemble", "average", "direct_ot"]
  assert fused_names == ["average", "direct_ot"]
  assert results["ensemble"]["members"] == results["ensemble"]["forward_passes_per_image"] == 2
  assert "saved" not in results["ensemble"] and results["average"]["saved"] == "/x/average"
  # The average of the two submodels' visual towers is what was evaluated and handed on.
  want = jax.tree.map(lambda a, b: (a + b) / 2, host_params["visual"], other["visual"])
  avg_emb = np.asarray(model.encode_image({**host_params, "visual": want}, pixels).emb)
  np.testing.assert_allclose(embs["average"], avg_emb, atol=1e-5)
  assert results["average"]["emb_norm"] == pytest.approx(np.linalg.norm(avg_emb), rel=1e-5)
  assert results["direct_ot"]["checkpoint_loads"] == 2


def test_format_table_subtracts_the_finetunes_and_blanks_missing_entries():
  results = {
    "sub[0][0]": {"clean_acc": 0.5, "robust_acc/pgd": 0.25, "robust_acc_worst": 0.25},
    "hierarchical": {
      "clean_acc": 0.75,
      "robust_acc/pgd": 0.5,
      "robust_acc_worst": 0.5,
      "fusion_seconds": 5.0,
      "finetune_seconds": 2.0,
      "peak_rss_growth_mb": 12.34,
      "identity_mass_mean": 0.9,
    },
  }
  assert grid_lib.format_table(results, [{"name": "pgd"}]).splitlines() == [
    "| model | clean | pgd | worst | fusion s (excl. fine-tune) | peak RSS +MB | identity mass |",
    "|---|---|---|---|---|---|---|",
    "| sub[0][0] | 0.500 | 0.250 | 0.250 |  |  |  |",
    "| hierarchical | 0.750 | 0.500 | 0.500 | 3.00 | 12.3 | 0.900 |",
  ]
