"""scripts/repro/otclip.py: the recipe-length grid's InfoNCE row is the reference recipe, and its
evaluation of a shipped base reproduces that base's recorded zero-shot numbers."""

import json
import pathlib

import pytest
from repro import otclip

from clipjax import config_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = REPO / "assets" / "bases" / "base_s0"


def _config(path: str, arg: str):
  return config_lib.load(f"{REPO / path}:{arg}").to_dict()


def test_recipe_infonce_is_the_reference_recipe():
  """`loss=infonce,recipe,seed=s` is `configs/base.py:seed=s`, which trained the shipped bases,
  and an OT loss changes only the method: seeds pair OT runs with the bases."""
  base = _config("configs/base.py", "seed=1")
  assert _config("configs/otclip.py", "loss=infonce,recipe,seed=1") == base
  fgw = _config("configs/otclip.py", "loss=fgw,recipe,seed=1")
  assert fgw["method"]["name"] == "otclip" and fgw["method"]["kwargs"]["loss"] == "fgw"
  assert {**fgw, "method": base["method"]} == base


@pytest.mark.parametrize(
  ("arg", "match"), [("world=longtail", "world='longtail' needs recipe"), ("recipe,small", "small")]
)
def test_bad_recipe_arguments_are_named(arg, match):
  with pytest.raises(ValueError, match=match):
    _config("configs/otclip.py", arg)


def test_grid_evaluates_shipped_bases_as_its_infonce_row():
  runs = {r.name: r for r in otclip.grid(quick=False, seeds=3, bases=0)}
  assert len(runs) == 3 * len(otclip.LOSSES)
  for s in range(3):
    inf = runs[f"infonce_s{s}"]
    assert inf.config == "configs/eval.py" and inf.evaluate == "infer"
    assert f"--config.checkpoint={{repo}}/assets/bases/base_s{s}" in inf.overrides
    assert runs[f"fgw_s{s}"].config == f"configs/otclip.py:loss=fgw,recipe,seed={s}"


def test_infer_on_a_shipped_base_matches_its_prompt_set_record(tmp_path):
  """The eval run's workdir points `infer` at the base; its recipe evaluation (caption prompts,
  posterior rule) and its argmax over the caption prompts' mean directions reproduce
  docs/results/prompt_sets_bases_test.json (same checkpoint, split and 1000 images)."""
  record = json.loads((REPO / "docs/results/prompt_sets_bases_test.json").read_text())
  assert record["split"] == "test" and record["images"] == 1000
  want = record["runs"]["base_s0"]
  (tmp_path / "config.json").write_text(json.dumps({"task": "eval", "checkpoint": str(BASE)}))
  out = otclip.infer(str(tmp_path), n_test=1000, n_longtail=300, aa_grid=[1e-4])
  assert out["checkpoint"] == str(BASE)
  for ls in ("colour", "shape", "size", "position", "colour+shape"):
    got = out["recipe"][f"shapes_test/zeroshot/{ls}/acc1"]
    assert got == pytest.approx(want["captions/posterior"][ls] / 100, abs=1e-9), ls
  for ls in otclip.LABEL_SETS:
    assert out[ls]["argmax"] == pytest.approx(want["captions/mean"][ls] / 100, abs=1e-9), ls
    assert out[ls]["sel_msp_risk@1"] == pytest.approx(1 - out[ls]["argmax"], abs=1e-9), ls
  lt = out["longtail"]
  assert lt["n"] == 300 and lt["prior_converged"] == 1.0
  head, tail = lt["head_tail_counts"]
  assert head > tail  # the long-tailed world's split is skewed
  metrics = otclip.metrics(None, _write(tmp_path, out))
  assert metrics["zs/held_out"] == pytest.approx(
    want["captions/posterior"]["colour+shape/held_out"] / 100, abs=1e-4
  )


def _write(tmp_path, out) -> str:
  (tmp_path / "repro_infer.json").write_text(json.dumps(out))
  return str(tmp_path)
