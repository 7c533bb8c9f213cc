"""Wide ResNet (WRN-16-8 with dropout 0.4 is the SVHN model of ATMC).

conv 3x3 3->16, then 3 groups of ``(depth - 4) / 6`` pre-activation
blocks of widths ``16k, 32k, 64k`` (strides 1/2/2) with a 1x1 shortcut conv
when in != out, then BN, ReLU, global average pooling and FC. A block is
``BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3``; when in != out the shortcut
conv reads the pre-activated input. Initialisation as in the reference:
convs ``N(0, 2 / (k^2 out))``, BN ``gamma = 1, beta = 0``, FC bias 0 (FC
weight: PyTorch's default). WRN-16-8 has 17 weight layers and 10,954,160
weights for 10 classes.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from atmc_jax.models import _common
from atmc_jax.models import _resnet

# N(0, sqrt(2 / (kh * kw * out))), as the reference's
# ``m.weight.data.normal_(0, math.sqrt(2. / n))``.
wrn_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class WideBasicBlock(nn.Module):
  """Pre-activation wide block with dropout between the two convs."""

  features: int
  strides: int = 1
  dropout_rate: float = 0.0
  factorized: bool = False
  conv_impl: str = 'auto'
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = _common.conv_cls(self.factorized, conv_impl=self.conv_impl,
                            dtype=self.dtype, kernel_init=wrn_conv_init)
    bn = functools.partial(_resnet.batch_norm, train, self.bn_axis_name,
                           self.dtype)
    equal_in_out = x.shape[-1] == self.features
    act = nn.relu(bn('bn1')(x))
    if not equal_in_out:
      x = act
    y = conv(self.features, 3, strides=self.strides, padding=1,
             use_bias=False, name='conv1')(act)
    y = nn.relu(bn('bn2')(y))
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = conv(self.features, 3, padding=1, use_bias=False, name='conv2')(y)
    if not equal_in_out:
      x = conv(self.features, 1, strides=self.strides, padding=0,
               use_bias=False, name='shortcut')(x)
    return x + y


class WideResNet(nn.Module):
  """Wide ResNet WRN-depth-k, dense or U·V+C factorized.

  Attributes:
    num_classes: number of outputs.
    depth: total depth; ``(depth - 4)`` must be a positive multiple of 6.
    widen_factor: ``k``.
    dropout_rate: dropout inside each block (needs ``rngs={'dropout': key}``
      when ``train=True``).
    factorized: use factorized convs/dense layers (params ``U, V, C``).
    mean: per-channel mean subtracted inside the model (``None``: 0).
    std: per-channel std dividing inside the model (``None``: 1).
    bn_axis_name: axis name over which BatchNorm averages batch statistics.
    conv_impl: ``'auto'``, ``'im2col'`` or ``'lax'``.
    dtype: computation dtype; logits are returned as float32.
  """

  num_classes: int = 10
  depth: int = 16
  widen_factor: int = 8
  dropout_rate: float = 0.4
  factorized: bool = False
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  bn_axis_name: str | None = None
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits for an NHWC batch in ``[0, 1]``.

    With ``train=True`` BatchNorm uses batch statistics (``mutable=
    ['batch_stats']``) and dropout is on (``rngs={'dropout': key}``).
    """
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(
          f'depth must be 6n + 4 with n >= 1 (10, 16, 22, ...), got '
          f'{self.depth}.')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(
          f'dropout_rate must be in [0, 1), got {self.dropout_rate}.')
    if self.widen_factor < 1:
      raise ValueError(
          f'widen_factor must be >= 1, got {self.widen_factor}.')
    n = (self.depth - 4) // 6
    widths = [16 * self.widen_factor, 32 * self.widen_factor,
              64 * self.widen_factor]
    conv = _common.conv_cls(self.factorized, conv_impl=self.conv_impl,
                            dtype=self.dtype, kernel_init=wrn_conv_init)
    dense = _common.dense_cls(self.factorized, dtype=self.dtype,
                              bias_init=nn.initializers.zeros)
    x = _common.normalize(x, self.mean, self.std, self.dtype)
    x = conv(16, 3, padding=1, use_bias=False, name='conv1')(x)
    for g, width in enumerate(widths):
      for j in range(n):
        strides = (1 if g == 0 else 2) if j == 0 else 1
        x = WideBasicBlock(width, strides, self.dropout_rate,
                           factorized=self.factorized,
                           conv_impl=self.conv_impl,
                           bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                           name=f'block{g + 1}_{j}')(x, train)
    x = nn.relu(_resnet.batch_norm(train, self.bn_axis_name, self.dtype,
                                   'bn1')(x))
    x = jnp.mean(x, axis=(1, 2))
    x = dense(self.num_classes, name='fc')(x)
    return x.astype(jnp.float32)


WRN16_8 = functools.partial(WideResNet, depth=16, widen_factor=8,
                            dropout_rate=0.4)
