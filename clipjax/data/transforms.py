"""Per-example image transforms on uint8 ``[h, w, 3]`` arrays (PIL for decoding and resizing).

Train: `random_resized_crop` (+ optional horizontal flip), configured by `Augment`.
Eval: `resize_center_crop`, open_clip's eval transform step for step (torchvision `Resize` on a
PIL image, then `CenterCrop`), so that the same file gives the same pixels as in open_clip.
Images stay uint8 here; the pipeline converts whole batches to float32 in [0, 1], and the model
applies its checkpoint's mean/std (`VisionConfig.image_mean`/`image_std`).
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import numpy as np
from PIL import Image

from clipjax.data.sources import BadRecordError

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclasses.dataclass(frozen=True)
class Augment:
  """Train-time augmentation.

  Attributes:
    crop_scale: area fraction range of the random-resized crop (open_clip uses (0.9, 1.0)).
    crop_ratio: aspect-ratio range of the crop.
    flip: random horizontal flip (off by default: captions may name left/right).
  """

  crop_scale: tuple[float, float] = (0.9, 1.0)
  crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  flip: bool = False

  def __post_init__(self):
    lo, hi = self.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
      raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
    if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
      raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")


def as_uint8_rgb(image: Any, where: str, *, min_size: int | None = None) -> np.ndarray:
  """Decodes bytes (any PIL format) or validates an array; returns uint8 ``[h, w, 3]``.

  Args:
    image: encoded bytes, or a uint8 array ``[h, w]``, ``[h, w, 1]``, ``[h, w, 3]`` or
      ``[h, w, 4]`` (alpha is dropped).
    where: record name for error messages.
    min_size: if given, large JPEGs are decoded at a reduced scale that keeps both sides
      >= min_size (faster).

  Raises:
    BadRecordError: undecodable or malformed image.
  """
  if isinstance(image, bytes | bytearray | memoryview | np.bytes_):
    data = bytes(image)
    if not data:
      raise BadRecordError(f"{where}: image is empty")
    try:
      with Image.open(io.BytesIO(data)) as pil:
        if min_size is not None and pil.format == "JPEG":
          pil.draft("RGB", (min_size, min_size))
        arr = np.asarray(pil.convert("RGB"))
    except _DECODE_ERRORS as e:
      raise BadRecordError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None
    return arr
  if image is None:
    raise BadRecordError(f"{where}: image is missing")
  arr = np.asarray(image)
  if arr.dtype != np.uint8:
    raise BadRecordError(f"{where}: image dtype is {arr.dtype}, expected uint8")
  if arr.ndim == 2:
    arr = arr[:, :, None]
  if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
    raise BadRecordError(f"{where}: image shape {arr.shape} is not [h, w, 1|3|4]")
  if arr.shape[2] == 1:
    arr = np.repeat(arr, 3, axis=2)
  elif arr.shape[2] == 4:
    arr = arr[:, :, :3]
  return arr


def _resize_box(img: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
  h, w = img.shape[:2]
  if box == (0.0, 0.0, float(w), float(h)) and h == w == size:
    return img
  pil = Image.fromarray(img)
  return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC, box=box))


def resize_center_crop(
  img: np.ndarray, size: int, *, interpolation: str = "bicubic", resize_mode: str = "shortest"
) -> np.ndarray:
  """open_clip's eval resize: uint8 ``[h, w, 3]`` -> ``[size, size, 3]``.

  Args:
    img: uint8 image.
    size: output side.
    interpolation: 'bicubic' or 'bilinear' (PIL filters, antialiased when downscaling).
    resize_mode: 'shortest': the shorter side becomes `size` and the longer one
      ``int(size * long / short)`` (torchvision `Resize(size)`), then a centre crop at offset
      ``int(round((side - size) / 2))`` (torchvision `CenterCrop`); 'squash': both sides become
      `size` (torchvision `Resize((size, size))`).
  """
  if interpolation not in _RESAMPLE:
    raise ValueError(f"interpolation={interpolation!r} is not one of {sorted(_RESAMPLE)}")
  h, w = img.shape[:2]
  if resize_mode == "squash":
    new_h = new_w = size
  elif resize_mode == "shortest":
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    new_h, new_w = (new_long, size) if w <= h else (size, new_long)
  else:
    raise ValueError(f"resize_mode={resize_mode!r} is not one of ['shortest', 'squash']")
  if (new_h, new_w) != (h, w):
    pil = Image.fromarray(img).resize((new_w, new_h), _RESAMPLE[interpolation])
    img = np.asarray(pil)
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return np.ascontiguousarray(img[top : top + size, left : left + size])


def random_resized_crop(
  img: np.ndarray, size: int, rng: np.random.Generator, augment: Augment
) -> np.ndarray:
  """Random crop of area fraction in ``augment.crop_scale`` and aspect ratio in
  ``augment.crop_ratio`` (log-uniform), resized to ``[size, size, 3]``; optional flip.

  Falls back to the central crop when 10 draws do not fit (as torchvision does).
  """
  h, w = img.shape[:2]
  area = float(h * w)
  log_lo, log_hi = math.log(augment.crop_ratio[0]), math.log(augment.crop_ratio[1])
  box = None
  for _ in range(10):
    target = area * rng.uniform(*augment.crop_scale)
    ratio = math.exp(rng.uniform(log_lo, log_hi))
    cw = math.sqrt(target * ratio)
    ch = math.sqrt(target / ratio)
    if cw <= w and ch <= h:
      x0 = rng.uniform(0.0, w - cw)
      y0 = rng.uniform(0.0, h - ch)
      box = (x0, y0, x0 + cw, y0 + ch)
      break
  if box is None:
    out = resize_center_crop(img, size)
  else:
    out = _resize_box(img, box, size)
  if augment.flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)
