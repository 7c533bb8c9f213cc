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


def magnitude_keys(leaves: Sequence[jax.Array]
                   ) -> tuple[list[jax.Array], int]:
  """Flat non-negative integer keys per leaf, monotone in ``|x|``."""
  fdtype, idtype, nbits = _key_dtypes(leaves)
  # abs(-0.0) is +0.0, so equal magnitudes have equal keys.
  return [jax.lax.bitcast_convert_type(jnp.abs(jnp.ravel(x).astype(fdtype)),
                                       idtype) for x in leaves], nbits


def _suffix_sums(h: jax.Array) -> jax.Array:
  """``out[d] = sum(h[d:])`` for a power-of-two length vector.

  Computed as a two-level blocked sum of broadcast comparisons rather than
  ``cumsum`` (cheaper to compile and run on CPU for a few thousand bins).
  """
  n = h.shape[0]
  w = 1 << ((n.bit_length() - 1 + 1) // 2)   # block width ~ sqrt(n)
  blocks = h.reshape(n // w, w)
  j = jnp.arange(w)
  # Within-block suffix sums.
  inner = jnp.sum(jnp.where(j[None, :] >= j[:, None], blocks[:, None, :], 0),
                  axis=-1)
  totals = jnp.sum(blocks, axis=-1)
  b = jnp.arange(n // w)
  # Sum of the blocks strictly after each block.
  after = jnp.sum(jnp.where(b[None, :] > b[:, None], totals[None, :], 0),
                  axis=-1)
  return (inner + after[:, None]).reshape(n)


def kth_largest_key(keys: Sequence[jax.Array], k, nbits: int) -> jax.Array:
  """The k-th largest of the non-negative integer ``keys`` (radix select).

  Args:
    keys: flat integer arrays (all of one dtype), read as one concatenation.
    k: the rank sought (int or traced int scalar).
    nbits: 31 (int32 keys) or 63 (int64 keys).

  Returns:
    ``(t, n_above, n_equal)``: ``t`` is the largest value with
    ``count(keys >= t) >= k`` (for ``1 <= k <= size`` the k-th largest key;
    for ``k == 0`` the maximal value of the dtype), ``n_above`` and
    ``n_equal`` count the keys ``> t`` and ``== t``.
  """
  idtype = keys[0].dtype
  prefix = jnp.zeros((), idtype)     # the digits chosen so far
  remaining = jnp.asarray(k, idtype)  # rank sought among matching keys
  n_above = jnp.zeros((), idtype)     # keys above the chosen prefix
  shift = nbits
  for i, width in enumerate(_DIGITS[nbits]):
    shift -= width
    n_bins = 1 << width
    hist = jnp.zeros((n_bins,), jnp.int32)
    for kk in keys:
      digit = ((kk >> shift) & (n_bins - 1)).astype(jnp.int32)
      if i > 0:  # only keys matching the digits chosen so far
        digit = jnp.where((kk >> (shift + width)) == prefix, digit, n_bins)
      hist = hist + jnp.bincount(digit, length=n_bins + 1)[:n_bins]
    # at_least[d] = number of matching keys whose digit is >= d.
    at_least = _suffix_sums(hist).astype(idtype)
    d = jnp.max(jnp.where(at_least >= remaining,
                          jnp.arange(n_bins, dtype=idtype), 0))
    above = jnp.where(d + 1 < n_bins,
                      at_least[jnp.minimum(d + 1, n_bins - 1)], 0)
    remaining = remaining - above
    n_above = n_above + above
    prefix = (prefix << width) | d
  return prefix, n_above, hist[d].astype(idtype)


def select_thresholds(keys: Sequence[jax.Array], k, nbits: int
                      ) -> tuple[jax.Array, jax.Array]:
  """``(t, p)``: keep entry ``i`` iff ``key > t or (key == t and i < p)``.

  ``i`` is the position in the concatenation of ``keys``; exactly
  ``min(k, size)`` entries are kept, ties at ``t`` going to the earliest
  positions.
  """
  t, n_above, n_equal = kth_largest_key(keys, k, nbits)
  needed = jnp.asarray(k, n_above.dtype) - n_above
  total = sum(kk.size for kk in keys)

  def split_ties(_):
    # The needed-th smallest position among the ties, as the needed-th
    # largest of (total - position) over tied entries (0 elsewhere).
    rev, offset = [], 0
    for kk in keys:
      pos = offset + jnp.arange(kk.size, dtype=jnp.int32)
      rev.append(jnp.where(kk == t, total - pos, 0))
      offset += kk.size
    v, _, _ = kth_largest_key(rev, jnp.maximum(needed, 1), 31)
    return jnp.where(needed > 0, total - v + 1, 0).astype(jnp.int32)

  def keep_all_ties(_):
    return jnp.asarray(total, jnp.int32)

  p = jax.lax.cond(n_equal > needed, split_ties, keep_all_ties, None)
  return t, p


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
  t, p = select_thresholds(keys, k, nbits)
  out = list(leaves)
  offset = 0
  for i, x, kk in zip(selected, sel, keys):
    pos = offset + jnp.arange(x.size, dtype=jnp.int32)
    keep = (kk > t) | ((kk == t) & (pos < p))
    out[i] = jnp.where(keep.reshape(x.shape), x, jnp.zeros((), x.dtype))
    offset += x.size
  return jax.tree.unflatten(treedef, out)
