"""scripts/fusion_maps.py: per-map identity masses, checked on a model and a permuted copy."""

import dataclasses

import fusion_maps
import jax
import numpy as np

from clipjax import fusion
from clipjax import model as model_lib
from clipjax.fusion import align as align_lib


def test_identity_masses_are_the_fixed_points_of_a_known_permutation():
  """Exact alignment of a permuted copy finds the permutation back: each map's identity mass is
  the fraction of units the permutation leaves in place (1.0 for the model itself)."""
  script = fusion_maps
  sizes = {"vision.width": 32, "vision.heads": 4, "vision.layers": 2, "vision.mlp_dim": 64}
  model = model_lib.create("tiny", jax.random.key(0), **sizes)
  spec = fusion.vit_spec_for(model.config, residual="mean", head_mode="per_head")
  maps = fusion.random_permutation_maps(spec, model.config, np.random.default_rng(0))
  copy = dataclasses.replace(model, params=fusion.apply_maps(model.params, spec, maps))
  exact = align_lib.AlignOptions(solver="exact", epsilon=None)
  same = script.identity_masses(model, model, "mean", exact)
  assert set(spec.map_names()) <= set(same) and all(v == 1.0 for v in same.values())
  got = script.identity_masses(model, copy, "mean", exact)
  for name, m in maps.items():
    assert np.isclose(got[name], np.trace(m) / len(m), atol=1e-6), name
  assert min(got.values()) < 0.5  # the copy really is shuffled
