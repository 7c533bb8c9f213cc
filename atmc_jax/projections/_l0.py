"""Global hard thresholding: the Euclidean projection onto an L0 ball.

``project_l0`` keeps the ``k`` entries of largest magnitude over *all*
selected leaves together (one global budget, as in ATMC's ``H_k``) and zeroes
the rest.

The k-th largest magnitude is found without sorting: for non-negative IEEE
floats the bit pattern read as a signed integer is monotone in the value, so
the threshold is selected digit by digit (a radix select with 11/10-bit
histograms, three passes over the data for float32). Ties at the threshold
are broken by position: earlier entries in the concatenation of the selected
leaves in tree-flatten order win, so exactly ``k`` entries survive whenever at
least ``k`` are non-zero.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax._src import base
from atmc_jax._src import tree_utils

# Digit widths (most significant first) of the radix select for 31- and
# 63-bit magnitude keys (the sign bit of |x| is always 0).
_DIGITS = {31: (11, 10, 10), 63: (11, 11, 11, 10, 10, 10)}


def check_k(k) -> None:
  """Raises ``ValueError`` for a negative static ``k``."""
  if isinstance(k, (bool, np.bool_)):
    raise ValueError(f'k must be an integer in [0, inf), got {k!r}.')
  if isinstance(k, (int, np.integer)):
    if k < 0:
      raise ValueError(f'k must be an integer in [0, inf), got {k}.')
  elif isinstance(k, (float, np.floating)):
    raise ValueError(f'k must be an integer in [0, inf), got {k!r}.')


def _key_dtypes(leaves: Sequence[jax.Array]):
  """(float dtype, int dtype, bits) used to compare magnitudes."""
  if any(jnp.result_type(x) == jnp.float64 for x in leaves):
    return jnp.float64, jnp.int64, 63
  return jnp.float32, jnp.int32, 31


def magnitude_keys(leaves: Sequence[jax.Array]) -> tuple[jax.Array, int]:
  """Concatenated non-negative integer keys, monotone in ``|x|``."""
  fdtype, idtype, nbits = _key_dtypes(leaves)
  flat = jnp.concatenate(
      [jnp.abs(jnp.ravel(x).astype(fdtype)) for x in leaves])
  # abs(-0.0) is +0.0, so equal magnitudes have equal keys.
  return jax.lax.bitcast_convert_type(flat, idtype), nbits


def kth_largest_key(keys: jax.Array, k, nbits: int) -> jax.Array:
  """The k-th largest of non-negative integer ``keys`` (radix select).

  Returns the largest ``t`` with ``count(keys >= t) >= k``: for
  ``1 <= k <= keys.size`` that is the k-th largest key; for ``k == 0`` it is
  the maximal key value (nothing is strictly above it).
  """
  idtype = keys.dtype
  widths = _DIGITS[nbits]
  prefix = jnp.zeros((), idtype)     # the digits chosen so far
  remaining = jnp.asarray(k, idtype)  # rank sought among matching keys
  shift = nbits
  for i, width in enumerate(widths):
    shift -= width
    digit = (keys >> shift) & ((1 << width) - 1)
    if i == 0:
      weights = None
    else:
      weights = ((keys >> (shift + width)) == prefix).astype(jnp.int32)
    hist = jnp.bincount(digit.astype(jnp.int32), weights=weights,
                        length=1 << width).astype(idtype)
    # at_least[d] = number of matching keys whose digit is >= d.
    at_least = jnp.cumsum(hist[::-1])[::-1]
    ok = at_least >= remaining
    d = jnp.max(jnp.where(ok, jnp.arange(1 << width, dtype=idtype), 0))
    above = jnp.where(d + 1 < (1 << width),
                      at_least[jnp.minimum(d + 1, (1 << width) - 1)], 0)
    remaining = remaining - above
    prefix = (prefix << width) | d
  return prefix


def keep_mask_from_keys(keys: jax.Array, k, nbits: int) -> jax.Array:
  """Bool mask of the k largest keys; ties go to the earlier position."""
  t = kth_largest_key(keys, k, nbits)
  above = keys > t
  equal = keys == t
  needed = jnp.asarray(k, jnp.int32) - jnp.sum(above, dtype=jnp.int32)
  n_equal = jnp.sum(equal, dtype=jnp.int32)

  def split_ties(_):
    rank = jnp.cumsum(equal, dtype=jnp.int32)  # 1-based among the ties
    return above | (equal & (rank <= needed))

  def keep_all_ties(_):
    return above | (equal & (needed > 0))

  return jax.lax.cond(n_equal > needed, split_ties, keep_all_ties, None)


def project_l0(tree: base.PyTree, k, mask: base.MaskOrFn = None
               ) -> base.PyTree:
  r"""Keeps the ``k`` largest-magnitude entries over all selected leaves.

  The Euclidean projection onto the global L0 ball

  .. math::

    \operatorname{argmin}_{z} \|z - x\|_2^2
    \quad \text{s.t.} \quad \sum_{\text{selected } l} \|z_l\|_0 \le k,

  i.e. ATMC's hard threshold ``H_k``. Ties in magnitude are broken by
  position (earlier in the tree-flatten order of the leaves, then row-major
  within a leaf, wins), so the result has exactly ``min(k, nnz(x))``
  non-zeros. Runs in ``O(n)`` (a three-pass radix select on the float bits,
  no sort); NaNs count as larger than any finite value.

  Args:
    tree: a pytree of arrays.
    k: the budget: a non-negative Python int, or a traced integer scalar
      (negative traced values act as 0). ``k >= size`` is the identity.
    mask: ``None`` (floating leaves with ``ndim >= 2``), a bool pytree with
      ``tree``'s structure, or a callable ``tree -> bool pytree``.
      Unselected leaves pass through unchanged and do not count.

  Returns:
    A pytree with ``tree``'s structure and dtypes.

  Raises:
    ValueError: ``k`` is negative or not an integer, the mask does not match
      ``tree``, or a selected leaf is not floating point.

  Examples:
    >>> import jax.numpy as jnp
    >>> from atmc_jax import projections
    >>> params = {'a': jnp.array([[3., -1.], [0.5, 2.]]),
    ...           'b': jnp.array([[-4., 0.1]])}
    >>> out = projections.project_l0(params, 2)
    >>> out['a'].tolist(), out['b'].tolist()
    ([[3.0, 0.0], [0.0, 0.0]], [[-4.0, 0.0]])
  """
  check_k(k)
  mask = tree_utils.resolve_mask(tree, mask)
  leaves, treedef = jax.tree.flatten(tree)
  selected = [i for i, m in enumerate(treedef.flatten_up_to(mask)) if m]
  if not selected:
    return tree
  sel = [jnp.asarray(leaves[i]) for i in selected]
  total = sum(int(x.size) for x in sel)
  if isinstance(k, (int, np.integer)) and k >= total:
    return tree
  if not isinstance(k, (int, np.integer)):
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, total)
  keys, nbits = magnitude_keys(sel)
  keep = keep_mask_from_keys(keys, k, nbits)
  out = list(leaves)
  offset = 0
  for i, x in zip(selected, sel):
    m = keep[offset:offset + x.size].reshape(x.shape)
    out[i] = jnp.where(m, x, jnp.zeros((), x.dtype))
    offset += x.size
  return jax.tree.unflatten(treedef, out)
