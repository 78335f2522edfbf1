"""The shipped reference bases (assets/bases/*) load and reproduce their recorded numbers.

Each base directory holds open_clip-layout weights written by clipjax's converter, its tokenizer
and a card.json whose check numbers `scripts/export_base.py` measured on the exported files.
"""

import hashlib
import json
import pathlib

import export_base
import pytest

from clipjax import config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
BASES = sorted((ROOT / "assets" / "bases").glob("*/card.json"))


@pytest.mark.parametrize("card_path", BASES, ids=[p.parent.name for p in BASES])
def test_base_loads_and_matches_its_card(card_path):
  from clipjax import runs
  from clipjax.model import convert

  card = json.loads(card_path.read_text())
  base = card_path.parent
  for name, f in card["files"].items():
    data = (base / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == f["sha256"], name
  assert (base / "open_clip_model.safetensors").stat().st_size <= 10 * 2**20
  state, _ = convert.read_state_dict(base)
  assert convert.detect_layout(state) == "openai"  # open_clip / OpenAI key names
  # A fine-tune or evaluation from this directory picks up its tokenizer by itself.
  assert runs.trained_tokenizer(str(base)) == str(base / "bpe.txt.gz")
  length = card["config"]["data"]["context_length"]
  got = export_base.check_metrics(base, card["data"]["test"], length)
  want = card["check"]["metrics"]
  assert set(got) == set(want)
  # One image of 200 may flip between machines (float32 reduction order), no more.
  for key in want:
    assert abs(got[key] - want[key]) <= 1.0 / card["check"]["images"] + 1e-9, (key, got, want)
  assert (base / "MODEL_CARD.md").read_text() == export_base.model_card(card)


def test_results_page_table_is_generated_from_the_cards():
  table = export_base.bases_table([json.loads(p.read_text()) for p in BASES])
  page = (ROOT / "docs" / "results.md").read_text()
  start = page.index("<!-- bases-table -->\n") + len("<!-- bases-table -->\n")
  assert page[start : page.index("<!-- /bases-table -->")] == table, (
    "regenerate: python scripts/export_base.py --table assets/bases"
  )


def _config(name: str, arg: str):
  return config_lib.load(f"{ROOT}/configs/{name}.py:{arg}")


def test_checkpoint_settings_of_a_shipped_base_rebuild_its_model():
  """A run from an exported base gets its architecture (an exported base loads with the sin-cos
  table folded into learned positions), sizes and tokenizer; its config.json rebuilds it."""
  import clipjax.model as model_lib
  from clipjax import runs

  base = str(BASES[0].parent)
  settings = runs.checkpoint_settings(base)
  loaded = model_lib.load(base).config
  assert loaded.vision.pos_embed == "learned"
  assert settings["data"] == {
    "image_size": loaded.vision.image_size,
    "context_length": loaded.text.context_length,
    "tokenizer": str(BASES[0].parent / "bpe.txt.gz"),
  }
  rebuilt = model_lib.get_config(
    settings["model"]["name"],
    **model_lib.flatten_overrides(settings["model"]["overrides"]),
    **{"vision.image_size": 48, "text.context_length": 16},
  )
  assert rebuilt == loaded


def test_configs_started_from_a_shipped_base_match_it():
  """configs/base.py:init= replaces (not merges) the recipe's model overrides, and a HOT-CLIP
  submodel tokenises its class prompts with the base's own tokenizer."""
  from clipjax.data.tokenizer import Tokenizer

  base = str(BASES[0].parent)
  c = _config("base", f"init={base},fresh_image_tower=True,seed=1")
  assert c.model.init_checkpoint == base and c.data.tokenizer.endswith("bpe.txt.gz")
  assert "pos_embed" not in c.model.overrides.vision  # the recipe's learned+sincos2d is gone
  assert list(c.model.reinit) == [r"visual/.*"]
  assert list(c.optim.frozen) == [r"text/.*", r"logit_scale"]
  sub = _config("hotclip_submodel", f"attack=pgd,prompt=1,init={base}")
  from clipjax.data import registry
  from clipjax.data.sources import label_sets_of

  shape = label_sets_of(registry.build_source(dict(sub.data.train), 48))["shape"]
  tok = Tokenizer(str(BASES[0].parent / "bpe.txt.gz"), context_length=16)
  want = tok([shape.templates[1].format(c) for c in shape.classnames]).astype(int).tolist()
  assert [list(r) for r in sub.method.kwargs.class_ids] == want
  assert max(max(r) for r in want) < tok.vocab_size < Tokenizer().vocab_size
