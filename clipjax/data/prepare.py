"""Converts image–caption data to array_record shards (the at-scale format).

Inputs (any mix):
  * ``.csv`` / ``.tsv`` / ``.jsonl`` tables with ``path`` and ``caption`` columns (paths relative
    to the table);
  * webdataset ``.tar`` shards in the img2dataset layout (``key.jpg`` + ``key.txt``
    [+ ``key.json``]), a directory holding them, or a brace pattern as webdataset writes them
    (``/data/cc3m/{00000..00331}.tar``; globs work too).

Outputs, with ``--format clipjax`` (default): ``OUT/<prefix>-SSSSS-of-NNNNN.array_record`` in the
clipjax record format (`clipjax.data.sources`; read with ``ArrayRecordSource(OUT)``). With
``--format tfds``: a TFDS dataset ``OUT/clipjax_image_text/1.0.0`` (read with
``TfdsSource(builder_dir=..., split=SPLIT, caption_key="caption", label_key=None)``).

Bad examples (missing file, no caption, non-UTF-8 caption, undecodable image) are skipped and
listed in ``OUT/prepare_info.json``.

Usage:
  python -m clipjax.data.prepare --input captions.csv --output /data/mine
  python -m clipjax.data.prepare --input /data/cc3m_wds --output /data/cc3m_ar \
      --examples_per_shard 10000
  python -m clipjax.data.prepare --input '/data/cc3m_wds/{00000..00331}.tar' \
      --output /data/cc3m_ar
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator

from clipjax.data import sources
from clipjax.data.transforms import as_uint8_rgb


def _inputs(paths: list[str]) -> list[str]:
  out = [f for p in paths for f in sources.expand_pattern(p, ".tar")]
  if not out:
    raise SystemExit(f"no inputs found in {paths}")
  missing = [f for f in out if not os.path.exists(f)]
  if missing:
    raise SystemExit(f"{len(missing)} inputs do not exist, e.g. {missing[:3]}")
  return out


def _examples(inputs: list[str], verify: bool, skipped: list[list[str]]) -> Iterator:
  def on_bad(where: str, reason: str) -> None:
    skipped.append([where, reason])

  for path in inputs:
    if path.endswith(".tar"):
      raw = sources.iter_webdataset_tar(path, on_bad)
    elif path.endswith((".csv", ".tsv", ".jsonl")):
      raw = sources.iter_caption_table(path, on_bad)
    else:
      raise SystemExit(f"{path}: unknown input type (want .csv, .tsv, .jsonl or .tar)")
    for image, caption, key in raw:
      where = f"{path}:{key}"
      try:
        text = sources.decode_caption(caption, where)
        if verify:
          as_uint8_rgb(image, where)
      except sources.BadRecordError as e:
        skipped.append([where, str(e)])
        continue
      yield image, text, key


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", nargs="+", required=True, help="tables, .tar shards or dirs")
  parser.add_argument("--output", required=True, help="output directory")
  parser.add_argument("--format", choices=("clipjax", "tfds"), default="clipjax")
  parser.add_argument("--examples_per_shard", type=int, default=10_000)
  parser.add_argument("--prefix", default="data", help="shard name prefix (clipjax format)")
  parser.add_argument("--split", default="train", help="split name (tfds format)")
  parser.add_argument("--no_verify", action="store_true", help="skip decoding each image")
  args = parser.parse_args(argv)

  inputs = _inputs(args.input)
  skipped: list[list[str]] = []
  counter = {"n": 0}

  def examples() -> Iterator:
    for ex in _examples(inputs, not args.no_verify, skipped):
      counter["n"] += 1
      yield ex

  os.makedirs(args.output, exist_ok=True)
  if args.format == "clipjax":
    written = sources.write_array_record(
      examples(), args.output, prefix=args.prefix, examples_per_shard=args.examples_per_shard
    )
  else:
    from clipjax.data.tfds_builder import write_tfds

    written = [write_tfds(args.output, {args.split: examples})]
  info = {
    "inputs": inputs,
    "format": args.format,
    "written": counter["n"],
    "skipped": len(skipped),
    "skipped_examples": skipped[:1000],
    "outputs": written,
  }
  with open(os.path.join(args.output, "prepare_info.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
  print(f"wrote {counter['n']} examples, skipped {len(skipped)} -> {args.output}", file=sys.stderr)
  return info


if __name__ == "__main__":
  main()
