"""The base checkpoints that method reproductions start from (one constant to switch).

A base is a run of `configs/base.py` (the reference recipe) with its seed. The full grids start
from the three shipped ones, `assets/bases/base_s{0,1,2}` (that recipe at seeds 0-2, exported in
open_clip's layout; their model cards give the command, commit and metrics), so no grid retrains
them; `--quick` trains `configs/base.py:smoke` instead. Grids that need a variant of the world or
noisy pairs pass its config arguments (e.g. `noise=0.2`): such a base is trained as a run of the
grid, and the arguments become part of its workdir name.
"""

from __future__ import annotations

import pathlib

from repro.grid import Run

BASE_CONFIG = "configs/base.py"
REPO = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = "assets/bases"  # under the repository


def shipped(b: int, args: str, quick: bool) -> str | None:
  """The shipped base of seed `b`, where the grid starts from it (full size, no variant)."""
  path = f"{SHIPPED}/base_s{b}"
  if quick or args or not (REPO / path / "card.json").exists():
    return None
  return path


def base_name(b: int, args: str = "", quick: bool = False) -> str:
  """The base's name in records: `base_s{b}` (shipped) or the workdir name of a trained base."""
  if shipped(b, args, quick):
    return f"base_s{b}"
  tag = "".join(ch if ch.isalnum() else "_" for ch in args)
  return f"base{'_' + tag if tag else ''}_b{b}"


def base_path(b: int, args: str = "", quick: bool = False) -> str:
  """What a config's `init=`/`ckpt=` gets: `{repo}/assets/bases/base_s{b}` (shipped) or
  `{root}/<workdir>` (the driver fills in both)."""
  path = shipped(b, args, quick)
  return f"{{repo}}/{path}" if path else f"{{root}}/{base_name(b, args, quick)}"


def base_deps(b: int, args: str = "", quick: bool = False) -> tuple[str, ...]:
  """The run a grid run from base `b` waits for (none for a shipped base)."""
  return () if shipped(b, args, quick) else (base_name(b, args, quick),)


def base_runs(bases: int, quick: bool, args: str = "") -> list[Run]:
  """The trainings of bases 0..bases-1 that are not shipped (toy-size `:smoke` when `quick`)."""
  out = []
  for b in range(bases):
    if shipped(b, args, quick):
      continue
    arg = ",".join(a for a in ("smoke" if quick else "", args, f"seed={b}") if a)
    name = base_name(b, args, quick)
    out.append(Run(name=name, config=f"{BASE_CONFIG}:{arg}", group="base", seed=b, base=name))
  return out
