"""Tokenizer tests: golden ids from open_clip, known answers on a hand-made merges file, errors."""

import gzip
import html
import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import ftfy
import numpy as np
import pytest

from clipjax.data import tokenizer as tk
from clipjax.data.tokenizer import Tokenizer, build_bpe

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "tokenizer"
GOLDEN = json.loads((FIXTURES / "golden.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def default_tok():
  return Tokenizer.default()


@pytest.fixture(scope="module")
def tiny_tok():
  return Tokenizer(FIXTURES / "tiny_merges.txt.gz")


def _padded(rows, length):
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    out[i, : len(row)] = row
  return out


@pytest.mark.parametrize("which", ["cases", "tiny_cases"])
def test_matches_open_clip_golden_ids(which, default_tok, tiny_tok):
  tok = default_tok if which == "cases" else tiny_tok
  cases = GOLDEN[which]
  assert tok.vocab_size == GOLDEN["default_vocab_size" if which == "cases" else "tiny_vocab_size"]
  texts = [c["text"] for c in cases]
  for k, case in enumerate(cases):
    assert tok.encode(case["text"]) == case["tokens"], (k, case["text"])
    assert tok.decode(case["tokens"]) == case["decoded"], (k, case["text"])
  for length in (77, 8):
    got = tok(texts, context_length=length)
    assert got.dtype == np.int32 and got.shape == (len(texts), length)
    np.testing.assert_array_equal(got, _padded([c[f"row{length}"] for c in cases], length))


def test_golden_corpus_covers_truncation_and_literal_specials():
  rows = [c["row77"] for c in GOLDEN["cases"]]
  assert sum(len(r) == 77 and len(c["tokens"]) > 75 for r, c in zip(rows, GOLDEN["cases"])) >= 3
  assert any(49406 in r[1:-1] for r in rows)


def test_default_special_ids_and_layout(default_tok):
  tok = default_tok
  assert (tok.vocab_size, tok.sot_id, tok.eot_id, tok.pad_id) == (49408, 49406, 49407, 0)
  assert tok.context_length == 77
  assert Tokenizer.default() is tok
  # Byte symbols in code-point order: '!'..'~' are ids 0..93, byte 0x00 is 188, space 220.
  assert [tok.decode([i]) for i in (0, 93, 188, 220)] == ["!", "~", "\x00", " "]
  assert tok.decode([256, 256 + 64]) == "! a "
  assert tok.encode("!") == [256] and tok.encode("a") == [320]


def test_empty_and_truncation(default_tok):
  ids = default_tok(["", "cat " * 200])
  np.testing.assert_array_equal(ids[0, :3], [49406, 49407, 0])
  assert not ids[0, 2:].any()
  assert ids[1, 0] == 49406 and ids[1, -1] == 49407
  np.testing.assert_array_equal(ids[1, 1:-1], np.full(75, default_tok.encode("cat")[0]))
  short = default_tok("cat " * 200, context_length=2)
  np.testing.assert_array_equal(short, [[49406, 49407]])
  exact = default_tok("cat " * 75)
  assert exact[0, -1] == 49407 and exact[0, -2] == exact[0, 1]
  assert default_tok([]).shape == (0, 77)


def test_decode_skip_special(default_tok):
  row = default_tok("A Photo of a Cat!")[0]
  assert default_tok.decode(row, skip_special_tokens=True) == "a photo of a cat ! "
  assert default_tok.decode(row).startswith("<start_of_text>a photo")
  assert default_tok.decode(row).endswith("<end_of_text>" + "!" * (77 - 8))
  with pytest.raises(ValueError, match=r"ids\[1\] = 49408"):
    default_tok.decode([320, 49408])
  with pytest.raises(ValueError, match=r"ids must be 1-D .* got shape \(1, 77\)"):
    default_tok.decode(default_tok("a cat"))
  assert default_tok.decode([]) == ""
  with pytest.raises(TypeError, match="ids must be integers, got dtype float64"):
    default_tok.decode([1.5])


def test_bad_inputs_name_the_index(default_tok):
  with pytest.raises(TypeError, match=r"texts\[2\] must be a str, got NoneType"):
    default_tok(["a", "b", None])
  with pytest.raises(TypeError, match=r"texts\[0\] must be a str, got int"):
    default_tok([3])
  with pytest.raises(TypeError, match="got NoneType"):
    default_tok(None)
  with pytest.raises(TypeError, match="got bytes"):
    default_tok(b"a cat")
  with pytest.raises(TypeError, match="got bytes"):
    default_tok.encode(b"a cat")
  with pytest.raises(ValueError, match="context_length must be >= 2"):
    default_tok("a", context_length=1)
  assert default_tok(np.array(["a cat", ""])).shape == (2, 77)
  assert default_tok(t for t in ["a", "b"]).shape == (2, 77)


def test_ascii_fast_path_equals_ftfy_path():
  rng = random.Random(0)
  alphabet = [chr(i) for i in range(128)] + ["&amp;", "&#39;", "\r\n", "  "]
  for _ in range(3000):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
    full = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()
    assert tk.clean_text(text) == full, repr(text)


def test_ascii_word_split_equals_unicode_regex(default_tok):
  rng = random.Random(1)
  alphabet = [chr(i) for i in range(128)] + ["'s", "'ll", "<start_of_text>", "<END_OF_TEXT>"]
  for _ in range(3000):
    text = tk.clean_text("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))))
    assert text.isascii()
    want = default_tok._pattern.findall(text)
    assert tk._ASCII_WORD_PATTERN.findall(text) == want, repr(text)


def _write_merges(path, lines, header="#version: 0.2"):
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join([header, *lines]))
  return path


def test_custom_merges_known_ids(tmp_path):
  path = _write_merges(tmp_path / "m.txt.gz", ["c a", "ca t</w>", "d o", "do g</w>"])
  tok = Tokenizer(path, context_length=6)
  assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (518, 516, 517)
  # Base ids: '!'..'~' are 0..93, so 'a' = 64, 'a</w>' = 256 + 64; merges start at 512.
  assert tok.encode("cat") == [513]
  # "cats": c a t s</w> -> ca t s</w>; "ca t</w>" needs t</w>, so no second merge.
  assert tok.encode("Dog cats") == [515, 512, ord("t") - 0x21, 256 + ord("s") - 0x21]
  assert tok.encode("a") == [256 + 64]
  np.testing.assert_array_equal(tok("cat dog cat dog"), [[516, 513, 515, 513, 515, 517]])
  assert tok.decode(tok.encode("dog cat")) == "dog cat "
  plain = tmp_path / "m.txt"
  plain.write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n", encoding="utf-8")
  assert Tokenizer(plain).encode("cat dog") == [513, 515]


def test_duplicate_merge_lines_keep_the_later_rank(tmp_path):
  # As in open_clip: ranks come from dict(zip(merges, range)), so a repeated pair takes its later
  # rank and its merged symbol appears twice in the vocabulary (the later id wins on encode).
  path = _write_merges(tmp_path / "d.txt.gz", ["c a", "a t</w>", "c a", "ca t</w>"])
  tok = Tokenizer(path)
  assert tok.vocab_size == 518
  # "a t</w>" (rank 1) beats the repeated "c a" (rank 2): c + at</w>, no "cat</w>".
  assert tok.encode("cat") == [ord("c") - 0x21, 513]
  assert tok.encode("cab") == [514, ord("b") - 0x21 + 256]


def test_custom_merges_errors(tmp_path):
  bad = _write_merges(tmp_path / "bad.txt.gz", ["c a", "c a t", "d o"])
  with pytest.raises(ValueError, match=r"bad\.txt\.gz: line 3 must hold exactly two"):
    Tokenizer(bad)
  good = _write_merges(tmp_path / "good.txt.gz", ["c a"])
  with pytest.raises(ValueError, match=r"good\.txt\.gz: sha256 is [0-9a-f]{64}, expected 00"):
    Tokenizer(good, sha256="00" * 32)
  digest = tk._sha256(good)
  assert Tokenizer(good, sha256=digest.upper()).vocab_size == 515
  with pytest.raises(FileNotFoundError):
    Tokenizer(tmp_path / "missing.txt.gz")


def test_default_vocab_hash_is_checked(monkeypatch):
  monkeypatch.setattr(tk, "DEFAULT_VOCAB_SHA256", "f" * 64)
  with pytest.raises(ValueError, match=r"bpe_simple_vocab_16e6\.txt\.gz: sha256 is 924691ac"):
    Tokenizer()


def test_pickle_round_trip(tiny_tok):
  clone = pickle.loads(pickle.dumps(tiny_tok))
  texts = [c["text"] for c in GOLDEN["tiny_cases"][:10]]
  np.testing.assert_array_equal(clone(texts), tiny_tok(texts))


def test_word_cache_hits(tmp_path):
  tok = Tokenizer(FIXTURES / "tiny_merges.txt.gz", cache_size=4)
  tok(["a red cat", "a red cat"])
  info = tok.cache_info()
  assert (info.hits, info.misses, info.maxsize) == (3, 3, 4)


def test_build_bpe_is_lossless_and_matches_layout(tmp_path):
  pytest.importorskip("tokenizers")
  corpus = [f"a photo of a {c} {t}." for c in ("red", "blue", "green") for t in ("cat", "dog")]
  path = build_bpe(corpus * 5, 530, tmp_path / "v.txt.gz")
  tok = Tokenizer(path)
  assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (530, 528, 529)
  with gzip.open(path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
  assert len(lines) == 1 + 16 and lines[-1] != ""
  # Learned merges make frequent words single tokens.
  assert len(tok.encode("photo")) == 1
  # Characters never seen at a word end (or at all) survive: nothing is dropped.
  text = "Cats! zebra 42 naïve 🐶 ok?"
  assert tok.decode(tok.encode(text)) == "cats ! zebra 4 2 naïve 🐶 ok ? "


def test_build_bpe_reproduces_committed_fixture(tmp_path):
  pytest.importorskip("tokenizers")
  import make_tokenizer_fixture as script

  path = build_bpe(script.tiny_corpus(), script.TINY_VOCAB_SIZE, tmp_path / "tiny.txt.gz")
  assert path.read_bytes() == (FIXTURES / "tiny_merges.txt.gz").read_bytes()


def test_build_bpe_errors(tmp_path):
  pytest.importorskip("tokenizers")
  with pytest.raises(ValueError, match=r"vocab_size must be in \[514, 49408\], got 513"):
    build_bpe(["a cat"], 513, tmp_path / "v.txt.gz")
  with pytest.raises(ValueError, match="corpus yields only"):
    build_bpe(["a cat"], 1000, tmp_path / "v.txt.gz")
  with pytest.raises(TypeError, match=r"captions\[1\] must be a str"):
    build_bpe(["a cat", None], 520, tmp_path / "v.txt.gz")
  assert Tokenizer(build_bpe(["a cat"], 514, tmp_path / "e.txt.gz")).vocab_size == 514


def test_import_is_lazy():
  # Loads the module file alone: its own imports must not pull in ftfy, regex, tokenizers or jax,
  # and nothing is read from disk until a Tokenizer is built.
  path = ROOT / "clipjax" / "data" / "tokenizer.py"
  code = (
    "import importlib.util, sys; "
    f"spec = importlib.util.spec_from_file_location('tok', {str(path)!r}); "
    "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
    "print(sorted({'ftfy', 'regex', 'tokenizers', 'jax'} & set(sys.modules)), "
    "m._default_tokenizer.cache_info().currsize)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[] 0"


def _symbols(tok, text):
  return [tok._id_to_token[i] for i in tok.encode(text)]


def test_subset_bpe_keeps_the_segmentation_of_its_texts(tmp_path, default_tok):
  texts = ["a photograph of two zebras", "unbelievable tokenization!", "naïve café"]
  sub = Tokenizer(tk.subset_bpe(default_tok, texts, tmp_path / "sub.txt.gz"))
  for text in texts:
    assert _symbols(sub, text) == _symbols(default_tok, text)
  # Merges kept in rank order: the vocabulary is 514 + the merges applied, nothing else.
  merges = tk._read_merges(tmp_path / "sub.txt.gz")
  ranks = [default_tok._ranks[m] for m in merges]
  assert ranks == sorted(ranks) and sub.vocab_size == 514 + len(merges)
  # A word outside the texts still round-trips (coarser pieces, down to bytes).
  assert sub.decode(sub.encode("quixotic"), skip_special_tokens=True).strip() == "quixotic"
  assert len(sub.encode("quixotic")) > len(default_tok.encode("quixotic"))


def test_shipped_worlds_tokenizer_is_the_subset_of_the_world_texts(tmp_path, default_tok):
  from clipjax.data import digits, registry, synthetic

  made = tk.subset_bpe(default_tok, registry.world_vocabulary_texts(), tmp_path / "w.txt.gz")
  shipped = Path(tk.__file__).with_name(tk.SHIPPED["worlds"][0])
  assert made.read_bytes() == shipped.read_bytes(), "regenerate clipjax/data/worlds_bpe.txt.gz"
  tok = Tokenizer("clipjax:worlds")
  assert tok.vocab_size == 757
  src = synthetic.SyntheticShapes(
    "train",
    image_size=16,
    second_object=True,
    partial_captions=0.5,
    label_templates="rich",
    shapes=synthetic.SHAPES,
    colours=tuple(synthetic.COLOURS),
    fills=synthetic.FILLS,
    sizes=tuple(synthetic.SIZES),
  )
  texts = [src.get_text(i)["caption"] for i in range(200)]
  texts += [
    t.format(d, word=w, num=d)
    for d, w in enumerate(digits.DIGIT_WORDS)
    for t in (*digits.CAPTION_TEMPLATES, *digits.LABEL_TEMPLATES)
  ]
  for text in texts:
    assert _symbols(tok, text) == _symbols(default_tok, text), text
  clone = pickle.loads(pickle.dumps(tok))
  assert clone._args[0] == "clipjax:worlds"
  with pytest.raises(
    ValueError, match=r"unknown shipped tokenizer 'clipjax:world'.*clipjax:worlds"
  ):
    Tokenizer("clipjax:world")
