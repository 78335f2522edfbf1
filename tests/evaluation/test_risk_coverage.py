"""Risk–coverage (selective classification) metrics by hand."""

import numpy as np
import pytest

from clipjax.evaluation import metrics


def test_risk_coverage_curve_by_hand():
  conf = np.array([0.9, 0.1, 0.5, 0.7, 0.5])
  correct = np.array([True, False, False, True, True])
  cov, risk = metrics.risk_coverage_curve(conf, correct)
  # Kept in order 0.9 (ok), 0.7 (ok), 0.5 (wrong, first of the tie), 0.5 (ok), 0.1 (wrong).
  np.testing.assert_allclose(cov, [0.2, 0.4, 0.6, 0.8, 1.0])
  np.testing.assert_allclose(risk, [0, 0, 1 / 3, 1 / 4, 2 / 5])


def test_selective_risk_by_hand():
  # Confidences order the errors last: kept in order ok, ok, wrong, wrong.
  got = metrics.selective_risk(
    np.array([0.9, 0.8, 0.2, 0.1]), np.array([True, True, False, False]), (0.5, 0.75, 1.0)
  )
  want = {"risk@0.5": 0.0, "risk@0.75": 1 / 3, "risk@1": 0.5, "aurc": (1 / 3 + 0.5) / 4}
  assert got == pytest.approx(want)
  with pytest.raises(ValueError, match=r"coverages must lie in \(0, 1\]"):
    metrics.selective_risk(np.ones(3), np.ones(3, bool), (0.0,))
