"""Per-tensor codebook quantisation with a fixed zero level (ATMC's KMQ_b).

Every selected leaf is mapped so that its non-zero entries take at most
``2**bits`` distinct values. Zero is an extra level that never moves: zero
entries stay zero and a non-zero entry may only become zero when 0 is its
nearest level, so sparsity never decreases.

Two solvers:

* ``method="lloyd"``: 1-D Lloyd iterations. The values are sorted once (as
  monotone integer keys, which XLA sorts several times faster than floats);
  since 1-D clusters are contiguous in sorted order, an iteration is
  ``K + 1`` binary searches for the cluster boundaries and prefix-sum
  look-ups for the cluster means: ``O(K log n)`` per iteration after an
  ``O(n log n)`` sort, no ``n x K`` distance matrix.
* ``method="optimal"``: the exact minimiser by dynamic programming (see
  ``_optimal.py``).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax._src import base
from atmc_jax._src import tree_utils
from atmc_jax.projections import _sums

# The codebook fits and their initialisations (``method`` / ``init``);
# optim and training import these.
QUANTIZERS = ('lloyd', 'optimal')
QUANTIZER_INITS = ('quantile', 'forgy')


def check_bits(bits) -> None:
  """Raises ``ValueError`` unless ``bits`` is an int in ``[1, 16]``."""
  if (isinstance(bits, (bool, np.bool_))
      or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16):
    raise ValueError(f'bits must be an integer in [1, 16], got {bits!r}.')


def _compute_dtypes(dtype):
  if jnp.dtype(dtype) == jnp.float64:
    return jnp.float64, jnp.int64
  return jnp.float32, jnp.int32


def to_sort_keys(flat: jax.Array) -> jax.Array:
  """Integer keys whose order is the float order (-0.0 is read as +0.0)."""
  _, idtype = _compute_dtypes(flat.dtype)
  flat = jnp.where(flat == 0, jnp.zeros((), flat.dtype), flat)
  bits = jax.lax.bitcast_convert_type(flat, idtype)
  low = np.array(np.iinfo(np.dtype(idtype)).max, dtype=idtype)
  return jnp.where(bits < 0, bits ^ low, bits)


def from_sort_keys(keys: jax.Array, fdtype) -> jax.Array:
  """Inverse of ``to_sort_keys``."""
  low = np.array(np.iinfo(np.dtype(keys.dtype)).max, dtype=keys.dtype)
  bits = jnp.where(keys < 0, keys ^ low, keys)
  return jax.lax.bitcast_convert_type(bits, fdtype)


def sort_values(flat: jax.Array) -> jax.Array:
  """Ascending sort of a float vector through integer keys."""
  return from_sort_keys(jnp.sort(to_sort_keys(flat)), flat.dtype)


def count_distinct_nonzero(s: jax.Array) -> jax.Array:
  """Number of distinct non-zero values of a sorted vector."""
  first = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
  return jnp.sum(first & (s != 0), dtype=jnp.int32)


def _insert_zero(c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sorted free centres -> (sorted centres with the 0 level, its index)."""
  kk = c.shape[0]
  z = jnp.sum(c < 0, dtype=jnp.int32)
  i = jnp.arange(kk + 1)
  src = jnp.clip(jnp.where(i < z, i, i - 1), 0, kk - 1)
  return jnp.where(i == z, jnp.zeros((), c.dtype), c[src]), z


def _remove_zero(full: jax.Array, z: jax.Array) -> jax.Array:
  kk = full.shape[0] - 1
  i = jnp.arange(kk)
  return full[jnp.where(i < z, i, i + 1)]


