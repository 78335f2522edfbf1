"""OT model fusion on parameter pytrees (OTFusion, transformer fusion, HOT-CLIP).

* `spec`: which parameter axes share a transport map (`FusionSpec`, `vit_spec`).
* `align`: neuron representations, transport maps (exact or Sinkhorn), propagation (`align_params`).
* `fuse`: weighted averaging of models aligned to an anchor (`fuse`, `fuse_stream`).
* `hierarchical`: HOT-CLIP's two-level fusion and its baselines.
* `grid`: one of those on an [attack][prompt] grid of submodels, with its cost (`fuse_grid`).

The package attribute `clipjax.fusion.fuse` is the function; import module-level names with
`from clipjax.fusion.fuse import FusionAccumulator` (or from the package).
"""

from clipjax.fusion.align import (
  Aligned,
  AlignOptions,
  MapInfo,
  align_params,
  apply_maps,
  compute_maps,
  transport_map,
  vit_activations,
  vit_map_acts,
)
from clipjax.fusion.fuse import Fused, FusionAccumulator, fuse, fuse_stream, l2_distance
from clipjax.fusion.grid import fuse_grid, identity_mass
from clipjax.fusion.hierarchical import (
  Hierarchical,
  direct_average,
  direct_ot,
  ensemble_encode_image,
  hierarchical_fuse,
)
from clipjax.fusion.spec import (
  AxisRule,
  FusionSpec,
  Group,
  random_permutation_maps,
  resolve,
  vit_spec,
  vit_spec_for,
)

__all__ = [
  "AlignOptions",
  "Aligned",
  "AxisRule",
  "Fused",
  "FusionAccumulator",
  "FusionSpec",
  "Group",
  "Hierarchical",
  "MapInfo",
  "align_params",
  "apply_maps",
  "compute_maps",
  "direct_average",
  "direct_ot",
  "ensemble_encode_image",
  "fuse",
  "fuse_grid",
  "fuse_stream",
  "hierarchical_fuse",
  "identity_mass",
  "l2_distance",
  "random_permutation_maps",
  "resolve",
  "transport_map",
  "vit_activations",
  "vit_map_acts",
  "vit_spec",
  "vit_spec_for",
]
