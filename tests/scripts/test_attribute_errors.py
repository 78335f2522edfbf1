"""scripts/attribute_errors.py: its per-group rows add up to the base card's recorded accuracy,
and every error it lists is a real confusion of the label set."""

import json
import pathlib

import attribute_errors
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = REPO / "assets" / "bases" / "base_s0"


def test_rows_add_up_to_the_cards_size_accuracy(tmp_path, capsys):
  card = json.loads((BASE / "card.json").read_text())
  images = card["check"]["images"]
  out = tmp_path / "rows.json"
  args = [str(BASE), "--label-set", "size", "--by", "shape", "--prompts", "default"]
  attribute_errors.main([*args, "--images", str(images), "--out", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert sum(r["n"] for r in rows.values()) == images
  correct = sum(r["correct"] for r in rows.values())
  wrong = sum(sum(r["confusions"].values()) for r in rows.values())
  assert correct + wrong == images
  assert all(abs(r["acc"] - 100 * r["correct"] / r["n"]) < 0.01 for r in rows.values())
  want = card["check"]["metrics"]["shapes_test/zeroshot/size/acc1"]
  assert abs(correct / images - want) <= 1 / images + 1e-9
  for r in rows.values():
    for pair in r["confusions"]:
      t, p = pair.split(" -> ")
      assert t != p and {t, p} <= {"small", "large"}
  assert capsys.readouterr().out.startswith("| shape | images |")


def test_unknown_label_set_is_named():
  with pytest.raises(ValueError, match="'texture'"):
    attribute_errors.breakdown(
      str(BASE), "texture", "shape", prompts="default", split="test", images=4
    )