def quantile_ranks(m: jax.Array, n_levels: int) -> jax.Array:
  """``floor((2 j + 1) m / (2 K))`` for ``j < K``, exact in int32.

  ``K = n_levels`` is a power of two ``<= 2**16`` and ``0 <= m < 2**31``;
  the direct product ``(2 K - 1) m`` overflows int32 once it reaches
  ``2**31``, so the product is split into parts that each stay below it.
  """
  e = int(n_levels).bit_length()              # 2 K = 2**e
  a = 2 * jnp.arange(n_levels, dtype=jnp.int32) + 1   # a < 2**e
  m = jnp.asarray(m, jnp.int32)
  m_hi = jnp.right_shift(m, e)                # m = m_hi 2**e + m_lo
  m_lo = jnp.bitwise_and(m, (1 << e) - 1)
  h = (e + 1) // 2                            # m_lo = lo_hi 2**h + lo_lo
  lo_hi = jnp.right_shift(m_lo, h)
  lo_lo = jnp.bitwise_and(m_lo, (1 << h) - 1)
  # a m_hi <= m; a lo_hi < 2**(2e - h) and a lo_lo < 2**(e + h), both
  # <= 2**26 for e <= 17.
  part = a * lo_hi + jnp.right_shift(a * lo_lo, h)
  return a * m_hi + jnp.right_shift(part, e - h)


def _lloyd_centres(s, n_levels, *, max_iters, tol, init, key):
  """Free centres (sorted) after Lloyd iterations on sorted values ``s``."""
  n = s.shape[0]
  nonzero = s != 0
  pc = jnp.concatenate([jnp.zeros((1,), jnp.int32),
                        jnp.cumsum(nonzero, dtype=jnp.int32)])
  ps = _sums.compensated_cumsum(s)
  m = pc[-1]                                     # number of non-zeros
  n_neg = jnp.sum(s < 0, dtype=jnp.int32)
  n_zero = n - m

  def nonzero_at(rank):                          # rank-th smallest non-zero
    return s[jnp.where(rank < n_neg, rank, rank + n_zero)]

  if init == 'quantile':
    rank = quantile_ranks(m, n_levels)
    c0 = nonzero_at(jnp.clip(rank, 0, jnp.maximum(m - 1, 0)))
  else:  # forgy: values at n_levels distinct random non-zero positions
    u = jax.random.uniform(key, (n,))
    u = jnp.where(nonzero, u, 2.0)
    _, pos = jax.lax.top_k(-u, n_levels)
    c0 = jnp.sort(s[pos])
  collapse_empty = init == 'forgy'

  def step(c):
    full, z = _insert_zero(c)
    bounds = 0.5 * (full[1:] + full[:-1])
    edges = jnp.concatenate([
        jnp.zeros((1,), jnp.int32),
        jnp.searchsorted(s, bounds, side='left').astype(jnp.int32),
        jnp.full((1,), n, jnp.int32)])
    lo, hi = edges[:-1], edges[1:]
    cnt = pc[hi] - pc[lo]
    tot = _sums.range_sum(ps, lo, hi)
    mean = tot / jnp.maximum(cnt, 1).astype(s.dtype)
    # Keep each mean inside its cluster's range despite rounding.
    mean = jnp.clip(mean, s[jnp.minimum(lo, n - 1)],
                    s[jnp.clip(hi - 1, 0, n - 1)])
    empty_value = jnp.zeros_like(full) if collapse_empty else full
    new_full = jnp.where(cnt > 0, mean, empty_value)
    new_c = _remove_zero(new_full, z)
    # Clipped means of consecutive clusters are already in order; only
    # collapsing empty clusters to 0 can break it.
    return jnp.sort(new_c) if collapse_empty else new_c

  def cond(state):
    it, _, delta = state
    return (it < max_iters) & (delta > tol)

  def body(state):
    it, c, _ = state
    new_c = step(c)
    return it + 1, new_c, jnp.sum(jnp.abs(new_c - c))

  init_state = (jnp.zeros((), jnp.int32), c0, jnp.asarray(jnp.inf, s.dtype))
  _, c, _ = jax.lax.while_loop(cond, body, init_state)
  return c


