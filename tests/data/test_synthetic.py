"""Synthetic shapes world and digits: determinism, held-out splits, captions and pixels agree."""

import re
import sys

import numpy as np
import pytest

from clipjax.data.digits import DIGIT_WORDS, DigitsSource
from clipjax.data.synthetic import (
  CAPTION_TEMPLATES,
  COLOURS,
  POSITIONS,
  SHAPES,
  SyntheticShapes,
  parse_caption,
)


def test_deterministic_by_seed_and_index():
  a = SyntheticShapes("train", image_size=32, seed=3)
  b = SyntheticShapes("train", image_size=32, seed=3)
  order = [7, 0, 123, 7]
  for i in order:
    ea, eb = a[i], b[i]
    np.testing.assert_array_equal(ea["image"], eb["image"])
    assert ea["caption"] == eb["caption"] and ea["labels"] == eb["labels"]
  # Access order does not matter, and get_text agrees with __getitem__.
  first = a[123]
  for i in range(5):
    a[i]
  np.testing.assert_array_equal(a[123]["image"], first["image"])
  assert a.get_text(123)["caption"] == first["caption"]
  other = SyntheticShapes("train", image_size=32, seed=4)
  assert any(other[i]["caption"] != a[i]["caption"] for i in range(10))
  val = SyntheticShapes("val", image_size=32, seed=3)
  assert any(val[i]["caption"] != a[i]["caption"] for i in range(10))


def test_held_out_combos_only_outside_train():
  train = SyntheticShapes("train", image_size=32, seed=1, num_examples=3000)
  val = SyntheticShapes("val", image_size=32, seed=1, num_examples=3000)
  ls = train.label_sets["colour+shape"]
  assert len(ls.held_out) == 5
  assert [ls.classnames[k] for k in ls.held_out] == [f"{c} {s}" for c, s in train.held_out_combos]
  # Every colour and every shape stays in training with other partners.
  assert len({c for c, _ in train.held_out_combos}) == 5
  assert len({s for _, s in train.held_out_combos}) == 5
  train_combos = {train.get_text(i)["labels"]["colour+shape"] for i in range(3000)}
  val_combos = {val.get_text(i)["labels"]["colour+shape"] for i in range(3000)}
  assert not train_combos & set(ls.held_out)
  assert train_combos == set(range(30)) - set(ls.held_out)
  assert val_combos == set(range(30))
  explicit = SyntheticShapes("train", held_out=[("red", "star")], num_examples=500)
  assert explicit.held_out_combos == [("red", "star")]
  assert all(explicit.get_text(i)["caption"].find("red star") < 0 for i in range(500))


def test_captions_name_the_attributes():
  src = SyntheticShapes("val", image_size=32, seed=0, fills=("solid", "striped"))
  seen_templates = set()
  for i in range(200):
    ex = src.get_text(i)
    lab = ex["labels"]
    assert ex["caption"] in ex["captions"] and len(set(ex["captions"])) == len(ex["captions"])
    seen_templates.add(ex["captions"].index(ex["caption"]))
    for cap in ex["captions"]:
      words = parse_caption(cap, src)
      assert words["colour"] == src.colours[lab["colour"]], cap
      assert words["shape"] == src.shapes[lab["shape"]], cap
      assert words["size"] == src.sizes[lab["size"]], cap
      assert words["pos"] == POSITIONS[lab["position"]], cap
      assert words["fill"] == (None if lab["fill"] == 0 else "striped"), cap
      assert " a orange" not in cap and not cap.startswith("a orange")
  assert len(seen_templates) == 10
  assert lab["colour+shape"] == lab["colour"] * len(src.shapes) + lab["shape"]


