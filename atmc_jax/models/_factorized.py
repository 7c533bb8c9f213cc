"""U·V + C factorized layers and the dense <-> factorized conversion.

A layer whose dense matrix is ``W`` (``out x fan_in``; a conv kernel
``(kh, kw, in, out)`` is read as ``kernel.reshape(kh * kw * in, out).T``)
stores three 2-D parameters, with ``r = min(out, fan_in)``:

* ``U``: ``out x r``,
* ``V``: ``r x fan_in``,
* ``C``: ``out x fan_in``,

and computes with the effective matrix

.. math::

   W = \\begin{cases}
       U (V + I) + C & \\text{if } \\mathrm{fan\\_in} \\le \\mathrm{out}
                       \\quad (V \\text{ is square}),\\\\
       (U + I) V + C & \\text{if } \\mathrm{out} < \\mathrm{fan\\_in}
                       \\quad (U \\text{ is square}).
       \\end{cases}

The identity is a constant: the square factor is stored as an offset from it,
so it is not a parameter, is not counted and is not projected. Converting a
dense ``W`` puts ``W`` into the non-square factor and zeros into the square
factor and ``C`` (:func:`factorize`); the converted network computes exactly
the dense function and ``nnz(U) + nnz(V) + nnz(C) = nnz(W)``. A freshly
initialised factorized layer does the same with the dense layer's default
initialisation, so it starts from a sensible function.

The applied kernel is ``W.T`` (Dense: ``(in, out)``; Conv:
``W.T.reshape(kh, kw, in, out)``, i.e. ``fan_in`` flattens in
``(kh, kw, in)`` order). Reference: Gui et al., *Model Compression with
Adversarial Robustness: A Unified Optimization Framework*, NeurIPS 2019,
section 3.1 of the specification.
"""

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from atmc_jax._src import base
from atmc_jax.export._format import FACTOR_NAMES
from atmc_jax.export._format import is_factorized_layer
from atmc_jax.models import _conv_pool
from atmc_jax.models import _layers
from atmc_jax.models import _low_rank
from atmc_jax.models import _ops

Array = jax.Array


def factor_shapes(out: int, fan_in: int) -> dict[str, tuple[int, int]]:
  """Shapes of ``U``, ``V`` and ``C`` for an ``out x fan_in`` matrix."""
  r = min(out, fan_in)
  return {'U': (out, r), 'V': (r, fan_in), 'C': (out, fan_in)}


def compose(u: Array, v: Array, c: Array) -> Array:
  """The effective ``out x fan_in`` matrix of a factorized layer.

  Computes ``U·(V + I) + C`` when ``V`` is square (``fan_in <= out``) and
  ``(U + I)·V + C`` otherwise, as ``U·V + U + C`` / ``U·V + V + C`` so that
  no identity matrix is built. The product uses ``Precision.HIGHEST``, so a
  converted layer reproduces its dense kernel bit for bit.

  Args:
    u: ``out x r``.
    v: ``r x fan_in``.
    c: ``out x fan_in``.

  Returns:
    ``W`` of shape ``out x fan_in``.

  Raises:
    ValueError: the shapes are not those of :func:`factor_shapes`.
  """
  out, fan_in = c.shape
  expected = factor_shapes(out, fan_in)
  if u.shape != expected['U'] or v.shape != expected['V']:
    raise ValueError(
        f'factor shapes U{u.shape}, V{v.shape}, C{c.shape} do not match; '
        f'expected U{expected["U"]}, V{expected["V"]} for C{c.shape}.')
  uv = jnp.matmul(u, v, precision=lax.Precision.HIGHEST)
  square = v if out < fan_in else u
  return uv + square + c


def _factor_param(name: str, out: int, fan_in: int, dense_init, dense_shape):
  """Param init for one factor: W (non-square factor) or zeros."""
  shape = factor_shapes(out, fan_in)[name]
  holds_w = (name == 'U' and fan_in <= out) or (name == 'V' and out < fan_in)

  def init(key, dtype):
    if holds_w:
      kernel = dense_init(key, dense_shape, dtype)
      return kernel.reshape(fan_in, out).T
    return jnp.zeros(shape, dtype)

  return init


