"""File sources and converters: CSV/JSONL folders, webdataset tars, array_record, TFDS."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipjax.data import pipeline
from clipjax.data.registry import build_source
from clipjax.data.sources import (
  ArrayRecordSource,
  BadRecordError,
  FolderSource,
  Source,
  TfdsSource,
  decode_record,
  encode_record,
  expand_braces,
)
from clipjax.data.transforms import as_uint8_rgb


def _prepare():
  from clipjax.data import prepare

  return prepare.main


def _image(i):
  rng = np.random.default_rng(i)
  return rng.integers(0, 256, size=(6 + i % 3, 9, 3), dtype=np.uint8)


def _png(arr):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG")
  return buf.getvalue()


def _folder(tmp_path, n=6):
  (tmp_path / "imgs").mkdir()
  rows = []
  for i in range(n):
    Image.fromarray(_image(i)).save(tmp_path / "imgs" / f"{i}.png")
    rows.append({"path": f"imgs/{i}.png", "caption": f"picture number {i}, with a comma"})
  return rows


def _check_pairs(src, n, skip=()):
  """Every image decodes to the array that was written with its caption's number."""
  assert isinstance(src, Source) and len(src) == n - len(skip)
  numbers = []
  for k in range(len(src)):
    ex = src[k]
    i = int(ex["caption"].split()[2].rstrip(","))
    np.testing.assert_array_equal(as_uint8_rgb(ex["image"], "t"), _image(i))
    numbers.append(i)
  assert sorted(numbers) == sorted(set(range(n)) - set(skip))


def _one_epoch(src):
  """(examples the train pipeline yields in one epoch, bad records it counted)."""
  it = pipeline.make_train_iterator(
    src,
    batch_size=1,
    image_size=8,
    tokenize=lambda t: np.zeros((len(t), 3), np.int32),
    seed=0,
    num_epochs=1,
    max_bad_fraction=0.5,
    prefetch_batches=0,
  )
  return sum(len(b["index"]) for b in it), it.stats.bad


