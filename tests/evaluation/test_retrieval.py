"""Retrieval Recall@K: oracle, known permutation, duplicate captions, reference definition."""

import numpy as np
import pytest

from clipjax.evaluation import evaluate_retrieval, extract_retrieval_features, recall_at_k


def orthonormal(n, d, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, n)))
  return q.T


def reference_recall(zimg, ztxt, txt2img, k):
  """CLIP_benchmark's definition with explicit top-k lists (continuous scores, no ties)."""
  sim = zimg @ ztxt.T
  i2t = np.mean(
    [np.isin(np.flatnonzero(txt2img == i), np.argsort(-sim[i])[:k]).any() for i in range(len(zimg))]
  )
  t2i = np.mean([txt2img[j] in np.argsort(-sim[:, j])[:k] for j in range(len(ztxt))])
  return i2t, t2i


def test_oracle_several_captions_recall_one():
  zimg = orthonormal(8, 16)
  txt2img = np.repeat(np.arange(8), 3)
  rng = np.random.default_rng(1)
  ztxt = zimg[txt2img] + 0.05 * rng.normal(size=(24, 16))
  got = recall_at_k(zimg, ztxt, txt2img, chunk=3)
  for k in (1, 5, 10):
    assert got[f"image_retrieval_recall@{k}"] == 1.0
    assert got[f"text_retrieval_recall@{k}"] == 1.0
  assert got["n_images"] == 8 and got["n_texts"] == 24


def test_known_permutation_gives_known_recall():
  """Caption j embeds as image π(j): hits exactly at the 3 fixed points, R@10 = 1 (n = 10)."""
  zimg = np.eye(10, 12)  # exact zeros off the diagonal: wrong items tie with the rest
  perm = np.array([0, 2, 1, 3, 5, 4, 6, 8, 9, 7])  # fixed points 0, 3, 6
  got = recall_at_k(zimg, zimg[perm], np.arange(10), ks=(1, 2, 10))
  for direction in ("image", "text"):
    assert got[f"{direction}_retrieval_recall@1"] == pytest.approx(0.3)
    # Off the fixed points one wrong item scores 1 and the rest tie with the true one at 0;
    # ties do not count against the query, so the true item ranks second.
    assert got[f"{direction}_retrieval_recall@2"] == 1.0
    assert got[f"{direction}_retrieval_recall@10"] == 1.0
  assert got["tied_fraction"] == pytest.approx(0.7)  # the 7 images off the fixed points


def test_ties_do_not_count_against_the_query():
  """A wrong caption tied with the true one is no miss; one scoring strictly higher is."""
  zimg = np.eye(3, 4)
  ztxt = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0.1, 0, 0.9, 0]])  # caption 1 ties image 0
  got = recall_at_k(zimg, ztxt, np.arange(3), ks=(1,))
  # image->text: image 0 scores 1 on captions 0 and 1 (tie: hit); image 1 scores 0 on all
  # three (tie: hit); image 2 scores its own caption highest (hit, no tie).
  assert got["text_retrieval_recall@1"] == 1.0
  assert got["tied_fraction"] == pytest.approx(2 / 3)
  # text->image: caption 1 scores image 0 (1) above its own image 1 (0): a miss.
  assert got["image_retrieval_recall@1"] == pytest.approx(2 / 3)


def test_matches_reference_definition_on_random_embeddings():
  rng = np.random.default_rng(2)
  zimg = rng.normal(size=(30, 8))
  txt2img = np.concatenate([np.arange(30), rng.integers(0, 30, size=20)])
  ztxt = zimg[txt2img] + 1.5 * rng.normal(size=(50, 8))
  zimg /= np.linalg.norm(zimg, axis=1, keepdims=True)
  ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
  got = recall_at_k(zimg, ztxt, txt2img, ks=(1, 5), chunk=7)
  for k in (1, 5):
    i2t, t2i = reference_recall(zimg, ztxt, txt2img, k)
    assert got[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)
    assert got[f"image_retrieval_recall@{k}"] == pytest.approx(t2i)
  assert 0.0 < got["text_retrieval_recall@1"] < 1.0


def test_identical_captions_count_in_identical_mode_under_their_own_name():
  """Images 0 and 1 have one caption text; its embedding is closest to image 1."""
  zimg = np.eye(5, 8)  # exact zeros: the wrong images tie with image 0 for caption 0
  ids = np.array([[1, 7, 2], [1, 7, 2], [1, 8, 2], [1, 9, 2], [1, 6, 2]])
  txt2img = np.arange(5)
  ztxt = zimg.copy()
  ztxt[0] = zimg[1]  # an identical text embeds identically
  by_index = recall_at_k(zimg, ztxt, txt2img, ks=(1, 2))
  assert by_index["image_retrieval_recall@1"] == pytest.approx(0.8)  # caption 0 -> image 1
  assert by_index["image_retrieval_recall@2"] == 1.0
  assert by_index["text_retrieval_recall@1"] == 1.0
  same_text = recall_at_k(zimg, ztxt, txt2img, ks=(1,), match="identical", ids_ml=ids)
  assert same_text["image_retrieval_recall_identical@1"] == 1.0
  assert same_text["text_retrieval_recall_identical@1"] == 1.0
  assert not any(
    k.startswith(("image_retrieval_recall@", "text_retrieval_recall@")) for k in same_text
  )
  with pytest.raises(ValueError, match="needs ids_ml"):
    recall_at_k(zimg, ztxt, txt2img, match="identical")
  with pytest.raises(ValueError, match="image 4 has no caption"):
    recall_at_k(zimg, ztxt[:4], txt2img[:4])


def test_extract_features_from_batches_with_caption_masks():
  """Two batches, K = 2 captions per image, one missing caption, one padded image."""
  d = 6
  basis = np.eye(d, dtype=np.float32)

  def encode_image(x):
    return x.reshape(x.shape[0], -1)

  def encode_text(ids):
    return basis[ids[:, 0]]  # token 0 names the image's basis vector

  def batch(img_ids, cap_ok, valid):
    b = len(img_ids)
    ids = np.zeros((b, 2, 3), np.int32)
    ids[:, :, 0] = np.array(img_ids)[:, None]
    ids[:, 1, 1] = 5  # second caption differs in a later token
    return {
      "image": basis[img_ids].reshape(b, 1, 1, d),
      "captions_ids": ids,
      "captions_valid": np.array(cap_ok, bool),
      "valid": np.array(valid, bool),
    }

  batches = [
    batch([0, 1, 2], [[1, 1], [1, 0], [1, 1]], [1, 1, 1]),
    batch([3, 4, 0], [[1, 1], [1, 1], [1, 1]], [1, 1, 0]),
  ]
  feats = extract_retrieval_features(
    encode_image,
    encode_text,
    batches,
    text_key="captions_ids",
    text_valid_key="captions_valid",
  )
  assert feats.zimg_nd.shape == (5, d)
  np.testing.assert_array_equal(feats.txt2img_m, [0, 0, 1, 2, 2, 3, 3, 4, 4])
  got = evaluate_retrieval(
    encode_image,
    encode_text,
    batches,
    text_key="captions_ids",
    text_valid_key="captions_valid",
    ks=(1,),
  )
  assert got["text_retrieval_recall@1"] == 1.0
  assert got["image_retrieval_recall@1"] == 1.0