class FactorizedDense(nn.Module):
  """Dense layer with ``W = U·V + C`` (identity offset on the square factor).

  Params: ``U`` (out x r), ``V`` (r x in), ``C`` (out x in), ``bias`` (out);
  ``r = min(in, out)``. Computes ``y = x @ W.T + bias``.

  Attributes:
    features: number of outputs.
    use_bias: whether to add a bias.
    dtype: computation dtype (``None``: the input's / params' dtype).
    param_dtype: parameter dtype.
    precision: precision of the ``x @ W.T`` matmul.
    kernel_init: init of the equivalent dense ``(in, out)`` kernel; it goes
      into the non-square factor, the square factor and ``C`` start at 0.
    bias_init: ``None`` is PyTorch's ``U(-1/sqrt(in), 1/sqrt(in))``.
  """

  features: int
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = _layers.torch_default_kernel_init
  bias_init: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in, out = x.shape[-1], self.features
    factors = [
        self.param(name, _factor_param(name, out, fan_in, self.kernel_init,
                                       (fan_in, out)), self.param_dtype)
        for name in FACTOR_NAMES
    ]
    kernel = compose(*factors).T
    bias = None
    if self.use_bias:
      bias_init = self.bias_init or _layers.torch_default_bias_init(fan_in)
      bias = self.param('bias', bias_init, (out,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    y = jnp.dot(x, kernel, precision=self.precision)
    if bias is not None:
      y = y + bias
    return y


class FactorizedConv(nn.Module):
  """2-D convolution whose kernel is ``(U·V + C).T.reshape(kh, kw, in, out)``.

  Params: ``U`` (out x r), ``V`` (r x fan_in), ``C`` (out x fan_in) and
  ``bias``, with ``fan_in = kh * kw * in`` and ``r = min(fan_in, out)``.

  Attributes:
    features: number of output channels.
    kernel_size: an int or ``(kh, kw)``.
    strides: an int or ``(sh, sw)``.
    padding: ``'SAME'``, ``'VALID'``, an int or explicit pairs.
    use_bias: whether to add a bias.
    conv_impl: ``'auto'`` (im2col on CPU, lax elsewhere), ``'im2col'`` or
      ``'lax'``.
    dtype: computation dtype (``None``: the input's / params' dtype).
    param_dtype: parameter dtype.
    precision: precision of the convolution.
    kernel_init: init of the equivalent dense ``(kh, kw, in, out)`` kernel;
      it goes into the non-square factor, the square factor and ``C`` start
      at 0.
    bias_init: ``None`` is PyTorch's ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
    max_pool: follow the convolution (and bias) by 2x2 max pooling with
      stride 2, fused with it where that is faster
      (:func:`~atmc_jax.models.conv2d_max_pool`).
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: _ops.PaddingLike = 'SAME'
  use_bias: bool = True
  conv_impl: str = 'auto'
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = _layers.torch_default_kernel_init
  bias_init: Any = None
  max_pool: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = _ops.to_pair(self.kernel_size, 'kernel_size')
    c_in, out = x.shape[-1], self.features
    fan_in = kh * kw * c_in
    factors = [
        self.param(name, _factor_param(name, out, fan_in, self.kernel_init,
                                       (kh, kw, c_in, out)), self.param_dtype)
        for name in FACTOR_NAMES
    ]
    kernel = compose(*factors).T  # (fan_in, out), rows in (kh, kw, in) order.
    bias = None
    if self.use_bias:
      bias_init = self.bias_init or _layers.torch_default_bias_init(fan_in)
      bias = self.param('bias', bias_init, (out,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    if self.max_pool:
      return _conv_pool.conv2d_max_pool(
          x, kernel, bias, kernel_size=(kh, kw), strides=self.strides,
          padding=self.padding, impl=self.conv_impl, precision=self.precision)
    y = _ops.conv2d(x, kernel, kernel_size=(kh, kw), strides=self.strides,
                    padding=self.padding, impl=self.conv_impl,
                    precision=self.precision)
    if bias is not None:
      y = y + bias
    return y


def _is_kernel(leaf: Any) -> bool:
  return (hasattr(leaf, 'shape') and len(leaf.shape) >= 2
          and jnp.issubdtype(leaf.dtype, jnp.floating))


def factorize(params: base.Params) -> base.Params:
  """Converts dense params to factorized params computing the same function.

  Every layer dict holding a floating ``kernel`` with ``ndim >= 2`` (a flax
  Dense ``(in, out)`` or Conv ``(kh, kw, in, out)`` kernel) gets
  ``U, V, C`` instead, with ``W = kernel.reshape(-1, out).T``:

  * ``fan_in <= out``: ``U = W``, ``V = 0`` (``fan_in x fan_in``), ``C = 0``;
  * ``out < fan_in``: ``V = W``, ``U = 0`` (``out x out``), ``C = 0``.

  Every other leaf (biases, BatchNorm scale/bias/statistics) passes through
  unchanged, so this works on ``variables['params']`` and on a whole
  variables dict. Pure and jittable.

  Args:
    params: a nested dict of arrays as produced by ``Module.init``.

  Returns:
    The factorized params, usable by the same model with
    ``factorized=True``.
  """
  def convert(node):
    if not isinstance(node, Mapping):
      return node
    out = {}
    for key, value in node.items():
      if key == 'kernel' and _is_kernel(value):
        n_out = value.shape[-1]
        w = jnp.reshape(value, (-1, n_out)).T
        fan_in = w.shape[1]
        factors = {name: jnp.zeros(shape, w.dtype) for name, shape in
                   factor_shapes(n_out, fan_in).items()}
        factors['U' if fan_in <= n_out else 'V'] = w
        out.update(factors)
      else:
        out[key] = convert(value)
    return out

  return convert(params)


def materialize(params: base.Params, like: base.PyTree = None) -> base.Params:
  """Converts factorized params back to dense ``kernel`` params.

  Every layer dict holding ``U, V, C`` gets ``kernel = compose(U, V, C).T``
  (see :func:`compose`), and every layer dict holding the fixed-rank factors
  ``B, A`` (:mod:`atmc_jax.models._low_rank`) gets ``kernel = (B·A).T``,
  reshaped to the dense kernel's shape; other leaves pass through.
  ``materialize(factorize(p), like=p)`` returns ``p`` exactly.

  A conv kernel's shape ``(kh, kw, in, out)`` cannot be read off the 2-D
  factors, so it comes from ``like``: the dense params (or anything with the
  same structure whose ``kernel`` leaves have a ``.shape``, e.g. the output
  of ``jax.eval_shape`` on the dense model's ``init``). Without ``like``
  every kernel is returned 2-D as ``(fan_in, out)``, which is the flax layout
  of a Dense layer (and the flattened layout of a conv).

  Args:
    params: factorized params (or variables).
    like: optional dense params giving the kernel shapes.

  Returns:
    Dense params.

  Raises:
    ValueError: ``like`` lacks a ``kernel`` where ``params`` has factors,
      or its kernel shape does not hold ``out x fan_in`` entries.
  """
  def convert(node, ref, path):
    if not isinstance(node, Mapping):
      return node
    if is_factorized_layer(node) or _low_rank.is_low_rank_layer(node):
      if is_factorized_layer(node):
        w, names = compose(node['U'], node['V'], node['C']), FACTOR_NAMES
      else:
        w = _low_rank.compose_low_rank(node['B'], node['A'])
        names = _low_rank.LOW_RANK_NAMES
      kernel = w.T
      if ref is not None:
        if not isinstance(ref, Mapping) or 'kernel' not in ref:
          raise ValueError(
              f'like has no kernel at {path or "<root>"!r}, where params '
              f'has {", ".join(names)}.')
        shape = tuple(ref['kernel'].shape)
        if int(np.prod(shape)) != kernel.size or shape[-1] != kernel.shape[1]:
          raise ValueError(
              f'like kernel at {path!r} has shape {shape}, which does not '
              f'hold an out x fan_in = {w.shape} matrix.')
        kernel = kernel.reshape(shape)
      out = {'kernel': kernel}
      for key, value in node.items():
        if key not in names:
          out[key] = convert(value, _child(ref, key), f'{path}/{key}')
      return out
    return {key: convert(value, _child(ref, key), f'{path}/{key}'.lstrip('/'))
            for key, value in node.items()}

  return convert(params, like, '')


def _child(ref, key):
  if isinstance(ref, Mapping):
    return ref.get(key)
  return None
