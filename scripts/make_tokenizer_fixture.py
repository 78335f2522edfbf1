"""Writes golden token ids from open_clip's tokenizer to tests/fixtures/tokenizer/.

Developer-only: run in a venv with the `parity` extra plus open_clip_torch (torch, ftfy, regex,
tokenizers), never in CI:

  .venv-torch/bin/python scripts/make_tokenizer_fixture.py  # the venv of make_parity_fixtures.py

open_clip's `tokenizer.py` is loaded standalone (no torchvision/timm import). Outputs:

* `tiny_merges.txt.gz`: a small vocabulary (vocab_size 600) built by `clipjax` `build_bpe` on a
  fixed caption corpus, to check that custom merges files load identically;
* `golden.json`: for each text, open_clip's `encode` ids, its rows of `tokenize(...)` at context
  lengths 77 and 8 (trailing zero padding stripped), and `decode(encode(text))`; the same for the
  tiny vocabulary.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
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


build_bpe = _load_clipjax_tokenizer().build_bpe

CONTEXT_LENGTHS = (77, 8)
TINY_VOCAB_SIZE = 600

HANDWRITTEN = [
  "",
  " ",
  "\n\t  \r\n",
  "a photo of a cat",
  "A  Photo of TWO dogs!!  ",
  "A photo of a dog.\nIt is   sitting\ton the\r\ngrass.",
  "don't stop, they'll say we've done it; I'm sure she'd agree it's fine",
  "DON'T SHOUT, IT'S RUDE",
  "Rock &amp; Roll &#39;cause it&#x27;s &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot;",
  "double escaped &amp;amp; and &amp;lt;tag&amp;gt; and triple &amp;amp;amp;",
  "Tom &amp Jerry & friends &nbsp;here &copy; 2024 &#128512;",
  "naïve café — 3.14 emojis 🐶🐱",
  "Ünïcödé àccents: résumé, jalapeño, Straße, ÆØÅ, İstanbul, ΣΊΣΥΦΟΣ",
  "e\u0301cole vs école (combining accent vs precomposed)",
  "一只猫坐在垫子上",
  "東京タワーの写真です",
  "강아지가 공원에서 뛰어놀고 있다",
  "Привет, мир! Это фотография собаки.",
  "صورة قطة على الأريكة",
  "यह एक बिल्ली की तस्वीर है",
  "ภาพของแมว",
  "family emoji 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵 and skin tone 👍🏽 and ❤️",
  "numbers 1234567890 and 3.14159 and $1,000,000 and 50% and 2nd and 1e-5",
  "phone: +1 (555) 123-4567, date 2024-01-31, time 12:34:56",
  "punctuation!!! ??? ... --- *** ((nested)) [brackets] {braces} <angle>",
  "url https://example.com/path?q=1&x=2#frag and email user@example.org",
  "curly quotes \u201chello\u201d and \u2018single\u2019 and don\u2019t",
  "mojibake cafÃ© and donâ€™t and â€œquoteâ€\x9d",
  "fullwidth ＡＢＣ １２３ and ligatures ﬁne ﬂow",
  "control\x00chars\x07here\x1b[31mred\x1b[0m and del\x7f and nel\x85end",
  "zero\u200bwidth\u200dchars and nbsp\u00a0here and\u2028line sep\u2029para",
  "long s \u017fun and kelvin \u212a and dotless \u0131 and micro \u00b5",
  "tabs\tand\nnewlines\n\n\nand    many     spaces",
  "literal <start_of_text> and <end_of_text> and <START_OF_TEXT> inside",
  "literal </w> marker and <|endoftext|>",
  "supercalifragilisticexpialidocious" * 4,
  "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
  "x",
  "'",
  "'s",
  "&",
  "🐶",
  (
    "a very long caption that keeps going and going, describing every single detail of the "
    "scene: a small brown dog with a red collar sits on a wooden porch next to a blue bicycle, "
    "while two children in yellow raincoats play with a bright orange ball in the garden behind "
    "a white picket fence, under a cloudy grey sky with a hint of sunshine near the horizon."
  ),
  "🐶" * 40,
  "猫" * 60,
  " ".join(str(i) for i in range(60)),
  ". " * 90,
]

PIECES = [
  *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
  *"!\"#$%'()*+,-./:;<=>?@[\\]^_`{|}~",
  " ",
  " ",
  "  ",
  "\t",
  "\n",
  "\r\n",
  "\x0b",
  "\x0c",
  "\x00",
  "\x1b",
  "\x7f",
  "\x85",
  "\xa0",
  "é",
  "Ä",
  "ß",
  "ñ",
  "ø",
  "中",
  "文",
  "の",
  "한",
  "й",
  "Ω",
  "ς",
  "€",
  "™",
  "—",
  "\u2019",
  "\u201c",
  "\u201d",
  "…",
  "ﬁ",
  "Ａ",
  "１",
  "🐶",
  "👍🏽",
  "\u200b",
  "\u200d",
  "\u0301",
  "İ",
  "ſ",
  "\u212a",
  "&",
  "&amp;",
  "&#39;",
  "&lt;",
  "&quot;",
  "&nbsp;",
  "&#x1F600;",
  "&amp;amp;",
  "'s",
  "'ll",
  "n't",
  "<start_of_text>",
  "<end_of_text>",
  "Ã©",
  "â€™",
  "cat",
  "dog",
  "photo",
  "the",
]

TINY_CORPUS_COLORS = ["red", "green", "blue", "yellow", "black", "white", "brown", "orange"]
TINY_CORPUS_THINGS = [
  "cat",
  "dog",
  "car",
  "bird",
  "horse",
  "ship",
  "truck",
  "frog",
  "deer",
  "plane",
]
TINY_CORPUS_TEMPLATES = [
  "a photo of a {c} {t}.",
  "a blurry photo of the {t}, which is {c}",
  "There's a {c} {t} here!",
  "two {c} {t}s on the grass",
  "the {t} isn't {c}; it's another colour",
]


def tiny_corpus() -> list[str]:
  """Deterministic caption corpus for the small from-scratch vocabulary."""
  return [
    tmpl.format(c=c, t=t)
    for tmpl in TINY_CORPUS_TEMPLATES
    for c in TINY_CORPUS_COLORS
    for t in TINY_CORPUS_THINGS
  ]


def random_texts(n: int, seed: int) -> list[str]:
  rng = random.Random(seed)
  return ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 24))) for _ in range(n)]


def load_open_clip_tokenizer_module():
  spec = importlib.util.find_spec("open_clip")
  if spec is None or spec.submodule_search_locations is None:
    raise SystemExit("open_clip is not installed in this interpreter")
  path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
  mod_spec = importlib.util.spec_from_file_location("open_clip_tokenizer_standalone", path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module


def golden_cases(tokenizer, texts: list[str]) -> list[dict]:
  cases = []
  for text in texts:
    tokens = [int(i) for i in tokenizer.encode(text)]
    case = {"text": text, "tokens": tokens, "decoded": tokenizer.decode(tokens)}
    for length in CONTEXT_LENGTHS:
      row = tokenizer([text], context_length=length)[0].tolist()
      n = min(len(tokens) + 2, length)
      assert all(i == 0 for i in row[n:]), (text, row)
      case[f"row{length}"] = row[:n]
    cases.append(case)
  return cases


def dump(obj: dict, path: Path) -> None:
  lines = ["{"]
  items = list(obj.items())
  for k, (key, value) in enumerate(items):
    sep = "," if k + 1 < len(items) else ""
    if isinstance(value, list) and value and isinstance(value[0], dict):
      body = ",\n".join("    " + json.dumps(c, ensure_ascii=False) for c in value)
      lines.append(f"  {json.dumps(key)}: [\n{body}\n  ]{sep}")
    else:
      lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{sep}")
  lines.append("}")
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "tokenizer")
  parser.add_argument("--n-random", type=int, default=150)
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)

  oc = load_open_clip_tokenizer_module()
  import ftfy
  import regex

  default = oc.SimpleTokenizer()
  assert (default.sot_token_id, default.eot_token_id) == (49406, 49407)

  tiny_path = build_bpe(tiny_corpus(), TINY_VOCAB_SIZE, args.out / "tiny_merges.txt.gz")
  tiny = oc.SimpleTokenizer(bpe_path=str(tiny_path))
  assert tiny.eot_token_id == TINY_VOCAB_SIZE - 1, tiny.eot_token_id

  texts = HANDWRITTEN + random_texts(args.n_random, seed=0)
  tiny_texts = [*tiny_corpus()[::25], *HANDWRITTEN, *random_texts(30, seed=1)]
  golden = {
    "generator": "scripts/make_tokenizer_fixture.py",
    "versions": {"ftfy": ftfy.__version__, "regex": regex.__version__},
    "default_vocab_size": default.vocab_size,
    "tiny_vocab_size": tiny.vocab_size,
    "cases": golden_cases(default, texts),
    "tiny_cases": golden_cases(tiny, tiny_texts),
  }
  dump(golden, args.out / "golden.json")
  size = (args.out / "golden.json").stat().st_size
  print(f"wrote {len(texts)} + {len(tiny_texts)} cases ({size} bytes) and {tiny_path}")


if __name__ == "__main__":
  main()
