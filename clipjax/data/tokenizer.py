"""CLIP byte-level BPE tokenizer, id-for-id compatible with OpenAI/open_clip `SimpleTokenizer`.

Pipeline for one caption (the order matters for parity):

1. clean: `ftfy.fix_text`, then `html.unescape` twice, then fold every run of whitespace into one
   space, strip, and lower-case;
2. split into words with the CLIP regex (special-token strings, English contractions, letter runs,
   single digits, runs of other non-space symbols);
3. map each word's UTF-8 bytes to printable characters (GPT-2 byte table), mark the last symbol
   with `</w>` and apply the ranked merges greedily (lowest rank first);
4. `[sot] + ids + [eot]`, truncated to `context_length` with `eot` kept last, padded with 0.

Vocabulary layout for a merges file with `m` merges (the default has m = 48,894):
the 256 byte symbols in code-point order (so id 0 is `!`), the same 256 symbols + `</w>`,
the `m` merged symbols in rank order, then
`<start_of_text>` (id 512 + m) and `<end_of_text>` (id 513 + m, the last id).

Importing this module is cheap: `regex`, `ftfy` and the vocabulary are loaded when a `Tokenizer`
is built. `build_bpe` trains a small vocabulary with HF `tokenizers` (optional extra `tok`).

Typical use::

  tok = Tokenizer.default()
  ids_nl = tok(["a photo of a cat", "a dog"])  # int32 [2, 77]
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CONTEXT_LENGTH = 77
DEFAULT_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
SHIPPED_PREFIX = "clipjax:"
SHIPPED = {
  "worlds": (
    "worlds_bpe.txt.gz",
    "1634bdb9b73d7a88e60d57e2ce6f4a7808beee3ce3ab12a57ee5bc0c3deaf008",
  )
}
"""Merges files shipped with clipjax, named `clipjax:<name>` wherever a merges path is taken:
`worlds` is OpenAI's BPE restricted to the words of the built-in worlds (shapes, digits), made
by `subset_bpe(Tokenizer.default(), registry.world_vocabulary_texts(), path)`."""
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
END_OF_WORD = "</w>"
# open_clip reads at most this many merges (lines 1..48894) from any merges file.
MAX_MERGES = 49152 - 256 - 2
N_BASE_SYMBOLS = 512
DEFAULT_CACHE_SIZE = 1 << 17
_NO_RANK = 1 << 62

# Words are letter runs, single digits, runs of other non-space symbols, contractions, or the
# literal special-token strings (open_clip maps those to the special ids).
_WORD_PATTERN = (
  re.escape(SOT_TOKEN)
  + "|"
  + re.escape(EOT_TOKEN)
  + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
# The same split for ASCII-only text (after lower-casing), with the faster stdlib `re`.
_ASCII_WORD_PATTERN = re.compile(
  re.escape(SOT_TOKEN)
  + "|"
  + re.escape(EOT_TOKEN)
  + r"""|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+""",
  re.IGNORECASE,
)
# Printable ASCII without '&', plus tab/newline/carriage return. On such text ftfy.fix_text and
# html.unescape change nothing that survives whitespace folding, so they are skipped.
_SAFE_ASCII = re.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*")


@functools.cache
def byte_symbols() -> tuple[str, ...]:
  """Printable stand-in character for each byte value (the GPT-2/CLIP byte table).

  Bytes that are printable and not whitespace in Latin-1 map to themselves; the other 68 bytes
  map, in increasing byte order, to `chr(256)`, `chr(257)`, ...

  Returns:
    Tuple of 256 one-character strings indexed by byte value.
  """
  keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
  out, extra = [], 256
  for b in range(256):
    if b in keep:
      out.append(chr(b))
    else:
      out.append(chr(extra))
      extra += 1
  return tuple(out)


def clean_text(text: str) -> str:
  """open_clip's default ('lower') caption cleaning.

  `ftfy.fix_text`, `html.unescape` twice, whitespace runs folded to one space, strip, lower-case.

  Args:
    text: raw caption.

  Returns:
    The cleaned caption.
  """
  if _SAFE_ASCII.fullmatch(text) is None:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text)))
  return " ".join(text.split()).lower()


def _read_merges(path: Path) -> list[tuple[str, str]]:
  """Reads a CLIP/GPT-2 merges file (`.gz` or plain UTF-8 text).

  The first line is a header and is skipped; each further line is `left right`. Like open_clip,
  at most `MAX_MERGES` merges are read. A blank last line is ignored.
  """
  opener = gzip.open if path.name.endswith(".gz") else open
  with opener(path, "rb") as f:
    lines = f.read().decode("utf-8").split("\n")
  body = lines[1 : MAX_MERGES + 1]
  if body and body[-1] == "" and len(body) == len(lines) - 1:
    body = body[:-1]
  merges = []
  for lineno, line in enumerate(body, start=2):
    parts = line.split()
    if len(parts) != 2:
      raise ValueError(
        f"{path}: line {lineno} must hold exactly two space-separated symbols, got {line!r}"
      )
    merges.append((parts[0], parts[1]))
  return merges


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


class Tokenizer:
  """CLIP byte-level BPE tokenizer (open_clip `SimpleTokenizer` semantics, numpy output).

  Args:
    merges_path: merges file (`.txt.gz` or `.txt`) in CLIP format, or `clipjax:<name>` for a
      file of `SHIPPED`; None uses the shipped OpenAI vocabulary `bpe_simple_vocab_16e6.txt.gz`.
      The sha256 of shipped files is always checked.
    context_length: default number of ids per caption (sot and eot included).
    sha256: expected sha256 hex digest of the file at `merges_path`; None skips the check for
      custom files (the shipped default is always checked).
    cache_size: entries of the LRU cache from word to ids.

  Raises:
    ValueError: hash mismatch, malformed merges line, or `context_length < 2`.
  """

  def __init__(
    self,
    merges_path: str | os.PathLike | None = None,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    sha256: str | None = None,
    cache_size: int = DEFAULT_CACHE_SIZE,
  ):
    import regex

    if merges_path is None:
      path = Path(__file__).with_name(DEFAULT_VOCAB_FILE)
      expected = DEFAULT_VOCAB_SHA256
    elif str(merges_path).startswith(SHIPPED_PREFIX):
      name = str(merges_path)[len(SHIPPED_PREFIX) :]
      if name not in SHIPPED:
        raise ValueError(
          f"unknown shipped tokenizer {str(merges_path)!r}; shipped: "
          f"{[SHIPPED_PREFIX + n for n in SHIPPED]} (or pass a merges file path)"
        )
      path = Path(__file__).with_name(SHIPPED[name][0])
      expected = SHIPPED[name][1]
    else:
      path = Path(merges_path).absolute()
      expected = sha256
    shipped = merges_path is None or str(merges_path).startswith(SHIPPED_PREFIX)
    self._args = (merges_path if shipped else str(path), context_length, sha256, cache_size)
    if expected is not None:
      got = _sha256(path)
      if got != expected.lower():
        raise ValueError(f"{path}: sha256 is {got}, expected {expected}")
    self.context_length = _check_context_length(context_length)
    self.merges_path = path
    merges = _read_merges(path)
    base = byte_symbols()
    ordered = sorted(base)
    vocab = [*ordered, *(s + END_OF_WORD for s in ordered), *(a + b for a, b in merges)]
    vocab += [SOT_TOKEN, EOT_TOKEN]
    self._id_to_token = vocab
    self._token_to_id = {t: i for i, t in enumerate(vocab)}
    self._ranks = {pair: r for r, pair in enumerate(merges)}
    self._byte_decoder = {c: b for b, c in enumerate(base)}
    self._special = {SOT_TOKEN: len(vocab) - 2, EOT_TOKEN: len(vocab) - 1}
    self._pattern = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
    self._word_ids = functools.lru_cache(maxsize=cache_size)(self._word_ids_uncached)

  @classmethod
  def default(cls) -> Tokenizer:
    """The shipped OpenAI CLIP tokenizer (context length 77), built once and cached."""
    return _default_tokenizer()

  def __reduce__(self) -> tuple[Any, ...]:
    return (type(self), self._args)

  def __repr__(self) -> str:
    return (
      f"Tokenizer(merges_path={str(self.merges_path)!r}, vocab_size={self.vocab_size}, "
      f"context_length={self.context_length})"
    )

  @property
  def vocab_size(self) -> int:
    """Number of ids (embedding table rows); eot is `vocab_size - 1`."""
    return len(self._id_to_token)

  @property
  def sot_id(self) -> int:
    """Id of `<start_of_text>` (49406 for the default vocabulary)."""
    return self._special[SOT_TOKEN]

  @property
  def eot_id(self) -> int:
    """Id of `<end_of_text>` (49407 for the default vocabulary; always the last id)."""
    return self._special[EOT_TOKEN]

  @property
  def pad_id(self) -> int:
    """Padding id (0, as in open_clip; it is also the id of the byte symbol `!`)."""
    return 0

  def bpe(self, symbols: str) -> list[str]:
    """Applies the ranked merges to one byte-encoded word.

    Args:
      symbols: non-empty word already mapped through `byte_symbols()`.

    Returns:
      The merged symbols; the last one ends with `</w>`.
    """
    return self._bpe(symbols, None)

  def _bpe(self, symbols: str, applied: set[tuple[str, str]] | None) -> list[str]:
    word = [*symbols[:-1], symbols[-1] + END_OF_WORD]
    ranks = self._ranks
    while len(word) > 1:
      best, best_rank = None, _NO_RANK
      for pair in zip(word, word[1:]):
        rank = ranks.get(pair, best_rank)
        if rank < best_rank:
          best, best_rank = pair, rank
      if best is None:
        break
      if applied is not None:
        applied.add(best)
      left, right = best
      merged, i, n = [], 0, len(word)
      while i < n:
        if i + 1 < n and word[i] == left and word[i + 1] == right:
          merged.append(left + right)
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    return word

  def _word_ids_uncached(self, word: str) -> tuple[int, ...]:
    special = self._special.get(word)
    if special is not None:
      return (special,)
    table = byte_symbols()
    symbols = "".join([table[b] for b in word.encode("utf-8")])
    return tuple(self._token_to_id[s] for s in self.bpe(symbols))

  def encode(self, text: str) -> list[int]:
    """Token ids of one caption, without sot/eot and without truncation.

    Args:
      text: caption.

    Returns:
      List of ids.

    Raises:
      TypeError: `text` is not a string.
    """
    if not isinstance(text, str):
      raise TypeError(f"text must be a str, got {type(text).__name__}")
    word_ids = self._word_ids
    return [i for word in self._words(text) for i in word_ids(word)]

  def _words(self, text: str) -> list[str]:
    cleaned = clean_text(text)
    if cleaned.isascii():
      return _ASCII_WORD_PATTERN.findall(cleaned)
    return self._pattern.findall(cleaned)

  def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
    """Tokenizes captions into a padded id matrix.

    Args:
      texts: one caption or a sequence of `n` captions; empty strings are valid.
      context_length: ids per row `L` (default: the tokenizer's `context_length`). Longer
        captions are truncated to `L` ids with eot kept as the last id.

    Returns:
      ids_nl: int32 [n, L] (n = 1 for a single string), `[sot, ..., eot, 0, ...]`.

    Raises:
      TypeError: `texts` is not a string or sequence, or item `i` is not a string.
    """
    if isinstance(texts, str):
      texts = [texts]
    elif isinstance(texts, bytes | bytearray) or not isinstance(texts, Iterable):
      raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    texts = list(texts)
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    length = self.context_length if context_length is None else context_length
    length = _check_context_length(length)
    sot, eot = self.sot_id, self.eot_id
    word_ids, words = self._word_ids, self._words
    flat, lengths = [], []
    for text in texts:
      row = [sot]
      for word in words(text):
        row.extend(word_ids(word))
      if len(row) >= length:
        del row[length - 1 :]
      row.append(eot)
      flat.extend(row)
      lengths.append(len(row))
    ids_nl = np.zeros((len(texts), length), np.int32)
    ids_nl[np.arange(length) < np.asarray(lengths, np.int64)[:, None]] = flat
    return ids_nl

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    """Text of a sequence of ids (`</w>` becomes a space; invalid UTF-8 becomes U+FFFD).

    Args:
      ids: token ids, e.g. one row of the output of `__call__`.
      skip_special_tokens: drop sot ids and stop at the first eot (so padding is dropped too).

    Returns:
      Decoded text (lower-cased and cleaned, as the tokenizer saw it).

    Raises:
      TypeError: `ids` are not integers.
      ValueError: `ids` is not 1-D, or an id is outside `[0, vocab_size)`.
    """
    ids_l = np.asarray(ids)
    if ids_l.ndim != 1:
      raise ValueError(f"ids must be 1-D (one caption), got shape {ids_l.shape}")
    if ids_l.size and not np.issubdtype(ids_l.dtype, np.integer):
      raise TypeError(f"ids must be integers, got dtype {ids_l.dtype}")
    parts = []
    n = self.vocab_size
    for k, i in enumerate(ids_l.tolist()):
      if not 0 <= i < n:
        raise ValueError(f"ids[{k}] = {i} is outside [0, {n})")
      if skip_special_tokens and i == self.eot_id:
        break
      if skip_special_tokens and i == self.sot_id:
        continue
      parts.append(self._id_to_token[i])
    decoder = self._byte_decoder
    data = bytes([decoder[c] for c in "".join(parts)])
    return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

  def cache_info(self) -> Any:
    """Hit/miss statistics of the word cache (`functools.lru_cache` `cache_info()`)."""
    return self._word_ids.cache_info()


def _check_context_length(context_length: int) -> int:
  if isinstance(context_length, bool) or not isinstance(context_length, int | np.integer):
    raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
  if context_length < 2:
    raise ValueError(f"context_length must be >= 2 (sot and eot), got {context_length}")
  return int(context_length)


@functools.cache
def _default_tokenizer() -> Tokenizer:
  return Tokenizer()


def build_bpe(
  captions: Iterable[str],
  vocab_size: int,
  path: str | os.PathLike,
  *,
  min_frequency: int = 2,
) -> Path:
  """Trains a CLIP-style BPE vocabulary on captions and writes its merges file.

  Captions go through the same cleaning and word split as `Tokenizer`; HF `tokenizers` learns
  the merges; only the merges are kept, and `Tokenizer(path)` rebuilds the vocabulary CLIP-style
  (all 256 bytes with and without `</w>`), so no character is ever dropped. The 256 `x</w>`
  symbols are registered with the trainer up front so that their ids, and hence the order in
  which `tokenizers` breaks ties between equally frequent pairs, do not depend on hash order:
  the same captions give the same file in every process.

  Args:
    captions: training captions.
    vocab_size: size of the resulting vocabulary, 514 <= vocab_size <= 49408; it holds
      `vocab_size - 514` merges, sot is `vocab_size - 2` and eot `vocab_size - 1`.
    path: output file; written gzip-compressed (name it `*.txt.gz`), without a trailing newline
      so open_clip's `SimpleTokenizer(bpe_path=path)` gives the same ids.
    min_frequency: a pair must occur at least this often to be merged.

  Returns:
    `path` as a `Path`.

  Raises:
    ImportError: `tokenizers` is not installed (`pip install clipjax[tok]`).
    TypeError: caption `i` is not a string.
    ValueError: `vocab_size` out of range, or the corpus yields fewer merges than needed.
  """
  n_merges = vocab_size - N_BASE_SYMBOLS - 2
  if not 0 <= n_merges <= MAX_MERGES:
    raise ValueError(
      f"vocab_size must be in [{N_BASE_SYMBOLS + 2}, {N_BASE_SYMBOLS + 2 + MAX_MERGES}], "
      f"got {vocab_size}"
    )
  try:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers
  except ImportError as e:
    raise ImportError("build_bpe needs `tokenizers`: pip install 'clipjax[tok]'") from e
  import regex

  pattern = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
  table = byte_symbols()

  def words() -> Iterable[str]:
    for i, caption in enumerate(captions):
      if not isinstance(caption, str):
        raise TypeError(f"captions[{i}] must be a str, got {type(caption).__name__}")
      found = pattern.findall(clean_text(caption))
      yield " ".join("".join([table[b] for b in w.encode("utf-8")]) for w in found)

  hf = HFTokenizer(models.BPE(end_of_word_suffix=END_OF_WORD))
  hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  ordered = sorted(table)
  trainer = trainers.BpeTrainer(
    vocab_size=N_BASE_SYMBOLS + n_merges,
    min_frequency=min_frequency,
    special_tokens=[s + END_OF_WORD for s in ordered],
    initial_alphabet=ordered,
    end_of_word_suffix=END_OF_WORD,
    show_progress=False,
  )
  hf.train_from_iterator(words(), trainer=trainer)
  learned = json.loads(hf.to_str())["model"]["merges"]
  merges = [m.split(" ") if isinstance(m, str) else m for m in learned][:n_merges]
  if len(merges) < n_merges:
    raise ValueError(
      f"corpus yields only {len(merges)} merges with min_frequency={min_frequency}, "
      f"so vocab_size can be at most {N_BASE_SYMBOLS + 2 + len(merges)} (asked {vocab_size}); "
      "lower vocab_size or min_frequency, or add captions"
    )
  return _write_merges(path, merges, f"clipjax build_bpe vocab_size={vocab_size}")


def _write_merges(path: str | os.PathLike, merges: Sequence[tuple[str, str]], note: str) -> Path:
  # gzip without a timestamp (the same merges give the same bytes) and without a trailing
  # newline, so open_clip's `SimpleTokenizer(bpe_path=path)` gives the same ids.
  text = "\n".join([f"#version: 0.2 {note}", *(f"{a} {b}" for a, b in merges)])
  out = Path(path)
  with open(out, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
    gz.write(text.encode("utf-8"))
  return out


def subset_bpe(tokenizer: Tokenizer, texts: Iterable[str], path: str | os.PathLike) -> Path:
  """Writes the merges `tokenizer` applies to `texts`, in their rank order, as a merges file.

  Greedy BPE restricted to a subset of merges that contains every merge it applied to a word
  makes the same choices on that word, so the new tokenizer splits every word of `texts` into
  the same symbols as `tokenizer` (with a compact vocabulary: 514 + the merges used). Other
  words still tokenize, losslessly, into coarser pieces (down to bytes).

  Args:
    tokenizer: the tokenizer to restrict (e.g. `Tokenizer.default()`).
    texts: the texts whose words must keep their segmentation.
    path: output file (`*.txt.gz`).

  Returns:
    `path` as a `Path`.
  """
  table = byte_symbols()
  used: set[tuple[str, str]] = set()
  for text in texts:
    for word in tokenizer._words(text):
      if word not in tokenizer._special:
        tokenizer._bpe("".join([table[b] for b in word.encode("utf-8")]), used)
  merges = sorted(used, key=tokenizer._ranks.__getitem__)
  return _write_merges(path, merges, f"clipjax subset_bpe of {tokenizer.merges_path.name}")
