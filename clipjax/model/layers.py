"""Transformer building blocks shared by the CLIP towers (Flax NNX).

Attribute names mirror the OpenAI state dict (`ln_1`, `attn.in_proj`, `attn.out_proj`, `ln_2`,
`mlp.c_fc`, `mlp.c_proj`) so that `params` can be converted with one key table. Parameters are
float32; `dtype` is the compute dtype that inputs and parameters are cast to.

With `sow=True` the blocks report their intermediates with `Module.sow(nnx.Intermediate, ...)`,
collected by `nnx.capture` (the flax gemma example's sow config, reduced to one switch): the
attention's "q", "k", "v" ([b, t, w], before the head split), the MLP's "hidden" ([b, t, m],
c_fc output before the activation), and the block's "attn_out", "mlp_out" (the two residual
branches) and "out" (the residual stream after the block). Without it nothing is sown, so the
ordinary forward carries no intermediates.

The modules are shape templates: weights start as zeros (LayerNorm scales as ones) and are only
ever built under `nnx.eval_shape`; random values come from the init table in `clip.py`, drawn
in a single `jax.random.normal` call (one draw per parameter made XLA compile the init for tens
of seconds on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
  "ACTIVATIONS",
  "Attention",
  "LayerNorm",
  "Linear",
  "Mlp",
  "ResidualBlock",
  "apply_blocks",
  "make_blocks",
  "quick_gelu",
  "sincos_2d",
  "zeros_param",
]


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI's QuickGELU, x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


def _gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": _gelu}


def zeros_param(shape: tuple[int, ...]) -> nnx.Param:
  """A float32 placeholder `nnx.Param` (its value is set by the init table)."""
  return nnx.Param(jnp.zeros(shape, jnp.float32))


def _expand_to(v: jax.Array, ndim: int) -> jax.Array:
  """Adds leading unit axes so `v` broadcasts explicitly against an ndim-rank array."""
  return v.reshape((1,) * (ndim - v.ndim) + v.shape)


class Linear(nnx.Module):
  """Dense layer y = x @ kernel + bias with a [in, out] kernel."""

  def __init__(self, n_in: int, n_out: int, *, dtype: jnp.dtype):
    self.dtype = dtype
    self.kernel = zeros_param((n_in, n_out))
    self.bias = zeros_param((n_out,))

  def __call__(self, x_bti: jax.Array) -> jax.Array:
    kernel_io = self.kernel[...].astype(self.dtype)
    bias_o = self.bias[...].astype(self.dtype)
    return x_bti.astype(self.dtype) @ kernel_io + _expand_to(bias_o, x_bti.ndim)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis with `scale`/`bias`; statistics in float32 (two-pass)."""

  def __init__(self, width: int, *, eps: float, dtype: jnp.dtype):
    self.eps = eps
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((width,), jnp.float32))
    self.bias = zeros_param((width,))

  def __call__(self, x_btw: jax.Array) -> jax.Array:
    x_btw = x_btw.astype(jnp.float32)
    mean_bt1 = jnp.mean(x_btw, axis=-1, keepdims=True)
    xc_btw = x_btw - mean_bt1
    var_bt1 = jnp.mean(jnp.square(xc_btw), axis=-1, keepdims=True)
    scale, bias = _expand_to(self.scale[...], x_btw.ndim), _expand_to(self.bias[...], x_btw.ndim)
    y_btw = xc_btw * jax.lax.rsqrt(var_bt1 + self.eps) * scale + bias
    return y_btw.astype(self.dtype)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused input projection (q, k, v in that order)."""

  def __init__(self, width: int, heads: int, *, causal: bool, dtype: jnp.dtype, sow: bool = False):
    self.heads = heads
    self.causal = causal
    self.sow_acts = sow
    self.in_proj = Linear(width, 3 * width, dtype=dtype)
    self.out_proj = Linear(width, width, dtype=dtype)

  def __call__(self, x_btw: jax.Array) -> jax.Array:
    """Attends over the token axis (causally when `causal`).

    Args:
      x_btw: [b, t, w] tokens.

    Returns:
      [b, t, w] attention output after `out_proj`.
    """
    b, t, w = x_btw.shape
    q_btw, k_btw, v_btw = jnp.split(self.in_proj(x_btw), 3, axis=-1)
    if self.sow_acts:
      self.sow(nnx.Intermediate, "q", q_btw)
      self.sow(nnx.Intermediate, "k", k_btw)
      self.sow(nnx.Intermediate, "v", v_btw)
    shape_bthk = (b, t, self.heads, w // self.heads)
    out_bthk = jax.nn.dot_product_attention(
      q_btw.reshape(shape_bthk),
      k_btw.reshape(shape_bthk),
      v_btw.reshape(shape_bthk),
      is_causal=self.causal,
    )
    return self.out_proj(out_bthk.reshape(b, t, w))


class Mlp(nnx.Module):
  """Two-layer MLP c_fc -> act -> c_proj."""

  def __init__(self, width: int, mlp_dim: int, *, act: str, dtype: jnp.dtype, sow: bool = False):
    self.act = act
    self.sow_acts = sow
    self.c_fc = Linear(width, mlp_dim, dtype=dtype)
    self.c_proj = Linear(mlp_dim, width, dtype=dtype)

  def __call__(self, x_btw: jax.Array) -> jax.Array:
    h_btm = self.c_fc(x_btw)
    if self.sow_acts:
      self.sow(nnx.Intermediate, "hidden", h_btm)
    return self.c_proj(ACTIVATIONS[self.act](h_btm))


class ResidualBlock(nnx.Module):
  """Pre-LN residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  def __init__(
    self,
    width: int,
    heads: int,
    mlp_dim: int,
    *,
    causal: bool,
    act: str,
    eps: float,
    dtype: jnp.dtype,
    sow: bool = False,
  ):
    self.sow_acts = sow
    self.ln_1 = LayerNorm(width, eps=eps, dtype=dtype)
    self.attn = Attention(width, heads, causal=causal, dtype=dtype, sow=sow)
    self.ln_2 = LayerNorm(width, eps=eps, dtype=dtype)
    self.mlp = Mlp(width, mlp_dim, act=act, dtype=dtype, sow=sow)

  def __call__(self, x_btw: jax.Array) -> jax.Array:
    a_btw = self.attn(self.ln_1(x_btw))
    x_btw = x_btw + a_btw
    m_btw = self.mlp(self.ln_2(x_btw))
    x_btw = x_btw + m_btw
    if self.sow_acts:
      self.sow(nnx.Intermediate, "attn_out", a_btw)
      self.sow(nnx.Intermediate, "mlp_out", m_btw)
      self.sow(nnx.Intermediate, "out", x_btw)
    return x_btw