def assign(flat: jax.Array, c: jax.Array) -> jax.Array:
  """Each entry -> its nearest level in ``{0} U c``; zeros stay zero."""
  full, _ = _insert_zero(c)
  bounds = 0.5 * (full[1:] + full[:-1])
  idx = jnp.searchsorted(bounds, flat, side='right')
  return jnp.where(flat == 0, jnp.zeros((), flat.dtype), full[idx])


# Leaves with at least this many entries first try to solve on a compacted
# copy of their non-zeros (capacity size // f for each f): sorting and the
# dynamic programme then cost O(nnz) instead of O(size) for sparse inputs.
_COMPACT_MIN_SIZE = 1 << 16
_COMPACT_DIVISORS = (64, 8)


def _compact(flat: jax.Array, capacity: int):
  """The non-zeros of ``flat`` (in order) in a zero-padded vector.

  Returns ``(compact, pos)`` with ``compact[pos[i]] == flat[i]`` wherever
  ``flat[i] != 0``.
  """
  nonzero = flat != 0
  pos = jnp.cumsum(nonzero, dtype=jnp.int32) - 1
  compact = jnp.zeros((capacity,), flat.dtype).at[
      jnp.where(nonzero, pos, capacity)].set(flat, mode='drop')
  return compact, pos


def _centres(v, n_levels, method, max_iters, tol, init, key):
  """``(feasible, centres)`` for the non-zeros of ``v`` (any order)."""
  s = sort_values(v)
  feasible = count_distinct_nonzero(s) <= n_levels

  def solve(_):
    if method == 'lloyd':
      return _lloyd_centres(s, n_levels, max_iters=max_iters, tol=tol,
                            init=init, key=key)
    from atmc_jax.projections import _optimal  # pylint: disable=g-import-not-at-top
    return _optimal.optimal_centres(s, n_levels)

  skip = lambda _: jnp.zeros((n_levels,), v.dtype)
  return feasible, jax.lax.cond(feasible, skip, solve, None)


