"""scripts/repro/stats.py and grid.py: bootstrap CI, verdicts, mean ± std, paired claims, pages."""

import json
import math

import numpy as np
import pytest
from repro import grid, stats


def test_mean_std_formatting():
  assert stats.mean_std([0.25, 0.35], digits=1, scale=100) == "30.0 ± 7.1"
  assert stats.mean_std([0.5], digits=2, scale=100) == "50.00"
  assert stats.mean_std([], digits=1) == "–"
  assert stats.mean_std([1.0, float("nan"), 3.0], digits=0) == "2 ± 1"
  assert stats.mean_std([float("nan")]) == "nan"


def test_spread_separates_seed_and_base_variation():
  # Base a: 1, 3 (mean 2); base b: 5, 7 (mean 6). Within-base pooled std:
  # sqrt((2 + 2) / 2) = sqrt 2; std of the base means (2, 6): 2·sqrt 2.
  m, s_seed, s_base = stats.spread([1, 3, 5, 7], ["a", "a", "b", "b"])
  assert m == 4.0
  assert s_seed == pytest.approx(math.sqrt(2))
  assert s_base == pytest.approx(2 * math.sqrt(2))
  assert stats.format_spread([1, 3, 5, 7], ["a", "a", "b", "b"], 2) == "4.00 ± 1.41 (bases ± 2.83)"
  # One base: no base spread; one run per base: no seed spread.
  assert stats.format_spread([1, 3], ["a", "a"], 1) == "2.0 ± 1.4"
  assert stats.format_spread([1, 3], ["a", "b"], 1) == "2.0 (bases ± 1.4)"
  with pytest.raises(ValueError, match="base labels"):
    stats.spread([1, 2], ["a"])


def test_bootstrap_ci_known_data():
  # A constant sample: every resample has the same mean.
  assert stats.bootstrap_ci([0.3] * 5) == pytest.approx((0.3, 0.3))
  # A large normal sample: the percentile CI of the mean ≈ mean ± 1.96 σ/√n.
  rng = np.random.default_rng(1)
  x = rng.normal(2.0, 1.0, size=400)
  low, high = stats.bootstrap_ci(x)
  half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
  assert low == pytest.approx(x.mean() - half, abs=0.02)
  assert high == pytest.approx(x.mean() + half, abs=0.02)
  # Two values: the resampled means lie in [min, max], and both ends are reached.
  assert stats.bootstrap_ci([-1.0, 3.0]) == pytest.approx((-1.0, 3.0))
  # Deterministic (fixed generator seed).
  assert stats.bootstrap_ci(x) == stats.bootstrap_ci(x)
  with pytest.raises(ValueError, match="NaN"):
    stats.bootstrap_ci([1.0, float("nan")])
  with pytest.raises(ValueError, match="non-empty"):
    stats.bootstrap_ci([])


@pytest.mark.parametrize(
  ("ci", "direction", "n", "margin", "want"),
  [
    ((0.1, 0.5), 1, 3, 0.0, stats.REPRODUCED),
    ((-0.5, -0.1), 1, 3, 0.0, stats.NOT_REPRODUCED),
    ((-0.1, 0.5), 1, 3, 0.0, stats.INCONCLUSIVE),
    ((-0.5, -0.1), -1, 3, 0.0, stats.REPRODUCED),
    ((0.1, 0.5), -1, 3, 0.0, stats.NOT_REPRODUCED),
    ((0.1, 0.5), 1, 2, 0.0, stats.INCONCLUSIVE),  # too few pairs
    ((0.0, 0.5), 1, 3, 0.0, stats.INCONCLUSIVE),  # touching 0 is not excluding it
    ((-0.01, 0.015), 0, 3, 0.02, stats.REPRODUCED),
    ((0.03, 0.05), 0, 3, 0.02, stats.NOT_REPRODUCED),
    ((-0.05, -0.03), 0, 3, 0.02, stats.NOT_REPRODUCED),
    ((0.01, 0.05), 0, 3, 0.02, stats.INCONCLUSIVE),
  ],
)
def test_verdict(ci, direction, n, margin, want):
  assert stats.verdict(ci, direction, n, margin) == want


def test_verdict_rejects_bad_arguments():
  with pytest.raises(ValueError, match="direction"):
    stats.verdict((0.0, 1.0), 2, 3)
  with pytest.raises(ValueError, match="margin"):
    stats.verdict((0.0, 1.0), 0, 3)
  with pytest.raises(ValueError, match="low"):
    stats.verdict((1.0, 0.0), 1, 3)


