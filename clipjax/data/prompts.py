"""CLIP's class names and prompt templates for zero-shot classification of TFDS datasets.

`zeroshot_prompts.json` (next to this file) holds the class names and templates of CLIP (Radford
et al. 2021: OpenAI's 80 ImageNet templates and the per-dataset lists of the CLIP repository's
`data/prompts.md`) exactly as CLIP_benchmark 1.6 uses them (its `en_classnames.json` and
`en_zeroshot_classification_templates.json`), so that zero-shot numbers are comparable with
published ones. Every template has one "{}" for the class name.

`label_set(tfds_name, label_names)` maps a TFDS dataset to them. Where CLIP_benchmark lists no
class names it takes the dataset's own, and so does clipjax, cleaned the same way
(`clean_classname`: "apple_pie" -> "apple pie", SUN397's "/a/apartment_building/outdoor" ->
"apartment building outdoor"). A dataset not in `TFDS_DATASETS` gets its own cleaned label names
and `GENERIC_TEMPLATES`; label names that are WordNet ids ("n01440764") are refused, since
prompting with them gives near-chance accuracy.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
from collections.abc import Sequence

__all__ = [
  "GENERIC_TEMPLATES",
  "TFDS_DATASETS",
  "clean_classname",
  "dataset_templates",
  "label_set",
  "templates",
]

_DATA = pathlib.Path(__file__).with_name("zeroshot_prompts.json")

GENERIC_TEMPLATES = ("a photo of a {}.",)
"""Templates for datasets CLIP lists none for (CLIP's single default prompt)."""

# TFDS dataset (base name, without "/config" or ":version") -> CLIP_benchmark dataset.
TFDS_DATASETS = {
  "imagenet2012": "imagenet1k",
  "imagenet_v2": "imagenet1k",
  "imagenet_sketch": "imagenet1k",
  "cifar10": "cifar10",
  "cifar100": "cifar100",
  "food101": "food101",
  "oxford_iiit_pet": "pets",
  "oxford_flowers102": "flowers",
  "stl10": "stl10",
  "svhn_cropped": "svhn",
  "mnist": "mnist",
  "dtd": "dtd",
  "eurosat": "eurosat",
  "caltech101": "caltech101",
  "cars196": "cars",
  "sun397": "sun397",
  "resisc45": "resisc45",
  "patch_camelyon": "pcam",
  "diabetic_retinopathy_detection": "diabetic_retinopathy",
  "dmlab": "dmlab",
}

# TFDS stores these in ImageNet-1k's 1000-class label space, but CLIP_benchmark scores them over
# their 200 classes only; a 1000-way classifier would give numbers that compare with nothing.
_SUBSET_DATASETS = {"imagenet_a": 200, "imagenet_r": 200}

_WNID = re.compile(r"n\d{8}")


@functools.cache
def _table() -> dict[str, dict[str, list[str]]]:
  return json.loads(_DATA.read_text(encoding="utf-8"))


def templates(clip_benchmark_name: str) -> tuple[str, ...]:
  """CLIP's templates of a CLIP_benchmark dataset (e.g. "imagenet1k": the 80 ImageNet ones)."""
  table = _table()["templates"]
  if clip_benchmark_name not in table:
    raise KeyError(f"no templates for {clip_benchmark_name!r}; listed: {sorted(table)}")
  return tuple(table[clip_benchmark_name])


def _base(dataset: str) -> str:
  return dataset.split(":")[0].split("/")[0]


def dataset_templates(dataset: str) -> list[str]:
  """CLIP's templates for a TFDS dataset, or `GENERIC_TEMPLATES` for one it lists none for."""
  key = TFDS_DATASETS.get(_base(dataset))
  return list(templates(key) if key else GENERIC_TEMPLATES)


def clean_classname(name: str) -> str:
  """TFDS label name -> prompt word, as CLIP_benchmark cleans dataset names.

  "maple_tree" -> "maple tree"; SUN397's "/a/apartment_building/outdoor" -> "apartment building
  outdoor" (the "/letter/" prefix dropped, "_" and "/" become spaces).
  """
  name = re.sub(r"^/[a-z]/", "", name)
  return " ".join(name.replace("_", " ").replace("/", " ").split())


def label_set(
  dataset: str, label_names: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
  """Class names and templates for a TFDS dataset.

  Args:
    dataset: TFDS name (a "/config" or ":version" suffix is ignored).
    label_names: the dataset's own label names (`info.features["label"].names`); used where
      CLIP lists no class names, and checked against the listed ones' count otherwise.

  Returns:
    `(classnames, templates)`.

  Raises:
    ValueError: a subset-scored dataset (ImageNet-A/R), a class-count mismatch, missing label
      names, or label names that are WordNet ids.
  """
  base = _base(dataset)
  if base in _SUBSET_DATASETS:
    raise ValueError(
      f"{dataset}: CLIP_benchmark scores it over its {_SUBSET_DATASETS[base]} classes, while "
      "TFDS labels it in ImageNet-1k's 1000; pass the subset's `classnames` and `templates` "
      "to the data spec and remap the labels, or evaluate imagenet2012"
    )
  key = TFDS_DATASETS.get(base)
  listed = _table()["classnames"].get(key) if key else None
  if listed is not None:
    if label_names is not None and len(label_names) != len(listed):
      raise ValueError(
        f"{dataset}: dataset has {len(label_names)} labels but CLIP lists {len(listed)} class "
        f"names for {key!r}"
      )
    return list(listed), dataset_templates(dataset)
  if label_names is None:
    raise ValueError(f"{dataset}: no class names listed; pass the dataset's label_names")
  wnids = [n for n in label_names if _WNID.fullmatch(n)]
  if wnids:
    raise ValueError(
      f"{dataset}: label names are WordNet ids ({wnids[0]!r}, ...); prompts need words: pass "
      "`classnames` (e.g. CLIP's ImageNet names: clipjax.data.prompts.label_set('imagenet2012'))"
    )
  return [clean_classname(n) for n in label_names], dataset_templates(dataset)
