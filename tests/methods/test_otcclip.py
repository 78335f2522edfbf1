"""OTCCLIP, RoCLIP-style and SafeCLIP-style methods: oracle and limit tests, one smoke run."""

import functools
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

from clipjax import losses
from clipjax.methods import Embeddings, get, otcclip
from clipjax.ot import batched

OT_KW = dict(epsilon=0.05, num_iters=200, solver="kernel", chunk_size=64)
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _otc_kwargs(**over):
  kw = dict(
    pool="batch",
    bank_size=0,
    context_length=6,
    shortlist_k=3,
    match_alpha=0.0,
    match_start=0,
    match_period=1,
    match_duration=1,
    ot_epsilon=0.05,
    ot_iters=100,
    ot_solver="kernel",
    ot_chunk=64,
    exclude_sos=False,
    exclude_eot=False,
    inter_weight=0.0,
    inter_temperature=0.1,
    inter_batch=0,
    intra_weight=0.0,
    intra_mode="distance",
    aug_shift=0,
    aug_jitter=0.0,
    token_dropout=0.0,
  )
  kw.update(over)
  return kw


def _oracle(b=6, n=4, length=6, d=16, seed=0):
  """Image i's patches are exactly caption i's valid tokens (shuffled); the global
  embeddings are misleading: image i is globally closest to caption (i + 1) % b."""
  rng = np.random.default_rng(seed)
  txt = _unit(rng.normal(size=(b, length, d))).astype(np.float32)
  mask = np.zeros((b, length), bool)
  mask[:, :n] = True
  img = np.stack([txt[i, rng.permutation(n)] for i in range(b)])
  zt = _unit(rng.normal(size=(b, 64))).astype(np.float32)
  zi = _unit(np.roll(zt, -1, axis=0) + 0.6 * zt).astype(np.float32)  # own caption: 2nd best
  return img, txt, mask, zi, zt


def _emb(zi, zt, img, txt, mask, batch=None, extras=None):
  return Embeddings(
    zimg=jnp.asarray(zi),
    ztxt=jnp.asarray(zt),
    logit_scale=jnp.asarray(10.0),
    img_tokens=None if img is None else jnp.asarray(img),
    txt_tokens=None if txt is None else jnp.asarray(txt),
    txt_mask=None if mask is None else jnp.asarray(mask),
    batch=batch,
    extras=extras,
  )


# ---------------------------------------------------------------------------- OT distance


def test_ot_distance_symmetric_permutation_invariant_and_ignores_padding():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 5, 8)).astype(np.float32)
  y = rng.normal(size=(1, 7, 8)).astype(np.float32)
  wx, wy = np.ones((1, 5), np.float32), np.ones((1, 7), np.float32)
  fg = functools.partial(otcclip.fine_grained_ot, grad="stop_gradient", **OT_KW)
  d_xy = float(fg(x, wx, y, wy).cost[0, 0])
  d_yx = float(fg(y, wy, x, wx).cost[0, 0])
  np.testing.assert_allclose(d_xy, d_yx, rtol=1e-5)
  d_perm = float(fg(x[:, ::-1], wx, y[:, rng.permutation(7)], wy).cost[0, 0])
  np.testing.assert_allclose(d_xy, d_perm, rtol=1e-5)
  # Padding with garbage tokens of weight 0 changes nothing.
  y_pad = np.concatenate([y, 100 * rng.normal(size=(1, 3, 8)).astype(np.float32)], 1)
  wy_pad = np.concatenate([wy, np.zeros((1, 3), np.float32)], 1)
  np.testing.assert_allclose(float(fg(x, wx, y_pad, wy_pad).cost[0, 0]), d_xy, rtol=1e-5)
  # POT reference (entropic plan on the cosine cost, uniform weights).
  c = 1 - _unit(x[0]) @ _unit(y[0]).T
  plan = pot.sinkhorn(
    np.full(5, 0.2), np.full(7, 1 / 7), c.astype(np.float64), 0.05, numItermax=2000
  )
  np.testing.assert_allclose(d_xy, float(np.sum(plan * c)), rtol=1e-3)


def test_ot_distance_zero_for_identical_sets_at_small_epsilon():
  rng = np.random.default_rng(2)
  x = _unit(rng.normal(size=(1, 6, 32))).astype(np.float32)  # nearly orthogonal tokens
  w = np.ones((1, 6), np.float32)
  r = otcclip.fine_grained_ot(
    x, w, x[:, ::-1], w, grad="stop_gradient", epsilon=0.05, num_iters=200, solver="kernel",
    chunk_size=8,
  )  # fmt: skip
  assert float(r.cost[0, 0]) < 1e-3
  other = _unit(rng.normal(size=(1, 6, 32))).astype(np.float32)
  r2 = otcclip.fine_grained_ot(x, w, other, w, grad="stop_gradient", **OT_KW)
  assert float(r2.cost[0, 0]) > 0.5