def _rec(run, group, seed, base, **metrics):
  return {
    "method": "toy",
    "run": run,
    "group": group,
    "seed": seed,
    "base": base,
    "commit": "abc",
    "quick": False,
    "metrics": metrics,
    "cpu_s": 10.0,
    "wall_s": 20.0,
    "eval_cpu_s": None,
  }


def test_paired_differences_pair_by_seed_and_base():
  recs = [
    _rec("a_s0", "a", 0, "b0", acc=0.5, alt=0.4),
    _rec("a_s1", "a", 1, "b0", acc=0.6, alt=0.7),
    _rec("c_s0", "c", 0, "b0", acc=0.2),
    _rec("c_s1", "c", 1, "b0", acc=0.1),
    _rec("c_s2", "c", 2, "b0", acc=0.9),  # no partner: not paired
  ]
  across = grid.Claim("x", "t", "acc", "acc", ("a",), "c", 1)
  assert grid.paired_differences(across, recs) == pytest.approx([0.3, 0.5])
  within = grid.Claim("y", "t", "acc", "alt", ("a", "c"), None, 1)
  assert grid.paired_differences(within, recs) == pytest.approx([0.1, -0.1])
  dup = [*recs, _rec("c_s0_again", "c", 0, "b0", acc=0.3)]
  with pytest.raises(ValueError, match="share seed 0"):
    grid.paired_differences(across, dup)


def test_toposort_orders_dependencies_and_rejects_cycles():
  runs = [
    grid.Run("fine", "c", "g", deps=("base",)),
    grid.Run("base", "c", "g"),
    grid.Run("eval", "c", "g", deps=("fine", "base")),
  ]
  assert [r.name for r in grid.toposort(runs)] == ["base", "fine", "eval"]
  with pytest.raises(ValueError, match="undeclared"):
    grid.toposort([grid.Run("x", "c", "g", deps=("nope",))])
  with pytest.raises(ValueError, match="cycle"):
    grid.toposort([grid.Run("x", "c", "g", deps=("y",)), grid.Run("y", "c", "g", deps=("x",))])
  with pytest.raises(ValueError, match="twice"):
    grid.toposort([grid.Run("x", "c", "g"), grid.Run("x", "c", "g")])


def test_render_tables_claims_and_splice():
  recs = [_rec(f"t_s{s}", "t", s, None, acc=0.6 + 0.01 * s) for s in range(4)]
  recs += [_rec(f"b_s{s}", "b", s, None, acc=0.5) for s in range(4)]
  tables = (grid.Table("Accuracy", (grid.Column("acc", "acc"),)),)
  claims = (grid.Claim("t > b", "treatment wins", "acc", "acc", ("t",), "b", 1, "paper 1 → 2"),)
  text = grid.render("toy", recs, tables, claims, "regen")
  assert text.startswith(grid.BEGIN) and text.endswith(grid.END)
  assert "| t | 4 | 61.5 ± 1.3 |" in text
  assert "| b | 4 | 50.0 ± 0.0 |" in text
  assert "| 4 | +11.50 |" in text and f"**{stats.REPRODUCED}**" in text
  assert "paper 1 → 2" in text
  page = f"# Title\n\nintro\n\n{grid.BEGIN}\nold\n{grid.END}\n\n## Earlier\nkept\n"
  out = grid.splice(page, text, "page.md")
  assert out.startswith("# Title\n\nintro\n\n") and out.endswith("\n\n## Earlier\nkept\n")
  assert "old" not in out and text in out
  with pytest.raises(ValueError, match="page.md"):
    grid.splice("# no markers\n", text, "page.md")
  # Records in any order give the same page.
  assert grid.render("toy", recs[::-1], tables, claims, "regen") == text
  json.dumps(recs)  # records are plain JSON


def test_three_pairs_exclude_zero_exactly_when_signs_agree():
  """The page's legend: with n = 3 the 95 % percentile CI excludes 0 iff all signs agree."""
  assert stats.bootstrap_ci([0.1, 0.5, 2.0])[0] == pytest.approx(0.1)
  assert stats.verdict(stats.bootstrap_ci([0.1, 0.5, 2.0]), 1, 3) == stats.REPRODUCED
  assert stats.verdict(stats.bootstrap_ci([-0.1, 0.5, 2.0]), 1, 3) == stats.INCONCLUSIVE
