"""Cost matrices between embedding sets, computed in float32.

All OT methods in clipjax (OT-CLIP, NCU, OTCCLIP, COLA, HOT-CLIP) transport mass between two
sets of embeddings; these helpers build the ground cost. They accept float32 or bfloat16 inputs
and return a float32 cost (float64 for float64 inputs under x64) computed with
``precision="highest"`` (ott issue #496: TF32 matmuls on A100 stall Sinkhorn).

Functions are defined on one pair of sets (``x_nd``, ``y_md``) and lift to batches with
``jax.vmap``.
"""

import jax
import jax.numpy as jnp

__all__ = ["cosine_cost", "max_normalize", "solve_dtype", "sqeuclidean_cost", "similarity"]

_HIGHEST = jax.lax.Precision.HIGHEST


def solve_dtype(x: jax.Array) -> jax.Array:
  """Cast to the solve dtype: bfloat16/float16 → float32; float32/float64 kept.

  float64 only exists under ``jax.experimental.enable_x64`` (used by reference tests).
  """
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _as_f32(x: jax.Array, name: str, rank: int = 2) -> jax.Array:
  if jnp.ndim(x) != rank:
    raise ValueError(f"{name} must have rank {rank}, got shape {jnp.shape(x)}")
  return solve_dtype(x)


def _l2_normalize(x_nd: jax.Array) -> jax.Array:
  # The 1e-12 floor keeps an all-zero row (e.g. padding) finite: its cosines are 0.
  norm_n1 = jnp.sqrt(jnp.sum(x_nd * x_nd, axis=-1, keepdims=True))
  return x_nd / jnp.maximum(norm_n1, 1e-12)


def similarity(x_nd: jax.Array, y_md: jax.Array, *, normalize: bool) -> jax.Array:
  """Cosine (``normalize=True``) or dot-product similarity matrix.

  Args:
    x_nd: [n, d] embeddings.
    y_md: [m, d] embeddings.
    normalize: L2-normalise rows of both inputs first (cosine similarity).

  Returns:
    [n, m] float32 similarity ``x_nd @ y_md.T``.
  """
  x_nd = _as_f32(x_nd, "x_nd")
  y_md = _as_f32(y_md, "y_md")
  if x_nd.shape[1] != y_md.shape[1]:
    raise ValueError(f"feature dims differ: x_nd {x_nd.shape} vs y_md {y_md.shape}")
  if normalize:
    x_nd, y_md = _l2_normalize(x_nd), _l2_normalize(y_md)
  return jnp.einsum("nd,md->nm", x_nd, y_md, precision=_HIGHEST)


def max_normalize(cost_nm: jax.Array) -> jax.Array:
  """Divide a non-negative cost by its maximum (NCU, transformer-fusion convention).

  Args:
    cost_nm: [n, m] cost matrix.

  Returns:
    [n, m] cost with maximum 1 (unchanged if the maximum is 0).
  """
  cmax = jnp.max(cost_nm)
  return cost_nm / jnp.where(cmax > 0, cmax, 1.0)


def cosine_cost(x_nd: jax.Array, y_md: jax.Array, *, max_scale: bool = False) -> jax.Array:
  """Cosine distance ``1 - cos(x_i, y_j)`` (OT-CLIP, NCU, OTCCLIP, COLA).

  Inputs need not be normalised; rows are L2-normalised here. Values lie in [0, 2].

  Args:
    x_nd: [n, d] embeddings (float32 or bfloat16).
    y_md: [m, d] embeddings.
    max_scale: divide by the maximum entry (NCU normalises its cost this way).

  Returns:
    [n, m] float32 cost.
  """
  cost_nm = 1.0 - similarity(x_nd, y_md, normalize=True)
  return max_normalize(cost_nm) if max_scale else cost_nm


def sqeuclidean_cost(x_nd: jax.Array, y_md: jax.Array, *, max_scale: bool = False) -> jax.Array:
  """Squared Euclidean distance ``|x_i - y_j|^2`` (OTFusion / HOT-CLIP ground metrics).

  Args:
    x_nd: [n, d] points (float32 or bfloat16).
    y_md: [m, d] points.
    max_scale: divide by the maximum entry.

  Returns:
    [n, m] float32 non-negative cost (clipped at 0 against cancellation).
  """
  x_nd = _as_f32(x_nd, "x_nd")
  y_md = _as_f32(y_md, "y_md")
  xx_n1 = jnp.sum(x_nd * x_nd, axis=1, keepdims=True)
  yy_1m = jnp.sum(y_md * y_md, axis=1)[None, :]
  cost_nm = jnp.maximum(xx_n1 + yy_1m - 2.0 * similarity(x_nd, y_md, normalize=False), 0.0)
  return max_normalize(cost_nm) if max_scale else cost_nm
