import jax
import numpy as np
import pytest

from clipjax import losses


def _emb(rng, n, d):
  x = rng.normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_clip_loss_matches_numpy_reference():
  rng = np.random.default_rng(0)
  zi, zt = _emb(rng, 7, 5), _emb(rng, 7, 5)
  scale = 13.0
  loss, aux = losses.clip_loss(zi, zt, scale)
  logits = scale * zi @ zt.T
  i2t = -np.mean(np.diag(_log_softmax(logits, 1)))
  t2i = -np.mean(np.diag(_log_softmax(logits, 0)))
  np.testing.assert_allclose(loss, (i2t + t2i) / 2, rtol=1e-5)
  np.testing.assert_allclose(aux["loss_i2t"], i2t, rtol=1e-5)


def test_clip_loss_permutation_invariant_and_perfect_pairs():
  rng = np.random.default_rng(1)
  zi, zt = _emb(rng, 6, 4), _emb(rng, 6, 4)
  perm = rng.permutation(6)
  a, _ = losses.clip_loss(zi, zt, 10.0)
  b, _ = losses.clip_loss(zi[perm], zt[perm], 10.0)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  # Orthonormal identical pairs at a huge scale: the loss goes to 0 and accuracy is 1.
  eye = np.eye(6, dtype=np.float32)
  loss, aux = losses.clip_loss(eye, eye, 100.0)
  assert float(loss) < 1e-6 and float(aux["batch_acc_i2t"]) == 1.0


def test_siglip_loss_matches_reference():
  rng = np.random.default_rng(2)
  zi, zt = _emb(rng, 5, 3), _emb(rng, 5, 3)
  t, b = 10.0, -10.0
  loss, _ = losses.siglip_loss(zi, zt, t, b)
  logits = t * zi @ zt.T + b
  labels = 2 * np.eye(5) - 1
  ref = -np.sum(np.log(1 / (1 + np.exp(-labels * logits)))) / 5
  np.testing.assert_allclose(loss, ref, rtol=1e-5)


@pytest.mark.parametrize("fn", ["clip", "siglip"])
def test_losses_are_differentiable(fn):
  rng = np.random.default_rng(3)
  zi, zt = _emb(rng, 4, 3), _emb(rng, 4, 3)
  if fn == "clip":
    g = jax.grad(lambda x: losses.clip_loss(x, zt, 10.0)[0])(zi)
  else:
    g = jax.grad(lambda x: losses.siglip_loss(x, zt, 10.0, -5.0)[0])(zi)
  assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0
