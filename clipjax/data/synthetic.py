"""A procedural shapes world: image–caption pairs with zero-shot label sets, rendered in numpy.

Each example is one shape (circle, square, triangle, star, cross, …) of one colour and size
(optionally striped) in one cell of a 3×3 grid, with jitter in position, radius, rotation and
colour, on a grey background with light noise. Captions come from ten templates that all name
every attribute, so a caption can be parsed back (`parse_caption`). Everything is deterministic
by ``(seed, split, index)``.

Options (all off by default; the default world is unchanged by them), each with ground truth:

* ``second_object=True``: a tiny second object (its own colour and shape, in another cell) that
  the caption names after ``DETAIL_SEP``, so a caption tells individual images apart, not only
  classes (``attributes(i)`` holds the second object's colour, shape and cell).
* ``long_tail=r``: colour+shape combinations follow an exponential profile whose most and
  least frequent classes differ by the factor ``r``; ``class_prior(name)`` gives the exact prior
  of each label set for that split.
* ``partial_captions=p``: with probability ``p`` an example's ``caption`` names only a random
  non-empty subset of its attributes ("a red shape", "a small circle in the top left"), as web
  captions do; ``captions`` still lists the full ones. Without it, one-attribute prompts such as
  "a red shape." are never seen in training and their text embeddings drift as shape is learned
  (the quickstart's colour accuracy fell from 98 % at step 250 to 91 % at step 1000).
  ``partial_subsets="no_shape"`` draws only subsets that leave the shape out (docs/results.md:
  it costs the quickstart most of its shape accuracy).
* ``label_templates="rich"``: twelve prompt templates per label set instead of three; with all
  seven shapes and eleven colours (``shapes=SHAPES, colours=tuple(COLOURS)``) the colour+shape
  label set then has 77 classes x 12 descriptions, more than a tiny model's embedding width.
* ``label_templates="captions"``: each class's prompts are every full caption the world can
  write of that class (the label's words left as ``{}``, the other attributes enumerated), so a
  class embedding is the mean text embedding of its captions; hundreds of prompts per class. On
  the reference bases it beats the three- and twelve-prompt sets on every label set of the val
  split (docs/results.md, "Prompt sets"); the recipes' evaluations use it.

Splits: ``train`` never contains the held-out colour+shape combinations; ``val`` and ``test``
draw uniformly from all combinations, so held-out accuracy can be reported separately
(``label_sets["colour+shape"].held_out``).

Example::

  src = SyntheticShapes("train", image_size=48, seed=0)
  ex = src[3]   # {"image": uint8 [48, 48, 3], "caption": str, "captions": [...], "labels": {...}}
"""

from __future__ import annotations

import dataclasses
import itertools
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

_ADJECTIVE_PROMPTS = (
  "a {} shape.",
  "one {} object.",
  "something {} in the picture.",
  "a {} figure.",
  "the object is {}.",
  "a {} thing.",
  "a picture of something {}.",
  "one {} item.",
  "a {} drawing.",
  "something {} on a grey background.",
  "the shape is {}.",
  "a {} coloured shape.",
)
"""Rich prompts for an adjective label set (size, fill)."""