def test_csv_and_jsonl_folders_round_trip_through_array_record(tmp_path):
  rows = _folder(tmp_path)
  import csv

  with open(tmp_path / "caps.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, ["path", "caption"])
    w.writeheader()
    w.writerows(rows + [{"path": "imgs/missing.png", "caption": "picture number 99"}])
  with open(tmp_path / "caps.jsonl", "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  folder = FolderSource(tmp_path / "caps.csv")
  _check_pairs(FolderSource(tmp_path / "caps.jsonl"), 6)
  with pytest.raises(BadRecordError, match="missing.png"):
    folder[6]
  out = tmp_path / "ar"
  info = _prepare()(
    ["--input", str(tmp_path / "caps.csv"), "--output", str(out), "--examples_per_shard", "4"]
  )
  assert info["written"] == 6 and info["skipped"] == 1
  assert "missing.png" in info["skipped_examples"][0][1]
  shards = sorted(p.name for p in out.glob("*.array_record"))
  assert shards == ["data-00000-of-00002.array_record", "data-00001-of-00002.array_record"]
  _check_pairs(ArrayRecordSource(out), 6)
  # The missing file is skipped and counted by the pipeline too.
  assert _one_epoch(folder) == (6, 1)


def test_webdataset_tar_to_array_record(tmp_path):
  tar_path = tmp_path / "shard-000.tar"
  with tarfile.open(tar_path, "w") as tar:

    def add(name, data):
      ti = tarfile.TarInfo(name)
      ti.size = len(data)
      tar.addfile(ti, io.BytesIO(data))

    for i in range(5):
      key = f"{i:09d}"
      add(f"{key}.png", _png(_image(i)))
      add(f"{key}.txt", f"picture number {i}, from a tar".encode())
      add(f"{key}.json", json.dumps({"key": key}).encode())
    add("000000007.png", _png(_image(7)))
    add("000000008.txt", b"picture number 8 without image")
    add("000000009.png", _png(_image(9)))
    add("000000009.txt", b"\xff\xfe not utf-8")
    add("000000010.jpg", b"garbage bytes")
    add("000000010.txt", b"picture number 10, undecodable")
  out = tmp_path / "ar"
  info = _prepare()(["--input", str(tmp_path), "--output", str(out)])
  assert info["written"] == 5 and info["skipped"] == 4
  reasons = " ".join(r for _, r in info["skipped_examples"])
  assert "no .txt" in reasons and "no image" in reasons and "UTF-8" in reasons
  assert "decode" in reasons
  _check_pairs(ArrayRecordSource(str(out / "*.array_record")), 5)


def test_brace_patterns_expand_as_in_webdataset():
  assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
  assert expand_braces("{a,b}/{8..10}") == ["a/8", "a/9", "a/10", "b/8", "b/9", "b/10"]
  assert expand_braces("{3..1}{x}") == ["3{x}", "2{x}", "1{x}"]  # no range or comma: literal
  assert expand_braces("plain.tar") == ["plain.tar"]


def test_webdataset_brace_pattern_input(tmp_path):
  for s in range(2):
    with tarfile.open(tmp_path / f"shard-{s:03d}.tar", "w") as tar:
      for i in range(2):
        for name, data in ((f"{s}{i}.png", _png(_image(i))), (f"{s}{i}.txt", b"a caption")):
          ti = tarfile.TarInfo(name)
          ti.size = len(data)
          tar.addfile(ti, io.BytesIO(data))
  out = tmp_path / "ar"
  info = _prepare()(["--input", str(tmp_path / "shard-{000..001}.tar"), "--output", str(out)])
  assert info["written"] == 4 and len(info["inputs"]) == 2
  assert len(ArrayRecordSource(str(out / "data-{00000..00000}-of-00001.array_record"))) == 4
  with pytest.raises(SystemExit, match="1 inputs do not exist.*shard-002.tar"):
    _prepare()(["--input", str(tmp_path / "shard-{000..002}.tar"), "--output", str(out)])


def test_record_format_round_trip_and_corruption():
  rec = encode_record(b"\x01\x02img", "a caption", key="k1")
  ex = decode_record(rec, "r")
  assert ex == {"caption": "a caption", "image": b"\x01\x02img", "key": "k1", "meta": {}}
  with pytest.raises(BadRecordError, match="magic"):
    decode_record(b"XXXX" + rec[4:], "r")
  with pytest.raises(BadRecordError, match="length"):
    decode_record(rec[:-1], "r")
  with pytest.raises(BadRecordError, match="UTF-8"):
    decode_record(encode_record(b"img", b"\xff\xff"), "r")


def test_tfds_builder_writes_array_record_without_tensorflow(tmp_path):
  import sys

  _folder(tmp_path)
  rows = [{"path": f"imgs/{i}.png", "caption": f"picture number {i}, tfds"} for i in range(6)]
  with open(tmp_path / "caps.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  out = tmp_path / "tfds"
  info = _prepare()(
    ["--input", str(tmp_path / "caps.jsonl"), "--output", str(out), "--format", "tfds"]
  )
  assert info["written"] == 6
  src = TfdsSource(
    builder_dir=info["outputs"][0], split="train", caption_key="caption", label_key=None
  )
  _check_pairs(src, 6)
  # The documented data spec: a builder_dir needs no tfds_name.
  spec = {"name": "tfds", "builder_dir": info["outputs"][0], "split": "train"}
  _check_pairs(build_source({**spec, "caption_key": "caption", "label_key": None}, 32), 6)
  assert "tensorflow" not in sys.modules


def test_tfds_classification_source_with_mock_data():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=10):
    src = TfdsSource("mnist", split="train", skip_decoding=False)
    ls = src.label_sets["label"]
    assert ls.classnames == [str(d) for d in range(10)]
    assert len(src) == 10
    ex = src[3]
    assert ex["caption"] == f'a photo of the number: "{ls.classnames[ex["labels"]["label"]]}".'
    batches = list(
      pipeline.iterate_eval(
        src, batch_size=4, image_size=8, tokenize=lambda t: np.ones((len(t), 2), np.int32)
      )
    )
    assert len(batches) == 3 and batches[0]["image"].shape == (4, 8, 8, 3)
    assert batches[0]["labels"]["label"][0] == src[0]["labels"]["label"]
    with pytest.raises(KeyError, match="no feature 'text'"):
      TfdsSource("mnist", split="train", caption_key="text", skip_decoding=False)


def test_missing_tfds_dataset_fails_at_once_without_network(tmp_path, monkeypatch):
  import socket
  import time

  attempts = []

  def no_network(*args, **kwargs):
    attempts.append(args)
    raise OSError("network access in a test")

  monkeypatch.setattr(socket.socket, "connect", no_network)
  monkeypatch.setattr(socket, "getaddrinfo", no_network)
  t0 = time.perf_counter()
  with pytest.raises(FileNotFoundError) as e:
    TfdsSource("cifar10", split="test", data_dir=tmp_path / "tfds")
  assert time.perf_counter() - t0 < 10 and attempts == []
  msg = str(e.value)
  assert f"not prepared in {tmp_path / 'tfds' / 'cifar10'}" in msg
  assert f"tfds build cifar10 --data_dir {tmp_path / 'tfds'}" in msg
  assert not (tmp_path / "tfds").exists()


def _table_with_bad_bytes(tmp_path, kind):
  rows = _folder(tmp_path, n=4)
  bad = b"picture number 9 caf\xe9"  # Latin-1, not UTF-8
  if kind == "csv":
    lines = [b"path,caption"] + [f"{r['path']},{r['caption'][:16]}".encode() for r in rows]
    lines.insert(3, b"imgs/0.png," + bad)
  else:
    lines = [json.dumps(r).encode() for r in rows]
    lines.insert(2, b'{"path": "imgs/0.png", "caption": "' + bad + b'"}')
    lines.insert(4, b'{"path": "imgs/1.png", "caption": ')
  path = tmp_path / f"caps.{kind}"
  path.write_bytes(b"\n".join(lines) + b"\n")
  return path


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_non_utf8_caption_row_is_skipped_and_counted_with_file_and_row(tmp_path, kind):
  path = _table_with_bad_bytes(tmp_path, kind)
  src = FolderSource(path)
  assert len(src) == (5 if kind == "csv" else 6)
  line = 4 if kind == "csv" else 3  # the CSV header is line 1
  with pytest.raises(BadRecordError, match=rf"caps\.{kind} row 2 \(line {line}\): caption is not"):
    src[2]
  if kind == "jsonl":
    with pytest.raises(BadRecordError, match=r"caps\.jsonl row 4 \(line 5\): invalid JSON"):
      src[4]
  with pytest.raises(BadRecordError, match=r"UTF-8 \(byte 0xe9 at character 20\)"):
    src.get_text(2)
  assert [src[i]["caption"].split()[2].rstrip(",") for i in (0, 1, 3)] == ["0", "1", "2"]
  assert _one_epoch(src) == (4, len(src) - 4)
  info = _prepare()(["--input", str(path), "--output", str(tmp_path / "out")])
  assert info["written"] == 4 and info["skipped"] == len(src) - 4
  assert any(
    f"row 2 (line {line}): caption is not valid UTF-8" in r for _, r in info["skipped_examples"]
  )


def test_folder_label_column_makes_a_label_set(tmp_path):
  rows = _folder(tmp_path, n=5)
  labels = ["cat", "dog", "", "cat", "bird"]
  with open(tmp_path / "caps.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps({**r, "label": lab}) + "\n" for r, lab in zip(rows, labels))
  src = build_source({"name": "folder", "table": str(tmp_path / "caps.jsonl")}, 32)
  ls = src.label_sets["label"]
  assert ls.classnames == ["bird", "cat", "dog"] and ls.templates == ["a photo of a {}."]
  assert [src[i]["labels"]["label"] for i in range(5)] == [1, 2, -1, 1, 0]
  own = FolderSource(
    tmp_path / "caps.jsonl", classnames=["dog", "cat", "bird", "fish"], templates=["{}!"]
  )
  assert [own.get_text(i)["labels"]["label"] for i in range(5)] == [1, 0, -1, 1, 2]
  with pytest.raises(ValueError, match=r"\['cat'\] not in classnames"):
    FolderSource(tmp_path / "caps.jsonl", classnames=["dog", "bird"])
  assert FolderSource(tmp_path / "caps.jsonl", label_key="species").label_sets == {}
