"""Random-access image–caption sources behind one interface, and the clipjax record format.

A source is anything with ``__len__`` and ``__getitem__(i) -> dict`` (the `Source` protocol).
Every example has:

* ``image``: uint8 ``[h, w, 3]`` ndarray, or encoded image bytes (file / array_record / TFDS
  sources; decoded by the pipeline);
* ``caption``: str;
* ``index``: int, the example's index in the source.

Sources that have them also give ``captions`` (every caption of the image, for retrieval) and
``labels`` (``{label_set_name: int}``, −1 when not applicable) described by
``source.label_sets`` (``{name: LabelSet}``). A source may also offer ``get_text(i)``: the
example without its image, cheaply (corruption wrappers use it to draw captions), and
``flag_keys`` (corruption wrappers: the ground-truth flags each example carries, which the
pipeline turns into batch arrays).

A record that cannot be read (missing file, non-UTF-8 or empty caption) raises `BadRecordError`;
the pipeline skips and counts those.

clipjax record format (one array_record record per example, written by
`python -m clipjax.data.prepare`)::

  b"CJR1" | uint32 little-endian header length H | H bytes of UTF-8 JSON header
          | caption bytes | image bytes

The header is ``{"caption_bytes": int, "image_bytes": int, "key": str, "meta": {...}}``; the
caption is stored as raw bytes (normally UTF-8) so that a bad caption is detected at read time.
Shards are named ``<prefix>-SSSSS-of-NNNNN.array_record``.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

RECORD_MAGIC = b"CJR1"


class BadRecordError(Exception):
  """A record that cannot be used (the pipeline skips and counts it)."""


@dataclasses.dataclass(frozen=True)
class LabelSet:
  """A classification view of a source for zero-shot evaluation.

  Attributes:
    name: label-set name, the key of ``example["labels"]``.
    classnames: class names; label ``k`` is ``classnames[k]``.
    templates: prompt templates with one ``{}`` for the class name.
    held_out: class indices never seen in training (e.g. held-out colour+shape combinations);
      evaluation reports seen and held-out classes separately.
  """

  name: str
  classnames: list[str]
  templates: list[str]
  held_out: tuple[int, ...] = ()

  def prompts(self) -> list[list[str]]:
    """All prompts: ``[num_classes][num_templates]`` strings."""
    return [[t.format(c) for t in self.templates] for c in self.classnames]


@runtime_checkable
class Source(Protocol):
  """Random-access source of image–caption examples (see module docstring)."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


def source_name(source: Any) -> str:
  """A short name for messages."""
  return str(getattr(source, "name", type(source).__name__))


def label_sets_of(source: Any) -> dict[str, LabelSet]:
  """``source.label_sets`` or {} for sources without labels."""
  return dict(getattr(source, "label_sets", {}) or {})


def get_text(source: Any, index: int) -> dict[str, Any]:
  """Example `index` without needing its image: ``source.get_text`` if present, else ``[index]``."""
  fn = getattr(source, "get_text", None)
  return fn(index) if fn is not None else source[index]


def decode_caption(raw: Any, where: str) -> str:
  """Turns a stored caption (str or bytes) into a non-empty str or raises `BadRecordError`."""
  if raw is None:
    raise BadRecordError(f"{where}: caption is missing")
  if isinstance(raw, bytes | np.bytes_):
    try:
      raw = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
      raise BadRecordError(f"{where}: caption is not valid UTF-8 ({e.reason})") from None
  if not isinstance(raw, str):
    raise BadRecordError(f"{where}: caption has type {type(raw).__name__}, expected str")
  if not raw.strip():
    raise BadRecordError(f"{where}: caption is empty")
  return raw