def _quantize_flat(flat, n_levels, method, max_iters, tol, init, key,
                   max_nonzeros=None):
  """Quantises a float vector (compute dtype); returns the new vector."""
  n = flat.shape[0]
  solve = lambda v: _centres(v, n_levels, method, max_iters, tol, init, key)

  def dense(_):
    feasible, c = solve(flat)
    return jax.lax.cond(feasible, lambda _: flat,
                        lambda _: assign(flat, c), None)

  def sparse(capacity):
    def branch(_):
      compact, pos = _compact(flat, capacity)
      feasible, c = solve(compact)

      def quantize(_):
        # Assign only the compacted non-zeros, then gather them back.
        qc = assign(compact, c)
        return jnp.where(flat != 0, qc[jnp.clip(pos, 0, capacity - 1)],
                         jnp.zeros((), flat.dtype))

      return jax.lax.cond(feasible, lambda _: flat, quantize, None)
    return branch

  caps = []
  if n >= _COMPACT_MIN_SIZE:
    caps = sorted({n // d for d in _COMPACT_DIVISORS if n // d > n_levels})
  branches = [sparse(c) for c in caps] + [dense]
  if max_nonzeros is not None:
    # With nnz <= max_nonzeros the switch index below never exceeds the
    # number of capacities under that bound: drop the unreachable branches
    # (each is a whole sort + Lloyd program to compile).
    branches = branches[:1 + sum(c < max_nonzeros for c in caps)]
  if len(branches) == 1:
    return branches[0](None)
  nnz = jnp.sum(flat != 0, dtype=jnp.int32)
  index = sum((nnz > c).astype(jnp.int32) for c in caps[:len(branches) - 1])
  return jax.lax.switch(index, branches, None)


def _resolve_options(method, max_iters, tol, init, key):
  if method not in QUANTIZERS:
    raise ValueError(f'method must be one of {QUANTIZERS}, got {method!r}.')
  if init not in QUANTIZER_INITS:
    raise ValueError(f'init must be one of {QUANTIZER_INITS}, got {init!r}.')
  if init == 'forgy' and key is None:
    raise ValueError('init="forgy" needs a PRNG `key`, got None.')
  if max_iters is None:
    max_iters = 20 if init == 'forgy' else 300
  if tol is None:
    tol = 1e-2 if init == 'forgy' else 0.0
  if (isinstance(max_iters, bool) or not isinstance(max_iters, (int, np.integer))
      or max_iters < 0):
    raise ValueError(
        f'max_iters must be an integer in [0, inf), got {max_iters!r}.')
  if not tol >= 0:
    raise ValueError(f'tol must be a number in [0, inf), got {tol!r}.')
  return max_iters, tol


def _quantize_leaf(x, bits, method, max_iters, tol, init, key,
                   max_nonzeros=None):
  x = jnp.asarray(x)
  n_levels = 2 ** bits
  if x.size <= n_levels:
    return x
  fdtype, _ = _compute_dtypes(x.dtype)
  flat = jnp.ravel(x).astype(fdtype)
  out = _quantize_flat(flat, n_levels, method, max_iters, tol, init, key,
                       max_nonzeros)
  # Traced leaves cannot be checked: a non-finite entry makes the whole
  # quantised leaf NaN rather than a codebook built around it.
  out = jnp.where(jnp.all(jnp.isfinite(flat)), out,
                  jnp.full_like(out, jnp.nan))
  return out.astype(x.dtype).reshape(x.shape)


def _check_finite(leaves, sel) -> None:
  """Raises on a non-finite entry of a concrete selected leaf."""
  for i, (x, m) in enumerate(zip(leaves, sel)):
    if not m or isinstance(x, jax.core.Tracer):
      continue
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
      continue
    bad = ~np.isfinite(a)
    if bad.any():
      raise ValueError(
          f'project_quantize needs finite values, got {int(bad.sum())} '
          f'non-finite entries (e.g. {a[bad].ravel()[0]!r}) in selected leaf '
          f'{i} of shape {a.shape}; accepted: finite floats.')


def _leaf_keys(tree, mask, key):
  n = len(jax.tree.leaves(tree))
  if key is None:
    return [None] * n
  return list(jax.random.split(key, n))


def project_quantize(tree: base.PyTree, bits: int,
                     mask: base.MaskOrFn = None, *, method: str = 'lloyd',
                     max_iters: int | None = None, tol: float | None = None,
                     init: str = 'quantile', key: Any = None,
                     max_nonzeros: int | None = None) -> base.PyTree:
  r"""Quantises each selected leaf to ``<= 2**bits`` distinct non-zeros.

  Per selected leaf ``x`` (``K = 2**bits``), approximately (``lloyd``) or
  exactly (``optimal``) solves the 1-D k-means problem with a fixed zero
  centre

  .. math::

    \min_{c_1..c_K} \sum_{i: x_i \ne 0}
        \min_{q \in \{0, c_1, \dots, c_K\}} (x_i - q)^2,

  and replaces every non-zero entry by its nearest level (ties between two
  levels go to the larger one). Zero entries stay zero; a non-zero entry
  becomes zero only when 0 is its nearest level, so the number of non-zeros
  never grows. A leaf that already has at most ``K`` distinct non-zero
  values is returned unchanged (so the projection is idempotent).

  ``method="lloyd"`` sorts once (``O(n log n)``) and then runs Lloyd
  iterations at ``O(K log n)`` each (boundaries by binary search, means by
  compensated prefix sums, accurate for any leaf size), from quantile initialisation (``init="quantile"``,
  deterministic) until the centres stop moving (total absolute shift
  ``<= tol``, default 0) or ``max_iters`` (default 300). An empty cluster
  keeps its centre. ``init="forgy"`` with a ``key`` reproduces the reference
  implementation's quantiser: centres drawn from ``K`` distinct random
  non-zero positions, empty clusters collapse to 0 and are never re-seeded,
  at most 20 iterations (``max_iters``), stop once the total absolute shift
  is ``<= 1e-2`` (``tol``; the reference tests ``(sum |dc|)^2 < 1e-4``).

  ``method="optimal"`` returns the exact minimiser: 1-D k-means with a
  fixed zero centre solved by dynamic programming over the sorted values
  (divide-and-conquer optimisation of each of the ``K`` layers), in
  ``O(K n log n)`` time and ``O(K n)`` memory per leaf. It is far slower
  than ``lloyd`` for large ``K`` and ``n`` (seconds to minutes per tensor
  at ``K = 256``), but can reduce the squared error many-fold where Lloyd
  stops in a poor local optimum.

  Leaves with at least 65,536 entries and few non-zeros are solved on a
  compacted copy of their non-zeros (capacity ``size // 64`` or
  ``size // 8``), so the cost scales with ``nnz`` rather than ``size``.

  Non-finite values: a concrete (not traced) selected leaf with a NaN or
  ``inf`` entry raises ``ValueError``. Under ``jax.jit`` the values cannot
  be checked; a selected leaf holding any non-finite entry is then returned
  as all NaN (and a leaf small enough to pass through unchanged keeps its
  values), so the failure shows up in the result instead of as a codebook
  silently fitted around the bad entries.

  Args:
    tree: a pytree of arrays.
    bits: the number of bits per non-zero code, an int in ``[1, 16]``.
    mask: ``None`` (floating leaves with ``ndim >= 2``), a bool pytree, or a
      callable ``tree -> bool pytree``. Unselected leaves pass through.
    method: ``"lloyd"`` or ``"optimal"``.
    max_iters: Lloyd iteration cap (default 300, or 20 with forgy init).
    tol: stop when the centres' total absolute shift is ``<= tol``
      (default 0.0, or 1e-2 with forgy init).
    init: ``"quantile"`` (deterministic) or ``"forgy"`` (needs ``key``).
    key: a PRNG key for ``init="forgy"``; split once per leaf.
    max_nonzeros: an optional Python int bounding every selected leaf's
      number of non-zeros (e.g. the budget after ``project_l0``). It only
      removes compacted copies the bound makes unreachable, so the result
      is unchanged while the compiled program shrinks; a leaf with more
      non-zeros than the bound gives undefined results.

  Returns:
    A pytree with ``tree``'s structure and dtypes.

  Raises:
    ValueError: ``bits`` is not an int in ``[1, 16]``, ``max_nonzeros`` is
      not None or an int >= 0, an option is not
      one of the accepted values, the mask does not match ``tree``, a
      selected leaf is not floating point, or a concrete selected leaf has
      a non-finite entry.
  """
  check_bits(bits)
  max_iters, tol = _resolve_options(method, max_iters, tol, init, key)
  if max_nonzeros is not None and (
      isinstance(max_nonzeros, bool)
      or not isinstance(max_nonzeros, (int, np.integer)) or max_nonzeros < 0):
    raise ValueError('max_nonzeros must be None or a Python int in [0, inf), '
                     f'got {max_nonzeros!r}.')
  mask = tree_utils.resolve_mask(tree, mask)
  leaves, treedef = jax.tree.flatten(tree)
  sel = treedef.flatten_up_to(mask)
  _check_finite(leaves, sel)
  keys = _leaf_keys(tree, mask, key)
  out = [_quantize_leaf(x, bits, method, max_iters, tol, init, kk,
                        max_nonzeros) if m else x
         for x, m, kk in zip(leaves, sel, keys)]
  return jax.tree.unflatten(treedef, out)


def _codebook_leaf(q, n_levels):
  """Sorted distinct non-zeros of ``q`` (padded) and 0/1-based codes."""
  fdtype, _ = _compute_dtypes(q.dtype)
  flat = jnp.ravel(q).astype(fdtype)
  s = sort_values(flat)
  first = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]]) & (s != 0)
  slot = jnp.cumsum(first, dtype=jnp.int32) - 1
  n_used = slot[-1] + 1 if s.size else jnp.zeros((), jnp.int32)
  book = jnp.zeros((n_levels,), fdtype).at[
      jnp.where(first, slot, n_levels)].set(s, mode='drop')
  # Pad with the largest used value so the codebook stays sorted.
  last = book[jnp.clip(n_used - 1, 0, n_levels - 1)]
  book = jnp.where(jnp.arange(n_levels) < n_used, book, last)
  idx = jnp.searchsorted(book, flat, side='left').astype(jnp.int32) + 1
  codes = jnp.where(flat == 0, 0, idx).reshape(q.shape)
  return book.astype(q.dtype), codes


