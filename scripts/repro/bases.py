"""The base checkpoints that method reproductions start from (one constant to switch).

Until `configs/base.py` (the reference base recipe) lands, a base is a run of the quickstart
config with its seed set; switch `BASE_CONFIG` (and, if its argument string differs, `base_runs`)
to move every grid that uses bases onto the reference recipe.
"""

from __future__ import annotations

from repro.grid import Run

BASE_CONFIG = "configs/quickstart.py"


def base_name(b: int) -> str:
  """Workdir name of base `b` (shared by every method that uses the reference bases)."""
  return f"base_b{b}"


def base_runs(bases: int, quick: bool) -> list[Run]:
  """`bases` base trainings (seeds 0..bases-1); toy-size (`:smoke`) when `quick`."""
  return [
    Run(
      name=base_name(b),
      config=f"{BASE_CONFIG}:smoke" if quick else BASE_CONFIG,
      group="base",
      overrides=(f"--config.seed={b}",),
      seed=b,
      base=base_name(b),
    )
    for b in range(bases)
  ]
