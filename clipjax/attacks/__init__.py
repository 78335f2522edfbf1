"""clipjax.attacks: FGSM, PGD, MIM, APGD and Square in pixel space [0, 1], EOT and BPDA wrappers.

Every attack maximises an objective `loss_fn(x_bhwc, labels) -> loss_b` (or
`(loss_b, success_b)`, see `losses.py`), is pure and wrapped in `jax.jit` (static: the objective,
steps, norm; eps and step sizes are traced, so sweeping ε does not recompile), and costs one
forward+backward over the batch per step; the black-box Square attack costs one forward per query.
"""

from clipjax.attacks.autopgd import apgd, apgd_checkpoints, apgd_targeted
from clipjax.attacks.eot import Stochastic, bpda, eot, eot_value_and_grad
from clipjax.attacks.iterative import fgsm, mim, pgd
from clipjax.attacks.losses import (
  ce_objective,
  dlr_objective,
  dlr_targeted_objective,
  margin_objective,
)
from clipjax.attacks.registry import (
  ATTACK_DEFAULTS,
  OBJECTIVES,
  build_attack,
  complete_spec,
  parse_attacks,
  worst_case,
)
from clipjax.attacks.square import SquareResult, square, square_p, square_search

__all__ = [
  "ATTACK_DEFAULTS",
  "OBJECTIVES",
  "SquareResult",
  "Stochastic",
  "apgd",
  "apgd_checkpoints",
  "apgd_targeted",
  "bpda",
  "build_attack",
  "ce_objective",
  "complete_spec",
  "dlr_objective",
  "dlr_targeted_objective",
  "eot",
  "eot_value_and_grad",
  "fgsm",
  "margin_objective",
  "mim",
  "parse_attacks",
  "pgd",
  "square",
  "square_p",
  "square_search",
  "worst_case",
]
