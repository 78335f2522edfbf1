"""Measures tokenizer throughput (captions/s) with a cold and a warm word cache.

Reports captions per second of wall time and of process CPU time (the CPU figure is the one to
compare on a shared, busy machine).

  python scripts/bench_tokenizer.py [--n 20000] [--open-clip]

Two caption sets, generated with a fixed seed:

* synthetic: templated captions over a small vocabulary (like the synthetic data set);
* varied: 6-30 words drawn from about 20k distinct words of the default vocabulary, with
  capitals, punctuation, numbers and some non-ASCII text and HTML entities (so ftfy runs on
  about 40% of them);
* ascii: like varied, but ASCII words only and no entities (no ftfy call needed).

Cold = a freshly built tokenizer (vocabulary load timed separately); warm = the same captions a
second time. `--open-clip` also times open_clip's `SimpleTokenizer` (needs torch, ftfy, regex;
run with the parity venv) on the same captions.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_clipjax_tokenizer():
  """Loads clipjax/data/tokenizer.py alone, so this runs without jax or grain installed."""
  path = ROOT / "clipjax" / "data" / "tokenizer.py"
  spec = importlib.util.spec_from_file_location("clipjax_tokenizer_standalone", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


Tokenizer = _load_clipjax_tokenizer().Tokenizer

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart"]
SIZES = ["small", "large", "tiny", "big"]
PLACES = ["left", "right", "top", "bottom", "centre"]
EXTRAS = ["naïve café", "日本の猫", "&amp;", "&#39;", "🐶", "Straße", "résumé", "“quoted”"]


def synthetic_captions(n: int, seed: int) -> list[str]:
  rng = random.Random(seed)
  return [
    f"a {rng.choice(SIZES)} {rng.choice(COLORS)} {rng.choice(SHAPES)} "
    f"at the {rng.choice(PLACES)} of the image"
    for _ in range(n)
  ]


def varied_captions(n: int, seed: int, tok: Tokenizer, extras: bool = True) -> list[str]:
  rng = random.Random(seed)
  words = []
  for i in range(512, tok.vocab_size - 2):
    w = tok.decode([i])
    if w.endswith(" ") and w[:-1].isalpha() and len(w) > 2 and (extras or w.isascii()):
      words.append(w[:-1])
  words = sorted(set(words))
  out = []
  for _ in range(n):
    parts = []
    for _ in range(rng.randint(6, 30)):
      r = rng.random()
      if r < 0.05:
        parts.append(str(rng.randint(0, 10_000)))
      elif r < 0.08 and extras:
        parts.append(rng.choice(EXTRAS))
      else:
        w = rng.choice(words)
        parts.append(w.capitalize() if rng.random() < 0.1 else w)
      if rng.random() < 0.08:
        parts[-1] += rng.choice([",", ".", "!", "'s", "?"])
    out.append(" ".join(parts))
  return out


def timed(fn, captions: list[str]) -> tuple[float, float]:
  """Captions per second of wall time and of this process's CPU time."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn(captions)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return len(captions) / wall, len(captions) / cpu


def report(label: str, fn, captions: list[str], extra: str = "") -> None:
  cold, cold_cpu = timed(fn, captions)
  warm, warm_cpu = timed(fn, captions)
  print(
    f"{label} n={len(captions)}: cold {cold:9,.0f}/s ({cold_cpu:9,.0f}/s CPU), "
    f"warm {warm:9,.0f}/s ({warm_cpu:9,.0f}/s CPU){extra}"
  )


def open_clip_tokenizer():
  spec = importlib.util.find_spec("open_clip")
  if spec is None or spec.submodule_search_locations is None:
    raise SystemExit("--open-clip needs open_clip installed in this interpreter")
  path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
  mod_spec = importlib.util.spec_from_file_location("open_clip_tokenizer_standalone", path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.SimpleTokenizer


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=20_000, help="captions per set")
  parser.add_argument("--open-clip", action="store_true", help="also time open_clip")
  args = parser.parse_args()

  t0 = time.perf_counter()
  probe = Tokenizer()
  print(f"vocabulary load: {time.perf_counter() - t0:.3f} s")
  sets = {
    "synthetic": synthetic_captions(args.n, seed=0),
    "varied": varied_captions(args.n, seed=1, tok=probe),
    "ascii": varied_captions(args.n, seed=1, tok=probe, extras=False),
  }
  for name, captions in sets.items():
    tok = Tokenizer()
    report(f"clipjax   {name:9s}", tok, captions)
    print(f"  word cache: {tok.cache_info().currsize} entries")
    if args.open_clip:
      report(f"open_clip {name:9s}", open_clip_tokenizer()(), captions)


if __name__ == "__main__":
  main()
