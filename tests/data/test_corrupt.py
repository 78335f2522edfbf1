"""Corruption wrappers: exact fractions, derangements, targets, triggers and kept ground truth."""

import numpy as np
import pytest

from clipjax.data.corrupt import Backdoor, NoisyCorrespondence, TargetedPoisoning, add_trigger
from clipjax.data.sources import ArraySource, LabelSet
from clipjax.data.synthetic import SyntheticShapes


def _src(split="train", n=400, seed=0):
  return SyntheticShapes(split, image_size=32, num_examples=n, seed=seed)


def test_noisy_correspondence_is_a_derangement_with_ground_truth():
  src = _src(n=1000)
  noisy = NoisyCorrespondence(src, fraction=0.2, seed=5)
  bad = noisy.corrupted_indices()
  assert bad.size == 200 and np.unique(bad).size == 200
  donors = []
  for i in range(len(noisy)):
    ex = noisy.get_text(i)
    assert ex["clean_index"] == i and ex["clean_caption"] == src.get_text(i)["caption"]
    assert not ex["is_poisoned"] and not ex["is_backdoor"]
    if i in set(bad.tolist()):
      assert ex["is_noisy"] and ex["caption_index"] != i
      assert ex["caption"] == src.get_text(ex["caption_index"])["caption"]
      assert ex["labels"] == src.get_text(i)["labels"]
      donors.append(ex["caption_index"])
    else:
      assert not ex["is_noisy"] and ex["caption"] == ex["clean_caption"]
  # The donors are a permutation of the chosen pairs with no fixed point.
  assert sorted(donors) == bad.tolist()
  full = noisy[int(bad[0])]
  np.testing.assert_array_equal(full["image"], src[int(bad[0])]["image"])
  again = NoisyCorrespondence(src, fraction=0.2, seed=5)
  np.testing.assert_array_equal(again.corrupted_indices(), bad)
  other = NoisyCorrespondence(src, fraction=0.2, seed=6)
  assert not np.array_equal(other.corrupted_indices(), bad)
  assert NoisyCorrespondence(src, fraction=0.0).corrupted_indices().size == 0
  with pytest.raises(ValueError, match="fraction"):
    NoisyCorrespondence(src, fraction=1.5)


def test_targeted_poisoning_follows_roclip_protocol():
  train, test = _src(n=3000), _src("test", n=200)
  pois = TargetedPoisoning(
    train, test, label_set="colour+shape", num_targets=3, captions_per_target=20, seed=1
  )
  assert len(pois) == 3000 + 60
  np.testing.assert_array_equal(pois.corrupted_indices(), np.arange(3000, 3060))
  targets = pois.poison_targets
  held_out = set(train.label_sets["colour+shape"].held_out)
  for t in targets:
    assert t["target_label"] != t["true_label"] and t["target_label"] not in held_out
    assert t["true_label"] == test.get_text(t["image_index"])["labels"]["colour+shape"]
  donors = set()
  for j in range(60):
    ex = pois[3000 + j]
    t = targets[j // 20]
    assert ex["is_poisoned"] and not ex["is_noisy"] and ex["clean_index"] == -1
    np.testing.assert_array_equal(ex["image"], test[t["image_index"]]["image"])
    donor = train.get_text(ex["caption_index"])
    assert donor["labels"]["colour+shape"] == t["target_label"]
    assert donor["caption"] == ex["caption"]
    assert ex["clean_caption"] == test.get_text(t["image_index"])["caption"]
    donors.add(ex["caption_index"])
  assert len(donors) == 60
  assert not pois[5]["is_poisoned"] and pois[5]["caption"] == train[5]["caption"]
  asr = pois.asr_source()
  assert len(asr) == 3
  assert [asr[k]["labels"]["colour+shape"] for k in range(3)] == [
    t["target_label"] for t in targets
  ]


def test_poisoning_unlabelled_source_matches_class_words():
  captions = [f"a photo of a {w}" for w in ["cat", "dog", "tiger", "cat", "tiger", "tigers"]] * 5
  train = ArraySource(np.zeros((30, 4, 4, 3), np.uint8), captions, name="tiny")
  ls = LabelSet("animal", ["cat", "dog", "tiger"], ["a photo of a {}."])
  images = ArraySource(
    np.zeros((2, 4, 4, 3), np.uint8),
    ["x", "y"],
    labels={"animal": [0, 1]},
    label_sets={"animal": ls},
  )
  pois = TargetedPoisoning(
    train, images, label_set="animal", targets=[(0, 2), (1, 0)], captions_per_target=4
  )
  assert [pois[30 + k]["caption"] for k in range(4)] == ["a photo of a tiger"] * 4
  assert [pois[34 + k]["caption"] for k in range(4)] == ["a photo of a cat"] * 4
  with pytest.raises(ValueError, match="lack captions"):
    TargetedPoisoning(train, images, label_set="animal", targets=[(0, 2)], captions_per_target=11)


def test_add_trigger_checkerboard_in_corner():
  img = np.full((32, 40, 3), 100, np.uint8)
  out = add_trigger(img, patch_fraction=0.25, corner="bottom_right")
  assert np.array_equal(img, np.full((32, 40, 3), 100, np.uint8))
  patch = out[-8:, -8:, 0]
  assert set(np.unique(patch).tolist()) == {0, 255}
  assert patch[0, 0] == 0 and patch[0, 2] == 255 and patch[2, 2] == 0
  assert np.all(out[:-8] == 100) and np.all(out[:, :-8] == 100)
  tl = add_trigger(img, patch_fraction=0.25, corner="top_left")
  assert np.all(tl[8:] == 100) and not np.all(tl[:8, :8] == 100)


def test_backdoor_fraction_trigger_and_captions():
  src = _src(n=500)
  bd = Backdoor(src, fraction=0.1, label_set="shape", target_class=3, seed=2, patch_fraction=0.25)
  chosen = set(bd.corrupted_indices().tolist())
  assert len(chosen) == 50
  for i in range(0, 500, 7):
    ex = bd[i]
    clean = src[i]
    if i in chosen:
      assert ex["is_backdoor"] and ex["labels"] == clean["labels"]
      assert src.get_text(ex["caption_index"])["labels"]["shape"] == 3
      np.testing.assert_array_equal(ex["image"], add_trigger(clean["image"], patch_fraction=0.25))
      assert ex["clean_caption"] == clean["caption"]
    else:
      assert not ex["is_backdoor"] and ex["caption"] == clean["caption"]
      np.testing.assert_array_equal(ex["image"], clean["image"])
  val = _src("val", n=60)
  trig = bd.triggered_source(val)
  kept = [i for i in range(60) if val.get_text(i)["labels"]["shape"] != 3]
  assert len(trig) == len(kept)
  ex = trig[0]
  assert ex["labels"] == {"shape": 3} and ex["source_index"] == kept[0]
  np.testing.assert_array_equal(ex["image"], bd.apply_trigger(val[kept[0]]["image"]))


def test_wrappers_compose_and_keep_flags():
  src = _src(n=300)
  both = NoisyCorrespondence(
    Backdoor(src, fraction=0.2, label_set="colour", target_class=0, seed=0), fraction=0.3, seed=0
  )
  inner = both.source.corrupted_indices()
  outer = both.corrupted_indices()
  for i in range(300):
    ex = both.get_text(i)
    assert ex["is_backdoor"] == (i in inner) and ex["is_noisy"] == (i in outer)
    assert ex["clean_caption"] == src.get_text(i)["caption"]
