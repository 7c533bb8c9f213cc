"""Array ops of the models: convolution and 2x2 max pooling, fast on CPU.

Two ops are written out by hand because the library defaults are slow on CPU
inside adversarial training (PGD differentiates the network with respect to
its input several times per step, inside ``lax.fori_loop``):

* :func:`max_pool_2x2` is a reshape followed by a ``max``. Its value equals
  ``flax.linen.max_pool(x, (2, 2), (2, 2))``, and so does its gradient when
  no window has a tie (with ties, the gradient is shared equally among the
  tied entries instead of going to one of them).
* :func:`conv2d` with ``impl="im2col"`` builds the patch matrix from
  ``kh * kw`` strided slices and applies one matmul:

  .. math::

     y[n, p, q, :] = \\mathrm{patches}[n, p, q, :] \\cdot K_{2d},
     \\qquad K_{2d} = \\mathrm{kernel.reshape}(k_h k_w c_{in}, c_{out}),

  where the patch entries are ordered ``(kh, kw, in)``, the same order in
  which a flax kernel ``(kh, kw, in, out)`` flattens. ``impl="auto"``
  (the default of every conv in :mod:`atmc_jax.models`) picks im2col on the
  CPU backend and ``lax.conv_general_dilated`` elsewhere, decided at trace
  time from ``jax.default_backend()``. With one input channel (LeNet's
  conv1) the im2col path computes the forward with
  ``lax.conv_general_dilated`` instead (a ``jax.custom_vjp`` whose backward
  pass is the im2col one): on CPU that forward is several times faster than
  building a ``K = kh * kw`` patch matrix, while XLA's input gradient of a
  one-channel convolution is much slower than im2col's. Being a
  ``custom_vjp``, that path supports reverse-mode differentiation only.

A convolution followed by 2x2 max pooling is faster still as one op on CPU:
see :func:`~atmc_jax.models.conv2d_max_pool` (``_conv_pool.py``), which
CaffeLeNet uses.
"""

import functools
from typing import Any, Sequence

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
PaddingLike = str | int | Sequence[int] | Sequence[tuple[int, int]]

CONV_IMPLS = ('auto', 'im2col', 'lax')


def max_pool_2x2(x: Array) -> Array:
  """2x2 max pooling with stride 2 (VALID) over an NHWC batch.

  Equals ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))``: an odd last row
  or column is dropped. Implemented as a reshape and a max, whose gradient
  is much cheaper on CPU than the one of ``lax.reduce_window``.

  Args:
    x: array of shape ``(..., H, W, C)`` with ``H, W >= 2``.

  Returns:
    Array of shape ``(..., H // 2, W // 2, C)``.

  Raises:
    ValueError: ``x`` has fewer than 3 dimensions or a spatial size below 2.
  """
  if x.ndim < 3:
    raise ValueError(
        f'max_pool_2x2 expects (..., H, W, C) input, got shape {x.shape}.')
  h, w = x.shape[-3], x.shape[-2]
  if h < 2 or w < 2:
    raise ValueError(
        f'max_pool_2x2 needs H, W >= 2, got H={h}, W={w}.')
  h2, w2 = h // 2, w // 2
  x = x[..., :2 * h2, :2 * w2, :]
  x = x.reshape(x.shape[:-3] + (h2, 2, w2, 2, x.shape[-1]))
  return jnp.max(x, axis=(-4, -2))


def to_pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
  """``(v, v)`` for an int, the pair itself otherwise; positive ints only.

  Raises:
    ValueError: not one or two positive ints (``what`` names the argument).
  """
  if isinstance(value, int):
    pair = (value, value)
  else:
    pair = tuple(int(v) for v in value)
  if len(pair) != 2 or any(v < 1 for v in pair):
    raise ValueError(
        f'{what} must be a positive int or a pair of positive ints, got '
        f'{value!r}.')
  return pair  # type: ignore[return-value]


def resolve_padding(padding: PaddingLike, spatial: tuple[int, int],
                    kernel_size: tuple[int, int],
                    strides: tuple[int, int]) -> tuple[tuple[int, int], ...]:
  """Explicit ``((top, bottom), (left, right))`` padding.

  Args:
    padding: ``'SAME'``, ``'VALID'``, an int (the same on every side, as
      PyTorch's ``padding=p``), a pair of ints (per spatial dim, both sides)
      or a pair of ``(low, high)`` pairs.
    spatial: the input's ``(H, W)``.
    kernel_size: ``(kh, kw)``.
    strides: ``(sh, sw)``.

  Returns:
    Two ``(low, high)`` pairs.

  Raises:
    ValueError: unsupported padding string or a negative/ill-formed value.
  """
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      raise ValueError(
          f"padding must be 'SAME', 'VALID', an int or explicit pairs, got "
          f'{padding!r}.')
    return tuple(lax.padtype_to_pads(spatial, kernel_size, strides,
                                     padding.upper()))
  if isinstance(padding, int):
    pads = ((padding, padding), (padding, padding))
  else:
    items = list(padding)
    if len(items) != 2:
      raise ValueError(
          f'padding must have one entry per spatial dim (2), got {padding!r}.')
    pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in items)
  if any(len(p) != 2 or p[0] < 0 or p[1] < 0 for p in pads):
    raise ValueError(
        f'padding values must be non-negative ints, got {padding!r}.')
  return tuple((int(lo), int(hi)) for lo, hi in pads)


