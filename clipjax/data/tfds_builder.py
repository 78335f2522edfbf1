"""A TFDS builder that writes image–caption pairs as array_record, without TensorFlow.

Features: ``image`` (encoded bytes stored as given: JPEG/PNG/…), ``caption`` (text), ``key``
(text). Read the result with
``TfdsSource(builder_dir=f"{data_dir}/clipjax_image_text/1.0.0", split=..., caption_key="caption",
label_key=None)`` or ``tfds.data_source("clipjax_image_text", data_dir=data_dir, split=...)``.

Example::

  examples = lambda: sources.iter_caption_table("captions.csv")   # (image_bytes, caption, key)
  write_tfds(data_dir, {"train": examples})

Importing this module registers the builder name ``clipjax_image_text`` with TFDS.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import tensorflow_datasets as tfds

Examples = Callable[[], Iterable[tuple[bytes, str | bytes, str]]]


class ClipjaxImageText(tfds.core.GeneratorBasedBuilder):
  """Image–caption pairs from user-supplied generators (one per split)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, splits: dict[str, Examples] | None = None, **kwargs: Any):
    self._split_examples = dict(splits or {})
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="Image–caption pairs written by clipjax.",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3)),
          "caption": tfds.features.Text(),
          "key": tfds.features.Text(),
        }
      ),
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
    del dl_manager
    if not self._split_examples:
      raise ValueError("ClipjaxImageText needs splits={name: examples_fn} to prepare data")
    return {name: self._generate_examples(fn) for name, fn in self._split_examples.items()}

  def _generate_examples(self, fn: Examples) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, (image, caption, key) in enumerate(fn()):
      text = caption.decode("utf-8") if isinstance(caption, bytes) else caption
      yield f"{i:012d}", {"image": bytes(image), "caption": text, "key": key}


def write_tfds(data_dir: str | os.PathLike, splits: dict[str, Examples]) -> str:
  """Prepares ``clipjax_image_text`` in `data_dir` (array_record); returns the builder dir."""
  builder = ClipjaxImageText(
    splits=splits, data_dir=os.fspath(data_dir), file_format="array_record"
  )
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)
