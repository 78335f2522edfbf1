"""scikit-learn's 8×8 handwritten digits as a tiny real image–caption world.

The 1,797 images ship inside scikit-learn (optional extra: ``pip install clipjax[digits]``).
They are upsampled (bicubic) to `image_size`, made 3-channel (white ink on black), and captioned
with templates ("a handwritten digit seven", "the number 7", …). Split: a fixed permutation
(seed 0) into 70 % train, 15 % val, 15 % test.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image

from clipjax.data.sources import LabelSet

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
  "a handwritten digit {word}",
  "the number {num}",
  "a photo of the digit {num}",
  "handwritten {num}",
  "a scanned image of a handwritten {word}",
  "the digit {word}, written by hand",
  "a low-resolution picture of the number {word}",
  "a {num} written by hand",
)
LABEL_TEMPLATES = ("a handwritten digit {}.", "the number {}.", "a photo of the digit {}.")
SPLITS = ("train", "val", "test")


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:
    raise ImportError(
      "the digits source needs scikit-learn: pip install clipjax[digits]  (or scikit-learn)"
    ) from e
  return _cached_digits(load_digits)


@functools.cache
def _cached_digits(load_digits: Any) -> tuple[np.ndarray, np.ndarray]:
  data = load_digits()
  return np.asarray(data.images, np.float32), np.asarray(data.target, np.int64)


class DigitsSource:
  """Handwritten digits with templated captions and a "digit" label set.

  Args:
    split: "train", "val" or "test".
    image_size: output side (images are upsampled from 8×8).
    seed: template choice per example (the split itself is fixed).
  """

  def __init__(self, split: str = "train", *, image_size: int = 64, seed: int = 0):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images_n88, targets_n = _load_digits()
    n = targets_n.shape[0]
    perm = np.random.default_rng(0).permutation(n)
    n_train, n_val = int(0.7 * n), int(0.15 * n)
    bounds = {
      "train": (0, n_train),
      "val": (n_train, n_train + n_val),
      "test": (n_train + n_val, n),
    }
    lo, hi = bounds[split]
    self._rows = np.sort(perm[lo:hi])
    self._targets = targets_n[self._rows]
    size = int(image_size)
    self._images = np.empty((self._rows.size, size, size, 3), np.uint8)
    for k, r in enumerate(self._rows):
      grey = Image.fromarray(np.round(images_n88[r] * (255.0 / 16.0)).astype(np.uint8))
      up = np.asarray(grey.resize((size, size), Image.Resampling.BICUBIC))
      self._images[k] = up[:, :, None]
    self.split = split
    self.seed = int(seed)
    self.name = f"digits/{split}"
    self.label_sets = {"digit": LabelSet("digit", list(DIGIT_WORDS), list(LABEL_TEMPLATES))}

  def __len__(self) -> int:
    return int(self._rows.size)

  def get_text(self, index: int) -> dict[str, Any]:
    if not 0 <= index < len(self):
      raise IndexError(f"{self.name}: index {index} out of range [0, {len(self)})")
    d = int(self._targets[index])
    captions = [t.format(word=DIGIT_WORDS[d], num=d) for t in CAPTION_TEMPLATES]
    pick = int(np.random.default_rng((self.seed, index)).integers(len(captions)))
    return {
      "caption": captions[pick],
      "captions": captions,
      "index": int(index),
      "labels": {"digit": d},
      "sklearn_index": int(self._rows[index]),
    }

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = self.get_text(index)
    ex["image"] = self._images[index]
    return ex
