"""Convolution followed by 2x2 max pooling, fused on CPU.

:func:`conv2d_max_pool` computes ``max_pool(conv(x, kernel) + bias)`` with a
2x2 window and stride 2 (VALID pooling: an odd last row or column of the
convolution's output is dropped), and its value and gradient equal those of
:func:`conv2d` followed by ``flax.linen.max_pool(y, (2, 2), (2, 2))``: at a
tie the gradient goes to the first maximal entry of the window in row-major
order, as in flax (``lax.reduce_window``) and PyTorch.

On CPU (the ``im2col`` implementation) with stride 1 it is computed in
*space-to-depth* (polyphase) form, which is what makes adversarial training
of CaffeLeNet fast there. The input is regrouped into 2x2 blocks,
``xs[n, P, Q, (a, b, c)] = x[n, 2P + a, 2Q + b, c]``, and convolved (im2col)
with a kernel of ``ceil((k + 1) / 2)`` taps per axis whose ``4 * out``
output channels are the four pooling phases:

.. math::

   y[n, 2p + d_p, 2q + d_q, o] = \\sum_{u, v, a, b, c}
     xs[n, p + u, q + v, (a, b, c)]\\,
     K[2u + a - d_p,\\; 2v + b - d_q,\\; c,\\; o],

(``K`` is zero outside its ``kh x kw`` support). The pooled output is the
maximum over the phase axis ``(d_p, d_q)``, a reduction over four adjacent
channel groups instead of a strided 2x2 window, and its gradient (a custom
VJP) is one select per phase. Compared with im2col followed by the
reshape max-pool, the patch matrix is ~2.8x smaller for a 5x5 kernel, the
matmul has a wider output (``4 * out`` columns) at the price of 1.44x the
multiply-adds (``36 / 25`` for 5x5), and the pooling gradient needs no tie
counting. Elsewhere (``lax``, or strides other than 1) it is
:func:`conv2d` followed by ``lax.reduce_window`` max pooling, i.e. exactly
flax's ops.
"""

import functools
from typing import Any, Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from atmc_jax.models import _ops

Array = jax.Array


def conv2d_max_pool(x: Array, kernel: Array, bias: Array | None = None, *,
                    kernel_size: int | Sequence[int] | None = None,
                    strides: int | Sequence[int] = 1,
                    padding: _ops.PaddingLike = 'SAME',
                    impl: str = 'auto',
                    precision: Any = None) -> Array:
  """``max_pool_2x2(conv2d(x, kernel) + bias)``, fused where that is faster.

  Args:
    x: input of shape ``(N, H, W, C_in)``.
    kernel: ``(kh, kw, C_in, C_out)`` or its 2-D reshape
      ``(kh * kw * C_in, C_out)`` (which needs ``kernel_size``).
    bias: ``(C_out,)`` or None.
    kernel_size: ``(kh, kw)``; required for a 2-D kernel.
    strides: convolution strides (the pooling window and stride are 2).
    padding: convolution padding, see :func:`~atmc_jax.models.conv2d`.
    impl: ``'auto'``, ``'im2col'`` or ``'lax'`` (as for ``conv2d``); the
      fused form is used for ``im2col`` with stride 1.
    precision: matmul / convolution precision.

  Returns:
    ``(N, H_out // 2, W_out // 2, C_out)`` where ``H_out, W_out`` is the
    convolution's output size.

  Raises:
    ValueError: anything :func:`~atmc_jax.models.conv2d` rejects, a bias
      of the wrong shape, or a convolution output smaller than 2x2.
  """
  impl = _ops.resolve_conv_impl(impl)
  if x.ndim != 4:
    raise ValueError(
        f'conv2d_max_pool expects NHWC input (4-D), got shape {x.shape}.')
  c_in = x.shape[-1]
  if kernel.ndim == 4:
    kh, kw = kernel.shape[:2]
  elif kernel.ndim == 2 and kernel_size is not None:
    kh, kw = _ops.to_pair(kernel_size, 'kernel_size')
  else:
    # Let conv2d produce its error message for the bad kernel.
    return _ops.conv2d(x, kernel, kernel_size=kernel_size, impl=impl)
  c_out = kernel.shape[-1]
  if bias is not None and bias.shape != (c_out,):
    raise ValueError(
        f'bias must have shape ({c_out},) to match the kernel, got '
        f'{bias.shape}.')
  sh, sw = _ops.to_pair(strides, 'strides')
  pads = _ops.resolve_padding(padding, x.shape[1:3], (kh, kw), (sh, sw))
  out_h = (x.shape[1] + sum(pads[0]) - kh) // sh + 1
  out_w = (x.shape[2] + sum(pads[1]) - kw) // sw + 1
  if out_h < 2 or out_w < 2:
    raise ValueError(
        f'2x2 max pooling needs a convolution output of at least 2x2, got '
        f'{(out_h, out_w)} (input {x.shape[1:3]}, kernel {(kh, kw)}, '
        f'padding {pads}, strides {(sh, sw)}).')

  rows_ok = (kernel.shape[2] == c_in if kernel.ndim == 4
             else kernel.shape[0] == kh * kw * c_in)
  if impl != 'im2col' or (sh, sw) != (1, 1) or not rows_ok:
    y = _ops.conv2d(x, kernel, kernel_size=(kh, kw), strides=(sh, sw),
                    padding=pads, impl=impl, precision=precision)
    if bias is not None:
      y = y + bias
    return lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1),
                             (1, 2, 2, 1), 'VALID')

  kernel = kernel.reshape(kh, kw, c_in, c_out)
  if any(p for pair in pads for p in pair):
    x = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  x = _even_grid(x, kh, kw)
  n, h, w, _ = x.shape
  xs = x.reshape(n, h // 2, 2, w // 2, 2, c_in)
  xs = xs.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c_in)
  taps_h, taps_w = _phase_taps(kh), _phase_taps(kw)
  # (u, a, d_p, i) x (v, b, d_q, j) x (i, j, c, o) -> rows (u, v, a, b, c),
  # columns (d_p, d_q, o): the im2col kernel of the space-to-depth input.
  # Each entry is one kernel entry or 0; HIGHEST keeps it exact on TPU/GPU.
  phase_kernel = jnp.einsum('uapi,vbqj,ijco->uvabcpqo', taps_h, taps_w,
                            kernel, precision=lax.Precision.HIGHEST)
  ut, vt = taps_h.shape[0], taps_w.shape[0]
  phase_kernel = phase_kernel.reshape(ut * vt * 4 * c_in, 4 * c_out)
  y = _ops.im2col_conv(xs, phase_kernel, ut, vt, 1, 1, ((0, 0), (0, 0)),
                       precision)
  y = y.reshape(y.shape[:3] + (4, c_out))
  if bias is not None:
    y = y + bias
  return _phase_max(y)


