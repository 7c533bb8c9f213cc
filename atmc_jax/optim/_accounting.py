"""Model size and compression ratio, as the ATMC paper reports them.

Sizes are counted per stored tensor (the selected leaves: conv/dense
kernels of a dense or pruned model; the ``U``, ``V``, ``C`` factors of a
factorized one). For a tensor with ``nnz`` non-zeros and ``d`` distinct
non-zero values, with ``c = ceil(log2 d)``::

    bits = nnz * c + 32 * d     if 2**c < nnz   (codes + float32 codebook)
    bits = 32 * nnz             otherwise        (float32 values)
    bits = 0                    if nnz == 0

Sparse index storage, biases, BatchNorm and the implicit identity of the
factorized layers are not counted. The compression ratio divides by the
dense size, ``32 * dense_weight_count``, where the dense weight count is the
number of conv/dense weights of the *dense* network (for a factorized layer,
``out * fan_in`` = the size of its ``C``). For 32-bit methods the ratio is
the density ``nnz / dense_weight_count``; for ``b``-bit codebooks it is
about ``density * b / 32`` plus the codebooks.

These functions run on the host (NumPy) on unreplicated params; they are
for reporting, not for use inside ``jax.jit``.
"""

from typing import Any, Optional

import jax
import numpy as np

from atmc_jax._src import base
from atmc_jax._src import tree_utils
from atmc_jax.export._format import FACTOR_NAMES
from atmc_jax.export._format import is_factorized_layer

FLOAT_BITS = 32


def _factor_roles(params: base.Params) -> list:
  """Per leaf (flatten order): (layer name, 'U'|'V'|'C') or None."""
  layers = jax.tree_util.tree_flatten_with_path(
      params, is_leaf=is_factorized_layer)[0]
  factorized = {tree_utils.path_to_name(path) for path, node in layers
                if is_factorized_layer(node)}
  roles = []
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    layer = tree_utils.path_to_name(path[:-1])
    key = tree_utils.path_to_name(path[-1:])
    if path and layer in factorized and key in FACTOR_NAMES:
      roles.append((layer, key))
    else:
      roles.append(None)
  return roles


def _selected(params, mask):
  sel = tree_utils.resolve_mask(params, mask, require_float=False)
  return jax.tree.leaves(sel)


def dense_weight_count(params: base.Params,
                       mask: base.MaskOrFn = None) -> int:
  """The number of weights of the dense network the params represent.

  A factorized layer (a dict holding ``U``, ``V`` and ``C``) counts
  ``C.size`` = ``out * fan_in`` once; every other selected leaf counts its
  size. The ATMC budget is a fraction of this number:
  ``budget = int(p * dense_weight_count(params))``.

  Args:
    params: a dense or factorized params tree.
    mask: the selected leaves (``None``: floating leaves with ``ndim >= 2``).
      A factorized layer counts when any of its factors is selected.

  Returns:
    The dense weight count (a Python int).

  Raises:
    ValueError: the mask does not match the params.

  Examples:
    >>> import numpy as np
    >>> params = {'fc': {'kernel': np.zeros((800, 500)), 'bias': np.zeros(500)}}
    >>> dense_weight_count(params)
    400000
  """
  sel = _selected(params, mask)
  total = 0
  layers = set()
  for m, role, leaf in zip(sel, _factor_roles(params), jax.tree.leaves(params)):
    if not m:
      continue
    if role is None:
      total += int(np.prod(np.shape(leaf)))
    else:
      layers.add(role[0])
  c_sizes = _factor_c_sizes(params)
  return total + sum(c_sizes[layer] for layer in layers)


def _factor_c_sizes(params) -> dict:
  out = {}
  for path, node in jax.tree_util.tree_flatten_with_path(
      params, is_leaf=is_factorized_layer)[0]:
    if is_factorized_layer(node):
      out[tree_utils.path_to_name(path)] = int(np.prod(np.shape(node['C'])))
  return out


