"""Builds sources from config dicts: `build_source({"name": "synthetic", "split": "train"}, 48)`.

A spec is a plain mapping with `name` (one of `SOURCES`), the source's own keyword arguments,
and an optional `corrupt` mapping `{"kind": "noisy" | "poison" | "backdoor", ...}` whose other
keys go to the corruption wrapper (for "poison", `image_split` names the split the target images
are drawn from, default "test").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from clipjax.data import corrupt, digits, sources, synthetic

__all__ = ["CORRUPTIONS", "SOURCES", "build_source", "world_vocabulary_texts"]


def _synthetic(image_size: int, **kw: Any) -> Any:
  return synthetic.SyntheticShapes(image_size=image_size, **kw)


def _digits(image_size: int, **kw: Any) -> Any:
  return digits.DigitsSource(image_size=image_size, **kw)


def _folder(image_size: int, *, table: str, **kw: Any) -> Any:
  del image_size
  return sources.FolderSource(table, **kw)


def _array_record(image_size: int, *, paths: Any) -> Any:
  del image_size
  return sources.ArrayRecordSource(paths)


def _tfds(image_size: int, *, tfds_name: str | None = None, **kw: Any) -> Any:
  del image_size
  return sources.TfdsSource(tfds_name, **kw)


SOURCES: dict[str, Callable[..., Any]] = {
  "synthetic": _synthetic,
  "digits": _digits,
  "folder": _folder,
  "array_record": _array_record,
  "tfds": _tfds,
}

CORRUPTIONS = ("noisy", "poison", "backdoor")


def build_source(spec: Mapping[str, Any], image_size: int) -> Any:
  """Source (optionally corrupted) from a spec; errors name the offending key."""
  spec = dict(spec)
  if "name" not in spec:
    raise ValueError(f"Data spec {spec} has no 'name'; valid names: {sorted(SOURCES)}.")
  name = spec.pop("name")
  if name not in SOURCES:
    raise ValueError(f"Unknown data source {name!r}; valid names: {sorted(SOURCES)}.")
  corruption = spec.pop("corrupt", None)
  try:
    source = SOURCES[name](image_size, **spec)
  except TypeError as e:
    raise TypeError(f"Data spec for {name!r} has bad arguments {sorted(spec)}: {e}") from e
  if not corruption:
    return source
  corruption = dict(corruption)
  kind = corruption.pop("kind", None)
  if kind == "noisy":
    return corrupt.NoisyCorrespondence(source, **corruption)
  if kind == "backdoor":
    return corrupt.Backdoor(source, **corruption)
  if kind == "poison":
    image_split = corruption.pop("image_split", "test")
    image_source = SOURCES[name](image_size, **{**spec, "split": image_split})
    return corrupt.TargetedPoisoning(source, image_source, **corruption)
  raise ValueError(f"Unknown corruption kind {kind!r} in data spec; valid kinds: {CORRUPTIONS}.")


def world_vocabulary_texts() -> list[str]:
  """Every word the built-in worlds (shapes, digits) write in captions and prompts.

  The shipped tokenizer `clipjax:worlds` is OpenAI's BPE restricted to these texts
  (`tokenizer.subset_bpe`): it splits them exactly as CLIP does, with a compact vocabulary.
  """
  texts = [
    *synthetic.vocabulary_texts(),
    *digits.CAPTION_TEMPLATES,
    *digits.LABEL_TEMPLATES,
    *digits.DIGIT_WORDS,
  ]
  fields = re.compile(r"\{\w*\}")  # template fields, e.g. "{colour}" or "{}"
  return [fields.sub(" ", t) for t in texts]
