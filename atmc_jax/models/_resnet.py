"""CIFAR ResNets (ResNet-34 of the ATMC experiments) with BasicBlocks.

Stem: conv 3x3 (stride 1, padding 1, no bias) -> BN -> ReLU, no max-pool.
Stages of BasicBlocks (conv3x3-BN-ReLU-conv3x3-BN, plus a 1x1 conv + BN
shortcut when the shape changes, then ReLU), global average pooling and a
linear classifier with bias. ResNet-34 uses stages [3, 4, 6, 3], widths
64/128/256/512 and strides 1/2/2/2: 21,265,088 weights for 10 classes
(33 3x3 convs, 3 1x1 shortcuts, 1 FC). Convs use PyTorch's padding=1 (not
'SAME', which pads asymmetrically at stride 2).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from atmc_jax.models import _common


def batch_norm(train: bool, axis_name: str | None, dtype: Any, name: str):
  """BatchNorm with PyTorch's defaults (momentum 0.1, eps 1e-5)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, axis_name=axis_name, dtype=dtype,
                      name=name)


class BasicBlock(nn.Module):
  """ResNet BasicBlock (post-activation)."""

  features: int
  strides: int = 1
  factorized: bool = False
  conv_impl: str = 'auto'
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = _common.conv_cls(self.factorized, conv_impl=self.conv_impl,
                            dtype=self.dtype)
    bn = functools.partial(batch_norm, train, self.bn_axis_name, self.dtype)
    y = conv(self.features, 3, strides=self.strides, padding=1,
             use_bias=False, name='conv1')(x)
    y = nn.relu(bn('bn1')(y))
    y = conv(self.features, 3, padding=1, use_bias=False, name='conv2')(y)
    y = bn('bn2')(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv(self.features, 1, strides=self.strides, padding=0,
               use_bias=False, name='shortcut_conv')(x)
      x = bn('shortcut_bn')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """CIFAR ResNet with BasicBlocks, dense or U·V+C factorized.

  Attributes:
    num_classes: number of outputs.
    stage_sizes: number of blocks per stage.
    widths: channels per stage (the stem has ``widths[0]``).
    factorized: use factorized convs/dense layers (params ``U, V, C``).
    mean: per-channel mean subtracted inside the model (``None``: 0).
    std: per-channel std dividing inside the model (``None``: 1).
    bn_axis_name: axis name over which BatchNorm averages batch statistics
      (``'batch'`` under the data-parallel trainer), or ``None``.
    conv_impl: ``'auto'``, ``'im2col'`` or ``'lax'``.
    dtype: computation dtype; logits are returned as float32.
  """

  num_classes: int = 10
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  factorized: bool = False
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  bn_axis_name: str | None = None
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits for an NHWC batch in ``[0, 1]``.

    With ``train=True`` BatchNorm uses batch statistics and updates
    ``batch_stats`` (call ``apply`` with ``mutable=['batch_stats']``).
    """
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(
          f'stage_sizes {tuple(self.stage_sizes)} and widths '
          f'{tuple(self.widths)} must have the same length.')
    conv = _common.conv_cls(self.factorized, conv_impl=self.conv_impl,
                            dtype=self.dtype)
    dense = _common.dense_cls(self.factorized, dtype=self.dtype)
    x = _common.normalize(x, self.mean, self.std, self.dtype)
    x = conv(self.widths[0], 3, padding=1, use_bias=False, name='conv1')(x)
    x = nn.relu(batch_norm(train, self.bn_axis_name, self.dtype, 'bn1')(x))
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(size):
        strides = 2 if (i > 0 and j == 0) else 1
        x = BasicBlock(width, strides, factorized=self.factorized,
                       conv_impl=self.conv_impl,
                       bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                       name=f'layer{i + 1}_{j}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = dense(self.num_classes, name='linear')(x)
    return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
# A two-stage, 8/16-channel ResNet for fast tests of the training system.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1), widths=(8, 16))
