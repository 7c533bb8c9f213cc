"""Dense weights in PyTorch's layout, for users of other frameworks.

NumPy only (load it by file path like ``_format.py``). Flax stores a conv
kernel as ``(kh, kw, in, out)`` and a dense kernel as ``(in, out)`` and
flattens NHWC feature maps in ``(h, w, c)`` order; PyTorch stores
``(out, in, kh, kw)`` and ``(out, in)`` and flattens NCHW maps in
``(c, h, w)`` order. :func:`to_torch_layout` converts the first two and,
for the dense layers named in ``flatten_shapes``, permutes the input
columns from ``(h, w, c)`` to ``(c, h, w)`` order.
"""

from typing import Any, Mapping, Optional, Sequence

import numpy as np

_BN_NAMES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
             'var': 'running_var'}


def lenet_flatten_shapes(params: Mapping[str, Any]) -> dict:
  """``{'fc1': (h, w, c)}``: the feature map CaffeLeNet flattens into fc1.

  Assumes a square map (28x28 inputs give ``(4, 4, 50)``).

  Raises:
    ValueError: fc1's input size is not ``c * h * h``.
  """
  c = int(np.shape(params['conv2']['bias'])[0])
  fan_in = int(np.shape(params['fc1']['kernel'])[0])
  h = int(round((fan_in // c) ** 0.5))
  if h * h * c != fan_in:
    raise ValueError(f'fc1 has {fan_in} inputs, not c * h * h with c = {c}; '
                     'accepted: a square feature map.')
  return {'fc1': (h, h, c)}


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    name = f'{prefix}.{k}' if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(_flatten(v, name))
    else:
      out[name] = np.asarray(v)
  return out


def to_torch_layout(
    params: Mapping[str, Any],
    flatten_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    batch_stats: Optional[Mapping[str, Any]] = None,
) -> dict:
  """Dense Flax params as a flat dict of PyTorch-layout arrays.

  Names are the ``.``-joined module paths with PyTorch's parameter names
  (``conv1.weight``, ``conv1.bias``, ``fc1.weight``; BatchNorm ``weight``,
  ``bias``, ``running_mean``, ``running_var``).

  Args:
    params: dense params in the Flax layout (``load(path).variables
      ['params']``).
    flatten_shapes: ``{layer: (h, w, c)}`` for each dense layer fed by a
      flattened NHWC feature map (CaffeLeNet: :func:`lenet_flatten_shapes`).
    batch_stats: BatchNorm statistics (``mean``, ``var``), if any.

  Returns:
    ``{name: array}``, ready for ``np.savez`` and
    ``torch.nn.Module.load_state_dict`` (after ``torch.from_numpy``).

  Raises:
    ValueError: a ``flatten_shapes`` entry does not match the layer.
  """
  flatten_shapes = dict(flatten_shapes or {})
  out = {}
  for name, x in _flatten(params).items():
    layer, _, leaf = name.rpartition('.')
    if leaf == 'kernel' and x.ndim == 4:
      out[f'{layer}.weight'] = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    elif leaf == 'kernel' and x.ndim == 2:
      if layer in flatten_shapes:
        h, w, c = (int(s) for s in flatten_shapes[layer])
        if h * w * c != x.shape[0]:
          raise ValueError(
              f'flatten_shapes[{layer!r}] = {(h, w, c)} holds {h * w * c} '
              f'entries; the layer has {x.shape[0]} inputs.')
        x = x.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c,
                                                                 -1)
      out[f'{layer}.weight'] = np.ascontiguousarray(x.T)
    else:
      out[f'{layer}.{_BN_NAMES.get(leaf, leaf)}' if layer else leaf] = x
  for name, x in _flatten(batch_stats or {}).items():
    layer, _, leaf = name.rpartition('.')
    out[f'{layer}.{_BN_NAMES.get(leaf, leaf)}'] = x
  return out
