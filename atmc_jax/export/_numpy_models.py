"""Inference forward passes in NumPy, for models loaded from packed files.

Like ``_format.py`` this module imports only NumPy, so it runs where JAX
is not installed; load it by file path (see ``docs/deployment.md``).

Only :class:`~atmc_jax.models.CaffeLeNet` is implemented
(:func:`lenet_logits`): conv by im2col, 2x2 max pooling, and the flatten
order of the Flax model (NHWC, i.e. ``(h, w, c)``). The BatchNorm models
(ResNet, WRN) are not: run them with Flax on ``load(path).variables``.
"""

from typing import Any, Mapping, Optional, Sequence

import numpy as np


def normalize(x: np.ndarray, mean: Optional[Sequence[float]],
              std: Optional[Sequence[float]]) -> np.ndarray:
  """``(x - mean) / std`` per channel (NHWC), as the models do inside."""
  x = np.asarray(x, np.float32)
  if mean is not None:
    x = x - np.asarray(mean, np.float32)
  if std is not None:
    x = x / np.asarray(std, np.float32)
  return x


def conv2d(x: np.ndarray, kernel: np.ndarray,
           bias: Optional[np.ndarray] = None, *, stride: int = 1,
           padding: str = 'VALID') -> np.ndarray:
  """NHWC convolution with a Flax ``(kh, kw, in, out)`` kernel (im2col).

  Args:
    x: ``(N, H, W, in)``.
    kernel: ``(kh, kw, in, out)``.
    bias: ``(out,)`` or None.
    stride: the stride of both spatial dimensions.
    padding: ``'VALID'`` or ``'SAME'`` (as ``jax.lax.conv``).

  Returns:
    ``(N, H', W', out)`` float32.

  Raises:
    ValueError: an unknown padding, or mismatched channels.
  """
  kh, kw, c_in, c_out = kernel.shape
  if x.shape[-1] != c_in:
    raise ValueError(f'input has {x.shape[-1]} channels, the kernel '
                     f'{kernel.shape} expects {c_in}.')
  if padding == 'SAME':
    pads = []
    for size, k in zip(x.shape[1:3], (kh, kw)):
      out = -(-size // stride)
      total = max((out - 1) * stride + k - size, 0)
      pads.append((total // 2, total - total // 2))
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  elif padding != 'VALID':
    raise ValueError(f"padding={padding!r}; accepted: 'VALID', 'SAME'.")
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
  windows = windows[:, ::stride, ::stride]  # (N, H', W', in, kh, kw)
  patches = windows.transpose(0, 1, 2, 4, 5, 3)  # (kh, kw, in) order
  n, ho, wo = patches.shape[:3]
  y = patches.reshape(n * ho * wo, kh * kw * c_in).astype(np.float64) @ (
      kernel.reshape(kh * kw * c_in, c_out).astype(np.float64))
  if bias is not None:
    y = y + bias
  return y.reshape(n, ho, wo, c_out).astype(np.float32)


def max_pool_2x2(x: np.ndarray) -> np.ndarray:
  """2x2 max pooling with stride 2 (VALID) on NHWC."""
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def dense(x: np.ndarray, kernel: np.ndarray,
          bias: Optional[np.ndarray] = None) -> np.ndarray:
  """``x @ kernel + bias`` with a Flax ``(in, out)`` kernel."""
  y = x.astype(np.float64) @ kernel.astype(np.float64)
  if bias is not None:
    y = y + bias
  return y.astype(np.float32)


def _conv_kernel(kernel: np.ndarray, size: int, c_in: int) -> np.ndarray:
  if kernel.ndim == 4:
    return kernel
  return kernel.reshape(size, size, c_in, kernel.shape[-1])


def lenet_logits(params: Mapping[str, Any], x: np.ndarray, *,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None) -> np.ndarray:
  """Caffe LeNet's logits: conv-pool-conv-pool-fc-relu-fc.

  Args:
    params: the dense params (``load(path).variables['params']``); a conv
      kernel stored 2-D ``(25 * in, out)`` is reshaped to ``(5, 5, in,
      out)``.
    x: NHWC images in ``[0, 1]``.
    mean: per-channel mean subtracted first (the model's ``mean``).
    std: per-channel std dividing (the model's ``std``).

  Returns:
    ``(N, num_classes)`` float32 logits.
  """
  x = normalize(x, mean, std)
  p = params
  x = conv2d(x, _conv_kernel(p['conv1']['kernel'], 5, x.shape[-1]),
             p['conv1']['bias'])
  x = max_pool_2x2(x)
  x = conv2d(x, _conv_kernel(p['conv2']['kernel'], 5, x.shape[-1]),
             p['conv2']['bias'])
  x = max_pool_2x2(x)
  x = x.reshape(x.shape[0], -1)  # (h, w, c) order, as the Flax model.
  x = np.maximum(dense(x, p['fc1']['kernel'], p['fc1']['bias']), 0)
  return dense(x, p['fc2']['kernel'], p['fc2']['bias'])


MODELS = {'lenet': lenet_logits}


def logits(variables: Mapping[str, Any], metadata: Mapping[str, Any],
           x: np.ndarray) -> np.ndarray:
  """Logits of a loaded model, by the model name in its metadata.

  Args:
    variables: ``load(path).variables``.
    metadata: ``load(path).metadata``: ``model`` names the architecture,
      ``model_config`` may hold ``mean`` and ``std``.
    x: NHWC images in ``[0, 1]``.

  Returns:
    float32 logits.

  Raises:
    ValueError: the model has no NumPy forward pass.
  """
  name = metadata.get('model')
  if name not in MODELS:
    raise ValueError(f'model {name!r} has no NumPy forward pass; accepted: '
                     f'{sorted(MODELS)} (run the others with Flax).')
  config = metadata.get('model_config') or {}
  return MODELS[name](variables['params'], x, mean=config.get('mean'),
                      std=config.get('std'))
