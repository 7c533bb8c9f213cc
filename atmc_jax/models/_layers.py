"""Dense (unfactorized) Conv and Dense layers with PyTorch's initialisation.

:class:`Conv` and :class:`Dense` are the dense counterparts of
:class:`~atmc_jax.models.FactorizedConv` and
:class:`~atmc_jax.models.FactorizedDense`: they hold ``kernel`` (flax
layout) and ``bias``, and their default initialisation is PyTorch's (the
reference implementation's), i.e. ``kernel ~ U(-1/sqrt(fan_in),
1/sqrt(fan_in))`` and the same range for the bias.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from atmc_jax.models import _conv_pool
from atmc_jax.models import _ops

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
PaddingLike = _ops.PaddingLike

# PyTorch's default for Conv2d / Linear weights: kaiming_uniform(a=sqrt(5)),
# i.e. U(-b, b) with b = 1 / sqrt(fan_in).
torch_default_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
  bound = 1.0 / float(fan_in) ** 0.5 if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Conv(nn.Module):
  """Dense 2-D convolution with a ``kernel`` of shape ``(kh, kw, in, out)``.

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
    precision: matmul / convolution precision.
    kernel_init: init of the ``(kh, kw, in, out)`` kernel.
    bias_init: init of the bias; ``None`` is PyTorch's
      ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
    max_pool: follow the convolution (and bias) by 2x2 max pooling with
      stride 2, fused with it where that is faster
      (:func:`~atmc_jax.models.conv2d_max_pool`).
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: PaddingLike = 'SAME'
  use_bias: bool = True
  conv_impl: str = 'auto'
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Initializer = torch_default_kernel_init
  bias_init: Initializer | None = None
  max_pool: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = _ops.to_pair(self.kernel_size, 'kernel_size')
    c_in = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, c_in, self.features), self.param_dtype)
    bias = None
    if self.use_bias:
      bias_init = self.bias_init or torch_default_bias_init(kh * kw * c_in)
      bias = self.param('bias', bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    if self.max_pool:
      return _conv_pool.conv2d_max_pool(
          x, kernel, bias, strides=self.strides, padding=self.padding,
          impl=self.conv_impl, precision=self.precision)
    y = _ops.conv2d(x, kernel, strides=self.strides, padding=self.padding,
                    impl=self.conv_impl, precision=self.precision)
    if bias is not None:
      y = y + bias
    return y


class Dense(nn.Module):
  """Dense layer ``y = x @ kernel + bias`` with ``kernel`` of shape (in, out).

  Attributes:
    features: number of outputs.
    use_bias: whether to add a bias.
    dtype: computation dtype (``None``: the input's / params' dtype).
    param_dtype: parameter dtype.
    precision: matmul precision.
    kernel_init: init of the ``(in, out)`` kernel.
    bias_init: init of the bias; ``None`` is PyTorch's
      ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
  """

  features: int
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Initializer = torch_default_kernel_init
  bias_init: Initializer | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (fan_in, self.features),
                        self.param_dtype)
    bias = None
    if self.use_bias:
      bias_init = self.bias_init or torch_default_bias_init(fan_in)
      bias = self.param('bias', bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    y = jnp.dot(x, kernel, precision=self.precision)
    if bias is not None:
      y = y + bias
    return y