class ArraySource:
  """An in-memory source over lists of images and captions (tests, small demos).

  Args:
    images: uint8 ``[n, h, w, 3]`` array or a sequence of uint8 arrays / encoded bytes.
    captions: n captions (str, bytes or None; bad ones raise `BadRecordError` on access).
    labels: optional ``{label_set: int array [n]}``.
    label_sets: optional ``{name: LabelSet}`` describing `labels`.
    name: name used in messages.
  """

  def __init__(
    self,
    images: Sequence[Any] | np.ndarray,
    captions: Sequence[Any],
    *,
    labels: dict[str, Sequence[int]] | None = None,
    label_sets: dict[str, LabelSet] | None = None,
    name: str = "arrays",
  ):
    if len(images) != len(captions):
      raise ValueError(f"{name}: {len(images)} images but {len(captions)} captions")
    self._images = images
    self._captions = list(captions)
    self._labels = {k: np.asarray(v, np.int64) for k, v in (labels or {}).items()}
    for k, v in self._labels.items():
      if v.shape != (len(self._captions),):
        raise ValueError(f"{name}: labels[{k!r}] has shape {v.shape}, expected ({len(images)},)")
    self.label_sets = dict(label_sets or {})
    self.name = name

  def __len__(self) -> int:
    return len(self._captions)

  def get_text(self, index: int) -> dict[str, Any]:
    where = f"{self.name}[{index}]"
    ex: dict[str, Any] = {
      "caption": decode_caption(self._captions[index], where),
      "index": int(index),
    }
    if self._labels:
      ex["labels"] = {k: int(v[index]) for k, v in self._labels.items()}
    return ex

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < len(self):
      raise IndexError(f"{self.name}: index {index} out of range [0, {len(self)})")
    ex = self.get_text(index)
    ex["image"] = self._images[index]
    return ex


