"""Image↔text retrieval Recall@K with several captions per image (CLIP paper / CLIP_benchmark).

* image→text: an image is a hit at K if any of its captions is among the K texts most similar
  to it;
* text→image: a caption is a hit at K if its image is among the K images most similar to it.

Two definitions of "its", each under its own metric names:

* `match="index"` (CLIP_benchmark's definition and names, `text_retrieval_recall@K` = image→text,
  `image_retrieval_recall@K` = text→image): a caption matches only the image it belongs to.
* `match="identical"` (`text_retrieval_recall_identical@K`, `image_retrieval_recall_identical@K`):
  a caption also matches every image that has a caption with identical token ids. Templated
  captions repeat across images, and exact-index matching then caps R@1 below 1 for a perfect
  model.

Ties do not count against the query: a query is a hit at K when fewer than K non-matching items
score strictly higher than its best matching item. (CLIP_benchmark's `torch.topk` breaks ties in
an unspecified order; the two agree whenever scores are distinct.) A model that maps everything
to one embedding therefore scores R@K = 1: `recall_at_k` also reports `tied_fraction`, the share
of image→text queries whose best match ties with a non-matching caption.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from clipjax.evaluation.common import get_field, l2_normalize, valid_mask

__all__ = [
  "MATCH_MODES",
  "RetrievalFeatures",
  "evaluate_retrieval",
  "extract_retrieval_features",
  "metric_suffix",
  "recall_at_k",
]

MATCH_MODES = ("index", "identical")


def metric_suffix(match: str) -> str:
  """The metric-name suffix of a match mode: "" (CLIP_benchmark's) or "_identical"."""
  if match not in MATCH_MODES:
    raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")
  return "" if match == "index" else f"_{match}"


class RetrievalFeatures(NamedTuple):
  """Embeddings for retrieval.

  Attributes:
    zimg_nd: [n, d] L2-normalised image embeddings.
    ztxt_md: [m, d] L2-normalised caption embeddings.
    txt2img_m: [m] index of each caption's image.
    ids_ml: [m, L] caption token ids (for `match="identical"`).
  """

  zimg_nd: np.ndarray
  ztxt_md: np.ndarray
  txt2img_m: np.ndarray
  ids_ml: np.ndarray | None = None


def _positives(rows_r, txt2img_m, text_key_m, image_keys):
  """[r, m] bool: caption j matches image i (by index, or by identical text key)."""
  if text_key_m is None:
    return txt2img_m[None, :] == rows_r[:, None]
  return image_keys[rows_r][:, text_key_m]


def recall_at_k(
  zimg_nd: np.ndarray,
  ztxt_md: np.ndarray,
  txt2img_m: np.ndarray,
  *,
  ks: Sequence[int] = (1, 5, 10),
  match: str = "index",
  ids_ml: np.ndarray | None = None,
  chunk: int = 1024,
) -> dict[str, float]:
  """Recall@K in both directions.

  Args:
    zimg_nd: [n, d] image embeddings (L2-normalised here).
    ztxt_md: [m, d] caption embeddings (L2-normalised here).
    txt2img_m: [m] image index of every caption; every image needs at least one caption.
    ks: the K values.
    match: "index" (a caption matches only its own image) or "identical" (also images that have
      a caption with identical token ids; needs `ids_ml`).
    ids_ml: [m, L] caption token ids.
    chunk: rows of the similarity matrix computed at a time.

  Returns:
    `{"image_retrieval_recall@K", "text_retrieval_recall@K"}` for `match="index"` (CLIP_benchmark's
    names: image retrieval = text→image, text retrieval = image→text), with an `_identical`
    suffix before `@K` for `match="identical"`; plus `n_images`, `n_texts` and
    `tied_fraction{suffix}` (image→text queries whose best match ties a non-matching caption).
  """
  zimg_nd, ztxt_md = l2_normalize(zimg_nd), l2_normalize(ztxt_md)
  txt2img_m = np.asarray(txt2img_m, np.int64)
  n, m = zimg_nd.shape[0], ztxt_md.shape[0]
  if txt2img_m.shape != (m,):
    raise ValueError(f"txt2img has shape {txt2img_m.shape}, expected ({m},)")
  if zimg_nd.shape[1] != ztxt_md.shape[1]:
    raise ValueError(f"embedding dims differ: images {zimg_nd.shape}, texts {ztxt_md.shape}")
  if m and (txt2img_m.min() < 0 or txt2img_m.max() >= n):
    raise ValueError(
      f"txt2img values must lie in [0, {n}), got [{txt2img_m.min()}, {txt2img_m.max()}]"
    )
  counts = np.bincount(txt2img_m, minlength=n)
  if np.any(counts == 0):
    raise ValueError(f"image {int(np.flatnonzero(counts == 0)[0])} has no caption")
  name_suffix = metric_suffix(match)
  text_key_m = image_keys = None
  if match == "identical":
    if ids_ml is None or np.asarray(ids_ml).shape[0] != m:
      raise ValueError("match='identical' needs ids_ml with one row per caption")
    _, text_key_m = np.unique(np.asarray(ids_ml), axis=0, return_inverse=True)
    text_key_m = text_key_m.reshape(m)
    image_keys = np.zeros((n, int(text_key_m.max()) + 1), bool)
    image_keys[txt2img_m, text_key_m] = True

  i2t_rank_n = np.empty((n,), np.int64)
  i2t_tied_n = np.empty((n,), bool)
  for start in range(0, n, chunk):
    rows = np.arange(start, min(start + chunk, n))
    sim_rm = zimg_nd[rows] @ ztxt_md.T
    pos_rm = _positives(rows, txt2img_m, text_key_m, image_keys)
    best_r = np.max(np.where(pos_rm, sim_rm, -np.inf), axis=1)
    i2t_rank_n[rows] = np.sum(~pos_rm & (sim_rm > best_r[:, None]), axis=1)
    i2t_tied_n[rows] = np.any(~pos_rm & (sim_rm == best_r[:, None]), axis=1)

  t2i_rank_m = np.empty((m,), np.int64)
  all_images = np.arange(n)
  for start in range(0, m, chunk):
    cols = np.arange(start, min(start + chunk, m))
    sim_nc = zimg_nd @ ztxt_md[cols].T
    key_c = None if text_key_m is None else text_key_m[cols]
    pos_nc = _positives(all_images, txt2img_m[cols], key_c, image_keys)
    best_c = np.max(np.where(pos_nc, sim_nc, -np.inf), axis=0)
    t2i_rank_m[cols] = np.sum(~pos_nc & (sim_nc > best_c[None, :]), axis=0)

  out: dict[str, float] = {}
  for k in ks:
    out[f"image_retrieval_recall{name_suffix}@{k}"] = float(np.mean(t2i_rank_m < k))
    out[f"text_retrieval_recall{name_suffix}@{k}"] = float(np.mean(i2t_rank_n < k))
  out[f"tied_fraction{name_suffix}"] = float(np.mean(i2t_tied_n))
  out.update(n_images=n, n_texts=m)
  return out


def extract_retrieval_features(
  encode_image: Callable[[np.ndarray], Any],
  encode_text: Callable[[np.ndarray], Any],
  batches: Iterable[Mapping[str, Any]],
  *,
  text_key: str = "ids",
  text_valid_key: str | None = None,
) -> RetrievalFeatures:
  """Embeds every valid image and its captions.

  Args:
    encode_image: `encode_image(pixels_bhwc) -> emb_bd`.
    encode_text: `encode_text(ids_bl) -> emb_bd`.
    batches: dicts with `image`, caption ids and optional `valid`.
    text_key: caption ids, [b, L] (one caption per image) or [b, K, L] (K per image, e.g.
      "captions_ids").
    text_valid_key: optional [b, K] bool marking real captions (e.g. "captions_valid").

  Returns:
    RetrievalFeatures over the valid examples, in order.
  """
  zimg, ztxt, txt2img, ids_all = [], [], [], []
  n_seen = 0
  for i, batch in enumerate(batches):
    x = get_field(batch, "image")
    b = x.shape[0]
    keep_b = valid_mask(batch, b)
    ids = get_field(batch, text_key)
    if ids.ndim == 2:
      ids = ids[:, None, :]
    if ids.ndim != 3 or ids.shape[0] != b:
      raise ValueError(f"batch {i}: {text_key!r} must be [b, L] or [b, K, L], got {ids.shape}")
    k = ids.shape[1]
    cap_ok_bk = (
      np.ones((b, k), bool) if text_valid_key is None else get_field(batch, text_valid_key)
    )
    if cap_ok_bk.shape != (b, k):
      raise ValueError(f"batch {i}: {text_valid_key!r} shape {cap_ok_bk.shape} != {(b, k)}")
    cap_ok_bk = cap_ok_bk & keep_b[:, None]
    zimg.append(np.asarray(encode_image(x), np.float32)[keep_b])
    emb = np.asarray(encode_text(ids.reshape(b * k, -1)), np.float32)
    ztxt.append(emb[cap_ok_bk.reshape(-1)])
    ids_all.append(ids.reshape(b * k, -1)[cap_ok_bk.reshape(-1)])
    new_index_b = n_seen + np.cumsum(keep_b) - 1
    txt2img.append(np.broadcast_to(new_index_b[:, None], (b, k))[cap_ok_bk])
    n_seen += int(keep_b.sum())
  if not zimg:
    raise ValueError("no batches to evaluate (empty iterable)")
  return RetrievalFeatures(
    l2_normalize(np.concatenate(zimg)),
    l2_normalize(np.concatenate(ztxt)),
    np.concatenate(txt2img).astype(np.int64),
    np.concatenate(ids_all),
  )


def evaluate_retrieval(
  encode_image: Callable[[np.ndarray], Any],
  encode_text: Callable[[np.ndarray], Any],
  batches: Iterable[Mapping[str, Any]],
  *,
  text_key: str = "ids",
  text_valid_key: str | None = None,
  ks: Sequence[int] = (1, 5, 10),
  match: str = "index",
) -> dict[str, Any]:
  """`extract_retrieval_features` then `recall_at_k` (the metric names carry `match`)."""
  feats = extract_retrieval_features(
    encode_image, encode_text, batches, text_key=text_key, text_valid_key=text_valid_key
  )
  return recall_at_k(
    feats.zimg_nd, feats.ztxt_md, feats.txt2img_m, ks=ks, match=match, ids_ml=feats.ids_ml
  )
