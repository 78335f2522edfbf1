"""scripts/cola_text_rank.py on a shipped base: counts and energy shares are consistent."""

import pathlib

import cola_text_rank
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = REPO / "assets" / "bases" / "base_s0"


@pytest.mark.skipif(not (BASE / "card.json").exists(), reason="needs the shipped base_s0")
def test_text_rank_of_a_shipped_base():
  rich = cola_text_rank.text_rank(str(BASE), "label_set=colour+shape,templates=rich,components=64")
  assert (rich["features"], rich["width"], rich["C"]) == (360, 128, 64)
  assert 1 <= rich["dims_99"] <= rich["dims_999"] <= 128
  assert 0.0 <= rich["energy_outside_C"] <= 1.0
  # C = 4 directions cannot hold 99 % of a feature set that needs more than 4 for it.
  small = cola_text_rank.text_rank(str(BASE), "label_set=colour+shape,templates=rich,components=4")
  assert small["C"] == 4
  assert (small["energy_outside_C"] > 0.01) == (rich["dims_99"] > 4)