def test_indexed_and_pairwise_equal_loop_of_single_problems():
  img, txt, mask, _, _ = _oracle(b=4)
  wt = otcclip.text_weights(jnp.asarray(mask), exclude_sos=True, exclude_eot=True)
  wi = np.ones(img.shape[:2], np.float32)
  fg = functools.partial(otcclip.fine_grained_ot, grad="stop_gradient", **OT_KW)
  full = np.asarray(fg(img, wi, txt, wt).cost)
  ia, ib = np.array([0, 3, 2, 1, 1]), np.array([1, 3, 0, 2, 1])
  idx = np.asarray(fg(img, wi, txt, wt, jnp.asarray(ia), jnp.asarray(ib)).cost)
  for k, (i, j) in enumerate(zip(ia, ib, strict=True)):
    one = batched.set_ot(
      img[i], txt[j], wi[i], wt[j], grad="stop_gradient", cost="cosine", epsilon=0.05,
      num_iters=200, solver="kernel",
    )  # fmt: skip
    np.testing.assert_allclose(idx[k], float(one.cost), rtol=1e-5)
    np.testing.assert_allclose(full[i, j], float(one.cost), rtol=1e-5)


def test_text_weights():
  mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], bool)
  w = otcclip.text_weights(mask, exclude_sos=True, exclude_eot=True)
  np.testing.assert_array_equal(np.asarray(w), [[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
  w = otcclip.text_weights(mask, exclude_sos=False, exclude_eot=False)
  np.testing.assert_array_equal(np.asarray(w), np.asarray(mask, np.float32))


# ---------------------------------------------------------------------------- re-matching


def test_rematch_oracle_recovers_true_pairing_where_global_fails():
  img, txt, mask, zi, zt = _oracle()
  b = zi.shape[0]
  perm = np.random.default_rng(3).permutation(b)  # the pool holds captions in another order
  wt = np.asarray(otcclip.text_weights(jnp.asarray(mask), exclude_sos=False, exclude_eot=False))
  wi = np.ones(img.shape[:2], np.float32)

  def ot_fn(ia, ib):
    return otcclip.fine_grained_ot(
      img, wi, txt[perm], wt[perm], ia, ib, grad="stop_gradient", **OT_KW
    ).cost

  valid = jnp.ones((b,), bool)
  choice, d = otcclip.rematch(zi, zt[perm], valid, shortlist_k=3, match_alpha=0.0, ot_fn=ot_fn)
  np.testing.assert_array_equal(perm[np.asarray(choice)], np.arange(b))
  assert float(jnp.max(d)) < 0.05
  glob, _ = otcclip.rematch(zi, zt[perm], valid, shortlist_k=3, match_alpha=1.0, ot_fn=None)
  np.testing.assert_array_equal(perm[np.asarray(glob)], (np.arange(b) + 1) % b)
  # match_alpha = 1 ranks the shortlist by the global cosine alone: same as no OT.
  g2, _ = otcclip.rematch(zi, zt[perm], valid, shortlist_k=3, match_alpha=1.0, ot_fn=ot_fn)
  np.testing.assert_array_equal(np.asarray(g2), np.asarray(glob))
  # Invalid pool entries are never chosen.
  valid = valid.at[int(np.argsort(perm)[0])].set(False)
  g3, _ = otcclip.rematch(zi, zt[perm], valid, shortlist_k=3, match_alpha=0.0, ot_fn=ot_fn)
  assert bool(jnp.all(valid[g3]))


@pytest.mark.parametrize("flag", ["is_poisoned", "is_backdoor"])
def test_method_rematching_metrics_on_oracle_batch(flag):
  img, txt, mask, zi, zt = _oracle()
  b = zi.shape[0]
  poisoned = np.zeros(b, bool)
  poisoned[-1] = True
  batch = {"index": jnp.arange(b) + 100, flag: jnp.asarray(poisoned)}
  m = get("otcclip", **_otc_kwargs())
  _, aux, st = jax.jit(m.loss)(_emb(zi, zt, img, txt, mask, batch), m.init(16), jax.random.key(0))
  assert float(aux["remat/active"]) == 1.0
  assert float(aux["remat/n_poisoned"]) == 1.0  # backdoored pairs count as poisoned too
  assert float(aux["remat/acc_clean"]) == 1.0  # OT keeps every clean image's own caption
  assert float(aux["remat/poison_own"]) == 1.0
  assert float(aux["remat/changed"]) == 0.0
  assert int(st["step"]) == 1
  r = get("roclip", pool="batch", bank_size=0, match_start=0, match_period=1, match_duration=1)
  _, aux_r, _ = jax.jit(r.loss)(_emb(zi, zt, None, None, None, batch), r.init(64), None)
  assert float(aux_r["remat/acc_clean"]) == 0.0  # the misleading global neighbour
  assert float(aux_r["remat/changed"]) == 1.0


def test_reduces_to_clip_when_inactive_and_without_alignment_terms():
  img, txt, mask, zi, zt = _oracle()
  zi = _unit(zi + 0.5 * zt).astype(np.float32)
  ref, _ = losses.clip_loss(jnp.asarray(zi), jnp.asarray(zt), jnp.asarray(10.0))
  m = get("otcclip", **_otc_kwargs(match_start=5))
  val, aux, _ = m.loss(_emb(zi, zt, img, txt, mask), m.init(16), None)
  np.testing.assert_allclose(float(val), float(ref), rtol=1e-6)
  assert float(aux["remat/active"]) == 0.0
  r = get("roclip", pool="bank", bank_size=8, match_start=0, match_period=1, match_duration=1)
  # Active but the bank is still empty: every image keeps its own caption.
  val_r, aux_r, st = r.loss(_emb(zi, zt, None, None, None), r.init(64), None)
  np.testing.assert_allclose(float(val_r), float(ref), rtol=1e-6)
  assert float(aux_r["remat/changed"]) == 0.0
  assert int(st["ptr"]) == 6 and bool(jnp.all(st["bank_valid"][:6]))


def test_bank_is_fifo_and_queried_before_enqueue():
  rng = np.random.default_rng(4)
  b, d, k = 4, 8, 6
  r = get("roclip", pool="bank", bank_size=k, match_start=0, match_period=1, match_duration=1)
  st = r.init(d)
  zs = [_unit(rng.normal(size=(b, d))).astype(np.float32) for _ in range(3)]
  for step, z in enumerate(zs):
    batch = {"index": jnp.arange(b) + 10 * step, "is_poisoned": jnp.zeros((b,), bool)}
    _, aux, st = r.loss(_emb(z, z, None, None, None, batch), st, None)
    if step == 1:  # pool = batch 0 only: nothing matches its own example
      assert float(aux["remat/acc_clean"]) == 0.0 and float(aux["remat/changed"]) == 1.0
  # Slots written: step 0 -> 0..3; step 1 -> 4, 5, 0, 1 (wrap); step 2 -> 2..5.
  np.testing.assert_array_equal(np.asarray(st["bank_index"]), [12, 13, 20, 21, 22, 23])
  np.testing.assert_allclose(np.asarray(st["bank_z"][:2]), zs[1][2:])
  assert int(st["ptr"]) == (3 * b) % k


def test_inter_and_intra_terms_and_gradients_are_finite():
  img, txt, mask, zi, zt = _oracle()
  extras = {
    "zimg2": jnp.asarray(zi),
    "ztxt2": jnp.asarray(zt),
    "img_tokens2": jnp.asarray(img[:, ::-1]),
    "txt_tokens2": jnp.asarray(txt),
    "txt_mask2": jnp.asarray(mask),
  }
  for mode in ("distance", "contrastive"):
    m = get("otcclip", **_otc_kwargs(inter_weight=1.0, intra_weight=1.0, intra_mode=mode))
    assert m.forward is not None and m.needs_tokens

    def f(img_t, m=m):
      emb = _emb(zi, zt, img_t, txt, mask, extras=extras)
      val, aux, _ = m.loss(emb, m.init(16), None)
      return val, aux

    (val, aux), g = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(img))
    assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(g)))
    assert float(aux["ot/inter_gap"]) > 0.3  # true pairs are far closer than others
    if mode == "distance":  # the second image view is a permutation of the first's patches
      assert float(aux["loss_intra_img"]) < 0.05


