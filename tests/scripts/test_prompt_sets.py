"""scripts/prompt_sets.py: its "default" row is the shipped base's own recorded check numbers,
its table is built from the record, and it names a bad checkpoint."""

import json
import pathlib

import prompt_sets
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = REPO / "assets" / "bases" / "base_s0"


def test_default_prompts_give_the_base_cards_numbers():
  card = json.loads((BASE / "card.json").read_text())
  images = card["check"]["images"]
  got = prompt_sets.evaluate(
    str(BASE), "test", images, rules=("default/mean", "captions/posterior")
  )
  for key, want in card["check"]["metrics"].items():
    label_set = key.split("/")[2]
    # One image of 200 may flip between machines (float32 reduction order), as in test_bases.
    assert abs(got["default/mean"][label_set] - 100 * want) <= 100 / images + 1e-6, (key, got)
  assert set(got["captions/posterior"]) == set(got["default/mean"])
  assert "colour+shape/held_out" in got["captions/posterior"]


def test_table_rows_and_means_come_from_the_record():
  record = {
    "split": "val",
    "images": 10,
    "rules": ["default/mean", "captions/posterior"],
    "runs": {
      "a": {
        "default/mean": {"colour": 90.0, "size": 50.0},
        "captions/posterior": {"colour": 100.0, "size": 70.0},
      },
      "b": {
        "default/mean": {"colour": 80.0, "size": 60.0},
        "captions/posterior": {"colour": 90.0, "size": 80.0},
      },
    },
  }
  lines = prompt_sets.table(record).splitlines()
  assert lines[0] == "| checkpoint | prompts / rule | colour | size |"
  assert "| a | captions/posterior | 100.0 | 70.0 |" in lines
  assert lines[-2:] == [
    "| mean of 2 | default/mean | **85.0** | **55.0** |",
    "| mean of 2 | captions/posterior | **95.0** | **75.0** |",
  ]
  del record["runs"]["b"]
  assert prompt_sets.table(record).splitlines()[-1] == "| a | captions/posterior | 100.0 | 70.0 |"


def test_a_missing_checkpoint_is_named(tmp_path, capsys):
  with pytest.raises(SystemExit):
    prompt_sets.main(["run", str(tmp_path / "nope"), "--out", str(tmp_path / "r.json")])
  assert "nope" in capsys.readouterr().err
  with pytest.raises(ValueError, match="card.json"):
    prompt_sets.evaluate(str(tmp_path), "val", 10)


@pytest.mark.parametrize("what", ["bases", "quickstart"])
@pytest.mark.parametrize("split", ["val", "test"])
def test_results_page_tables_are_generated_from_the_records(what, split):
  name = f"prompt_sets_{what}_{split}"
  record = json.loads((REPO / "docs/results" / f"{name}.json").read_text())
  runs = {"base_s0", "base_s1", "base_s2"} if what == "bases" else {"clipjax_quickstart"}
  assert record["split"] == split and set(record["runs"]) == runs
  page = (REPO / "docs" / "results.md").read_text()
  tag = f"<!-- {name.replace('_', '-')} -->\n"
  start = page.index(tag) + len(tag)
  end = page.index(f"<!-- /{name.replace('_', '-')} -->")
  want = prompt_sets.table(record)
  assert page[start:end] == want, f"regenerate: python scripts/prompt_sets.py table {name}.json"
