"""OTCCLIP, RoCLIP-style and SafeCLIP-style methods: oracle and limit tests, one smoke run."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

from clipjax import config_lib, losses
from clipjax.methods import Embeddings, get, otcclip, rematching, safeclip
from clipjax.ot import batched

OT_KW = dict(epsilon=0.05, num_iters=200, solver="kernel", chunk_size=64)
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _otc_kwargs(**over):
  kw = dict(
    matching="ot",
    pool="batch",
    bank_size=0,
    context_length=6,
    enqueue="always",
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
    clip_weight=1.0,
    inter_weight=0.0,
    inter_temperature=0.1,
    inter_batch=0,
    intra_weight=0.0,
    intra_mode="divergence",
    aug_shift=0,
    aug_jitter=0.0,
    token_dropout=0.0,
    cross_aug=False,
    truth_labels=(),
  )
  kw.update(over)
  return kw


def _roclip_kwargs(**over):
  kw = dict(
    pool="bank",
    bank_size=8,
    match_start=0,
    match_period=1,
    match_duration=1,
    enqueue="always",
    cross_aug=False,
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
  wt = rematching.text_weights(jnp.asarray(mask), exclude_sos=True, exclude_eot=True)
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
  w = rematching.text_weights(mask, exclude_sos=True, exclude_eot=True)
  np.testing.assert_array_equal(np.asarray(w), [[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
  w = rematching.text_weights(mask, exclude_sos=False, exclude_eot=False)
  np.testing.assert_array_equal(np.asarray(w), np.asarray(mask, np.float32))


# ---------------------------------------------------------------------------- re-matching


def test_rematch_oracle_recovers_true_pairing_where_global_fails():
  img, txt, mask, zi, zt = _oracle()
  b = zi.shape[0]
  perm = np.random.default_rng(3).permutation(b)  # the pool holds captions in another order
  wt = np.asarray(rematching.text_weights(jnp.asarray(mask), exclude_sos=False, exclude_eot=False))
  wi = np.ones(img.shape[:2], np.float32)

  def ot_fn(ia, ib):
    return otcclip.fine_grained_ot(
      img, wi, txt[perm], wt[perm], ia, ib, grad="stop_gradient", **OT_KW
    ).cost

  valid = jnp.ones((b,), bool)
  choice, d = rematching.rematch(zi, zt[perm], valid, shortlist_k=3, match_alpha=0.0, ot_fn=ot_fn)
  np.testing.assert_array_equal(perm[np.asarray(choice)], np.arange(b))
  assert float(jnp.max(d)) < 0.05
  glob, _ = rematching.rematch(zi, zt[perm], valid, shortlist_k=3, match_alpha=1.0, ot_fn=None)
  np.testing.assert_array_equal(perm[np.asarray(glob)], (np.arange(b) + 1) % b)
  # match_alpha = 1 ranks the shortlist by the global cosine alone: same as no OT.
  g2, _ = rematching.rematch(zi, zt[perm], valid, shortlist_k=3, match_alpha=1.0, ot_fn=ot_fn)
  np.testing.assert_array_equal(np.asarray(g2), np.asarray(glob))
  # Invalid pool entries are never chosen.
  valid = valid.at[int(np.argsort(perm)[0])].set(False)
  g3, _ = rematching.rematch(zi, zt[perm], valid, shortlist_k=3, match_alpha=0.0, ot_fn=ot_fn)
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
  r = get("roclip", **_roclip_kwargs(pool="batch", bank_size=0))
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
  r = get("roclip", **_roclip_kwargs(bank_size=8))
  # Active but the bank is still empty: every image keeps its own caption.
  val_r, aux_r, st = r.loss(_emb(zi, zt, None, None, None), r.init(64), None)
  np.testing.assert_allclose(float(val_r), float(ref), rtol=1e-6)
  assert float(aux_r["remat/changed"]) == 0.0
  assert int(st["ptr"]) == 6 and bool(jnp.all(st["bank_valid"][:6]))


def test_bank_is_fifo_and_queried_before_enqueue():
  rng = np.random.default_rng(4)
  b, d, k = 4, 8, 6
  r = get("roclip", **_roclip_kwargs(bank_size=k))
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


@pytest.mark.parametrize("mode", ["distance", "divergence"])
def test_intra_term_token_diversity(mode):
  """Gradient descent on the intra term alone, views agreeing (a permutation of the same tokens),
  tokens of an item similar (cos ≈ 0.8, as CLIP's patch tokens): no collapse in either form.
  The plain distance is not neutral: its entropic blur d(x, x) > 0 shrinks as tokens separate,
  so it spreads them (and a fully collapsed item is another zero); the debiased divergence is
  exactly 0 with zero gradient whenever the views agree."""
  rng = np.random.default_rng(8)
  b, n, d = 4, 6, 16
  x = jnp.asarray(_unit(rng.normal(size=(b, 1, d)) + 0.5 * rng.normal(size=(b, n, d))))
  perm = rng.permutation(n)
  w = jnp.ones((b, n), jnp.float32)
  cfg = otcclip.OTCConfig(**_otc_kwargs(intra_weight=1.0, intra_mode=mode, ot_iters=100))
  loss = lambda a: otcclip._intra_one(a, w, a[:, perm], w, cfg)
  step = jax.jit(jax.value_and_grad(loss))
  start = float(otcclip.token_diversity(x))
  for _ in range(300):
    value, g = step(x)
    x = x - 1.0 * g
  end = float(otcclip.token_diversity(x))
  assert end > 0.9 * start  # no collapse
  collapsed = jnp.broadcast_to(x[:, :1], x.shape)
  assert abs(float(loss(collapsed))) < 1e-4
  if mode == "divergence":
    assert abs(float(value)) < 1e-6 and abs(end - start) < 1e-3
  else:
    assert end > start + 0.1


def test_enqueue_policy_and_ablation_switches():
  img, txt, mask, zi, zt = _oracle()
  b = zi.shape[0]
  batch = {"index": jnp.arange(b), "is_poisoned": jnp.zeros((b,), bool)}
  emb = _emb(zi, zt, img, txt, mask, batch)
  kw = dict(pool="bank+batch", bank_size=8, match_start=1, match_period=2, match_duration=1)
  for policy, written in (("matching", False), ("always", True)):
    m = get("otcclip", **_otc_kwargs(matching="global", enqueue=policy, **kw))
    _, aux, st = m.loss(emb, m.init(64), None)  # step 0: inactive
    assert float(aux["remat/active"]) == 0.0
    assert bool(jnp.any(st["bank_valid"])) == written
    _, aux, st = m.loss(emb, st, None)  # step 1: active, writes under both policies
    assert float(aux["remat/active"]) == 1.0
    assert int(jnp.sum(st["bank_valid"])) == min(8, (2 if written else 1) * b)
  # Same pool and losses, matching swapped: OT keeps the own captions, global takes the
  # misleading neighbour; both diagnostics are logged on the same step either way.
  aux_ot = get("otcclip", **_otc_kwargs()).loss(emb, {"step": jnp.zeros((), jnp.int32)}, None)[1]
  m_glob = get("otcclip", **_otc_kwargs(matching="global"))
  aux_gl = m_glob.loss(emb, m_glob.init(64), None)[1]
  assert float(aux_ot["remat/acc_clean"]) == 1.0 and float(aux_ot["remat/acc_clean_global"]) == 0
  assert float(aux_gl["remat/acc_clean"]) == 0.0 and float(aux_gl["remat/acc_clean_global"]) == 0
  m_none = get("otcclip", **_otc_kwargs(matching="none"))
  assert not m_none.needs_tokens
  aux_none = m_none.loss(_emb(zi, zt, None, None, None, batch), m_none.init(16), None)[1]
  assert float(aux_none["remat/active"]) == 0.0 and float(aux_none["remat/changed"]) == 0.0


def test_equivalent_caption_accuracy_from_labels():
  """Captions (i+1) % b carry the same labels as caption i for even i: the global neighbour is
  then an equivalent caption, though never the own one."""
  img, txt, mask, zi, zt = _oracle()
  b = zi.shape[0]
  cls = np.arange(b) // 2  # pairs (0, 1), (2, 3), (4, 5) share a class
  batch = {"index": jnp.arange(b), "labels/colour": jnp.asarray(cls, jnp.int32)}
  m = get("otcclip", **_otc_kwargs(matching="global", truth_labels=("colour",)))
  aux = m.loss(_emb(zi, zt, img, txt, mask, batch), m.init(16), None)[1]
  assert float(aux["remat/acc_clean"]) == 0.0
  # Image i's neighbour is caption (i+1) % b: same class for even i only.
  np.testing.assert_allclose(float(aux["remat/acc_equiv"]), 0.5)
  with pytest.raises(ValueError, match="train_labels"):
    bad = get("otcclip", **_otc_kwargs(truth_labels=("shape",)))
    bad.loss(_emb(zi, zt, img, txt, mask, batch), bad.init(16), None)


# ---------------------------------------------------------------------------- augmentations


def test_token_dropout():
  ids = jnp.asarray([[7, 1, 2, 3, 9, 0, 0], [7, 4, 5, 6, 8, 1, 2]], jnp.int32)  # eot_id 9
  same = rematching.token_dropout(jax.random.key(0), ids, rate=0.0, eot_id=9)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(ids))
  out = np.asarray(rematching.token_dropout(jax.random.key(0), ids, rate=0.999, eot_id=9))
  np.testing.assert_array_equal(out[0], [7, 9, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out[1], [7, 2, 0, 0, 0, 0, 0])  # no eot: last token kept
  mid = np.asarray(rematching.token_dropout(jax.random.key(3), ids, rate=0.5, eot_id=9))
  kept = [t for t in mid[0] if t not in (0, 7, 9)]
  assert kept == sorted(kept) and mid[0, 0] == 7 and 9 in mid[0]
  # Per-caption keys (RoCLIP's fixed per-example augmentation): a row depends on its key only.
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.asarray([5, 6]))
  a = np.asarray(rematching.token_dropout(keys, ids, rate=0.5, eot_id=9))
  swapped = np.asarray(rematching.token_dropout(keys[::-1], ids[::-1], rate=0.5, eot_id=9))
  np.testing.assert_array_equal(a, swapped[::-1])


def test_augment_images_identity_and_translation():
  x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))
  same = rematching.augment_images(jax.random.key(0), x, shift=0, jitter=0.0)
  np.testing.assert_allclose(np.asarray(same), np.asarray(x))
  out = np.asarray(rematching.augment_images(jax.random.key(0), x, shift=2, jitter=0.0))
  xs = np.asarray(x)
  # Every output is the input translated by some (dy, dx) in [-2, 2]^2 (interior check).
  for i in range(3):
    assert any(
      np.allclose(out[i, 2:6, 2:6], xs[i, 2 + dy : 6 + dy, 2 + dx : 6 + dx])
      for dy in range(-2, 3)
      for dx in range(-2, 3)
    )


def test_cross_aug_forward_fixes_each_caption_augmentation():
  """RoCLIP's --cross_aug: augmented images (fresh each step) and an augmented caption that
  depends only on the example (RoCLIP augments each caption once)."""
  from clipjax import config_lib, runs
  from clipjax.data.tokenizer import Tokenizer

  c = config_lib.apply_smoke(config_lib.train_config())
  model = runs.build_model(c.model.to_dict(), 16, 12, jax.random.key(0))
  params = model.params
  ids = jnp.asarray(Tokenizer(context_length=12)(["a big red circle in the top left"] * 3))
  batch = {
    "image": jax.random.uniform(jax.random.key(1), (3, 16, 16, 3)),
    "ids": ids,
    "index": jnp.asarray([4, 9, 4], jnp.int32),
  }
  fwd = rematching.two_view_forward(
    second_view=False, cross_aug=True, aug_shift=2, aug_jitter=0.1, token_dropout_rate=0.5
  )
  e1 = fwd(model, params, batch, jax.random.key(2))
  e2 = fwd(model, params, batch, jax.random.key(3))
  np.testing.assert_allclose(e1.ztxt, e2.ztxt, atol=1e-6)  # same captions at every step
  np.testing.assert_allclose(e1.ztxt[0], e1.ztxt[2], atol=1e-6)  # same example, same caption
  plain = model.encode_text(params, ids).emb
  assert float(jnp.max(jnp.abs(e1.ztxt - plain))) > 1e-3  # ... and augmented
  assert float(jnp.max(jnp.abs(e1.zimg - e2.zimg))) > 1e-4  # fresh image augmentation
  assert e1.extras is None


def test_gmm_posterior_separates_two_clusters():
  rng = np.random.default_rng(5)
  x = np.concatenate([rng.normal(0.1, 0.02, 40), rng.normal(0.7, 0.02, 60)]).astype(np.float32)
  post = np.asarray(safeclip.gmm_clean_posterior(jnp.asarray(x), num_iters=20))
  assert np.all(post[40:] > 0.99) and np.all(post[:40] < 0.01)


def test_safeclip_phases_and_first_split_threshold():
  rng = np.random.default_rng(6)
  b, d = 10, 16
  zi = _unit(rng.normal(size=(b, d))).astype(np.float32)
  noise = np.where(np.arange(b)[:, None] < 7, 0.05, 3.0)  # 7 well-aligned pairs, 3 not
  zt = _unit(zi + noise * rng.normal(size=(b, d))).astype(np.float32)
  kw = dict(
    unimodal_steps=1, clip_warmup_steps=1, steps_per_epoch=1, first_threshold=0.9,
    safe_growth=0.1, safe_max=0.85, gmm_iters=20, aug_shift=0, aug_jitter=0.0, token_dropout=0.0,
  )  # fmt: skip
  m = get("safeclip", **kw)
  extras = {"zimg2": jnp.asarray(zi), "ztxt2": jnp.asarray(zt)}
  emb = _emb(zi, zt, None, None, None, extras=extras)
  st = m.init(d)
  _, aux0, st = m.loss(emb, st, None)
  val1, aux1, st = m.loss(emb, st, None)
  _, aux2, st = m.loss(emb, st, None)
  _, aux3, st = m.loss(emb, st, None)
  ref, _ = losses.clip_loss(jnp.asarray(zi), jnp.asarray(zt), jnp.asarray(10.0))
  np.testing.assert_allclose(float(val1), float(ref), rtol=1e-5)  # CLIP warm-up step
  assert float(aux1["safe/fraction"]) == 1.0
  cos = np.sum(zi * zt, 1)
  post = np.asarray(safeclip.gmm_clean_posterior(jnp.asarray(cos), num_iters=20))
  first = np.mean(post >= 0.9)
  assert 0.5 <= first <= 0.8  # the aligned pairs, by the GMM's posterior >= 0.9
  np.testing.assert_allclose(float(aux2["safe/fraction"]), first, atol=1e-6)
  # Next epoch: the first split's fraction + growth, by rank of the posterior.
  np.testing.assert_allclose(
    float(aux3["safe/fraction"]), round(min(0.85, first + 0.1) * b) / b, atol=1e-6
  )


def test_infonce_matches_log_softmax_and_masks_negatives():
  rng = np.random.default_rng(7)
  logits = jnp.asarray(rng.normal(size=(5, 5)) * 3, jnp.float32)
  i2t, t2i = losses.infonce(logits)
  np.testing.assert_allclose(i2t, -np.diagonal(jax.nn.log_softmax(logits, 1)), rtol=1e-5)
  np.testing.assert_allclose(t2i, -np.diagonal(jax.nn.log_softmax(logits, 0)), rtol=1e-5)
  valid = jnp.asarray([True, False, True, True, False])
  i2t_m, t2i_m = losses.infonce(logits, valid_b=valid)
  sub = logits[np.ix_([0, 2, 3], [0, 2, 3])]
  np.testing.assert_allclose(i2t_m[np.array([0, 2, 3])], losses.infonce(sub)[0], rtol=1e-5)
  np.testing.assert_allclose(t2i_m[np.array([0, 2, 3])], losses.infonce(sub)[1], rtol=1e-5)
  g = jax.grad(lambda x: jnp.sum(jnp.where(valid, losses.infonce(x, valid)[0], 0.0)))(logits)
  assert np.all(np.isfinite(np.asarray(g)))


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="pool"):
    get("otcclip", **_otc_kwargs(pool="memory"))
  with pytest.raises(ValueError, match="bank_size"):
    get("roclip", **_roclip_kwargs(bank_size=0))
  with pytest.raises(ValueError, match="match_duration"):
    get("otcclip", **_otc_kwargs(match_period=2, match_duration=3))


# ---------------------------------------------------------------------------- smoke


def _load_config():
  return config_lib.load_module(ROOT / "configs" / "otcclip.py")


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
  ro = cfg_mod.get_config("method=roclip,smoke").method.kwargs
  assert ro.enqueue == "matching" and ro.cross_aug  # RoCLIP's published behaviour
  for variant in cfg_mod.ABLATIONS:
    c = cfg_mod.get_config(f"variant={variant},smoke")
    get(c.method.name, **c.method.kwargs.to_dict())
  glob = cfg_mod.get_config("variant=global_match,smoke").method.kwargs.to_dict()
  full = cfg_mod.get_config("smoke").method.kwargs.to_dict()
  assert {k for k in full if full[k] != glob[k]} == {"matching"}  # same pool and losses
  distinct = cfg_mod.get_config("world=distinct,smoke")
  assert distinct.data.train.second_object and distinct.eval.datasets.shapes_test.second_object
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
  assert all("remat/acc_equiv_global" in r for r in train)  # labels reach the method
  assert all(np.isfinite(r["loss"]) for r in train)
