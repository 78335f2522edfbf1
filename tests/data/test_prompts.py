"""CLIP's class names and templates reach zero-shot on every listed TFDS dataset (mock data)."""

import numpy as np
import pytest

from clipjax.data import prompts
from clipjax.data.sources import TfdsSource

tfds = pytest.importorskip("tensorflow_datasets")

# TFDS name, split, classes, CLIP templates, class 0 (CLIP paper / CLIP_benchmark)
DATASETS = [
  ("imagenet2012", "validation", 1000, 80, "tench"),
  ("imagenet_v2", "test", 1000, 80, "tench"),
  ("imagenet_sketch", "test", 1000, 80, "tench"),
  ("cifar10", "test", 10, 18, "airplane"),
  ("cifar100", "test", 100, 18, "apple"),
  ("food101", "validation", 101, 1, "apple pie"),
  ("oxford_iiit_pet", "test", 37, 1, "Abyssinian"),
  ("oxford_flowers102", "test", 102, 1, "pink primrose"),
  ("stl10", "test", 10, 2, "airplane"),
  ("svhn_cropped", "test", 10, 6, "zero"),
  ("mnist", "test", 10, 1, "0"),
  ("dtd", "test", 47, 8, "banded"),
  ("eurosat/rgb", "train", 10, 3, "annual crop land"),
  ("caltech101", "test", 102, 34, "accordion"),
  ("cars196", "test", 196, 8, "AM General Hummer SUV 2000"),
  ("sun397", "train", 397, 2, "abbey"),
  ("resisc45", "train", 45, 4, "airplane"),
  ("patch_camelyon", "test", 2, 2, "lymph node"),
  ("diabetic_retinopathy_detection", "test", 5, 1, "no diabetic retinopathy"),
  ("dmlab", "test", 6, 1, "nearby apple/melon"),
]


@pytest.mark.parametrize(("name", "split", "n_classes", "n_templates", "first"), DATASETS)
def test_tfds_zero_shot_uses_clip_names_and_templates(name, split, n_classes, n_templates, first):
  with tfds.testing.mock_data(num_examples=3):
    src = TfdsSource(name, split=split, skip_decoding=False)
    ls = src.label_sets["label"]
    ex = src[0]
  assert len(ls.classnames) == n_classes and ls.classnames[0] == first
  assert len(ls.templates) == n_templates and len(set(ls.templates)) == n_templates
  assert all(t.count("{}") == 1 for t in ls.templates)
  assert not any(prompts._WNID.fullmatch(c) for c in ls.classnames)
  assert ex["caption"] == ls.templates[0].format(ls.classnames[ex["labels"]["label"]])


def test_listed_names_follow_the_tfds_label_order():
  """Where TFDS ships real label names, CLIP's list is the same classes in the same order."""
  with tfds.testing.mock_data(num_examples=1):
    pets = TfdsSource("oxford_iiit_pet", split="test", skip_decoding=False)
    flowers = TfdsSource("oxford_flowers102", split="test", skip_decoding=False)
    own_pets = pets._ds.dataset_info.features["label"].names
    own_flowers = flowers._ds.dataset_info.features["label"].names
  norm = [n.replace("_", " ").lower() for n in own_pets]
  assert [n.lower() for n in pets.label_sets["label"].classnames] == norm
  renamed = [(a, b) for a, b in zip(flowers.label_sets["label"].classnames, own_flowers) if a != b]
  # CLIP's own wording for three Oxford labels (ball moss is an air plant), same positions.
  assert renamed == [
    ("globe flower", "globe-flower"),
    ("pink and yellow dahlia", "pink-yellow dahlia?"),
    ("air plant", "ball moss"),
  ]


def test_imagenet_templates_are_the_clip_papers():
  names, templates = prompts.label_set("imagenet2012:5.1.0")
  assert names[:3] == ["tench", "goldfish", "great white shark"]
  assert "itap of a {}." in templates and "a photo of the small {}." in templates
  cifar = prompts.label_set("cifar10")[1]
  assert "a blurry photo of a {}." in cifar and "a photo of the big {}." in cifar


def test_unlisted_datasets_and_refusals():
  names, templates = prompts.label_set("my_builder", ["sea_lion", "/b/beach_house/indoor"])
  assert names == ["sea lion", "beach house indoor"]
  assert templates == list(prompts.GENERIC_TEMPLATES)
  with pytest.raises(ValueError, match="WordNet ids"):
    prompts.label_set("my_imagenet_subset", ["n01440764", "n01443537"])
  with pytest.raises(ValueError, match="200 classes"):
    prompts.label_set("imagenet_a", [f"n{i:08d}" for i in range(1000)])
  with pytest.raises(ValueError, match="has 9 labels but CLIP lists 10"):
    prompts.label_set("cifar10", [str(i) for i in range(9)])


def test_explicit_classnames_and_templates_win():
  with tfds.testing.mock_data(num_examples=2):
    src = TfdsSource(
      "mnist", split="test", classnames=[f"digit {i}" for i in range(10)], skip_decoding=False
    )
    own = TfdsSource("mnist", split="test", templates=["{} !"], skip_decoding=False)
  assert src.label_sets["label"].classnames[3] == "digit 3"
  assert src.label_sets["label"].templates == ['a photo of the number: "{}".']
  assert own.label_sets["label"].templates == ["{} !"]
  assert np.array_equal(own.label_sets["label"].classnames, [str(i) for i in range(10)])