def quantize_codebook(tree: base.PyTree, bits: int,
                      mask: base.MaskOrFn = None, **kwargs
                      ) -> tuple[base.PyTree, base.PyTree]:
  """Codebooks and integer codes of ``project_quantize(tree, bits, mask)``.

  For each selected leaf: ``codebook`` is a float vector of length
  ``2**bits`` (the leaf's dtype) whose first ``d`` entries are the ``d``
  distinct non-zero values of the quantised leaf in ascending order; the
  remaining entries repeat the largest value (0 for an all-zero leaf) and
  are never referenced. ``codes`` is an int32 array of the leaf's shape with
  0 for the zero level and ``i >= 1`` for ``codebook[i - 1]``. Unselected
  leaves are ``None`` in both trees. ``dequantize`` inverts this exactly.

  Args:
    tree: a pytree of arrays.
    bits: an int in ``[1, 16]``.
    mask: as in ``project_quantize``.
    **kwargs: ``method``, ``max_iters``, ``tol``, ``init``, ``key`` as in
      ``project_quantize``.

  Returns:
    ``(codebooks, codes)``, two pytrees with ``tree``'s structure.

  Raises:
    ValueError: as ``project_quantize``.
  """
  q = project_quantize(tree, bits, mask, **kwargs)
  mask = tree_utils.resolve_mask(tree, mask)
  leaves, treedef = jax.tree.flatten(q)
  books, codes = [], []
  for x, m in zip(leaves, treedef.flatten_up_to(mask)):
    if m:
      b, c = _codebook_leaf(jnp.asarray(x), 2 ** bits)
    else:
      b, c = None, None
    books.append(b)
    codes.append(c)
  return (jax.tree.unflatten(treedef, books),
          jax.tree.unflatten(treedef, codes))