def _even_grid(x: Array, kh: int, kw: int) -> Array:
  """Crops/pads ``x`` so the conv output and the input have even H and W.

  A convolution output row (column) that the VALID pooling drops is removed
  by cropping the last input row (column); an odd input size left after
  that is padded with one zero row (column), which only ever meets the
  zero entries of the space-to-depth kernel.
  """
  n, h, w, c = x.shape
  h -= (h - kh + 1) % 2
  w -= (w - kw + 1) % 2
  x = x[:, :h, :w, :]
  if h % 2 or w % 2:
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  return x


@functools.lru_cache(maxsize=None)
def _phase_taps(k: int) -> np.ndarray:
  """``T[u, a, d, i] = 1`` iff ``2u + a - d == i`` (a kernel tap ``i < k``).

  Output ``2p + d`` reads input ``2p + d + i = 2(p + u) + a``: tap ``i`` of
  phase ``d`` sits at block offset ``u`` and position ``a`` in the block.
  """
  taps = np.zeros((k // 2 + 1, 2, 2, k), np.float32)
  for u in range(taps.shape[0]):
    for a in range(2):
      for d in range(2):
        i = 2 * u + a - d
        if 0 <= i < k:
          taps[u, a, d, i] = 1.0
  return taps


@jax.custom_vjp
def _phase_max(y: Array) -> Array:
  """Max over axis -2 (the 4 pooling phases, in window row-major order)."""
  return jnp.max(y, axis=-2)


def _phase_max_fwd(y):
  m = jnp.max(y, axis=-2)
  return m, (y, m)


def _phase_max_bwd(residuals, g):
  # The cotangent goes to the first phase holding the maximum: flax's
  # (reduce_window's) and PyTorch's rule. One select per phase; no counting.
  y, m = residuals
  # XLA:CPU would fuse the cotangent's producer (in CaffeLeNet: conv2's
  # col2im, a sum of 9 padded slices and a depth-to-space transpose) into the
  # four selects below and so evaluate it once per phase. A matmul with the
  # identity makes it a materialised buffer first (exact for finite values;
  # ~10 % of the LeNet PGD-7 step).
  g = jnp.dot(g, jnp.eye(g.shape[-1], dtype=g.dtype),
              precision=lax.Precision.HIGHEST)
  hit = [y[..., k, :] == m for k in range(3)]
  first = [hit[0], hit[1] & ~hit[0], hit[2] & ~(hit[0] | hit[1]),
           ~(hit[0] | hit[1] | hit[2])]
  zero = jnp.zeros_like(g)
  return (jnp.stack([jnp.where(f, g, zero) for f in first], axis=-2),)


_phase_max.defvjp(_phase_max_fwd, _phase_max_bwd)
