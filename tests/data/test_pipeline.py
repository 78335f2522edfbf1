"""grain pipeline: batches, determinism, state restore, sharding, bad records, eval padding."""

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from clipjax.data import pipeline
from clipjax.data.corrupt import NoisyCorrespondence
from clipjax.data.sources import ArraySource
from clipjax.data.synthetic import SyntheticShapes
from clipjax.data.transforms import Augment, random_resized_crop

L = 24


def tok(texts):
  """Stand-in tokenizer: utf-8 bytes + 1, zero-padded to L."""
  out = np.zeros((len(texts), L), np.int32)
  for i, t in enumerate(texts):
    b = list(t.encode("utf-8"))[:L]
    out[i, : len(b)] = np.asarray(b) + 1
  return out


def untok(ids):
  return bytes(int(x) - 1 for x in ids if x > 0).decode("utf-8")


def _train(src, **kw):
  args = dict(batch_size=8, image_size=16, tokenize=tok, seed=0, prefetch_batches=0)
  args.update(kw)
  return pipeline.make_train_iterator(src, **args)


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_batches_have_the_contract_and_match_the_source():
  src = SyntheticShapes("train", image_size=16, num_examples=40)
  it = _train(src)
  b = next(it)
  assert b["image"].dtype == np.float32 and b["image"].shape == (8, 16, 16, 3)
  assert b["image"].min() >= 0.0 and b["image"].max() <= 1.0
  assert b["ids"].dtype == np.int32 and b["ids"].shape == (8, L)
  assert b["index"].dtype == np.int32 and b["index"].shape == (8,)
  for row in range(8):
    ex = src[int(b["index"][row])]
    np.testing.assert_allclose(b["image"][row], ex["image"] / 255.0, atol=1e-6)
    assert untok(b["ids"][row]) == ex["caption"][:L]


def test_deterministic_and_epochs_are_permutations():
  src = SyntheticShapes("train", image_size=16, num_examples=32)
  a = _take(_train(src, seed=3, prefetch_batches=2), 8)
  b = _take(_train(src, seed=3), 8)
  for x, y in zip(a, b):
    _assert_same(x, y)
  epochs = np.concatenate([x["index"] for x in a]).reshape(2, 32)
  assert sorted(epochs[0]) == list(range(32)) and sorted(epochs[1]) == list(range(32))
  assert not np.array_equal(epochs[0], epochs[1])
  c = _take(_train(src, seed=4), 4)
  assert not np.array_equal(np.concatenate([x["index"] for x in c]), epochs[0])
  finite = list(_train(src, seed=3, num_epochs=1, batch_size=5))
  assert len(finite) == 6


def test_state_restore_gives_identical_next_batches():
  src = NoisyCorrespondence(SyntheticShapes("train", image_size=16, num_examples=50), fraction=0.3)
  it = _train(src, augment=Augment(crop_scale=(0.5, 1.0), flip=True), prefetch_batches=2)
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 4)
  it.close()
  fresh = _train(src, augment=Augment(crop_scale=(0.5, 1.0), flip=True), prefetch_batches=2)
  fresh.set_state(state)
  for x, y in zip(_take(fresh, 4), expected):
    _assert_same(x, y)
  fresh.close()
  other = _train(src, seed=1)
  with pytest.raises(ValueError, match=r"seed: saved 0 != now 1"):
    other.set_state(state)
  assert expected[0]["is_noisy"].dtype == np.bool_
  assert {"is_noisy", "is_poisoned", "is_backdoor", "clean_index"} <= expected[0].keys()
  flags = np.concatenate([x["is_noisy"] for x in expected])
  idx = np.concatenate([x["index"] for x in expected])
  np.testing.assert_array_equal(flags, np.isin(idx, src.corrupted_indices()))


def test_process_shards_are_disjoint_and_cover():
  src = SyntheticShapes("train", image_size=16, num_examples=30)
  seen = []
  for p in range(3):
    it = _train(src, batch_size=5, process_index=p, process_count=3, num_epochs=1)
    seen.append(np.concatenate([b["index"] for b in it]))
  assert all(s.size == 10 for s in seen)
  assert sorted(np.concatenate(seen).tolist()) == list(range(30))
  with pytest.raises(ValueError, match="process_index"):
    _train(src, process_index=3, process_count=3)


