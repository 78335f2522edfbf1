"""A procedural shapes world: image–caption pairs with zero-shot label sets, rendered in numpy.

Each example is one shape (circle, square, triangle, star, cross, …) of one colour and size
(optionally striped) in one cell of a 3×3 grid, with jitter in position, radius, rotation and
colour, on a grey background with light noise. Captions come from ten templates that all name
every attribute, so a caption can be parsed back (`parse_caption`). Everything is deterministic
by ``(seed, split, index)``.

Splits: ``train`` never contains the held-out colour+shape combinations; ``val`` and ``test``
draw uniformly from all combinations, so held-out accuracy can be reported separately
(``label_sets["colour+shape"].held_out``).

Example::

  src = SyntheticShapes("train", image_size=48, seed=0)
  ex = src[3]   # {"image": uint8 [48, 48, 3], "caption": str, "captions": [...], "labels": {...}}
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from clipjax.data.sources import LabelSet

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
  "red": (220, 40, 40),
  "green": (40, 170, 60),
  "blue": (40, 80, 225),
  "yellow": (240, 215, 40),
  "purple": (145, 60, 195),
  "orange": (245, 140, 30),
  "cyan": (40, 205, 215),
  "pink": (245, 125, 185),
  "white": (248, 248, 248),
  "black": (15, 15, 15),
  "brown": (125, 75, 35),
}
SIZES: dict[str, float] = {"small": 0.13, "medium": 0.16, "large": 0.19}
"""Shape radius as a fraction of the image side."""
FILLS = ("solid", "striped")
POSITIONS = (
  "top left",
  "top middle",
  "top right",
  "middle left",
  "center",
  "middle right",
  "bottom left",
  "bottom middle",
  "bottom right",
)
"""Row-major 3×3 grid cells."""

CAPTION_TEMPLATES = (
  "a {size} {colour} {shape} in the {pos}",
  "{pos}: one {colour} {shape}, {size}",
  "a photo of a {size} {colour} {shape} in the {pos}",
  "there is a {size} {shape} in the {pos}, coloured {colour}",
  "the {pos} of the image shows a {size} {colour} {shape}",
  "{size} {colour} {shape}, {pos}",
  "one {colour} {shape} ({size}) placed in the {pos}",
  "in the {pos} there is a {size} {colour} {shape}",
  "a {colour} {shape} of {size} size, located in the {pos}",
  "a drawing of a {size} {shape}, {colour}, {pos}",
)

_LABEL_TEMPLATES = {
  "colour": ("a {} shape.", "something {}.", "one {} object in the picture."),
  "shape": ("a {}.", "a photo of a {}.", "one {} in the picture."),
  "size": ("a {} shape.", "one {} object.", "something {} in the picture."),
  "position": ("a shape in the {}.", "something in the {}.", "one object placed in the {}."),
  "colour+shape": ("one {}.", "a picture of one {}.", "there is one {} in the image."),
  "fill": ("a {} shape.", "one {} object.", "something {} in the picture."),
}

SPLITS = ("train", "val", "test")
_DEFAULT_LENGTH = {"train": 1_000_000, "val": 2_000, "test": 2_000}
_NOISE_BANK = 4
_CELL_CENTRES = (0.2, 0.5, 0.8)
"""Grid-cell centres as fractions of the image side (inset so large shapes stay inside)."""
_TEMPLATE_RES = 256
_TEMPLATE_EXTENT = 1.3
"""Shape masks are tabulated on a 256² grid over [-1.3, 1.3]² in units of the radius."""


def _fix_articles(text: str) -> str:
  return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Boolean mask of `shape` at unit radius; ``u`` points right, ``v`` points up."""
  if shape == "circle":
    return u * u + v * v <= 1.0
  if shape == "ring":
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.36)
  if shape == "square":
    return np.maximum(np.abs(u), np.abs(v)) <= 0.85
  if shape == "diamond":
    return np.abs(u) + np.abs(v) <= 1.15
  if shape == "cross":
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.34) & (av <= 1.0)) | ((av <= 0.34) & (au <= 1.0))
  if shape == "triangle":
    big_r = 1.15
    inside = v >= -0.5 * big_r
    for ang in (math.radians(30.0), math.radians(150.0)):
      inside &= u * math.cos(ang) + v * math.sin(ang) <= 0.5 * big_r
    return inside
  if shape == "star":
    big_r, small_r = 1.2, 0.5
    theta = np.arctan2(u, v)
    period = 2.0 * math.pi / 5.0
    alpha = np.mod(theta, period)
    gamma = np.minimum(alpha, period - alpha)
    rho = np.sqrt(u * u + v * v)
    s5, c5 = math.sin(math.pi / 5.0), math.cos(math.pi / 5.0)
    lhs = rho * (np.cos(gamma) * small_r * s5 + np.sin(gamma) * (big_r - small_r * c5))
    return lhs <= big_r * small_r * s5
  raise ValueError(f"unknown shape {shape!r}")


