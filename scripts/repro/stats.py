"""Statistics of the generated result pages: mean ± std, paired bootstrap CIs, claim verdicts.

Every table of `docs/results/<method>.md` goes through these functions, so that "± x", "95 % CI"
and "reproduced" mean the same thing on every page:

* `mean_std`: sample mean ± sample standard deviation (ddof 1); one value is printed alone.
* `spread`: over seeds and over base checkpoints: the std over seeds is pooled within each base,
  the std over bases is that of the per-base means.
* `bootstrap_ci`: percentile bootstrap of the mean (fixed generator seed: pages are
  deterministic functions of their records).
* `verdict`: one word per paper claim from the CI of the paired difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive at this power"
# With fewer pairs a percentile bootstrap is little more than [min, max]: no verdict below this.
MIN_PAIRS = 3
N_RESAMPLES = 10_000


def mean_std(values: Sequence[float], digits: int = 1, scale: float = 1.0) -> str:
  """'mean ± std' (ddof 1) of `values * scale`; the value alone for one; '–' for none.

  NaNs are dropped; a cell whose values are all NaN prints 'nan'.
  """
  v = np.asarray(values, np.float64) * scale
  if v.size == 0:
    return "–"
  v = v[~np.isnan(v)]
  if v.size == 0:
    return "nan"
  if v.size == 1:
    return f"{v[0]:.{digits}f}"
  return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def spread(values: Sequence[float], bases: Sequence[str]) -> tuple[float, float, float]:
  """(mean, std over seeds pooled within base, std over per-base means) of one cell's runs.

  A std that cannot be estimated (one run per base / one base) is NaN.
  """
  v = np.asarray(values, np.float64)
  if v.size == 0:
    raise ValueError("spread of no values")
  b = np.asarray([str(x) for x in bases])
  if b.shape != v.shape:
    raise ValueError(f"{v.size} values but {b.size} base labels")
  groups = [v[b == k] for k in sorted(set(b))]
  dof = sum(g.size - 1 for g in groups)
  seed_sd = math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof) if dof else math.nan
  means = np.array([g.mean() for g in groups])
  base_sd = float(means.std(ddof=1)) if means.size > 1 else math.nan
  return float(v.mean()), seed_sd, base_sd


def format_spread(
  values: Sequence[float], bases: Sequence[str], digits: int = 1, scale: float = 1.0
) -> str:
  """'mean ± seed-std' plus ' (bases ± base-std)' when there are several bases."""
  if len(values) == 0:
    return "–"
  m, s_seed, s_base = spread(np.asarray(values, np.float64) * scale, bases)
  out = f"{m:.{digits}f}"
  if not math.isnan(s_seed):
    out += f" ± {s_seed:.{digits}f}"
  if not math.isnan(s_base):
    out += f" (bases ± {s_base:.{digits}f})"
  return out


def bootstrap_ci(
  values: Sequence[float], level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
  """Percentile-bootstrap confidence interval of the mean of `values`.

  Args:
    values: [n] paired differences (n ≥ 1; one value gives the degenerate interval).
    level: coverage, e.g. 0.95.
    n_resamples: bootstrap resamples.
    seed: generator seed (fixed so that a page regenerates identically).

  Returns:
    (low, high).
  """
  v = np.asarray(values, np.float64)
  if v.ndim != 1 or v.size == 0:
    raise ValueError(f"bootstrap_ci needs a non-empty 1-d sample, got shape {v.shape}")
  if np.isnan(v).any():
    raise ValueError("bootstrap_ci: NaN among the values")
  if not 0.0 < level < 1.0:
    raise ValueError(f"level must be in (0, 1), got {level}")
  rng = np.random.default_rng(seed)
  idx_rn = rng.integers(0, v.size, size=(n_resamples, v.size))
  means_r = v[idx_rn].mean(axis=1)
  alpha = (1.0 - level) / 2.0
  low, high = np.quantile(means_r, [alpha, 1.0 - alpha])
  return float(low), float(high)


def verdict(ci: tuple[float, float], direction: int, n: int, margin: float = 0.0) -> str:
  """One verdict for a claim about the mean paired difference "treatment − baseline".

  Args:
    ci: (low, high) confidence interval of the mean paired difference.
    direction: +1 if the paper claims the difference is positive, -1 if negative, 0 if it claims
      the two are equivalent (|difference| < `margin`).
    n: number of pairs; below `MIN_PAIRS` the answer is always inconclusive.
    margin: equivalence margin (direction 0 only; > 0).

  Returns:
    Direction ±1: REPRODUCED when the CI excludes 0 on the claimed side, NOT_REPRODUCED when it
    excludes 0 on the other side, INCONCLUSIVE when it contains 0. Direction 0: REPRODUCED when
    the CI lies inside (−margin, margin), NOT_REPRODUCED when it lies entirely outside it,
    INCONCLUSIVE otherwise.
  """
  low, high = ci
  if low > high:
    raise ValueError(f"CI low {low} > high {high}")
  if direction == 0:
    if margin <= 0:
      raise ValueError(f"an equivalence claim needs a margin > 0, got {margin}")
  elif direction not in (1, -1):
    raise ValueError(f"direction must be +1, -1 or 0, got {direction}")
  if n < MIN_PAIRS:
    return INCONCLUSIVE
  if direction == 0:
    if -margin < low and high < margin:
      return REPRODUCED
    if low >= margin or high <= -margin:
      return NOT_REPRODUCED
    return INCONCLUSIVE
  if (direction > 0 and low > 0) or (direction < 0 and high < 0):
    return REPRODUCED
  if (direction > 0 and high < 0) or (direction < 0 and low > 0):
    return NOT_REPRODUCED
  return INCONCLUSIVE
