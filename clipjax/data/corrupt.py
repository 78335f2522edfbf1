"""Corruptions for robustness experiments, deterministic by (seed, index), keeping the ground truth.

Each wrapper is itself a source. Every example it returns carries:

* ``is_noisy``, ``is_poisoned``, ``is_backdoor`` (bool): what was done to it (flags of an inner
  wrapper are kept, so wrappers compose);
* ``clean_index``: index of the image in the clean source (−1 for images from elsewhere);
* ``clean_caption``: the image's own, uncorrupted caption;
* ``caption_index``: index (in the wrapped source) of the example whose caption it now carries.

``wrapper.corrupted_indices()`` lists what this wrapper corrupted, so methods can be scored.

* `NoisyCorrespondence`: a fraction p of pairs exchange captions along a random cycle (a
  derangement among the chosen pairs: no chosen pair keeps its caption).
* `TargetedPoisoning` (RoCLIP protocol): each of T target images (from another split) is appended
  K times, paired with K different training captions of an adversarial target class;
  `asr_source()` gives those images labelled with their target class, so the attack success
  rate is the zero-shot accuracy on it.
* `Backdoor`: a fraction p of images get a checkerboard patch in a corner and a caption of the
  target class; `triggered_source(eval_source)` patches an evaluation set (minus the target
  class) and labels it with the target class, so ASR is again a zero-shot accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from clipjax.data.sources import LabelSet, get_text, label_sets_of, source_name
from clipjax.data.transforms import as_uint8_rgb

FLAG_KEYS = ("is_noisy", "is_poisoned", "is_backdoor")
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def _with_truth(ex: dict[str, Any]) -> dict[str, Any]:
  """Adds default ground-truth fields to an example from a clean (or inner) source."""
  for k in FLAG_KEYS:
    ex.setdefault(k, False)
  ex.setdefault("clean_index", ex.get("index", -1))
  ex.setdefault("clean_caption", ex.get("caption"))
  ex.setdefault("caption_index", ex.get("index", -1))
  return ex


class _Wrapper:
  flag_keys = FLAG_KEYS

  def __init__(self, source: Any, kind: str):
    self.source = source
    self.label_sets: dict[str, LabelSet] = label_sets_of(source)
    self.name = f"{kind}({source_name(source)})"

  def __len__(self) -> int:
    return len(self.source)

  def _check(self, index: int) -> int:
    if not 0 <= index < len(self):
      raise IndexError(f"{self.name}: index {index} out of range [0, {len(self)})")
    return int(index)

  def _clean(self, index: int, text_only: bool) -> dict[str, Any]:
    ex = dict(get_text(self.source, index) if text_only else self.source[index])
    ex["index"] = index
    return _with_truth(ex)

  def get_text(self, index: int) -> dict[str, Any]:
    return self._get(self._check(index), text_only=True)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._get(self._check(index), text_only=False)

  def _get(self, index: int, text_only: bool) -> dict[str, Any]:
    raise NotImplementedError


def _count(fraction: float, n: int, what: str) -> int:
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"{what}: fraction must be in [0, 1], got {fraction}")
  return int(round(fraction * n))


class NoisyCorrespondence(_Wrapper):
  """A fraction of pairs gets another chosen pair's caption (a random cyclic derangement).

  Args:
    source: the clean source.
    fraction: fraction p of pairs to corrupt (round(p·n) pairs; at least 2 when p > 0).
    seed: which pairs and which cycle.
  """

  def __init__(self, source: Any, *, fraction: float, seed: int = 0):
    super().__init__(source, "noisy")
    n = len(source)
    m = _count(fraction, n, self.name)
    if 0 < m < 2:
      m = 2
    if m > n:
      raise ValueError(f"{self.name}: cannot corrupt {m} pairs of {n}")
    rng = np.random.default_rng((seed, 1))
    chosen = rng.choice(n, size=m, replace=False) if m else np.zeros((0,), np.int64)
    self._donor = np.arange(n, dtype=np.int64)
    self._donor[chosen] = np.roll(chosen, -1)
    self._noisy = np.sort(chosen)
    self.fraction = fraction

  def corrupted_indices(self) -> np.ndarray:
    """Sorted indices whose caption belongs to another pair."""
    return self._noisy.copy()

  def _get(self, index: int, text_only: bool) -> dict[str, Any]:
    ex = self._clean(index, text_only)
    donor = int(self._donor[index])
    if donor != index:
      d = get_text(self.source, donor)
      ex["caption"] = d["caption"]
      if "captions" in ex or "captions" in d:
        ex["captions"] = list(d.get("captions") or [d["caption"]])
      ex["is_noisy"] = True
      ex["caption_index"] = donor
    return ex


def _has_labels(source: Any, label_set: str) -> bool:
  return label_set in label_sets_of(source)


def _find_captions(
  source: Any,
  wanted: dict[int, int],
  label_set: str,
  classnames: Sequence[str],
  rng: np.random.Generator,
  max_scan: int,
  what: str,
  partial_ok: bool = False,
) -> dict[int, list[tuple[int, str]]]:
  """Draws captions of given classes from `source`: ``{class: count}`` → ``{class: [(index,
  caption)]}``, by label when `source` has `label_set`, else by the class name in the text.
  With `partial_ok`, fewer than `count` (but at least one) captions per class are accepted."""
  by_label = _has_labels(source, label_set)
  patterns = {c: re.compile(rf"\b{re.escape(classnames[c])}\b", re.IGNORECASE) for c in wanted}
  found: dict[int, list[tuple[int, str]]] = {c: [] for c in wanted}
  need = {c: k for c, k in wanted.items() if k > 0}
  n = len(source)
  order = rng.permutation(n)[:max_scan] if n > max_scan else rng.permutation(n)
  for idx in order:
    if not need:
      break
    ex = get_text(source, int(idx))
    if by_label:
      cls = ex.get("labels", {}).get(label_set, -1)
      hits = [cls] if cls in need else []
    else:
      hits = [c for c in need if patterns[c].search(str(ex.get("caption", "")))]
    for c in hits:
      found[c].append((int(idx), ex["caption"]))
      need[c] -= 1
      if need[c] == 0:
        del need[c]
  if partial_ok:
    need = {c: k for c, k in need.items() if not found[c]}
  if need:
    short = {classnames[c]: wanted[c] - len(found[c]) for c in need}
    raise ValueError(
      f"{what}: scanned {len(order)} examples of {source_name(source)} and still lack captions "
      f"for {short} (class absent from the source, e.g. held out?)"
    )
  return found


class TargetedPoisoning(_Wrapper):
  """RoCLIP-style targeted data poisoning: appends T·K poisoned pairs to `source`.

  Each target image (from `image_source`, e.g. the test split) is paired with K captions of
  `source` whose `label_set` class is the target's adversarial class (or, for unlabelled
  sources, whose text names it). Indices ``[len(source), len(source) + T·K)`` are the poison.

  Args:
    source: the clean training source.
    image_source: where target images come from; must have `label_set`.
    label_set: label set defining classes (e.g. "colour+shape").
    num_targets: T, number of target images (ignored if `targets`).
    captions_per_target: K (RoCLIP: 100).
    targets: explicit ``(image_index, target_class)`` pairs.
    seed: target choice and caption draw.
    max_scan: most source examples read while looking for captions.
  """

  def __init__(
    self,
    source: Any,
    image_source: Any,
    *,
    label_set: str,
    num_targets: int = 8,
    captions_per_target: int = 100,
    targets: Sequence[tuple[int, int]] | None = None,
    seed: int = 0,
    max_scan: int = 200_000,
  ):
    super().__init__(source, "poisoned")
    sets = label_sets_of(image_source)
    if label_set not in sets:
      raise ValueError(
        f"{self.name}: image source {source_name(image_source)} has no label set {label_set!r} "
        f"(has {sorted(sets)})"
      )
    self.image_source = image_source
    self.label_set = label_set
    self._classes = sets[label_set]
    n_cls = len(self._classes.classnames)
    rng = np.random.default_rng((seed, 2))
    if targets is None:
      if num_targets > len(image_source):
        raise ValueError(f"{self.name}: {num_targets} targets > {len(image_source)} images")
      allowed = [c for c in range(n_cls) if c not in set(self._classes.held_out)]
      img_idx = rng.choice(len(image_source), size=num_targets, replace=False)
      cls_order = rng.permutation(allowed)
      targets = []
      for t, i in enumerate(img_idx):
        true = get_text(image_source, int(i))["labels"][label_set]
        cls = int(cls_order[t % len(cls_order)])
        if cls == true:
          cls = int(cls_order[(t + len(img_idx)) % len(cls_order)])
        if cls == true:
          cls = next(c for c in allowed if c != true)
        targets.append((int(i), cls))
    self._targets: list[dict[str, Any]] = []
    for i, cls in targets:
      if not 0 <= cls < n_cls:
        raise ValueError(f"{self.name}: target class {cls} not in [0, {n_cls})")
      true = get_text(image_source, int(i))["labels"][label_set]
      if true == cls:
        raise ValueError(f"{self.name}: target image {i} already has class {cls}")
      self._targets.append(
        {
          "image_index": int(i),
          "true_label": int(true),
          "target_label": int(cls),
          "target_class": self._classes.classnames[cls],
        }
      )
    self.captions_per_target = int(captions_per_target)
    wanted: dict[int, int] = {}
    for t in self._targets:
      wanted[t["target_label"]] = wanted.get(t["target_label"], 0) + self.captions_per_target
    found = _find_captions(
      source, wanted, label_set, self._classes.classnames, rng, max_scan, self.name
    )
    self._donors: list[list[tuple[int, str]]] = []
    taken = {c: 0 for c in found}
    for t in self._targets:
      c = t["target_label"]
      k = self.captions_per_target
      self._donors.append(found[c][taken[c] : taken[c] + k])
      taken[c] += k
    self._n = len(source)

  def __len__(self) -> int:
    return self._n + len(self._targets) * self.captions_per_target

  @property
  def poison_targets(self) -> list[dict[str, Any]]:
    """Per target: image_index (in image_source), true_label, target_label, target_class."""
    return [dict(t) for t in self._targets]

  def corrupted_indices(self) -> np.ndarray:
    """Indices of the appended poisoned pairs."""
    return np.arange(self._n, len(self), dtype=np.int64)

  def _get(self, index: int, text_only: bool) -> dict[str, Any]:
    if index < self._n:
      return self._clean(index, text_only)
    t, k = divmod(index - self._n, self.captions_per_target)
    target = self._targets[t]
    img_idx = target["image_index"]
    base = get_text(self.image_source, img_idx) if text_only else self.image_source[img_idx]
    donor, caption = self._donors[t][k]
    ex = {k2: v for k2, v in base.items() if k2 in ("image", "labels")}
    ex.update(
      {
        "index": index,
        "caption": caption,
        "captions": [caption],
        "is_noisy": False,
        "is_poisoned": True,
        "is_backdoor": False,
        "clean_index": -1,
        "clean_caption": base.get("caption"),
        "caption_index": donor,
      }
    )
    return ex

  def asr_source(self) -> _TargetImages:
    """The T target images labelled with their adversarial class (ASR = accuracy on it)."""
    return _TargetImages(self.image_source, self._targets, self.label_set, self._classes)


class _TargetImages:
  def __init__(
    self, image_source: Any, targets: list[dict[str, Any]], label_set: str, ls: LabelSet
  ):
    self._src = image_source
    self._targets = targets
    self._label_set = label_set
    self.label_sets = {label_set: ls}
    self.name = f"poison_targets({source_name(image_source)})"

  def __len__(self) -> int:
    return len(self._targets)

  def __getitem__(self, index: int) -> dict[str, Any]:
    t = self._targets[index]
    ex = dict(self._src[t["image_index"]])
    ex["index"] = int(index)
    ex["labels"] = {self._label_set: t["target_label"]}
    ex["caption"] = self.label_sets[self._label_set].templates[0].format(t["target_class"])
    return ex


def add_trigger(
  image: np.ndarray, *, patch_fraction: float = 0.125, corner: str = "bottom_right"
) -> np.ndarray:
  """Pastes a black-and-white checkerboard patch into a corner of a uint8 ``[h, w, 3]`` image.

  The patch side is ``max(4, round(patch_fraction · min(h, w)))`` pixels with 4×4 cells.
  """
  if corner not in CORNERS:
    raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
  img = np.array(image, dtype=np.uint8, copy=True)
  h, w = img.shape[:2]
  side = min(max(4, int(round(patch_fraction * min(h, w)))), h, w)
  cell = np.arange(side) * 4 // side
  board = ((cell[:, None] + cell[None, :]) % 2 * 255).astype(np.uint8)
  y0 = 0 if corner.startswith("top") else h - side
  x0 = 0 if corner.endswith("left") else w - side
  img[y0 : y0 + side, x0 : x0 + side] = board[:, :, None]
  return img


class Backdoor(_Wrapper):
  """Patch-trigger backdoor: a fraction of images get `add_trigger` and a target-class caption.

  Captions are drawn from `source` examples of the target class (by label, or by the class name
  in the text for unlabelled sources).

  Args:
    source: the clean training source.
    fraction: fraction p of examples to backdoor.
    label_set: label set of the target class; its class names are used for unlabelled sources.
    target_class: class index in `label_set`.
    seed: which examples and which captions.
    patch_fraction: trigger side as a fraction of the image side.
    corner: "top_left", "top_right", "bottom_left" or "bottom_right".
    label_sets: class names when `source` has no label sets (``{label_set: LabelSet}``).
    caption_pool: distinct target-class captions to draw from.
    max_scan: most source examples read while looking for captions.
  """

  def __init__(
    self,
    source: Any,
    *,
    fraction: float,
    label_set: str,
    target_class: int,
    seed: int = 0,
    patch_fraction: float = 0.125,
    corner: str = "bottom_right",
    label_sets: dict[str, LabelSet] | None = None,
    caption_pool: int = 256,
    max_scan: int = 200_000,
  ):
    super().__init__(source, "backdoor")
    sets = {**(label_sets or {}), **self.label_sets}
    if label_set not in sets:
      raise ValueError(f"{self.name}: unknown label set {label_set!r} (known: {sorted(sets)})")
    self._classes = sets[label_set]
    if not 0 <= target_class < len(self._classes.classnames):
      raise ValueError(f"{self.name}: target_class {target_class} not in {label_set!r}")
    if corner not in CORNERS:
      raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
    self.label_set = label_set
    self.target_class = int(target_class)
    self.patch_fraction = patch_fraction
    self.corner = corner
    n = len(source)
    m = _count(fraction, n, self.name)
    rng = np.random.default_rng((seed, 3))
    self._chosen = np.sort(rng.choice(n, size=m, replace=False)) if m else np.zeros((0,), np.int64)
    pool = min(caption_pool, m) if m else 0
    if pool:
      found = _find_captions(
        source,
        {self.target_class: pool},
        label_set,
        self._classes.classnames,
        rng,
        max_scan,
        self.name,
        partial_ok=True,
      )[self.target_class]
    else:
      found = []
    self._pool = found
    self._which = rng.integers(0, max(len(found), 1), size=m)
    self._slot = {int(i): s for s, i in enumerate(self._chosen)}

  def corrupted_indices(self) -> np.ndarray:
    """Sorted indices of the backdoored examples."""
    return self._chosen.copy()

  def apply_trigger(self, image: Any) -> np.ndarray:
    """This wrapper's trigger on one image (bytes or uint8 array)."""
    img = as_uint8_rgb(image, self.name)
    return add_trigger(img, patch_fraction=self.patch_fraction, corner=self.corner)

  def _get(self, index: int, text_only: bool) -> dict[str, Any]:
    ex = self._clean(index, text_only)
    slot = self._slot.get(index)
    if slot is not None:
      donor, caption = self._pool[int(self._which[slot])]
      ex["caption"] = caption
      if "captions" in ex:
        ex["captions"] = [caption]
      ex["is_backdoor"] = True
      ex["caption_index"] = donor
      if not text_only:
        ex["image"] = self.apply_trigger(ex["image"])
    return ex

  def triggered_source(self, eval_source: Any) -> _Triggered:
    """`eval_source` minus the target class, every image triggered, labelled with the target.

    Needs `eval_source` to have this wrapper's label set (to drop true target-class images).
    """
    return _Triggered(eval_source, self)


class _Triggered:
  def __init__(self, source: Any, backdoor: Backdoor):
    if backdoor.label_set not in label_sets_of(source):
      raise ValueError(
        f"{source_name(source)} has no label set {backdoor.label_set!r} to drop target-class images"
      )
    self._src = source
    self._bd = backdoor
    self._keep = np.array(
      [
        i
        for i in range(len(source))
        if get_text(source, i)["labels"][backdoor.label_set] != backdoor.target_class
      ],
      np.int64,
    )
    self.label_sets = {backdoor.label_set: backdoor._classes}
    self.name = f"triggered({source_name(source)})"

  def __len__(self) -> int:
    return int(self._keep.size)

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = dict(self._src[int(self._keep[index])])
    ex["source_index"] = int(self._keep[index])
    ex["index"] = int(index)
    ex["image"] = self._bd.apply_trigger(ex["image"])
    ex["labels"] = {self._bd.label_set: self._bd.target_class}
    return ex
