"""The base checkpoints that method reproductions start from (one constant to switch).

A base is a run of `configs/base.py` (the reference recipe) with its seed; `configs/base.py:smoke`
under `--quick`. Grids that need a variant of the world or noisy pairs pass its config arguments
(e.g. `noise=0.2`), which also become part of the workdir name.
"""

from __future__ import annotations

from repro.grid import Run

BASE_CONFIG = "configs/base.py"


def base_name(b: int, args: str = "") -> str:
  """Workdir name of base `b` (shared by every method that uses the same base arguments)."""
  tag = "".join(ch if ch.isalnum() else "_" for ch in args)
  return f"base{'_' + tag if tag else ''}_b{b}"


def base_runs(bases: int, quick: bool, args: str = "") -> list[Run]:
  """`bases` base trainings (seeds 0..bases-1); toy-size (`:smoke`) when `quick`."""
  out = []
  for b in range(bases):
    arg = ",".join(a for a in ("smoke" if quick else "", args, f"seed={b}") if a)
    name = base_name(b, args)
    out.append(Run(name=name, config=f"{BASE_CONFIG}:{arg}", group="base", seed=b, base=name))
  return out