def tensor_size_bits(x: Any) -> dict:
  """Size accounting of one tensor.

  Args:
    x: an array (host or device).

  Returns:
    A dict with ``size`` (entries), ``nnz``, ``distinct`` (distinct non-zero
    values), ``code_bits`` (``ceil(log2 distinct)``), ``quantized``
    (``2**code_bits < nnz``) and ``bits`` (the stored size).
  """
  x = np.asarray(x)
  nonzero = x[x != 0]
  nnz = int(nonzero.size)
  distinct = int(np.unique(nonzero).size)
  code_bits = (distinct - 1).bit_length() if distinct else 0
  quantized = bool(distinct and 2**code_bits < nnz)
  if nnz == 0:
    bits = 0
  elif quantized:
    bits = nnz * code_bits + FLOAT_BITS * distinct
  else:
    bits = FLOAT_BITS * nnz
  return dict(size=int(x.size), nnz=nnz, distinct=distinct,
              code_bits=code_bits, quantized=quantized, bits=bits)


def _per_leaf(params, mask) -> dict:
  sel = _selected(params, mask)
  names = jax.tree.leaves(tree_utils.leaf_names(params))
  return {name: tensor_size_bits(leaf) for name, m, leaf in
          zip(names, sel, jax.tree.leaves(params)) if m}


def model_size_bits(params: base.Params, mask: base.MaskOrFn = None) -> int:
  """The stored size of the selected tensors, in bits (module docstring).

  Args:
    params: the (compressed) params, unreplicated.
    mask: the stored tensors (``None``: floating leaves with ``ndim >= 2``,
      i.e. kernels and ``U``/``V``/``C``, not biases or BatchNorm).

  Returns:
    The total size in bits (a Python int).

  Raises:
    ValueError: the mask does not match the params.
  """
  return sum(s['bits'] for s in _per_leaf(params, mask).values())


def _check_dense_count(params, dense_count, mask) -> int:
  if dense_count is None:
    dense_count = dense_weight_count(params, mask)
  dense_count = int(dense_count)
  if dense_count <= 0:
    raise ValueError(
        f'dense_weight_count must be in [1, inf), got {dense_count}.')
  return dense_count


def compression_ratio(
    params: base.Params,
    # pylint: disable-next=redefined-outer-name
    dense_weight_count: Optional[int] = None,
    mask: base.MaskOrFn = None,
) -> float:
  """``model_size_bits(params) / (32 * dense_weight_count)``.

  Args:
    params: the (compressed) params, unreplicated.
    dense_weight_count: the dense network's weight count; ``None`` computes
      it from ``params`` with :func:`dense_weight_count`.
    mask: the stored tensors, as in :func:`model_size_bits`.

  Returns:
    The compression ratio (smaller is more compressed; 1.0 for a dense
    float32 model).

  Raises:
    ValueError: ``dense_weight_count < 1`` or a bad mask.
  """
  dense = _check_dense_count(params, dense_weight_count, mask)
  return model_size_bits(params, mask) / (FLOAT_BITS * dense)


def compression_stats(
    params: base.Params,
    dense_count: Optional[int] = None,
    mask: base.MaskOrFn = None,
) -> dict:
  """Size accounting of a compressed model, totals and per leaf.

  Args:
    params: the (compressed) params, unreplicated.
    dense_count: the dense network's weight count (``None``: computed with
      :func:`dense_weight_count`).
    mask: the stored tensors, as in :func:`model_size_bits`.

  Returns:
    A dict with ``nnz`` (over the selected leaves), ``bits``,
    ``dense_weight_count``, ``dense_bits``, ``ratio``
    (``bits / dense_bits``), ``density`` (``nnz / dense_weight_count``),
    ``max_distinct`` (the largest per-tensor count of distinct non-zero
    values) and ``leaves``, a dict from ``/``-joined leaf name to
    :func:`tensor_size_bits`.

  Raises:
    ValueError: ``dense_count < 1`` or a bad mask.
  """
  dense = _check_dense_count(params, dense_count, mask)
  leaves = _per_leaf(params, mask)
  nnz = sum(s['nnz'] for s in leaves.values())
  bits = sum(s['bits'] for s in leaves.values())
  return dict(
      nnz=nnz,
      bits=bits,
      dense_weight_count=dense,
      dense_bits=FLOAT_BITS * dense,
      ratio=bits / (FLOAT_BITS * dense),
      density=nnz / dense,
      max_distinct=max((s['distinct'] for s in leaves.values()), default=0),
      leaves=leaves,
  )