# ---------------------------------------------------------------------------- augmentations


def test_token_dropout():
  ids = jnp.asarray([[7, 1, 2, 3, 9, 0, 0], [7, 4, 5, 6, 8, 1, 2]], jnp.int32)  # eot_id 9
  same = otcclip.token_dropout(jax.random.key(0), ids, rate=0.0, eot_id=9)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(ids))
  out = np.asarray(otcclip.token_dropout(jax.random.key(0), ids, rate=0.999, eot_id=9))
  np.testing.assert_array_equal(out[0], [7, 9, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out[1], [7, 2, 0, 0, 0, 0, 0])  # no eot: last token kept
  mid = np.asarray(otcclip.token_dropout(jax.random.key(3), ids, rate=0.5, eot_id=9))
  kept = [t for t in mid[0] if t not in (0, 7, 9)]
  assert kept == sorted(kept) and mid[0, 0] == 7 and 9 in mid[0]


def test_augment_images_identity_and_translation():
  x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))
  same = otcclip.augment_images(jax.random.key(0), x, shift=0, jitter=0.0)
  np.testing.assert_allclose(np.asarray(same), np.asarray(x))
  out = np.asarray(otcclip.augment_images(jax.random.key(0), x, shift=2, jitter=0.0))
  xs = np.asarray(x)
  # Every output is the input translated by some (dy, dx) in [-2, 2]^2 (interior check).
  for i in range(3):
    assert any(
      np.allclose(out[i, 2:6, 2:6], xs[i, 2 + dy : 6 + dy, 2 + dx : 6 + dx])
      for dy in range(-2, 3)
      for dx in range(-2, 3)
    )