def _apply_block(block: ResidualBlock, x_btw: jax.Array) -> jax.Array:
  return block(x_btw)


_apply_block_remat = nnx.remat(_apply_block)


def make_blocks(
  width: int,
  layers: int,
  heads: int,
  mlp_dim: int,
  *,
  causal: bool,
  act: str,
  eps: float,
  dtype: jnp.dtype,
  sow: bool = False,
) -> nnx.Dict:
  """A stack of residual blocks under string keys "0".."layers-1" (the `params` layout)."""
  return nnx.Dict(
    {
      str(i): ResidualBlock(
        width, heads, mlp_dim, causal=causal, act=act, eps=eps, dtype=dtype, sow=sow
      )
      for i in range(layers)
    }
  )


def apply_blocks(blocks: nnx.Dict, x_btw: jax.Array, *, remat: bool) -> jax.Array:
  """Runs the blocks in order "0", "1", ...

  Args:
    blocks: residual blocks from `make_blocks`.
    x_btw: [b, t, w] tokens.
    remat: recompute each block's activations in the backward pass instead of storing them.

  Returns:
    [b, t, w] tokens.
  """
  apply = _apply_block_remat if remat else _apply_block
  # Count the numbered entries: under `nnx.capture` every module, this Dict included, also holds
  # a `__captures__` entry.
  for i in range(sum(key.isdigit() for key in blocks)):
    x_btw = apply(blocks[str(i)], x_btw)
  return x_btw


def sincos_2d(grid: int, width: int) -> jax.Array:
  """Fixed 2-D sin-cos position table (as MAE and big_vision's `posemb_sincos_2d`).

  Args:
    grid: patches per side.
    width: embedding width, divisible by 4.

  Returns:
    [grid * grid, width] float32 table in row-major patch order. For the patch in row r and
    column c, with f = width // 4 and omega_i = 10000^(-i / f), the channels are
    [sin(r omega), cos(r omega), sin(c omega), cos(c omega)].
  """
  quarter = width // 4
  omega_f = 1.0 / (10000.0 ** (jnp.arange(quarter, dtype=jnp.float32) / quarter))
  pos_g = jnp.arange(grid, dtype=jnp.float32)
  ang_gf = pos_g[:, None] * omega_f[None, :]
  emb_gh = jnp.concatenate([jnp.sin(ang_gf), jnp.cos(ang_gf)], axis=1)
  row_ggh = jnp.broadcast_to(emb_gh[:, None, :], (grid, grid, 2 * quarter))
  col_ggh = jnp.broadcast_to(emb_gh[None, :, :], (grid, grid, 2 * quarter))
  return jnp.concatenate([row_ggh, col_ggh], axis=-1).reshape(grid * grid, 4 * quarter)