def _invalid_utf8(text: str) -> str | None:
  """Why `text` (decoded with surrogateescape) is not valid UTF-8, or None if it is."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    return f"not valid UTF-8 (byte {ord(text[e.start]) - 0xDC00:#04x} at character {e.start})"
  return None


def _table_row(row: Any, where: str) -> dict[str, Any]:
  """A table row with str `path` and `caption`, or ``{"_bad": reason}`` naming `where`."""
  if not isinstance(row, dict) or "path" not in row or "caption" not in row:
    got = sorted(row) if isinstance(row, dict) else type(row).__name__
    return {"_bad": f"{where}: lacks a 'path' or 'caption' column (has {got})"}
  for col in ("path", "caption"):
    why = _invalid_utf8(row[col]) if isinstance(row[col], str) else None
    if why is not None:
      return {"_bad": f"{where}: {col} is {why}"}
  return row


def _read_caption_table(path: str) -> list[dict[str, Any]]:
  """Rows of a CSV/TSV/JSONL table; unusable rows are ``{"_bad": reason}`` (kept in place, so
  that row numbers stay the table's).

  Bytes are decoded with ``surrogateescape`` so that one non-UTF-8 caption spoils only its row.
  """
  rows: list[dict[str, Any]] = []
  if path.endswith(".jsonl"):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f"{path} row {len(rows)} (line {lineno})"
        try:
          rows.append(_table_row(json.loads(line), where))
        except json.JSONDecodeError as e:
          rows.append({"_bad": f"{where}: invalid JSON ({e.msg})"})
  elif path.endswith((".csv", ".tsv")):
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
      reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
      header = reader.fieldnames or []
      if "path" not in header or "caption" not in header:
        raise ValueError(f"{path}: the header lacks a 'path' or 'caption' column (has {header})")
      for row in reader:
        rows.append(_table_row(row, f"{path} row {len(rows)} (line {reader.line_num})"))
  else:
    raise ValueError(f"{path}: caption table must end in .csv, .tsv or .jsonl")
  return rows


class FolderSource:
  """Image files listed in a CSV/TSV/JSONL table with ``path`` and ``caption`` columns.

  Paths are relative to the table's directory (absolute paths are used as is). Images are
  returned as encoded bytes. A missing file, or a row that is not valid UTF-8 / JSON or lacks a
  column, raises `BadRecordError` on access, naming the table, row and line. A `label_key`
  column (class names, one per row; empty = no label) makes a label set of that name for
  zero-shot evaluation, its classes `classnames` (default: the sorted distinct names in the
  column) prompted with `templates` (default: CLIP's "a photo of a {}.").

  Args:
    table: path of the ``.csv``, ``.tsv`` or ``.jsonl`` file.
    label_key: the label column; ignored when the table has no such column.
    classnames: class names in label order; every name in the column must be one of them.
    templates: zero-shot prompt templates, one "{}" each.
  """

  def __init__(
    self,
    table: str | os.PathLike,
    *,
    label_key: str = "label",
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
  ):
    from clipjax.data import prompts

    self.table = os.fspath(table)
    self._root = os.path.dirname(os.path.abspath(self.table))
    self._rows = _read_caption_table(self.table)
    self.name = f"folder:{self.table}"
    self.label_sets: dict[str, LabelSet] = {}
    self._labels: list[int] | None = None
    if any(label_key in r for r in self._rows):
      raw = [str(r.get(label_key) or "").strip() for r in self._rows]  # bad rows: no label
      names = list(classnames) if classnames is not None else sorted(set(raw) - {""})
      index = {n: i for i, n in enumerate(names)}
      unknown = sorted(set(raw) - set(index) - {""})
      if unknown:
        raise ValueError(f"{self.table}: {label_key!r} values {unknown[:5]} not in classnames")
      if not names:
        raise ValueError(f"{self.table}: the {label_key!r} column is empty")
      self._labels = [index.get(r, -1) for r in raw]
      templates = list(templates or prompts.GENERIC_TEMPLATES)
      self.label_sets[label_key] = LabelSet(label_key, names, templates)
    elif classnames is not None:
      raise ValueError(f"{self.table}: classnames given but the table has no {label_key!r} column")
    self._label_key = label_key

  def __len__(self) -> int:
    return len(self._rows)

  def _path(self, index: int) -> str:
    return os.path.join(self._root, str(self._rows[index]["path"]))

  def get_text(self, index: int) -> dict[str, Any]:
    row = self._rows[index]
    if "_bad" in row:
      raise BadRecordError(row["_bad"])
    caption = decode_caption(row["caption"], f"{self.name} row {index}")
    ex = {"caption": caption, "index": int(index), "key": str(row["path"])}
    if self._labels is not None:
      ex["labels"] = {self._label_key: self._labels[index]}
    return ex

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < len(self):
      raise IndexError(f"{self.name}: index {index} out of range [0, {len(self)})")
    ex = self.get_text(index)
    path = self._path(index)
    try:
      with open(path, "rb") as f:
        ex["image"] = f.read()
    except OSError as e:
      raise BadRecordError(f"{self.name} row {index}: cannot read {path} ({e.strerror})") from None
    return ex


def encode_record(
  image: bytes, caption: str | bytes, *, key: str = "", meta: dict[str, Any] | None = None
) -> bytes:
  """Serialises one example in the clipjax record format (module docstring)."""
  cap = caption.encode("utf-8") if isinstance(caption, str) else bytes(caption)
  header = json.dumps(
    {"caption_bytes": len(cap), "image_bytes": len(image), "key": key, "meta": meta or {}},
    ensure_ascii=True,
  ).encode("utf-8")
  return RECORD_MAGIC + struct.pack("<I", len(header)) + header + cap + bytes(image)


def decode_record(record: bytes, where: str) -> dict[str, Any]:
  """Parses one clipjax record into ``{"image": bytes, "caption": str, "key", "meta"}``."""
  if len(record) < 8 or record[:4] != RECORD_MAGIC:
    raise BadRecordError(f"{where}: not a clipjax record (bad magic)")
  (hlen,) = struct.unpack("<I", record[4:8])
  try:
    header = json.loads(record[8 : 8 + hlen].decode("utf-8"))
    ncap, nimg = int(header["caption_bytes"]), int(header["image_bytes"])
  except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
    raise BadRecordError(f"{where}: corrupt record header") from None
  start = 8 + hlen
  if len(record) != start + ncap + nimg:
    raise BadRecordError(f"{where}: record length {len(record)} != header's {start + ncap + nimg}")
  return {
    "caption": decode_caption(record[start : start + ncap], where),
    "image": record[start + ncap :],
    "key": str(header.get("key", "")),
    "meta": header.get("meta", {}),
  }


_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
  """Shell/webdataset brace expansion: ``"s-{000..002}.tar"`` -> ``s-000.tar``, ``s-001.tar``,
  ``s-002.tar``; ``"{train,val}.csv"`` -> ``train.csv``, ``val.csv`` (several groups multiply).

  A numeric range keeps the zero padding of its bounds; braces holding neither a range nor a
  comma are left as they are.
  """
  for m in _BRACE.finditer(pattern):
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
      lo, hi = rng.groups()
      padded = any(len(b) > 1 and b[0] == "0" for b in (lo, hi))
      width = max(len(lo), len(hi)) if padded else 0
      step = 1 if int(hi) >= int(lo) else -1
      items = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    elif "," in body:
      items = body.split(",")
    else:
      continue
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [x for item in items for x in expand_braces(head + item + tail)]
  return [pattern]


def expand_pattern(pattern: str | os.PathLike, suffix: str) -> list[str]:
  """Files named by `pattern`: a directory (its ``*{suffix}`` files), braces, globs or a path."""
  pattern = os.fspath(pattern)
  if os.path.isdir(pattern):
    return sorted(glob.glob(os.path.join(pattern, f"*{suffix}")))
  out = []
  for p in expand_braces(pattern):
    out.extend(sorted(glob.glob(p)) if any(ch in p for ch in "*?[") else [p])
  return out


def _expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  if isinstance(paths, str | os.PathLike):
    found = expand_pattern(paths, ".array_record")
  else:
    found = [os.fspath(p) for p in paths]
  if not found:
    raise FileNotFoundError(f"no .array_record files match {paths!r}")
  missing = [p for p in found if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"array_record shards not found: {missing[:5]}")
  return found


class ArrayRecordSource:
  """clipjax-format array_record shards (a directory, a glob, or a list of files).

  Images are returned as encoded bytes. Shards are read in sorted order; index ``i`` is the
  ``i``-th record over all shards.
  """

  def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
    from array_record.python import array_record_data_source

    self.paths = _expand_paths(paths)
    self._ds = array_record_data_source.ArrayRecordDataSource(self.paths)
    self.name = f"array_record:{os.path.dirname(self.paths[0]) or '.'}"
    self.label_sets: dict[str, LabelSet] = {}

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < len(self):
      raise IndexError(f"{self.name}: index {index} out of range [0, {len(self)})")
    ex = decode_record(self._ds[index], f"{self.name}[{index}]")
    ex["index"] = int(index)
    return ex


def write_array_record(
  examples: Iterable[tuple[bytes, str | bytes, str]],
  out_dir: str | os.PathLike,
  *,
  prefix: str = "data",
  examples_per_shard: int = 10_000,
) -> list[str]:
  """Writes ``(image_bytes, caption, key)`` triples as clipjax array_record shards.

  Returns:
    the shard paths, named ``<prefix>-SSSSS-of-NNNNN.array_record``.
  """
  from array_record.python import array_record_module

  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  tmp_paths: list[str] = []
  writer = None
  for count, (image, caption, key) in enumerate(examples):
    if writer is None or count % examples_per_shard == 0:
      if writer is not None:
        writer.close()
      tmp_paths.append(os.path.join(out_dir, f".{prefix}-{len(tmp_paths):05d}.tmp"))
      writer = array_record_module.ArrayRecordWriter(tmp_paths[-1], "group_size:1")
    writer.write(encode_record(image, caption, key=key))
  if writer is not None:
    writer.close()
  final = []
  for i, tmp in enumerate(tmp_paths):
    path = os.path.join(out_dir, f"{prefix}-{i:05d}-of-{len(tmp_paths):05d}.array_record")
    os.replace(tmp, path)
    final.append(path)
  return final


def iter_caption_table(
  table: str | os.PathLike, on_bad: Callable[[str, str], None] | None = None
) -> Iterator[tuple[bytes, str, str]]:
  """Yields ``(image_bytes, caption, path)`` from a CSV/JSONL table.

  Rows whose file is missing or whose caption is empty or not valid UTF-8 are reported through
  ``on_bad(where, reason)`` and skipped.
  """
  src = FolderSource(table)
  for i in range(len(src)):
    try:
      ex = src[i]
    except BadRecordError as e:
      if on_bad is not None:
        on_bad(f"{src.name} row {i}", str(e))
      continue
    yield ex["image"], ex["caption"], ex["key"]


_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")


def iter_webdataset_tar(
  path: str | os.PathLike, on_bad: Callable[[str, str], None] | None = None
) -> Iterator[tuple[bytes, bytes, str]]:
  """Yields ``(image_bytes, caption_bytes, key)`` from a webdataset shard (img2dataset layout).

  Members are grouped by key (the name up to the first dot of the base name), and a key's
  members must be consecutive, as webdataset requires: ``key.jpg`` (or png/webp/…) +
  ``key.txt`` [+ ``key.json``]. The shard is streamed, one example in memory at a time. Keys
  without an image or a caption are reported through ``on_bad(key, reason)`` and skipped.
  """
  path = os.fspath(path)

  def flush(key: str, parts: dict[str, bytes]) -> Iterator[tuple[bytes, bytes, str]]:
    img_ext = next((e for e in _IMAGE_EXTS if e in parts), None)
    if img_ext is None or "txt" not in parts:
      if on_bad is not None:
        on_bad(f"{path}:{key}", "no image" if img_ext is None else "no .txt caption")
      return
    yield parts[img_ext], parts["txt"], key

  key, parts = None, {}
  with tarfile.open(path, "r|*") as tar:
    for member in tar:
      if not member.isfile():
        continue
      stem, _, ext = os.path.basename(member.name).partition(".")
      member_key = os.path.join(os.path.dirname(member.name), stem)
      f = tar.extractfile(member)
      if f is None:
        continue
      if member_key != key:
        if key is not None:
          yield from flush(key, parts)
        key, parts = member_key, {}
      parts[ext.lower()] = f.read()
  if key is not None:
    yield from flush(key, parts)


class TfdsSource:
  """A TFDS dataset read with ``tfds.data_source`` (no TensorFlow needed), never downloaded.

  A dataset that is not prepared in `data_dir` is an immediate `FileNotFoundError` saying where
  it was looked for and how to prepare it.

  Image-classification datasets (cifar10, imagenet2012, …) get a label set named after the
  label feature with CLIP's class names and templates for that dataset (`clipjax.data.prompts`;
  other datasets: their cleaned ClassLabel names and one generic template), unless `classnames`
  / `templates` are given, and a caption made from the first template. Image–text datasets (e.g.
  written by `clipjax.data.tfds_builder`) give their text feature as caption. Images are returned
  as encoded bytes (``SkipDecoding``).

  Args:
    name: TFDS dataset name (``"cifar10"``, ``"cifar10:3.0.2"``); ignored if `builder_dir`.
    split: TFDS split string (slicing allowed: ``"test[:10%]"``).
    data_dir: TFDS data directory.
    builder_dir: a prepared dataset directory (``.../name/version``) to read instead of `name`.
    image_key: image feature name.
    caption_key: text feature to use as caption (None: build captions from the label).
    label_key: ClassLabel feature name (None: no label set).
    classnames: class names in label order (None: CLIP's for the dataset, see above).
    templates: zero-shot templates for the label set (None: CLIP's for the dataset).
    skip_decoding: return images as encoded bytes for the pipeline to decode (default); False
      lets TFDS decode them to arrays (needed under ``tfds.testing.mock_data``).
  """

  def __init__(
    self,
    name: str | None = None,
    *,
    split: str,
    data_dir: str | os.PathLike | None = None,
    builder_dir: str | os.PathLike | None = None,
    image_key: str = "image",
    caption_key: str | None = None,
    label_key: str | None = "label",
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    skip_decoding: bool = True,
  ):
    import tensorflow_datasets as tfds

    from clipjax.data import prompts

    decoders = {image_key: tfds.decode.SkipDecoding()} if skip_decoding else None
    if builder_dir is not None:
      builder = tfds.builder_from_directory(os.fspath(builder_dir))
      self._ds = builder.as_data_source(split=split, decoders=decoders)
      ds_name = builder.name
    elif name is not None:
      data_dir = None if data_dir is None else os.fspath(data_dir)
      try:
        self._ds = tfds.data_source(
          name, split=split, data_dir=data_dir, decoders=decoders, download=False
        )
      except Exception as e:
        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
          raise
        raise FileNotFoundError(
          f"TFDS dataset {name!r} is not prepared in {builder.data_path} (clipjax never "
          "downloads). Prepare it where the network is allowed, in a random-access format: "
          f"`tfds build {name} --data_dir {builder.data_dir_root} --file_format array_record`, "
          "then pass that data_dir (or a `builder_dir`)."
        ) from e
      ds_name = name
    else:
      raise ValueError("TfdsSource needs a dataset `name` or a `builder_dir`")
    self.name = f"tfds:{ds_name}/{split}"
    self.image_key, self.caption_key, self.label_key = image_key, caption_key, label_key
    features = self._ds.dataset_info.features
    for key in (image_key, caption_key, label_key):
      if key is not None and key not in features:
        raise KeyError(f"{self.name}: no feature {key!r}; features are {sorted(features.keys())}")
    self.label_sets: dict[str, LabelSet] = {}
    self._classnames: list[str] = []
    if caption_key is None and label_key is None:
      raise ValueError(f"{self.name}: need a caption_key or a label_key to make captions")
    self._template = ""
    if label_key is not None:
      if classnames is None:
        try:
          names, clip_templates = prompts.label_set(ds_name, list(features[label_key].names))
        except ValueError as e:
          raise ValueError(f"{self.name}: {e}") from None
      else:
        names, clip_templates = list(classnames), prompts.dataset_templates(ds_name)
      templates = list(templates) if templates is not None else clip_templates
      if len(names) != features[label_key].num_classes:
        raise ValueError(
          f"{self.name}: {len(names)} classnames for {features[label_key].num_classes} classes"
        )
      self._classnames = names
      self.label_sets[label_key] = LabelSet(label_key, names, templates)
      self._template = templates[0]

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < len(self):
      raise IndexError(f"{self.name}: index {index} out of range [0, {len(self)})")
    where = f"{self.name}[{index}]"
    try:
      raw = self._ds[index]
    except (OSError, ValueError) as e:
      raise BadRecordError(f"{where}: cannot read record ({type(e).__name__}: {e})") from None
    ex: dict[str, Any] = {"index": int(index), "image": raw[self.image_key]}
    if self.label_key is not None:
      label = int(raw[self.label_key])
      ex["labels"] = {self.label_key: label}
    if self.caption_key is not None:
      ex["caption"] = decode_caption(raw[self.caption_key], where)
    else:
      ex["caption"] = self._template.format(self._classnames[ex["labels"][self.label_key]])
    return ex