def dequantize(codebooks: base.PyTree, codes: base.PyTree,
               like: base.PyTree) -> base.PyTree:
  """Rebuilds a quantised tree from ``quantize_codebook``'s output.

  Args:
    codebooks: codebooks from ``quantize_codebook`` (``None`` for leaves
      that were not quantised).
    codes: integer codes from ``quantize_codebook``.
    like: a tree with the params' structure; its leaves are used where the
      codebook is ``None``.

  Returns:
    A pytree with ``like``'s structure: ``0`` where the code is 0,
    ``codebook[code - 1]`` elsewhere.

  Raises:
    ValueError: the trees' structures do not match.
  """
  leaves, treedef = jax.tree.flatten(like)
  try:
    books = treedef.flatten_up_to(codebooks)
    cds = treedef.flatten_up_to(codes)
  except (ValueError, TypeError) as e:
    raise ValueError(
        'codebooks/codes structure does not match `like`: expected '
        f'{treedef}.') from e
  out = []
  for x, b, c in zip(leaves, books, cds):
    if b is None:
      out.append(x)
      continue
    b = jnp.asarray(b)
    c = jnp.asarray(c)
    vals = b[jnp.clip(c - 1, 0, b.shape[0] - 1)]
    out.append(jnp.where(c == 0, jnp.zeros((), b.dtype), vals))
  return jax.tree.unflatten(treedef, out)