def _png(value):
  buf = io.BytesIO()
  Image.fromarray(np.full((12, 20, 3), value, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def _messy_source():
  images = [_png(10 * i) for i in range(20)]
  captions = [f"caption {i}" for i in range(20)]
  images[3] = b"this is not an image"
  captions[5] = None
  captions[8] = "   "
  captions[11] = b"\xff\xfe bad utf8"
  images[14] = np.zeros((4, 4), np.float32)
  return ArraySource(images, captions, name="messy")


BAD = {3: "cannot decode", 5: "missing", 8: "empty", 11: "UTF-8", 14: "dtype"}


def test_bad_records_are_skipped_and_counted():
  src = _messy_source()
  it = _train(src, batch_size=5, num_epochs=1, max_bad_fraction=0.5)
  idx = np.concatenate([b["index"] for b in it])
  assert sorted(idx.tolist()) == sorted(set(range(20)) - set(BAD))
  assert it.stats.seen == 20 and it.stats.bad == 5
  reasons = {i: why for _, i, why in it.stats.first_bad}
  assert reasons.keys() == BAD.keys()
  for i, word in BAD.items():
    assert word in reasons[i]
  assert it.stats.metrics()["data/bad_fraction"] == pytest.approx(0.25)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_records_are_counted_once_over_epochs(num_workers):
  it = _train(
    _messy_source(), batch_size=3, num_epochs=4, max_bad_fraction=0.5, num_workers=num_workers
  )
  with it:
    batches = list(it)
  if num_workers == 0:  # (with workers, each drops its own partial last batch)
    assert sum(len(b["index"]) for b in batches) == 4 * 15
  assert (it.stats.seen, it.stats.bad) == (20, 5)
  assert sorted(i for _, i, _ in it.stats.first_bad) == sorted(BAD)


def test_too_many_bad_records_stop_with_names():
  it = _train(_messy_source(), batch_size=4, max_bad_fraction=0.1, min_records_for_check=10)
  with pytest.raises(pipeline.BadRecordsError) as err:
    _take(it, 10)
  named = re.findall(r"messy\[(\d+)\]: (.*)", str(err.value))
  assert len(named) >= 2
  for i, why in named:
    assert BAD[int(i)] in why


def test_eval_pads_and_covers_every_example_once():
  src = SyntheticShapes("val", image_size=16, num_examples=23)
  ev = pipeline.iterate_eval(
    src, batch_size=8, image_size=16, tokenize=tok, num_captions=3, with_text=True
  )
  batches = list(ev)
  assert len(batches) == len(ev) == 3
  valid = np.concatenate([b["valid"] for b in batches])
  idx = np.concatenate([b["index"] for b in batches])
  assert valid.sum() == 23 and idx[valid].tolist() == list(range(23))
  assert np.all(idx[~valid] == -1)
  last = batches[-1]
  assert last["image"].shape == (8, 16, 16, 3) and last["captions_ids"].shape == (8, 3, L)
  assert np.all(last["labels"]["colour"][~last["valid"]] == -1)
  ex = src[17]
  b = batches[2]
  assert b["labels"]["shape"][1] == ex["labels"]["shape"] and b["caption"][1] == ex["caption"]
  assert [untok(t) for t in b["captions_ids"][1]] == [c[:L] for c in ex["captions"][:3]]
  # Two processes: equal batch counts, disjoint, covering.
  parts = [
    list(
      pipeline.iterate_eval(
        src, batch_size=4, image_size=16, tokenize=tok, process_index=p, process_count=2
      )
    )
    for p in range(2)
  ]
  assert len(parts[0]) == len(parts[1]) == 3
  got = np.concatenate([b["index"][b["valid"]] for part in parts for b in part])
  assert sorted(got.tolist()) == list(range(23))


def test_eval_marks_bad_records_invalid():
  ev = pipeline.iterate_eval(
    _messy_source(), batch_size=8, image_size=16, tokenize=tok, max_bad_fraction=0.5
  )
  batches = list(ev)
  valid = np.concatenate([b["valid"] for b in batches])[:20]
  assert np.flatnonzero(~valid).tolist() == sorted(BAD)
  assert ev.stats.bad == 5 and ev.stats.seen == 20
  with pytest.raises(pipeline.BadRecordsError, match="messy"):
    list(pipeline.iterate_eval(_messy_source(), batch_size=8, image_size=16, tokenize=tok))


def test_random_resized_crop_is_seeded_and_bounded():
  img = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
  aug = Augment(crop_scale=(0.3, 0.6))
  a = random_resized_crop(img, 16, np.random.default_rng(1), aug)
  b = random_resized_crop(img, 16, np.random.default_rng(1), aug)
  c = random_resized_crop(img, 16, np.random.default_rng(2), aug)
  assert a.shape == (16, 16, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
  with pytest.raises(ValueError, match="crop_scale"):
    Augment(crop_scale=(0.0, 1.0))


def test_tokenizer_shape_is_checked():
  src = SyntheticShapes("train", image_size=16, num_examples=16)
  it = _train(src, tokenize=lambda texts: np.zeros((len(texts),), np.int32))
  with pytest.raises(ValueError, match=r"\[n, L\]"):
    next(it)
