"""grain pipelines: source → load/decode/augment → skip bad records → batch → tokenize.

Train (`make_train_iterator`)::

  MapDataset.range(len(source))[process_index::process_count]
    .shuffle(seed).repeat(num_epochs)          # a new permutation every epoch
    .map_with_index(mark repeats)              # count each record once
    .random_map(load)                          # decode, crop/flip; bad record → marker
    .to_iter_dataset(ReadOptions(num_threads))
    → skip-bad + batch + tokenize              # checkpointable, deterministic
    → thread prefetch (num_workers=0) or mp_prefetch(num_workers)

yields host-local batches ``{"image": float32 [b, h, w, 3] in [0, 1], "ids": int32 [b, L],
"index": int32 [b]}`` plus, for corrupted sources, the ground truth ``is_noisy``, ``is_poisoned``,
``is_backdoor`` (bool [b]) and ``clean_index`` (int32 [b]).

Bad records (undecodable image, missing file, empty/None/non-UTF-8 caption) are skipped, so a
batch is filled from the next records; they are counted in `PipelineStats` once per record (in
the first pass over the data: later epochs re-read the same records and are not counted again),
and a `BadRecordsError` naming the first offenders stops the run when the bad fraction exceeds
``max_bad_fraction`` (checked once at least ``min_records_for_check`` records were read).

Checkpointing: ``TrainIterator.get_state()`` is a JSON-serialisable dict; restoring it with
``set_state`` reproduces the following batches exactly. The state depends on ``num_workers``
and ``process_count``: keep both fixed across a resume.

Eval (`iterate_eval`) visits every example of the process's shard exactly once, in order, in
batches of fixed size; the last batch is padded and ``valid`` (bool [b]) marks real, good
examples. Every process yields the same number of batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from clipjax.data import transforms
from clipjax.data.sources import BadRecordError, decode_caption, label_sets_of, source_name

Tokenize = Callable[[list[str]], np.ndarray]
"""Maps n captions to int32 token ids ``[n, L]``."""

_MAX_LISTED = 10


class BadRecordsError(RuntimeError):
  """Too many bad records: the message names the first offending records."""


@dataclasses.dataclass
class PipelineStats:
  """Counts of records read and skipped, each record counted once.

  Attributes:
    seen: distinct records read (good + bad).
    bad: distinct records skipped as bad.
    first_bad: the first bad records as (source name, index, reason), at most 10.
  """

  seen: int = 0
  bad: int = 0
  first_bad: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)

  def add(self, seen: int, bad: Sequence[Sequence[Any]]) -> None:
    self.seen += int(seen)
    self.bad += len(bad)
    for rec in bad:
      if len(self.first_bad) < _MAX_LISTED:
        self.first_bad.append((str(rec[0]), int(rec[1]), str(rec[2])))

  @property
  def bad_fraction(self) -> float:
    return self.bad / self.seen if self.seen else 0.0

  def metrics(self, prefix: str = "data/") -> dict[str, float]:
    """Scalars for metrics.jsonl."""
    return {
      f"{prefix}records_seen": float(self.seen),
      f"{prefix}bad_records": float(self.bad),
      f"{prefix}bad_fraction": self.bad_fraction,
    }

  def to_dict(self) -> dict[str, Any]:
    return {"seen": self.seen, "bad": self.bad, "first_bad": [list(r) for r in self.first_bad]}

  def summary(self) -> dict[str, Any]:
    """The report for summary.json: counts, fraction and the first offenders with reasons."""
    return {
      "records_seen": self.seen,
      "bad_records": self.bad,
      "bad_fraction": self.bad_fraction,
      "first_bad": [{"source": s, "index": i, "reason": r} for s, i, r in self.first_bad],
    }

  def describe(self, since: int = 0) -> str:
    """A console line on the bad records found after the first `since` of them."""
    listed = "; ".join(f"{s}[{i}]: {r}" for s, i, r in self.first_bad[since : since + 3])
    return (
      f"data: skipped {self.bad - since} more bad record(s), {self.bad} of {self.seen} read so "
      f"far ({self.bad_fraction:.2%})" + (f"; {listed}" if listed else "")
    )

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> PipelineStats:
    return cls(
      int(d["seen"]), int(d["bad"]), [(str(a), int(b), str(c)) for a, b, c in d["first_bad"]]
    )

  def check(self, max_bad_fraction: float, min_records: int) -> None:
    """Raises `BadRecordsError` if more than `max_bad_fraction` of the records were bad."""
    if self.bad and self.seen >= min_records and self.bad > max_bad_fraction * self.seen:
      listed = "\n".join(f"  {src}[{idx}]: {why}" for src, idx, why in self.first_bad)
      raise BadRecordsError(
        f"{self.bad} of {self.seen} records were bad ({self.bad_fraction:.1%} > "
        f"max_bad_fraction={max_bad_fraction:.1%}); first offending records:\n{listed}"
      )


class _MarkRepeat:
  """Position j in the repeated stream, source index → (index, whether j is past epoch 0)."""

  def __init__(self, epoch_size: int):
    self.epoch_size = epoch_size

  def __call__(self, position: int, index: Any) -> tuple[int, bool]:
    return int(index), position >= self.epoch_size


class _Load:
  """index (+ rng) → uint8 example dict, or ``{"_bad": (source, index, reason)}``.

  Train streams pass ``(index, repeat)`` (see `_MarkRepeat`); the result then carries
  ``"_repeat"`` so that a record is counted only on its first read.

  `resize` (eval): keyword arguments of `transforms.resize_center_crop`; images are then decoded
  at full resolution, as open_clip does (training decodes large JPEGs at a reduced scale).
  """

  def __init__(
    self,
    source: Any,
    image_size: int,
    augment: transforms.Augment | None,
    resize: dict[str, str] | None = None,
  ):
    self.source = source
    self.image_size = int(image_size)
    self.augment = augment
    self.resize = resize
    self.name = source_name(source)

  def __call__(self, index: Any, rng: np.random.Generator | None = None) -> dict[str, Any]:
    if isinstance(index, tuple):
      index, repeat = index
      return {**self(index, rng), "_repeat": repeat}
    index = int(index)
    if index < 0:
      return {"_pad": True}
    where = f"{self.name}[{index}]"
    try:
      ex = self.source[index]
      caption = decode_caption(ex.get("caption"), where)
      min_size = None if self.resize is not None else self.image_size
      img = transforms.as_uint8_rgb(ex.get("image"), where, min_size=min_size)
      if self.augment is not None and rng is not None:
        img = transforms.random_resized_crop(img, self.image_size, rng, self.augment)
      else:
        img = transforms.resize_center_crop(img, self.image_size, **(self.resize or {}))
    except BadRecordError as e:
      reason = str(e)
      if reason.startswith(where + ": "):
        reason = reason[len(where) + 2 :]
      return {"_bad": (self.name, index, reason)}
    out = {k: v for k, v in ex.items() if k not in ("image", "caption")}
    out["image"] = img
    out["caption"] = caption
    out["index"] = index
    return out


class _Collate:
  """A list of loaded examples → a batch of numpy arrays (tokenizing the captions at once)."""

  def __init__(
    self,
    tokenize: Tokenize,
    image_size: int,
    *,
    flag_keys: Sequence[str] = (),
    label_names: Sequence[str] = (),
    num_captions: int | None = None,
    with_text: bool = False,
  ):
    self.tokenize = tokenize
    self.image_size = int(image_size)
    self.flag_keys = tuple(flag_keys)
    self.label_names = tuple(label_names)
    self.num_captions = num_captions
    self.with_text = with_text

  def _ids(self, texts: list[str]) -> np.ndarray:
    ids = np.asarray(self.tokenize(texts))
    if ids.ndim != 2 or ids.shape[0] != len(texts) or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(
        f"tokenize must map {len(texts)} captions to an integer array [n, L]; "
        f"got {ids.dtype} {ids.shape}"
      )
    return ids.astype(np.int32)

  def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    real = [("_pad" not in e and "_bad" not in e) for e in examples]
    s = self.image_size
    blank = np.zeros((s, s, 3), np.uint8)
    images = np.stack([e["image"] if r else blank for e, r in zip(examples, real)])
    captions = [e["caption"] if r else "" for e, r in zip(examples, real)]
    batch: dict[str, Any] = {
      "image": images.astype(np.float32) * np.float32(1.0 / 255.0),
      "ids": self._ids(captions),
      "index": np.array(
        [e["index"] if r else e.get("_bad", (0, -1))[1] for e, r in zip(examples, real)],
        np.int32,
      ),
    }
    if self.flag_keys:
      for k in self.flag_keys:
        batch[k] = np.array([bool(e.get(k, False)) for e in examples], np.bool_)
      batch["clean_index"] = np.array(
        [e.get("clean_index", e.get("index", -1)) if r else -1 for e, r in zip(examples, real)],
        np.int32,
      )
    if self.label_names:
      batch["labels"] = {
        name: np.array(
          [e.get("labels", {}).get(name, -1) if r else -1 for e, r in zip(examples, real)],
          np.int32,
        )
        for name in self.label_names
      }
    if self.num_captions is not None:
      k = self.num_captions
      texts, valid = [], []
      for e, r in zip(examples, real):
        caps = list(e.get("captions") or [e["caption"]])[:k] if r else []
        valid.append([True] * len(caps) + [False] * (k - len(caps)))
        texts.extend(caps + [""] * (k - len(caps)))
      ids = self._ids(texts)
      batch["captions_ids"] = ids.reshape(len(examples), k, ids.shape[-1])
      batch["captions_valid"] = np.array(valid, np.bool_)
    if self.with_text:
      batch["caption"] = np.array(captions, dtype=object)
    return batch


class _SkipBadBatchIterator(grain.DatasetIterator):
  """Pulls loaded examples, skips bad ones, and emits full batches with their bad-record list."""

  def __init__(
    self,
    parent: grain.DatasetIterator,
    batch_size: int,
    collate: _Collate,
    max_bad_fraction: float,
    min_records: int,
  ):
    super().__init__(parent)
    self._batch_size = batch_size
    self._collate = collate
    self._max_bad_fraction = max_bad_fraction
    self._min_records = min_records
    self._bad_stats = PipelineStats()

  def __next__(self) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
    examples, bad, seen = [], [], 0
    while len(examples) < self._batch_size:
      try:
        ex = next(self._parent)
      except StopIteration:
        if seen:  # A dropped partial batch: report its records, then stop.
          return None, {"seen": seen, "bad": [list(b) for b in bad]}
        raise
      first_read = not ex.pop("_repeat", False)
      seen += first_read
      if "_bad" in ex:
        if first_read:
          bad.append(ex["_bad"])
          self._bad_stats.add(1, [ex["_bad"]])
          self._bad_stats.check(self._max_bad_fraction, self._min_records)
      else:
        self._bad_stats.add(int(first_read), [])
        examples.append(ex)
    return self._collate(examples), {"seen": seen, "bad": [list(b) for b in bad]}

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "stats": self._bad_stats.to_dict()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._bad_stats = PipelineStats.from_dict(state["stats"])


class _SkipBadBatch(grain.IterDataset):
  def __init__(self, parent: grain.IterDataset, batch_size: int, collate: _Collate, **check):
    super().__init__(parent)
    self._batch_size = batch_size
    self._collate = collate
    self._check = check

  def __iter__(self) -> _SkipBadBatchIterator:
    return _SkipBadBatchIterator(
      self._parent.__iter__(), self._batch_size, self._collate, **self._check
    )


class TrainIterator:
  """Infinite (or `num_epochs`-long) iterator of host-local train batches.

  Attributes:
    stats: `PipelineStats` of this process (restored with the state).
  """

  def __init__(
    self,
    it: grain.DatasetIterator,
    max_bad_fraction: float,
    min_records: int,
    copy_out: bool = False,
    layout: dict[str, Any] | None = None,
  ):
    self._it = it
    self._copy_out = copy_out
    self._layout = dict(layout or {})
    self._max_bad_fraction = max_bad_fraction
    self._min_records = min_records
    self.stats = PipelineStats()

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = None
    while batch is None:
      batch, info = next(self._it)
      self.stats.add(info["seen"], info["bad"])
      self.stats.check(self._max_bad_fraction, self._min_records)
    if self._copy_out:  # Out of worker shared memory, so that nothing outlives close().
      batch = {k: np.array(v) for k, v in batch.items()}
    return batch

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position of the iterator (save it with each checkpoint)."""
    return {
      "grain": self._it.get_state(),
      "stats": self.stats.to_dict(),
      "layout": dict(self._layout),
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores a `get_state` result (same source, seed, num_workers and process layout).

    Raises:
      ValueError: the state was saved under a different layout (names the differing keys).
    """
    saved = state.get("layout", {})
    diff = {k: (saved.get(k), v) for k, v in self._layout.items() if saved.get(k) != v}
    if diff:
      listed = ", ".join(f"{k}: saved {a!r} != now {b!r}" for k, (a, b) in sorted(diff.items()))
      raise ValueError(f"data iterator state does not fit this pipeline ({listed})")
    self._it.set_state(state["grain"])
    self.stats = PipelineStats.from_dict(state["stats"])

  def close(self) -> None:
    """Stops prefetch threads and worker processes. Call it (or use ``with``) when done:
    grain iterators left for interpreter shutdown print spurious errors."""
    if self._it is not None:
      self._it.close()
      self._it = None  # Collect now, while modules are alive (grain's __del__ re-closes).

  def __enter__(self) -> TrainIterator:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def _augment(augment: bool | transforms.Augment | None) -> transforms.Augment | None:
  if augment is True:
    return transforms.Augment()
  if augment is False or augment is None:
    return None
  if not isinstance(augment, transforms.Augment):
    raise TypeError(f"augment must be a bool or an Augment, got {type(augment).__name__}")
  return augment


def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"need 0 <= process_index < process_count, got {process_index}, {process_count}"
    )


def make_train_iterator(
  source: Any,
  *,
  batch_size: int,
  image_size: int,
  tokenize: Tokenize,
  seed: int,
  augment: bool | transforms.Augment | None = False,
  process_index: int = 0,
  process_count: int = 1,
  num_workers: int = 0,
  num_threads: int = 2,
  prefetch_batches: int = 2,
  num_epochs: int | None = None,
  max_bad_fraction: float = 0.01,
  min_records_for_check: int = 1000,
  label_names: Sequence[str] = (),
) -> TrainIterator:
  """Builds the training iterator (see module docstring).

  Args:
    source: a random-access source (`clipjax.data.sources.Source`).
    batch_size: per-process batch size (batches are always full: drop_remainder).
    image_size: output side in pixels.
    tokenize: captions → int32 ids ``[n, L]``.
    seed: shuffling and augmentation seed (per-epoch permutations derive from it).
    augment: False/None (resize + centre crop), True (default `Augment`) or an `Augment`.
    process_index: this process's index; the process reads records
      ``process_index::process_count``.
    process_count: number of processes.
    num_workers: grain worker processes (0: read in this process with `num_threads` threads).
      Each worker builds whole batches from its own slice of the stream, so batches differ
      from num_workers=0 (still deterministic); the entry script needs a ``__main__`` guard and
      parsed absl flags, and worker start-up takes seconds.
    num_threads: reader threads per process (or per worker).
    prefetch_batches: batches prepared ahead in a thread (num_workers == 0 only).
    num_epochs: None for an infinite stream.
    max_bad_fraction: stop with `BadRecordsError` above this fraction of bad records.
    min_records_for_check: the fraction is checked only after this many records.
    label_names: label sets of the source to include as ``labels`` {name: int32 [b]}
      (supervised objectives such as adversarial fine-tuning).

  Returns:
    a `TrainIterator` of host-local batches.
  """
  _check_process(process_index, process_count)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n = len(source)
  shard = len(range(process_index, n, process_count))
  if shard == 0:
    raise ValueError(f"{source_name(source)}: process {process_index} gets no records ({n} total)")
  aug = _augment(augment)
  min_records = min(int(min_records_for_check), shard)
  load = _Load(source, image_size, aug)
  ds = grain.MapDataset.range(n)[process_index::process_count]
  ds = ds.shuffle(seed=seed).repeat(num_epochs).map_with_index(_MarkRepeat(shard))
  ds = ds.random_map(load, seed=seed) if aug is not None else ds.map(load)
  it_ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * batch_size, 16))
  )
  known = label_sets_of(source)
  missing = [n for n in label_names if n not in known]
  if missing:
    raise ValueError(
      f"{source_name(source)}: label sets {missing} requested for training, source has "
      f"{sorted(known)}"
    )
  collate = _Collate(
    tokenize,
    image_size,
    flag_keys=tuple(getattr(source, "flag_keys", ()) or ()),
    label_names=tuple(label_names),
  )
  it_ds = _SkipBadBatch(
    it_ds, batch_size, collate, max_bad_fraction=max_bad_fraction, min_records=min_records
  )
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  elif prefetch_batches > 0:
    it_ds = grain.experimental.ThreadPrefetchIterDataset(
      it_ds, prefetch_buffer_size=prefetch_batches
    )
  layout = {
    "num_records": n,
    "batch_size": batch_size,
    "seed": seed,
    "process_index": process_index,
    "process_count": process_count,
    "num_workers": num_workers,
  }
  return TrainIterator(
    iter(it_ds), max_bad_fraction, min_records, copy_out=num_workers > 0, layout=layout
  )


class EvalIterable:
  """Re-iterable eval batches over one process's shard; see `iterate_eval`.

  Attributes:
    stats: `PipelineStats` of the last (or current) pass.
    num_batches: batches per pass (equal on every process).
  """

  def __init__(
    self,
    source: Any,
    *,
    batch_size: int,
    image_size: int,
    tokenize: Tokenize,
    process_index: int,
    process_count: int,
    num_threads: int,
    num_captions: int | None,
    with_text: bool,
    max_bad_fraction: float,
    interpolation: str,
    resize_mode: str,
  ):
    _check_process(process_index, process_count)
    n = len(source)
    self._indices = np.arange(n, dtype=np.int64)[process_index::process_count]
    per_process = math.ceil(n / process_count)
    self.num_batches = math.ceil(per_process / batch_size) if n else 0
    self._padded = self.num_batches * batch_size
    self._batch_size = batch_size
    self._load = _Load(
      source, image_size, None, {"interpolation": interpolation, "resize_mode": resize_mode}
    )
    self._collate = _Collate(
      tokenize,
      image_size,
      flag_keys=tuple(getattr(source, "flag_keys", ()) or ()),
      label_names=tuple(label_sets_of(source)),
      num_captions=num_captions,
      with_text=with_text,
    )
    self._num_threads = num_threads
    self._max_bad_fraction = max_bad_fraction
    self.stats = PipelineStats()

  def __len__(self) -> int:
    return self.num_batches

  def _batch(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    batch = self._collate(examples)
    batch["valid"] = np.array([("_pad" not in e and "_bad" not in e) for e in examples], np.bool_)
    batch["_bad"] = [list(e["_bad"]) for e in examples if "_bad" in e]
    return batch

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    self.stats = PipelineStats()
    if self.num_batches == 0:
      return
    idx = np.full((self._padded,), -1, np.int64)
    idx[: self._indices.size] = self._indices
    ds = grain.MapDataset.source(idx).map(self._load)
    ds = ds.batch(self._batch_size, batch_fn=self._batch)
    it = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=self._num_threads, prefetch_buffer_size=2)
    )
    for batch in it:
      bad = batch.pop("_bad")
      self.stats.add(int(np.sum(batch["index"] >= 0)), bad)
      yield batch
    self.stats.check(self._max_bad_fraction, 0)


def iterate_eval(
  source: Any,
  *,
  batch_size: int,
  image_size: int,
  tokenize: Tokenize,
  process_index: int = 0,
  process_count: int = 1,
  num_threads: int = 2,
  num_captions: int | None = None,
  with_text: bool = False,
  max_bad_fraction: float = 0.01,
  interpolation: str = "bicubic",
  resize_mode: str = "shortest",
) -> EvalIterable:
  """Eval batches: every example of this process's shard once, padded final batch.

  Each batch has ``image`` float32 [b, h, w, 3], ``ids`` int32 [b, L], ``index`` int32 [b]
  (−1 for padding), ``valid`` bool [b], ``labels`` {label set: int32 [b]} when the source has
  label sets, the ground-truth flags of corrupted sources, and optionally ``captions_ids``
  int32 [b, num_captions, L] with ``captions_valid`` bool [b, num_captions] (all captions of each
  image, for retrieval) and ``caption`` (object array of str, `with_text`; keep it on host).

  Args:
    source: a random-access source.
    batch_size: per-process batch size.
    image_size: output side in pixels (open_clip's eval resize, `transforms.resize_center_crop`).
    tokenize: captions → int32 ids ``[n, L]``.
    process_index: this process; it evaluates records ``process_index::process_count``.
    process_count: number of processes; all get the same number of batches.
    num_threads: reader threads.
    num_captions: if set, also tokenize up to this many captions per image.
    with_text: include the caption strings.
    max_bad_fraction: after the pass, raise `BadRecordsError` above this fraction of bad records.
    interpolation: resize filter, the model's `vision.interpolation`.
    resize_mode: 'shortest' or 'squash', the model's `vision.resize_mode`.
  """
  return EvalIterable(
    source,
    batch_size=batch_size,
    image_size=image_size,
    tokenize=tokenize,
    process_index=process_index,
    process_count=process_count,
    num_threads=num_threads,
    num_captions=num_captions,
    with_text=with_text,
    max_bad_fraction=max_bad_fraction,
    interpolation=interpolation,
    resize_mode=resize_mode,
  )