def test_pixels_show_colour_position_and_size():
  """Oracle: the saturated pixels have the labelled colour, lie in the labelled grid cell, and
  large shapes cover more pixels than small ones."""
  src = SyntheticShapes("val", image_size=48, seed=0, num_examples=300)
  palette = np.array([COLOURS[c] for c in src.colours], np.float32)
  areas = {0: [], 1: []}
  for i in range(300):
    ex = src[i]
    img = ex["image"].astype(np.float32)
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (48, 48, 3)
    sat = img.max(-1) - img.min(-1)
    fg = sat > 60
    assert fg.sum() > 20, i
    mean = img[fg].mean(0)
    assert int(np.argmin(((palette - mean) ** 2).sum(-1))) == ex["labels"]["colour"], i
    ys, xs = np.nonzero(fg)
    cell = 3 * int(ys.mean() * 3 // 48) + int(xs.mean() * 3 // 48)
    assert cell == ex["labels"]["position"], i
    areas[ex["labels"]["size"]].append(fg.sum())
  assert np.median(areas[1]) > 1.8 * np.median(areas[0])


def test_shapes_are_distinct_masks():
  src = SyntheticShapes(
    "val",
    image_size=32,
    shapes=("circle", "square", "triangle", "star", "cross", "diamond", "ring"),
  )
  masks = {k: v > 0 for k, v in src._templates.items()}
  names = list(masks)
  for a in range(len(names)):
    for b in range(a + 1, len(names)):
      ma, mb = masks[names[a]], masks[names[b]]
      iou = (ma & mb).sum() / (ma | mb).sum()
      assert iou < 0.85, (names[a], names[b], iou)


def test_bad_configuration_errors():
  with pytest.raises(ValueError, match="shape"):
    SyntheticShapes(shapes=("circle", "blob"))
  with pytest.raises(ValueError, match="split"):
    SyntheticShapes("dev")
  with pytest.raises(IndexError, match="out of range"):
    SyntheticShapes(num_examples=3)[3]


def test_digits_splits_captions_and_images():
  parts = {s: DigitsSource(s, image_size=24) for s in ("train", "val", "test")}
  rows = [
    set(int(parts[s].get_text(i)["sklearn_index"]) for i in range(len(parts[s]))) for s in parts
  ]
  assert sum(len(r) for r in rows) == 1797 and len(set().union(*rows)) == 1797
  src = parts["val"]
  assert src.label_sets["digit"].classnames == list(DIGIT_WORDS)
  for i in range(0, len(src), 25):
    ex = src[i]
    d = ex["labels"]["digit"]
    assert ex["image"].shape == (24, 24, 3) and ex["image"].dtype == np.uint8
    for cap in ex["captions"]:
      named = {w for w in re.findall(r"[a-z0-9]+", cap) if w in DIGIT_WORDS or w.isdigit()}
      assert named in ({DIGIT_WORDS[d]}, {str(d)}), cap
  np.testing.assert_array_equal(DigitsSource("val", image_size=24)[5]["image"], src[5]["image"])


def test_digits_without_sklearn_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
  with pytest.raises(ImportError, match=r"pip install clipjax\[digits\]"):
    DigitsSource("train")


def test_world_options_leave_the_default_world_unchanged():
  """Images and captions of the default world, pinned when the options were added."""
  import hashlib

  h = hashlib.sha256()
  for split in ("train", "test"):
    src = SyntheticShapes(split, image_size=48, seed=0, fills=("solid", "striped"))
    for i in range(20):
      ex = src[i]
      h.update(ex["image"].tobytes())
      h.update(ex["caption"].encode())
  assert h.hexdigest() == "8740fba504b8f667508fe712bc59beb83147b59ada45c09386838b73890d513b"


def test_second_object_captions_tell_images_apart_and_parse_back():
  from clipjax.data.synthetic import SECOND_OBJECT_SIZE

  plain = SyntheticShapes("test", image_size=48, seed=0, num_examples=500)
  two = SyntheticShapes("test", image_size=48, seed=0, num_examples=500, second_object=True)
  # Same main objects; the second object makes (almost) every caption unique.
  assert all(plain.attributes(i).shape == two.attributes(i).shape for i in range(50))
  caps_plain = {plain.get_text(i)["caption"] for i in range(500)}
  caps_two = {two.get_text(i)["caption"] for i in range(500)}
  assert len(caps_two) > len(caps_plain) and len(caps_two) >= 495
  for i in range(40):
    a, ex = two.attributes(i), two[i]
    words = parse_caption(ex["caption"], two)
    assert words["colour"] == two.colours[a.colour] and words["shape"] == two.shapes[a.shape]
    assert words["pos"] == POSITIONS[a.position]
    assert words["second_colour"] == two.colours[a.second_colour]
    assert words["second_shape"] == two.shapes[a.second_shape]
    assert words["second_pos"] == POSITIONS[a.second_position] != words["pos"]
    # The second object is drawn in its cell, in its exact colour, at its centre pixel.
    row, col = divmod(a.second_position, 3)
    y, x = int((0.2 + 0.3 * row) * 48), int((0.2 + 0.3 * col) * 48)
    np.testing.assert_array_equal(ex["image"][y, x], COLOURS[two.colours[a.second_colour]])
  assert SECOND_OBJECT_SIZE < 0.13  # smaller than the smallest main object


def test_long_tail_prior_is_exact_and_followed():
  src = SyntheticShapes("test", image_size=32, seed=0, num_examples=6000, long_tail=10.0)
  prior = src.class_prior("colour+shape")
  assert prior.shape == (30,) and abs(prior.sum() - 1) < 1e-12
  np.testing.assert_allclose(prior.max() / prior.min(), 10.0)
  labels = [src.get_text(i)["labels"]["colour+shape"] for i in range(6000)]
  counts = np.bincount(labels, minlength=30)
  # Multinomial sampling: every class within 5 standard deviations of its expectation.
  sd = np.sqrt(6000 * prior * (1 - prior))
  assert np.all(np.abs(counts - 6000 * prior) < 5 * sd)
  np.testing.assert_allclose(src.class_prior("shape"), prior.reshape(6, 5).sum(0))
  # Train keeps the same head/tail order but never draws the held-out combinations.
  train = SyntheticShapes("train", image_size=32, seed=0, long_tail=10.0)
  p_train = train.class_prior("colour+shape")
  held = list(train.label_sets["colour+shape"].held_out)
  assert np.all(p_train[held] == 0) and abs(p_train.sum() - 1) < 1e-12
  seen = np.setdiff1d(np.arange(30), held)
  assert np.argmax(p_train) == seen[np.argmax(prior[seen])]
  with pytest.raises(ValueError, match="long_tail"):
    SyntheticShapes("test", long_tail=0.5)


def test_rich_label_templates():
  src = SyntheticShapes(
    "test", image_size=32, colours=tuple(COLOURS), shapes=SHAPES, label_templates="rich"
  )
  ls = src.label_sets["colour+shape"]
  assert len(ls.classnames) == 77 and len(ls.templates) == 12
  prompts = ls.prompts()
  assert len({p for row in prompts for p in row}) == 77 * 12
  default = SyntheticShapes("test", image_size=32).label_sets
  assert all(src.label_sets[k].templates[:3] == default[k].templates for k in default)
  with pytest.raises(ValueError, match="label_templates"):
    SyntheticShapes("test", label_templates="fancy")


@pytest.mark.parametrize("colours", [("red", "green", "blue"), ("red", "orange", "blue")])
def test_caption_prompts_are_every_caption_of_their_class(colours):
  """label_templates="captions": class k's prompts are exactly the world's captions whose label
  is k (the templates with the slot after "a" only while no class name starts with a vowel)."""
  src = SyntheticShapes(
    "test",
    image_size=24,
    colours=colours,
    shapes=("circle", "star"),
    num_held_out=1,
    label_templates="captions",
  )
  keys = {"colour": "colour", "shape": "shape", "size": "size", "position": "pos"}
  for name, ls in src.label_sets.items():
    for k, row in enumerate(ls.prompts()):
      assert len(set(row)) == len(row), name
      for prompt in row:
        found = parse_caption(prompt, src)
        assert None not in (found["colour"], found["shape"], found["size"], found["pos"]), prompt
        if name == "colour+shape":
          assert f"{found['colour']} {found['shape']}" == ls.classnames[k], prompt
        else:
          assert found[keys[name]] == ls.classnames[k], prompt
    # Every full caption of an example is among its class's prompts, except those of the
    # templates without the slot (colour and shape apart) or with the slot after "a" (a vowel).
    slot = {"colour+shape": "{colour} {shape}", "position": "{pos}"}.get(name, "{" + name + "}")
    vowel = any(c[0] in "aeiou" for c in ls.classnames)
    kept = [slot in t and not (vowel and f"a {slot}" in t) for t in CAPTION_TEMPLATES]
    assert len(ls.templates) == len(set(ls.templates)) and any(kept)
    for i in range(20):
      ex = src[i]
      row = set(ls.prompts()[ex["labels"][name]])
      assert [cap in row for cap in ex["captions"]] == kept, (name, ex["captions"])
  has_a_slot = any(p.startswith("a red ") for p in src.label_sets["colour"].prompts()[0])
  assert has_a_slot == ("orange" not in colours)
  assert src.label_sets.keys() == SyntheticShapes("test").label_sets.keys()


def test_partial_captions_name_a_true_subset_and_change_nothing_else():
  full = SyntheticShapes("train", image_size=24)
  part = SyntheticShapes("train", image_size=24, partial_captions=1.0)
  some = SyntheticShapes("train", image_size=24, partial_captions=0.3)
  n_partial = 0
  for i in range(60):
    a, b = full[i], part[i]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["captions"] == b["captions"] and a["labels"] == b["labels"]
    words = full._words(full.attributes(i))
    named = [
      k for k in ("size", "colour", "shape", "pos") if re.search(rf"\b{words[k]}\b", b["caption"])
    ]
    assert 1 <= len(named) <= 3, b["caption"]  # a proper, non-empty subset of the attributes
    # Every word of the caption is an attribute word, a generic noun, or glue.
    glue = {"a", "an", "in", "the", "shape", "object", "thing", "figure"} | set(
      " ".join(words.values()).split()
    )
    assert set(b["caption"].split()) <= glue, b["caption"]
    n_partial += some[i]["caption"] not in some[i]["captions"]
  assert 8 <= n_partial <= 30  # ~0.3 of 60
  with pytest.raises(ValueError, match="partial_captions is a probability"):
    SyntheticShapes("train", partial_captions=1.5)


def test_partial_captions_without_shape_never_name_the_shape():
  full = SyntheticShapes("train", image_size=24)
  part = SyntheticShapes("train", image_size=24, partial_captions=1.0, partial_subsets="no_shape")
  subsets = set()
  for i in range(80):
    words = full._words(full.attributes(i))
    caption = part.get_text(i)["caption"]
    assert not re.search(rf"\b{words['shape']}\b", caption), caption
    named = tuple(k for k in ("size", "colour", "pos") if re.search(rf"\b{words[k]}\b", caption))
    assert named, caption
    subsets.add(named)
  assert len(subsets) == 7  # every non-empty subset of size, colour, position occurs
  with pytest.raises(ValueError, match="partial_subsets must be one of"):
    SyntheticShapes("train", partial_subsets="some")


def test_single_attribute_partial_captions_name_exactly_one_attribute():
  full = SyntheticShapes("train", image_size=24)
  part = SyntheticShapes("train", image_size=24, partial_captions=1.0, partial_subsets="single")
  seen = set()
  for i in range(80):
    words = full._words(full.attributes(i))
    caption = part.get_text(i)["caption"]
    named = [
      k for k in ("size", "colour", "shape", "pos") if re.search(rf"\b{words[k]}\b", caption)
    ]
    assert len(named) == 1, caption
    seen.add(named[0])
  assert seen == {"size", "colour", "shape", "pos"}