def resolve_conv_impl(impl: str) -> str:
  """Maps ``'auto'`` to ``'im2col'`` on CPU and ``'lax'`` elsewhere.

  Raises:
    ValueError: ``impl`` is not one of ``'auto'``, ``'im2col'``, ``'lax'``.
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl must be one of {CONV_IMPLS}, got {impl!r}.')
  if impl == 'auto':
    return 'im2col' if jax.default_backend() == 'cpu' else 'lax'
  return impl


def conv2d(x: Array, kernel: Array, *,
           kernel_size: int | Sequence[int] | None = None,
           strides: int | Sequence[int] = 1,
           padding: PaddingLike = 'SAME',
           impl: str = 'auto',
           precision: Any = None) -> Array:
  """2-D convolution (cross-correlation) of an NHWC batch.

  Args:
    x: input of shape ``(N, H, W, C_in)``.
    kernel: either the flax layout ``(kh, kw, C_in, C_out)`` or its 2-D
      reshape ``(kh * kw * C_in, C_out)``; the 2-D form needs
      ``kernel_size``.
    kernel_size: ``(kh, kw)``; required for a 2-D kernel.
    strides: an int or ``(sh, sw)``.
    padding: see :func:`resolve_padding`.
    impl: ``'auto'``, ``'im2col'`` or ``'lax'``.
    precision: passed to the matmul / ``lax.conv_general_dilated``.

  Returns:
    ``(N, H_out, W_out, C_out)``.

  Raises:
    ValueError: bad ``impl``, strides, padding, or a kernel whose shape does
      not match the input channels.
  """
  impl = resolve_conv_impl(impl)
  if x.ndim != 4:
    raise ValueError(f'conv2d expects NHWC input (4-D), got shape {x.shape}.')
  c_in = x.shape[-1]
  if kernel.ndim == 4:
    kh, kw = kernel.shape[:2]
    if kernel.shape[2] != c_in:
      raise ValueError(
          f'kernel {kernel.shape} expects {kernel.shape[2]} input channels, '
          f'got {c_in}.')
  elif kernel.ndim == 2:
    if kernel_size is None:
      raise ValueError('a 2-D kernel needs kernel_size=(kh, kw).')
    kh, kw = to_pair(kernel_size, 'kernel_size')
    if kernel.shape[0] != kh * kw * c_in:
      raise ValueError(
          f'2-D kernel {kernel.shape} needs {kh}*{kw}*{c_in} = '
          f'{kh * kw * c_in} rows.')
  else:
    raise ValueError(f'kernel must be 2-D or 4-D, got shape {kernel.shape}.')
  c_out = kernel.shape[-1]
  sh, sw = to_pair(strides, 'strides')
  pads = resolve_padding(padding, x.shape[1:3], (kh, kw), (sh, sw))

  if impl == 'lax':
    return lax.conv_general_dilated(
        x, kernel.reshape(kh, kw, c_in, c_out), (sh, sw), pads,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision)

  h = x.shape[1] + pads[0][0] + pads[0][1]
  w = x.shape[2] + pads[1][0] + pads[1][1]
  if (h - kh) // sh + 1 < 1 or (w - kw) // sw + 1 < 1:
    raise ValueError(
        f'kernel {(kh, kw)} is larger than the padded input {(h, w)}.')
  kernel_2d = kernel.reshape(kh * kw * c_in, c_out)
  if c_in == 1:
    return _conv_lax_forward_im2col_backward(x, kernel_2d, kh, kw, sh, sw,
                                             pads, precision)
  return im2col_conv(x, kernel_2d, kh, kw, sh, sw, pads, precision)


def im2col_conv(x: Array, kernel_2d: Array, kh: int, kw: int, sh: int,
                 sw: int, pads: tuple[tuple[int, int], ...],
                 precision: Any) -> Array:
  """im2col convolution: ``kh * kw`` strided slices, one concat, one dot."""
  if any(p for pair in pads for p in pair):
    x = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  n, h, w, c_in = x.shape
  oh = (h - kh) // sh + 1
  ow = (w - kw) // sw + 1
  cols = [
      lax.slice(x, (0, i, j, 0),
                (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c_in),
                (1, sh, sw, 1))
      for i in range(kh) for j in range(kw)
  ]
  patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
  return jnp.dot(patches, kernel_2d, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _conv_lax_forward_im2col_backward(
    x: Array, kernel_2d: Array, kh: int, kw: int, sh: int, sw: int,
    pads: tuple[tuple[int, int], ...], precision: Any) -> Array:
  """One-input-channel convolution: XLA's forward, the im2col gradients.

  With ``C_in == 1`` the im2col patch matrix is an element-granular copy
  (``kh * kw`` one-float slices concatenated along the minor axis) and the
  matmul has ``K = kh * kw``; XLA:CPU's own convolution computes this forward
  several times faster. Its *input gradient*, however, is much slower on
  CPU than the transpose of im2col, so the backward pass is the VJP of
  :func:`im2col_conv` (values equal up to float rounding).
  """
  c_out = kernel_2d.shape[-1]
  return lax.conv_general_dilated(
      x, kernel_2d.reshape(kh, kw, 1, c_out), (sh, sw), pads,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision)


def _conv_lfib_fwd(x, kernel_2d, kh, kw, sh, sw, pads, precision):
  y = _conv_lax_forward_im2col_backward(x, kernel_2d, kh, kw, sh, sw, pads,
                                        precision)
  return y, (x, kernel_2d)


def _conv_lfib_bwd(kh, kw, sh, sw, pads, precision, residuals, g):
  x, kernel_2d = residuals
  _, vjp = jax.vjp(
      lambda a, b: im2col_conv(a, b, kh, kw, sh, sw, pads, precision),
      x, kernel_2d)
  return vjp(g)


_conv_lax_forward_im2col_backward.defvjp(_conv_lfib_fwd, _conv_lfib_bwd)