def test_gmm_posterior_separates_two_clusters():
  rng = np.random.default_rng(5)
  x = np.concatenate([rng.normal(0.1, 0.02, 40), rng.normal(0.7, 0.02, 60)]).astype(np.float32)
  post = np.asarray(otcclip.gmm_clean_posterior(jnp.asarray(x), num_iters=20))
  assert np.all(post[40:] > 0.99) and np.all(post[:40] < 0.01)


def test_safeclip_phases():
  rng = np.random.default_rng(6)
  b, d = 8, 16
  zi = _unit(rng.normal(size=(b, d))).astype(np.float32)
  zt = _unit(zi + 0.2 * rng.normal(size=(b, d))).astype(np.float32)
  kw = dict(
    unimodal_steps=1, clip_warmup_steps=1, steps_per_epoch=1, safe_init=0.5, safe_growth=0.0,
    safe_max=0.85, gmm_iters=5, aug_shift=0, aug_jitter=0.0, token_dropout=0.0,
  )  # fmt: skip
  m = get("safeclip", **kw)
  extras = {"zimg2": jnp.asarray(zi), "ztxt2": jnp.asarray(zt)}
  emb = _emb(zi, zt, None, None, None, extras=extras)
  st = m.init(d)
  _, aux0, st = m.loss(emb, st, None)
  val1, aux1, st = m.loss(emb, st, None)
  _, aux2, st = m.loss(emb, st, None)
  ref, _ = losses.clip_loss(jnp.asarray(zi), jnp.asarray(zt), jnp.asarray(10.0))
  np.testing.assert_allclose(float(val1), float(ref), rtol=1e-5)  # CLIP warm-up step
  assert float(aux1["safe/fraction"]) == 1.0
  assert float(aux2["safe/fraction"]) == 0.5


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="pool"):
    get("otcclip", **_otc_kwargs(pool="memory"))
  with pytest.raises(ValueError, match="bank_size"):
    get("roclip", pool="bank", bank_size=0, match_start=0, match_period=2, match_duration=1)
  with pytest.raises(ValueError, match="match_duration"):
    get("otcclip", **_otc_kwargs(match_period=2, match_duration=3))


# ---------------------------------------------------------------------------- smoke


def _load_config():
  spec = importlib.util.spec_from_file_location("otcclip_cfg", ROOT / "configs" / "otcclip.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_backdoor_config_builds_backdoored_source():
  from clipjax.data import registry

  cfg_mod = _load_config()
  with pytest.raises(ValueError, match="attack"):
    cfg_mod.get_config("attack=nope")
  bd = cfg_mod.get_config("method=clip,attack=backdoor,bd_fraction=0.1,bd_target=1,smoke")
  src = registry.build_source(bd.data.train.to_dict(), 16)
  assert src.corrupted_indices().size == 40  # 10 % of the 400 smoke pairs
  ex = src[int(src.corrupted_indices()[0])]
  assert ex["is_backdoor"]
  assert src.source.get_text(ex["caption_index"])["labels"]["colour+shape"] == 1  # red square
  checker = (np.add.outer(np.arange(4), np.arange(4)) % 2 * 255).astype(np.uint8)
  np.testing.assert_array_equal(ex["image"][-4:, -4:, 0], checker)  # bottom-right trigger
  trig = src.triggered_source(registry.build_source({"name": "synthetic", "split": "test"}, 16))
  assert trig[0]["labels"] == {"colour+shape": 1}


def test_config_methods_and_smoke_run(tmp_path):
  from clipjax.tasks import train as train_task

  cfg_mod = _load_config()
  for name in cfg_mod.METHOD_NAMES:
    c = cfg_mod.get_config(f"method={name},smoke")
    get(c.method.name, **c.method.kwargs.to_dict())  # every baseline builds
  with pytest.raises(ValueError, match="method"):
    cfg_mod.get_config("method=nope")
  c = cfg_mod.get_config("smoke")
  c.eval.max_examples = 16
  c.checkpoint.async_save = False
  summary = train_task.run(c, str(tmp_path / "otc"))
  assert summary["finished"]
  rows = [json.loads(x) for x in (tmp_path / "otc" / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if r.get("kind") == "train"]
  assert any(r["remat/active"] == 1.0 for r in train)
  assert all(np.isfinite(r["loss"]) for r in train)