_LABEL_TEMPLATES_RICH = {
  "colour": (
    "a {} shape.",
    "something {}.",
    "one {} object in the picture.",
    "a {} thing.",
    "the colour {}.",
    "a picture of something {}.",
    "an object coloured {}.",
    "a {} figure.",
    "a drawing of something {}.",
    "one {} item on a grey background.",
    "a small or large {} shape.",
    "the object is {}.",
  ),
  "shape": (
    "a {}.",
    "a photo of a {}.",
    "one {} in the picture.",
    "a drawing of a {}.",
    "the shape of a {}.",
    "a single {}.",
    "a {} on a grey background.",
    "there is a {} here.",
    "a coloured {}.",
    "an image of one {}.",
    "a small or large {}.",
    "the object is a {}.",
  ),
  "size": _ADJECTIVE_PROMPTS,
  "position": (
    "a shape in the {}.",
    "something in the {}.",
    "one object placed in the {}.",
    "an object at the {}.",
    "the {} holds a shape.",
    "a figure in the {}.",
    "a thing in the {}.",
    "a picture with something in the {}.",
    "the shape sits in the {}.",
    "one item in the {}.",
    "a coloured shape in the {}.",
    "the object is in the {}.",
  ),
  "colour+shape": (
    "one {}.",
    "a picture of one {}.",
    "there is one {} in the image.",
    "a {}.",
    "a photo of a {}.",
    "a drawing of a {}.",
    "the shape is a {}.",
    "a single {}.",
    "a {} on a grey background.",
    "an image of a {}.",
    "a small or large {}.",
    "the object: a {}.",
  ),
  "fill": _ADJECTIVE_PROMPTS,
}
"""Twelve prompts per label set (``label_templates="rich"``), the first three as the default."""

_LABEL_TEMPLATES = {
  "colour": ("a {} shape.", "something {}.", "one {} object in the picture."),
  "shape": ("a {}.", "a photo of a {}.", "one {} in the picture."),
  "size": ("a {} shape.", "one {} object.", "something {} in the picture."),
  "position": ("a shape in the {}.", "something in the {}.", "one object placed in the {}."),
  "colour+shape": ("one {}.", "a picture of one {}.", "there is one {} in the image."),
  "fill": ("a {} shape.", "one {} object.", "something {} in the picture."),
}

_PARTIAL_SUBSETS = tuple(
  keep
  for n in range(1, 4)
  for keep in itertools.combinations(("size", "colour", "shape", "pos"), n)
)
"""The non-empty proper subsets of the attributes a partial caption may name (14)."""
_PARTIAL_SUBSET_CHOICES = {
  "any": _PARTIAL_SUBSETS,
  "no_shape": tuple(k for k in _PARTIAL_SUBSETS if "shape" not in k),
  "single": tuple(k for k in _PARTIAL_SUBSETS if len(k) == 1),
}
"""`partial_subsets` values: which subsets a partial caption draws from ("no_shape": the 7 that
name no shape, so the shape word only ever appears in full captions; "single": the 4 that name
one attribute, so every pair of attributes appears only in full captions)."""
_PARTIAL_NOUNS = ("shape", "object", "thing", "figure")

DETAIL_SEP = "; beside it a tiny "
"""Separates a caption's main object from the second object (``second_object=True``)."""
SPLITS = ("train", "val", "test")
_DEFAULT_LENGTH = {"train": 1_000_000, "val": 2_000, "test": 2_000}
_NOISE_BANK = 4
SECOND_OBJECT_SIZE = 0.08
"""Radius of the second object (``second_object=True``) as a fraction of the image side."""
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


def vocabulary_texts() -> list[str]:
  """Every word any shapes world writes: caption and prompt templates (with their `{...}`
  fields) and attribute names; part of `registry.world_vocabulary_texts`."""
  prompts = [
    t for table in (_LABEL_TEMPLATES, _LABEL_TEMPLATES_RICH) for ts in table.values() for t in ts
  ]
  return [
    *CAPTION_TEMPLATES,
    *prompts,
    DETAIL_SEP,
    "an",
    *_PARTIAL_NOUNS,
    *SHAPES,
    *COLOURS,
    *SIZES,
    *FILLS,
    *POSITIONS,
  ]


