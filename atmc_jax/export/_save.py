"""Writing a compressed model to a packed file (JAX side).

:func:`save` decides which leaves are compressed tensors (from the
optimizer state or from ``optim.compression_stats``), checks that the
params are the deployable ones, and writes the file with
``_format.write``; reading needs NumPy only (``_format.load``).
"""

from collections.abc import Mapping
from typing import Any, Optional

import jax
import numpy as np

from atmc_jax import optim
from atmc_jax._src import base
from atmc_jax._src import tree_utils
from atmc_jax.export import _format
from atmc_jax.optim import _deployable


def _selection_from_state(params, state) -> Any:
  """The compressed leaves recorded by a compression state."""
  found = _deployable.find_state(state)
  if isinstance(found, optim.AtmcState):
    sel = jax.tree.map(lambda m: bool(np.asarray(m)),
                       found.constraint.selected)
    bits = int(np.asarray(found.constraint.bits))
    budget = int(np.asarray(found.constraint.budget))
    names = jax.tree.leaves(tree_utils.leaf_names(params))
    leaves = [np.asarray(x) for x, m in zip(
        jax.tree.leaves(params), tree_utils.flatten_like(params, sel, 'state'))
              if m]
    nnz = sum(int(np.count_nonzero(x)) for x in leaves)
    if nnz > budget:
      raise ValueError(
          f'params have {nnz} non-zeros over the compressed leaves, above '
          f'the state\'s budget {budget}; accepted: the deployable params, '
          'optim.deployable_params(params, state).')
    if bits:
      for name, x, m in zip(names, jax.tree.leaves(params),
                            tree_utils.flatten_like(params, sel, 'state')):
        x = np.asarray(x)
        d = np.unique(x[x != 0]).size if m else 0
        if d > 2**bits:
          raise ValueError(
              f'leaf {name!r} has {d} distinct non-zero values, above '
              f'2^{bits}; accepted: the deployable params, '
              'optim.deployable_params(params, state).')
    return sel
  if isinstance(found, optim.FixedSupportState):
    return jax.tree.map(
        lambda s, p: bool(np.ndim(p) >= 1
                          and np.shape(s) == np.shape(p)),
        found.support, params)
  return tree_utils.default_mask(params)


def _selection_from_stats(params, stats) -> Any:
  """The leaves named in ``stats['leaves']``, checked against ``params``."""
  names = tree_utils.leaf_names(params)
  sel = jax.tree.map(lambda n: n in stats['leaves'], names)
  missing = set(stats['leaves']) - set(jax.tree.leaves(names))
  if missing:
    raise ValueError(f'stats name leaves {sorted(missing)} that params do '
                     'not have; accepted: compression_stats of these params.')
  for name, x in zip(jax.tree.leaves(names), jax.tree.leaves(params)):
    if name in stats['leaves']:
      got = optim.tensor_size_bits(x)['bits']
      want = stats['leaves'][name]['bits']
      if got != want:
        raise ValueError(
            f'leaf {name!r} takes {got} bits but the stats say {want}; '
            'accepted: the params the stats were measured on (the '
            'deployable params).')
  return sel


def _kernel_shapes(params, like) -> dict:
  """``{'params/<layer>': dense kernel shape}`` of factorized layers."""
  out = {}

  def visit(node, ref, path):
    if not isinstance(node, Mapping):
      return
    if (_format.is_factorized_layer(node)
        or all(k in node for k in _format.LOW_RANK_NAMES)):
      if isinstance(ref, Mapping) and 'kernel' in ref:
        out[f'params/{path}'] = [int(s) for s in np.shape(ref['kernel'])]
      return
    for k, v in node.items():
      visit(v, ref.get(k) if isinstance(ref, Mapping) else None,
            f'{path}/{k}' if path else str(k))

  if like is not None:
    visit(params, like, '')
  return out


def save(
    path: str,
    params: base.Params,
    state_or_stats: Any = None,
    *,
    metadata: Optional[Mapping[str, Any]] = None,
    batch_stats: Optional[base.PyTree] = None,
    like: Optional[base.PyTree] = None,
) -> dict:
  """Writes the compressed model to one packed file; returns its size report.

  The compressed tensors (positions, bit-packed codes and codebooks, or
  float32 non-zeros) are the leaves the accounting counts; every other
  leaf, and ``batch_stats``, is stored as float32. See ``_format`` (and
  ``docs/deployment.md``) for the layout.

  Args:
    path: the output file (e.g. ``model.atmc``).
    params: the *deployable* params (e.g.
      ``optim.deployable_params(params, state)``), stored exactly.
    state_or_stats: which leaves are compressed: the optimizer state
      (``AtmcState``, ``FixedSupportState``, ``ProjectedState`` or an optax
      state holding one; an ``AtmcState``'s budget and bits are checked
      against ``params``), or the dict of ``optim.compression_stats`` on
      ``params`` (its per-leaf bits are checked), or ``None`` (floating
      leaves with ``ndim >= 2``).
    metadata: JSON-serialisable header metadata: by convention ``model``
      (a registry name), ``model_config``, ``threat_model`` and
      ``metrics``.
    batch_stats: BatchNorm statistics to store alongside (float32).
    like: dense params (or their ``jax.eval_shape``) giving the dense
      kernel shape of each factorized (``U, V, C``) or fixed-rank (``B,
      A``) layer, so that ``load`` returns conv kernels 4-D; without it
      they load as ``(fan_in, out)``.

  Returns:
    The size report (``_format.size_report``) of the written file.

  Raises:
    ValueError: the params violate the state's constraint or disagree with
      the stats, or a compressed leaf is not float32-representable.
  """
  params = jax.device_get(params)
  if state_or_stats is None:
    sel = tree_utils.default_mask(params)
    dense_count = optim.dense_weight_count(params)
  elif isinstance(state_or_stats, Mapping) and 'leaves' in state_or_stats:
    sel = _selection_from_stats(params, state_or_stats)
    dense_count = int(state_or_stats['dense_weight_count'])
  else:
    sel = _selection_from_state(params, state_or_stats)
    dense_count = optim.dense_weight_count(params, sel)
  names = jax.tree.leaves(tree_utils.leaf_names(params))
  tensors = [(f'params/{name}', np.asarray(x), bool(m)) for name, x, m in zip(
      names, jax.tree.leaves(params), tree_utils.flatten_like(params, sel,
                                                              'selection'))]
  if batch_stats:
    stats_tree = jax.device_get(batch_stats)
    tensors += [(f'batch_stats/{name}', np.asarray(x), False) for name, x in
                zip(jax.tree.leaves(tree_utils.leaf_names(stats_tree)),
                    jax.tree.leaves(stats_tree))]
  _format.write(path, tensors, metadata=metadata,
                dense_weight_count=int(dense_count),
                kernel_shapes=_kernel_shapes(params, like))
  return _format.size_report(path)
