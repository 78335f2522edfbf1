"""Optimal-transport primitives for clipjax, over ott-jax.

``costs`` builds ground costs from embeddings, ``plans`` solves single entropic OT problems
(balanced, unbalanced, masked, box-constrained, partial, semi-relaxed FGW inference), ``gromov``
wraps ott's (fused) Gromov-Wasserstein, and ``batched`` solves many small set-to-set problems.
Every solver takes ε, tolerances and iteration counts explicitly and returns its diagnostics.
Imports only jax, numpy and ott.
"""

from clipjax.ot.batched import (
  SetOTResult,
  fixed_sinkhorn,
  fixed_sinkhorn_batch,
  indexed_set_ot,
  pairwise_set_ot,
  set_ot,
)
from clipjax.ot.costs import cosine_cost, max_normalize, similarity, solve_dtype, sqeuclidean_cost
from clipjax.ot.gromov import GWResult, fgw_params_from_pot, gromov_wasserstein, gw_epsilon_from_pot
from clipjax.ot.plans import (
  GRAD_POLICIES,
  OTResult,
  dbot,
  fgw_semirelaxed_softmax,
  kernel_range_limit,
  kernel_sinkhorn,
  partial_ot,
  shifted_cost,
  sinkhorn,
  tau_from_rho,
)

__all__ = [
  "GRAD_POLICIES",
  "GWResult",
  "OTResult",
  "SetOTResult",
  "cosine_cost",
  "dbot",
  "fgw_params_from_pot",
  "fgw_semirelaxed_softmax",
  "fixed_sinkhorn",
  "fixed_sinkhorn_batch",
  "gromov_wasserstein",
  "gw_epsilon_from_pot",
  "indexed_set_ot",
  "kernel_range_limit",
  "kernel_sinkhorn",
  "max_normalize",
  "pairwise_set_ot",
  "partial_ot",
  "set_ot",
  "shifted_cost",
  "similarity",
  "sinkhorn",
  "solve_dtype",
  "sqeuclidean_cost",
  "tau_from_rho",
]