@dataclasses.dataclass(frozen=True)
class Attributes:
  """The sampled attributes of one example (indices into the world's vocabularies)."""

  colour: int
  shape: int
  size: int
  position: int
  fill: int
  template: int
  second_colour: int = -1
  second_shape: int = -1
  second_position: int = -1
  """The second object (``second_object=True``), else -1."""


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
    second_object: add a tiny second object, named in the caption (module docstring).
    long_tail: head/tail frequency ratio of the colour+shape classes (1: uniform).
    label_templates: "default" (three prompts per label set), "rich" (twelve) or "captions"
      (every caption of the class; module docstring).
    partial_captions: probability that `caption` names only a subset of the attributes.
    partial_subsets: the subsets a partial caption draws from, "any", "no_shape" or "single".
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
    second_object: bool = False,
    long_tail: float = 1.0,
    label_templates: str = "default",
    partial_captions: float = 0.0,
    partial_subsets: str = "any",
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
    if not long_tail >= 1.0:
      raise ValueError(f"long_tail is a head/tail ratio and must be >= 1, got {long_tail}")
    if label_templates not in ("default", "rich", "captions"):
      raise ValueError(
        f"label_templates must be 'default', 'rich' or 'captions', got {label_templates!r}"
      )
    if not 0.0 <= partial_captions <= 1.0:
      raise ValueError(f"partial_captions is a probability in [0, 1], got {partial_captions}")
    if partial_subsets not in _PARTIAL_SUBSET_CHOICES:
      raise ValueError(
        f"partial_subsets must be one of {sorted(_PARTIAL_SUBSET_CHOICES)}, got {partial_subsets!r}"
      )
    self.split = split
    self.partial_captions = float(partial_captions)
    self._partial_subsets = _PARTIAL_SUBSET_CHOICES[partial_subsets]
    self.image_size = int(image_size)
    self.seed = int(seed)
    self.shapes = tuple(shapes)
    self.colours = tuple(colours)
    self.sizes = tuple(sizes)
    self.fills = tuple(fills)
    self.noise_std = float(noise_std)
    self.second_object = bool(second_object)
    self.long_tail = float(long_tail)
    self._label_templates = _LABEL_TEMPLATES_RICH if label_templates == "rich" else _LABEL_TEMPLATES
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
    if label_templates == "captions":
      self._label_templates = {**_LABEL_TEMPLATES, **self._caption_prompts()}
    self._seen = np.array([k for k in range(n_col * n_shp) if k not in set(combos)], np.int64)
    if self._seen.size == 0:
      raise ValueError("every colour+shape combination is held out; nothing to train on")
    # The combinations this split draws from and their probabilities. Without a long tail it
    # draws with `rng.integers` (the original world, bit for bit); with one, by inverse CDF over
    # an exponential profile whose class order is a seeded permutation (head and tail classes
    # are the same in every split of one world).
    self._combos = self._seen if split == "train" else np.arange(n_col * n_shp, dtype=np.int64)
    self._cdf = None
    if self.long_tail > 1.0:
      order = np.random.default_rng((self.seed, 15485863)).permutation(n_col * n_shp)
      rank = np.argsort(order)[self._combos]
      w = self.long_tail ** (-rank / max(n_col * n_shp - 1, 1))
      self._cdf = np.cumsum(w / w.sum())

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

  def class_prior(self, name: str) -> np.ndarray:
    """The exact class probabilities of label set `name` in this split ([num_classes])."""
    n_col, n_shp = len(self.colours), len(self.shapes)
    combo_p = np.zeros(n_col * n_shp)
    if self._cdf is None:
      combo_p[self._combos] = 1.0 / self._combos.size
    else:
      combo_p[self._combos] = np.diff(self._cdf, prepend=0.0)
    uniform = {"size": len(self.sizes), "position": len(POSITIONS), "fill": len(self.fills)}
    if name == "colour+shape":
      return combo_p
    if name == "colour":
      return combo_p.reshape(n_col, n_shp).sum(1)
    if name == "shape":
      return combo_p.reshape(n_col, n_shp).sum(0)
    if name in uniform and uniform[name]:
      return np.full(uniform[name], 1.0 / uniform[name])
    raise KeyError(f"no label set {name!r} in {self.name}; known: {sorted(self.label_sets)}")

  @property
  def label_sets(self) -> dict[str, LabelSet]:
    return self._label_sets_of(self._label_templates)

  def _label_sets_of(self, tmpl: dict[str, tuple[str, ...]]) -> dict[str, LabelSet]:
    sets = {
      "colour": LabelSet("colour", list(self.colours), list(tmpl["colour"])),
      "shape": LabelSet("shape", list(self.shapes), list(tmpl["shape"])),
      "size": LabelSet("size", list(self.sizes), list(tmpl["size"])),
      "position": LabelSet("position", list(POSITIONS), list(tmpl["position"])),
      "colour+shape": LabelSet(
        "colour+shape",
        [f"{c} {s}" for c in self.colours for s in self.shapes],
        list(tmpl["colour+shape"]),
        held_out=self._held_out,
      ),
    }
    if self.fills:
      sets["fill"] = LabelSet("fill", list(self.fills), list(tmpl["fill"]))
    return sets

  def _caption_prompts(self) -> dict[str, tuple[str, ...]]:
    """Prompts of `label_templates="captions"`: per label set, every full caption the world can
    write with the label's words left as ``{}`` and the other attributes enumerated, so a class
    embedding is the mean over all captions of that class (fill keeps the default prompts: a
    solid fill is never written). Caption templates whose slot follows the article "a" are left
    out for label sets with a class name that starts with a vowel ("a"/"an" would depend on it)."""
    slots = {
      "colour": "{colour}",
      "shape": "{shape}",
      "size": "{size}",
      "position": "{pos}",
      "colour+shape": "{colour} {shape}",
    }
    values = {
      "colour": self.colours,
      "shape": self.shapes,
      "size": self.sizes,
      "pos": POSITIONS,
    }
    classnames = {name: ls.classnames for name, ls in self._label_sets_of(_LABEL_TEMPLATES).items()}
    out = {}
    for name, slot in slots.items():
      free = [k for k in values if "{" + k + "}" not in slot]
      vowel = any(_fix_articles(f"a {c}") != f"a {c}" for c in classnames[name])
      prompts = []
      for tmpl in CAPTION_TEMPLATES:
        if slot not in tmpl or (vowel and f"a {slot}" in tmpl):
          continue
        tmpl = tmpl.replace(slot, "{{}}")
        for combo in itertools.product(*(values[k] for k in free)):
          prompts.append(_fix_articles(tmpl.format(**dict(zip(free, combo)))))
      out[name] = tuple(prompts)
    return out

  def _check_index(self, index: int) -> int:
    if not 0 <= index < self._len:
      raise IndexError(f"{self.name}: index {index} out of range [0, {self._len})")
    return int(index)

  def _rng(self, index: int) -> np.random.Generator:
    return np.random.default_rng((self.seed, self._split_id, index))

  def _sample_attributes(self, rng: np.random.Generator) -> Attributes:
    n_shp = len(self.shapes)
    if self._cdf is not None:
      combo = int(self._combos[min(np.searchsorted(self._cdf, rng.random()), self._cdf.size - 1)])
    elif self.split == "train":
      combo = int(self._seen[rng.integers(self._seen.size)])
    else:
      combo = int(rng.integers(len(self.colours) * n_shp))
    u = rng.random(4)
    position = int(u[1] * len(POSITIONS))
    second = {}
    if self.second_object:
      v = rng.random(3)
      cell = int(v[2] * (len(POSITIONS) - 1))
      second = {
        "second_colour": int(v[0] * len(self.colours)),
        "second_shape": int(v[1] * n_shp),
        "second_position": cell + (cell >= position),  # any cell but the main object's
      }
    return Attributes(
      colour=combo // n_shp,
      shape=combo % n_shp,
      size=int(u[0] * len(self.sizes)),
      position=position,
      fill=int(u[2] * len(self.fills)) if self.fills else 0,
      template=int(u[3] * len(CAPTION_TEMPLATES)),
      **second,
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
      if a.second_shape >= 0:
        detail = (
          f"{DETAIL_SEP}{self.colours[a.second_colour]} {self.shapes[a.second_shape]}"
          f" in the {POSITIONS[a.second_position]}"
        )
        captions = [c + detail for c in captions]
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
    caption = captions[a.template]
    if self.partial_captions > 0.0:
      caption = self._partial_caption(index, a, caption)
    return {
      "caption": caption,
      "captions": list(captions),
      "index": index,
      "labels": labels,
    }

  def _partial_caption(self, index: int, a: Attributes, full: str) -> str:
    # Its own stream, so that the option changes no image and no other caption of the world.
    u = np.random.default_rng((self.seed, self._split_id, index, 1)).random(3)
    if u[0] >= self.partial_captions:
      return full
    words = self._words(a)
    keep = self._partial_subsets[int(u[1] * len(self._partial_subsets))]
    noun = words["shape"] if "shape" in keep else _PARTIAL_NOUNS[int(u[2] * len(_PARTIAL_NOUNS))]
    text = " ".join(["a"] + [words[k] for k in ("size", "colour") if k in keep] + [noun])
    if "pos" in keep:
      text += f" in the {words['pos']}"
    return _fix_articles(text)

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
    mask_f, row_i, col_i = self._mask(self.shapes[a.shape], cx, cy, radius, angle)

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
    if a.second_shape >= 0:
      row2, col2 = divmod(a.second_position, 3)
      mask2, _, _ = self._mask(
        self.shapes[a.second_shape],
        _CELL_CENTRES[col2] * s,
        _CELL_CENTRES[row2] * s,
        SECOND_OBJECT_SIZE * s,
        0.0,
      )
      colour2 = np.asarray(COLOURS[self.colours[a.second_colour]], np.float32)
      img_chw += mask2[None] * (colour2[:, None, None] - img_chw)
    np.clip(img_chw, 0.0, 255.0, out=img_chw)
    return np.ascontiguousarray(img_chw.astype(np.uint8).transpose(1, 2, 0))

  def _mask(
    self, shape: str, cx: float, cy: float, radius: float, angle: float
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[s, s] float mask of `shape` centred at pixel (cx, cy), rotated by `angle` radians, and
    the template row and column [s, s] that each pixel reads."""
    # Template pixel of each image pixel: rotate (x - cx, cy - y) / radius by -angle.
    k = _TEMPLATE_RES / (2.0 * _TEMPLATE_EXTENT * radius)
    ca, sa = math.cos(angle) * k, math.sin(angle) * k
    off = _TEMPLATE_RES / 2.0
    col_t = ca * self._xx + sa * self._yy + (off - ca * cx - sa * cy)
    row_t = ca * self._yy - sa * self._xx + (off + sa * cx - ca * cy)
    last = _TEMPLATE_RES - 1
    col_i = np.clip(col_t, 0, last).astype(np.intp)
    row_i = np.clip(row_t, 0, last).astype(np.intp)
    return self._templates[shape].take(row_i * _TEMPLATE_RES + col_i), row_i, col_i


def parse_caption(caption: str, source: SyntheticShapes) -> dict[str, str | None]:
  """Recovers the attribute words named in a caption of `source`'s world.

  Returns:
    {"colour", "shape", "size", "pos", "fill"} → the word found, or None when absent; with a
    second object (``second_object=True``) also {"second_colour", "second_shape", "second_pos"}.
  """
  main, _, detail = caption.partition(DETAIL_SEP)
  found = _find_words(
    main,
    {
      "colour": source.colours,
      "shape": source.shapes,
      "size": source.sizes,
      "pos": POSITIONS,
      "fill": tuple(f for f in source.fills if f != "solid"),
    },
  )
  if detail:
    vocab = {"colour": source.colours, "shape": source.shapes, "pos": POSITIONS}
    found.update({f"second_{k}": v for k, v in _find_words(detail, vocab).items()})
  return found


def _find_words(text: str, vocab: dict[str, Sequence[str]]) -> dict[str, str | None]:
  found: dict[str, str | None] = {}
  for key, words in vocab.items():
    hits = [w for w in sorted(words, key=len, reverse=True) if re.search(rf"\b{w}\b", text)]
    found[key] = hits[0] if len(hits) == 1 else None
  return found
