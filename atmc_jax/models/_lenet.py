"""Caffe's LeNet (the MNIST model of the ATMC experiments).

conv 5x5 1->20 (VALID) -> maxpool 2 -> conv 5x5 20->50 (VALID) -> maxpool 2
-> fc 800->500 -> ReLU -> fc 500->classes. There is no non-linearity after
the convolutions (as in Caffe's LeNet). With 28x28x1 inputs the model has
430,500 weights and 580 biases.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from atmc_jax.models import _common


class CaffeLeNet(nn.Module):
  """Caffe LeNet, dense or U·V+C factorized.

  Attributes:
    num_classes: number of outputs.
    factorized: use :class:`FactorizedConv` / :class:`FactorizedDense`
      (params ``U, V, C``) instead of dense kernels; module names are shared
      so :func:`factorize` / :func:`materialize` map one onto the other.
    mean: per-channel mean subtracted inside the model (``None``: 0).
    std: per-channel std dividing inside the model (``None``: 1).
    conv_impl: ``'auto'``, ``'im2col'`` or ``'lax'``.
    dtype: computation dtype; logits are returned as float32.
  """

  num_classes: int = 10
  factorized: bool = False
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits for an NHWC batch of images in ``[0, 1]``.

    ``train`` is accepted for the common call convention; the model has no
    BatchNorm or dropout, so it does not change the output.
    """
    del train
    conv = _common.conv_cls(self.factorized, conv_impl=self.conv_impl,
                            dtype=self.dtype)
    dense = _common.dense_cls(self.factorized, dtype=self.dtype)
    x = _common.normalize(x, self.mean, self.std, self.dtype)
    # Each conv is followed by 2x2 max pooling, fused with it on CPU.
    x = conv(20, 5, padding='VALID', max_pool=True, name='conv1')(x)
    x = conv(50, 5, padding='VALID', max_pool=True, name='conv2')(x)
    x = x.reshape(x.shape[0], -1)
    x = dense(500, name='fc1')(x)
    x = nn.relu(x)
    x = dense(self.num_classes, name='fc2')(x)
    return x.astype(jnp.float32)
