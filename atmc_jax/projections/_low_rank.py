"""Low-rank projections (truncated SVD) and the ALR baseline's global rule.

Every selected leaf is read as the matrix ``out x fan_in`` of a layer: a
leaf of shape ``(..., out)`` (a flax ``Dense`` kernel ``(in, out)`` or a conv
kernel ``(kh, kw, in, out)``) becomes ``leaf.reshape(-1, out).T`` and is
reshaped back after the projection.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax._src import base
from atmc_jax._src import tree_utils


def _to_matrix(x: jax.Array) -> jax.Array:
  return x.reshape(-1, x.shape[-1]).T


def _from_matrix(w: jax.Array, shape) -> jax.Array:
  return w.T.reshape(shape)


def _float_matrix(x: jax.Array) -> jax.Array:
  """The leaf as a matrix, in float32 unless it is float32/float64."""
  w = _to_matrix(jnp.asarray(x))
  if w.dtype not in (jnp.float32, jnp.float64):
    w = w.astype(jnp.float32)
  return w


def _svd(x: jax.Array):
  return jnp.linalg.svd(_float_matrix(x), full_matrices=False)


def _check_rank(rank, name: str) -> int:
  if (isinstance(rank, (bool, np.bool_))
      or not isinstance(rank, (int, np.integer)) or rank < 0):
    raise ValueError(
        f'rank for {name!r} must be an integer in [0, inf), got {rank!r}.')
  return int(rank)


def _ranks_list(tree, rank, mask) -> list:
  """Per-leaf static ranks (None for unselected leaves)."""
  treedef = jax.tree.structure(tree)
  names = jax.tree.leaves(tree_utils.leaf_names(tree))
  sel = treedef.flatten_up_to(mask)
  if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
    ranks = [rank] * len(sel)
  else:
    try:
      ranks = treedef.flatten_up_to(rank)
    except (ValueError, TypeError) as e:
      raise ValueError(
          'rank must be an int or a pytree of ints with the params\' '
          f'structure {treedef}, got {rank!r}.') from e
  return [_check_rank(r, n) if m else None
          for r, m, n in zip(ranks, sel, names)]


def project_low_rank(tree: base.PyTree, rank, mask: base.MaskOrFn = None
                     ) -> base.PyTree:
  r"""Truncates each selected leaf to rank ``rank`` (Eckart-Young).

  .. math::

    \operatorname{argmin}_{\operatorname{rank}(Z) \le r} \|Z - W\|_F
    = U_r \operatorname{diag}(s_r) V_r^\top .

  Args:
    tree: a pytree of arrays.
    rank: a non-negative int for every selected leaf, or a pytree with the
      params' structure holding one int per selected leaf (anything, e.g.
      ``None``, at unselected leaves). Must be static. A rank at least
      ``min(out, fan_in)`` leaves the leaf unchanged.
    mask: ``None`` (floating leaves with ``ndim >= 2``), a bool pytree or a
      callable ``tree -> bool pytree``.

  Returns:
    A pytree with ``tree``'s structure and dtypes.

  Raises:
    ValueError: a rank is negative or not an int, the rank tree or mask does
      not match ``tree``, or a selected leaf is not floating point.
  """
  mask = tree_utils.resolve_mask(tree, mask)
  ranks = _ranks_list(tree, rank, mask)
  leaves, treedef = jax.tree.flatten(tree)
  out = []
  for x, r in zip(leaves, ranks):
    if r is None:
      out.append(x)
      continue
    x = jnp.asarray(x)
    if r >= min(_to_matrix(x).shape):
      out.append(x)
      continue
    u, s, vt = _svd(x)
    w = (u[:, :r] * s[:r]) @ vt[:r]
    out.append(_from_matrix(w, x.shape).astype(x.dtype))
  return jax.tree.unflatten(treedef, out)


def _check_fraction(keep_fraction) -> None:
  if isinstance(keep_fraction, (bool, np.bool_)) or not (
      isinstance(keep_fraction, (int, float, np.integer, np.floating))
      and 0 <= keep_fraction <= 1):
    raise ValueError(
        f'keep_fraction must be a number in [0, 1], got {keep_fraction!r}.')


def _global_selection(tree, keep_fraction, mask):
  """Validates the arguments of the global rule; ``(leaves, treedef, sel)``.

  ``sel`` is the flattened mask (one bool per leaf).
  """
  _check_fraction(keep_fraction)
  mask = tree_utils.resolve_mask(tree, mask)
  leaves, treedef = jax.tree.flatten(tree)
  return leaves, treedef, treedef.flatten_up_to(mask)


def _global_keep(svals: list, keep_fraction: float) -> list:
  """Per-leaf bool vectors: which singular values survive globally."""
  total = sum(int(s.shape[0]) for s in svals)
  n_keep = int(math.floor(keep_fraction * total + 1e-9))
  flat = jnp.concatenate(svals)
  # Stable descending order: ties go to earlier leaves / earlier indices.
  order = jnp.argsort(-flat, stable=True)
  keep = jnp.zeros((total,), bool).at[order[:n_keep]].set(True)
  out, off = [], 0
  for s in svals:
    kk = keep[off:off + s.shape[0]]
    kk = kk.at[0].set(True)            # at least rank 1 per leaf
    out.append(kk)
    off += s.shape[0]
  return out


def low_rank_ranks(tree: base.PyTree, keep_fraction: float,
                   mask: base.MaskOrFn = None) -> base.PyTree:
  """Per-leaf ranks of the ALR rule (spec 4.3): global singular values.

  Keeps the ``floor(keep_fraction * N)`` largest singular values among the
  ``N`` singular values of all selected leaves together (ties go to earlier
  leaves), and at least one per leaf.

  Args:
    tree: a pytree of arrays.
    keep_fraction: a number in ``[0, 1]``.
    mask: as in ``project_low_rank``.

  Returns:
    A pytree with ``tree``'s structure: an int32 scalar per selected leaf,
    ``None`` elsewhere. Convert with ``jax.tree.map(int, ranks)`` to pass
    them as static ranks.

  Raises:
    ValueError: ``keep_fraction`` outside ``[0, 1]``, or a bad mask.
  """
  leaves, treedef, sel = _global_selection(tree, keep_fraction, mask)
  picked = [x for x, m in zip(leaves, sel) if m]
  if not picked:
    return jax.tree.unflatten(treedef, [None] * len(leaves))
  svals = [jnp.linalg.svd(_float_matrix(x), compute_uv=False)
           for x in picked]
  keeps = iter(_global_keep(svals, keep_fraction))
  out = [jnp.sum(next(keeps), dtype=jnp.int32) if m else None for m in sel]
  return jax.tree.unflatten(treedef, out)


def project_low_rank_global(tree: base.PyTree, keep_fraction: float,
                            mask: base.MaskOrFn = None) -> base.PyTree:
  """Truncates all selected leaves with one global singular-value cut.

  The ALR baseline's projection: the ``floor(keep_fraction * N)`` largest
  singular values over all selected leaves survive (at least one per leaf,
  see ``low_rank_ranks``), the others are set to zero. Jittable (the ranks
  are data-dependent, so singular values are masked rather than sliced).

  Args:
    tree: a pytree of arrays.
    keep_fraction: a number in ``[0, 1]``.
    mask: as in ``project_low_rank``.

  Returns:
    A pytree with ``tree``'s structure and dtypes.

  Raises:
    ValueError: ``keep_fraction`` outside ``[0, 1]``, or a bad mask.
  """
  leaves, treedef, sel = _global_selection(tree, keep_fraction, mask)
  idx = [i for i, m in enumerate(sel) if m]
  if not idx:
    return tree
  svds = [_svd(leaves[i]) for i in idx]
  keeps = _global_keep([s for _, s, _ in svds], keep_fraction)
  out = list(leaves)
  for i, (u, s, vt), kk in zip(idx, svds, keeps):
    x = jnp.asarray(leaves[i])
    w = (u * jnp.where(kk, s, 0)) @ vt
    out[i] = _from_matrix(w, x.shape).astype(x.dtype)
  return jax.tree.unflatten(treedef, out)


def low_rank_factors(tree: base.PyTree, rank, mask: base.MaskOrFn = None
                     ) -> tuple[base.PyTree, base.PyTree]:
  """Factor pairs of the rank-``r`` truncation, for a fixed-rank model.

  For each selected leaf with matrix ``W`` (``out x fan_in``) and SVD
  ``W = U S V^T``: ``B = U_r sqrt(S_r)`` (``out x r``) and
  ``A = sqrt(S_r) V_r^T`` (``r x fan_in``), so ``B @ A`` is the rank-``r``
  truncation (``r`` is clipped to ``min(out, fan_in)``).

  Args:
    tree: a pytree of arrays.
    rank: an int or a pytree of static ints, as in ``project_low_rank``
      (e.g. ``jax.tree.map(int, low_rank_ranks(params, p))``).
    mask: as in ``project_low_rank``.

  Returns:
    ``(B, A)``: two pytrees with ``tree``'s structure holding the factors
    (in the leaf's dtype) at selected leaves and ``None`` elsewhere.

  Raises:
    ValueError: as ``project_low_rank``.
  """
  mask = tree_utils.resolve_mask(tree, mask)
  ranks = _ranks_list(tree, rank, mask)
  leaves, treedef = jax.tree.flatten(tree)
  bs, as_ = [], []
  for x, r in zip(leaves, ranks):
    if r is None:
      bs.append(None)
      as_.append(None)
      continue
    x = jnp.asarray(x)
    u, s, vt = _svd(x)
    r = min(r, s.shape[0])
    root = jnp.sqrt(s[:r])
    bs.append((u[:, :r] * root).astype(x.dtype))
    as_.append((root[:, None] * vt[:r]).astype(x.dtype))
  return jax.tree.unflatten(treedef, bs), jax.tree.unflatten(treedef, as_)