@dataclasses.dataclass(frozen=True)
class Attributes:
  """The sampled attributes of one example (indices into the world's vocabularies)."""

  colour: int
  shape: int
  size: int
  position: int
  fill: int
  template: int


class SyntheticShapes:
  """Random-access source over the shapes world (see module docstring).

  Args:
    split: "train", "val" or "test".
    image_size: side of the rendered square image in pixels.
    num_examples: length of the split; default 1,000,000 for train and 2,000 for val/test.
    seed: world seed: held-out combinations and every example depend on it.
    shapes: shape names, a subset of `SHAPES`.
    colours: colour names, a subset of `COLOURS`.
    sizes: size names, a subset of `SIZES`.
    fills: () for solid shapes only, or ("solid", "striped") to add a fill attribute.
    num_held_out: number of colour+shape combinations kept out of train (ignored if `held_out`).
    held_out: explicit held-out (colour, shape) name pairs.
    noise_std: standard deviation of the additive pixel noise (0–255 scale).
  """

  def __init__(
    self,
    split: str = "train",
    *,
    image_size: int = 64,
    num_examples: int | None = None,
    seed: int = 0,
    shapes: Sequence[str] = ("circle", "square", "triangle", "star", "cross"),
    colours: Sequence[str] = ("red", "green", "blue", "yellow", "purple", "orange"),
    sizes: Sequence[str] = ("small", "large"),
    fills: Sequence[str] = (),
    num_held_out: int = 5,
    held_out: Sequence[tuple[str, str]] | None = None,
    noise_std: float = 4.0,
  ):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    for kind, names, known in (
      ("shape", shapes, SHAPES),
      ("colour", colours, COLOURS),
      ("size", sizes, SIZES),
      ("fill", fills, FILLS),
    ):
      unknown = [n for n in names if n not in known]
      if unknown or len(set(names)) != len(names):
        raise ValueError(
          f"bad {kind} names {list(names)}: each must be unique and in {list(known)}"
        )
    if fills and len(fills) < 2:
      raise ValueError(f"fills must be empty or name at least two fills, got {list(fills)}")
    if image_size < 16:
      raise ValueError(f"image_size must be >= 16, got {image_size}")
    self.split = split
    self.image_size = int(image_size)
    self.seed = int(seed)
    self.shapes = tuple(shapes)
    self.colours = tuple(colours)
    self.sizes = tuple(sizes)
    self.fills = tuple(fills)
    self.noise_std = float(noise_std)
    self._len = int(_DEFAULT_LENGTH[split] if num_examples is None else num_examples)
    self._split_id = SPLITS.index(split)
    n_col, n_shp = len(self.colours), len(self.shapes)

    if held_out is None:
      if num_held_out > min(n_col, n_shp):
        raise ValueError(
          f"num_held_out={num_held_out} > min(#colours, #shapes)={min(n_col, n_shp)}"
        )
      rng = np.random.default_rng((self.seed, 7919))
      cols = rng.permutation(n_col)[:num_held_out]
      shps = rng.permutation(n_shp)[:num_held_out]
      combos = sorted(int(c) * n_shp + int(s) for c, s in zip(cols, shps))
    else:
      combos = []
      for c, s in held_out:
        if c not in self.colours or s not in self.shapes:
          raise ValueError(f"held-out pair {(c, s)!r} names an unknown colour or shape")
        combos.append(self.colours.index(c) * n_shp + self.shapes.index(s))
      combos = sorted(set(combos))
    self._held_out = tuple(combos)
    self._seen = np.array([k for k in range(n_col * n_shp) if k not in set(combos)], np.int64)
    if self._seen.size == 0:
      raise ValueError("every colour+shape combination is held out; nothing to train on")

    s = self.image_size
    coords = np.arange(s, dtype=np.float32) + 0.5
    self._yy, self._xx = np.meshgrid(coords, coords, indexing="ij")
    bank_rng = np.random.default_rng((self.seed, 104729, s))
    pad = s // 4
    self._noise = (
      bank_rng.standard_normal((_NOISE_BANK, s + pad, s + pad), dtype=np.float32) * self.noise_std
    )
    self._pad = pad
    grid = (np.arange(_TEMPLATE_RES, dtype=np.float32) + 0.5) / _TEMPLATE_RES
    grid = (2.0 * grid - 1.0) * _TEMPLATE_EXTENT
    gv, gu = np.meshgrid(-grid, grid, indexing="ij")
    self._templates = {}
    for name in self.shapes:
      tmpl = _shape_mask(name, gu, gv)
      tmpl[[0, -1], :] = False
      tmpl[:, [0, -1]] = False
      self._templates[name] = tmpl.astype(np.float32).ravel()
    self._caption_cache: dict[Attributes, list[str]] = {}

  @property
  def name(self) -> str:
    return f"synthetic_shapes/{self.split}"

  def __len__(self) -> int:
    return self._len

  @property
  def held_out_combos(self) -> list[tuple[str, str]]:
    """(colour, shape) pairs that never appear in the train split."""
    n_shp = len(self.shapes)
    return [(self.colours[k // n_shp], self.shapes[k % n_shp]) for k in self._held_out]

  @property
  def label_sets(self) -> dict[str, LabelSet]:
    sets = {
      "colour": LabelSet("colour", list(self.colours), list(_LABEL_TEMPLATES["colour"])),
      "shape": LabelSet("shape", list(self.shapes), list(_LABEL_TEMPLATES["shape"])),
      "size": LabelSet("size", list(self.sizes), list(_LABEL_TEMPLATES["size"])),
      "position": LabelSet("position", list(POSITIONS), list(_LABEL_TEMPLATES["position"])),
      "colour+shape": LabelSet(
        "colour+shape",
        [f"{c} {s}" for c in self.colours for s in self.shapes],
        list(_LABEL_TEMPLATES["colour+shape"]),
        held_out=self._held_out,
      ),
    }
    if self.fills:
      sets["fill"] = LabelSet("fill", list(self.fills), list(_LABEL_TEMPLATES["fill"]))
    return sets

  def _check_index(self, index: int) -> int:
    if not 0 <= index < self._len:
      raise IndexError(f"{self.name}: index {index} out of range [0, {self._len})")
    return int(index)

  def _rng(self, index: int) -> np.random.Generator:
    return np.random.default_rng((self.seed, self._split_id, index))

  def _sample_attributes(self, rng: np.random.Generator) -> Attributes:
    n_shp = len(self.shapes)
    if self.split == "train":
      combo = int(self._seen[rng.integers(self._seen.size)])
    else:
      combo = int(rng.integers(len(self.colours) * n_shp))
    u = rng.random(4)
    return Attributes(
      colour=combo // n_shp,
      shape=combo % n_shp,
      size=int(u[0] * len(self.sizes)),
      position=int(u[1] * len(POSITIONS)),
      fill=int(u[2] * len(self.fills)) if self.fills else 0,
      template=int(u[3] * len(CAPTION_TEMPLATES)),
    )

  def _words(self, a: Attributes) -> dict[str, str]:
    colour = self.colours[a.colour]
    if self.fills and self.fills[a.fill] != "solid":
      colour = f"{self.fills[a.fill]} {colour}"
    return {
      "size": self.sizes[a.size],
      "colour": colour,
      "shape": self.shapes[a.shape],
      "pos": POSITIONS[a.position],
    }

  def _text(self, index: int, a: Attributes) -> dict[str, Any]:
    key = dataclasses.replace(a, template=0)
    captions = self._caption_cache.get(key)
    if captions is None:
      words = self._words(a)
      captions = [_fix_articles(t.format(**words)) for t in CAPTION_TEMPLATES]
      self._caption_cache[key] = captions
    labels = {
      "colour": a.colour,
      "shape": a.shape,
      "size": a.size,
      "position": a.position,
      "colour+shape": a.colour * len(self.shapes) + a.shape,
    }
    if self.fills:
      labels["fill"] = a.fill
    return {
      "caption": captions[a.template],
      "captions": list(captions),
      "index": index,
      "labels": labels,
    }

  def attributes(self, index: int) -> Attributes:
    """The attributes of example `index`, without rendering it."""
    return self._sample_attributes(self._rng(self._check_index(index)))

  def get_text(self, index: int) -> dict[str, Any]:
    """Example `index` without its image (cheap: nothing is rendered)."""
    index = self._check_index(index)
    return self._text(index, self._sample_attributes(self._rng(index)))

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = self._check_index(index)
    rng = self._rng(index)
    a = self._sample_attributes(rng)
    ex = self._text(index, a)
    ex["image"] = self._render(a, rng)
    return ex

  def _render(self, a: Attributes, rng: np.random.Generator) -> np.ndarray:
    s = self.image_size
    j = rng.random(10)
    row, col = divmod(a.position, 3)
    cx = (_CELL_CENTRES[col] + 0.06 * (j[0] - 0.5)) * s
    cy = (_CELL_CENTRES[row] + 0.06 * (j[1] - 0.5)) * s
    radius = SIZES[self.sizes[a.size]] * s * (0.92 + 0.16 * j[2])
    angle = math.radians(30.0 * (j[3] - 0.5))
    # Template pixel of each image pixel: rotate (x - cx, cy - y) / radius by -angle.
    k = _TEMPLATE_RES / (2.0 * _TEMPLATE_EXTENT * radius)
    ca, sa = math.cos(angle) * k, math.sin(angle) * k
    off = _TEMPLATE_RES / 2.0
    col_t = ca * self._xx + sa * self._yy + (off - ca * cx - sa * cy)
    row_t = ca * self._yy - sa * self._xx + (off + sa * cx - ca * cy)
    last = _TEMPLATE_RES - 1
    col_i = np.clip(col_t, 0, last).astype(np.intp)
    row_i = np.clip(row_t, 0, last).astype(np.intp)
    mask_f = self._templates[self.shapes[a.shape]].take(row_i * _TEMPLATE_RES + col_i)

    colour = np.asarray(COLOURS[self.colours[a.colour]], np.float32)
    colour = colour + 36.0 * (j[4:7].astype(np.float32) - 0.5)
    grey = np.float32(85.0 + 85.0 * float(j[7]))
    if self.fills and self.fills[a.fill] == "striped":
      stripes = (row_i + col_i) % 40 < 20
      mask_f = mask_f * np.where(stripes, np.float32(0.45), np.float32(1.0))
    if self.noise_std > 0:
      b = int(j[8] * _NOISE_BANK)
      oy, ox = divmod(int(j[9] * self._pad * self._pad), self._pad)
      base = self._noise[b, oy : oy + s, ox : ox + s] + grey
    else:
      base = np.full((s, s), grey, np.float32)
    # Channel-first arithmetic: numpy is several times faster than with a trailing axis of 3.
    img_chw = np.empty((3, s, s), np.float32)
    if self.fills and self.fills[a.fill] == "striped":
      np.multiply(mask_f[None], colour[:, None, None], out=img_chw)
      img_chw += ((1.0 - (mask_f > 0)) * base)[None]
    else:
      np.multiply(mask_f[None], (colour - grey)[:, None, None], out=img_chw)
      img_chw += base[None]
    np.clip(img_chw, 0.0, 255.0, out=img_chw)
    return np.ascontiguousarray(img_chw.astype(np.uint8).transpose(1, 2, 0))


def parse_caption(caption: str, source: SyntheticShapes) -> dict[str, str | None]:
  """Recovers the attribute words named in a caption of `source`'s world.

  Returns:
    {"colour", "shape", "size", "pos", "fill"} → the word found, or None when absent.
  """
  found: dict[str, str | None] = {}
  vocab = {
    "colour": source.colours,
    "shape": source.shapes,
    "size": source.sizes,
    "pos": POSITIONS,
    "fill": tuple(f for f in source.fills if f != "solid"),
  }
  for key, words in vocab.items():
    hits = [w for w in sorted(words, key=len, reverse=True) if re.search(rf"\b{w}\b", caption)]
    found[key] = hits[0] if len(hits) == 1 else None
  return found
