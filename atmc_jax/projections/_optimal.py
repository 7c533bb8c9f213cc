"""Exact 1-D k-means with a fixed zero centre (``method="optimal"``).

Problem, for the non-zero entries ``x_i`` of one tensor and ``K`` free
centres::

  min_{c_1..c_K}  sum_i  min_{q in {0, c_1, .., c_K}} (x_i - q)^2.

In 1-D every optimal cluster is a contiguous run of the sorted values, and
the zero centre's cluster is the run around 0. A free cluster never holds
values of both signs (such a value is nearer to 0 than to the cluster's
centre), so each sign is solved on its own, ordered from far to near 0:

  F_k(j) = min_{i <= j} F_{k-1}(i) + SSE(v_i .. v_{j-1}),   F_0(j) = [j=0]*0,
  G(k)   = min_j F_k(j) + sum_{i >= j} v_i^2     (the rest goes to 0),

and the answer is ``min_{k1} G_neg(k1) + G_pos(K - k1)`` (``i = j`` stands
for an unused centre). ``SSE`` satisfies the quadrangle inequality, so the
leftmost minimiser in ``F_k(j)`` is monotone in ``j`` and each layer is
solved by divide and conquer: ``log2 n`` levels, each a vectorised
``O(n)`` pass (ragged candidate ranges flattened into one vector plus
segment minima).

``SSE(v_i .. v_{j-1}) = S2 - S1^2 / (j - i)`` reads the range sums ``S1``
(values) and ``S2`` (squares) from compensated prefix sums (``_sums``), so
their error does not grow with the tensor's size; the subtraction itself
keeps a relative error of about ``eps * mean^2 / variance`` of the range.

Complexity per tensor with ``n`` entries: ``O(n log n)`` for the sort and
``O(K n log n)`` time, ``O(K n)`` memory (the argmins kept for
backtracking) for the dynamic programme.
"""

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax.projections import _sums


def _layer(prev, s1, s2, m):
  """``cur[j] = min_{i<=j} prev[i] + sse(i, j)`` for ``j <= m``; argmins."""
  size = prev.shape[0]                      # n + 1 candidates / queries
  n_levels = max(int(np.ceil(np.log2(max(size, 2)))), 1)
  p = 1 << n_levels                         # queries padded to [0, p]
  inf = jnp.asarray(jnp.inf, prev.dtype)
  opt = jnp.zeros((p + 1,), jnp.int32).at[p].set(m)
  cur = jnp.full((p + 1,), inf, prev.dtype).at[0].set(prev[0])

  def sse(i, j):
    cnt = jnp.maximum(j - i, 1).astype(prev.dtype)
    d1 = _sums.range_sum(s1, i, j)
    d2 = _sums.range_sum(s2, i, j)
    return jnp.where(j > i, jnp.maximum(d2 - d1 * (d1 / cnt), 0), 0)

  nq = p // 2                               # queries per level (padded)
  qi = jnp.arange(nq, dtype=jnp.int32)
  flat_size = size + nq
  f = jnp.arange(flat_size, dtype=jnp.int32)

  def level_step(level, carry):
    opt, cur = carry
    h = jnp.right_shift(p, level + 1)
    n_active = jnp.left_shift(1, level)
    j = (2 * qi + 1) * h
    valid_q = (qi < n_active) & (j <= m)
    j = jnp.where(qi < n_active, j, p)
    lo = opt[jnp.clip(j - h, 0, p)]
    hi = jnp.minimum(opt[jnp.clip(j + h, 0, p)], j)
    length = jnp.where(valid_q, jnp.maximum(hi - lo + 1, 1), 0)
    starts = jnp.cumsum(length) - length
    # Owner query of each flat slot: count of query starts <= slot.
    marks = jnp.zeros((flat_size + 1,), jnp.int32).at[
        jnp.where(length > 0, starts, flat_size)].add(1)
    q = jnp.clip(jnp.cumsum(marks[:flat_size]) - 1, 0, nq - 1)
    # Slots map to the last query starting at or before them; only valid
    # queries (non-zero length) add marks, and they are a prefix of qi.
    i = lo[q] + f - starts[q]
    ok = (f < starts[q] + length[q]) & (i <= hi[q])
    i = jnp.clip(i, 0, size - 1)
    jq = jnp.clip(j[q], 0, size - 1)
    val = jnp.where(ok, prev[i] + sse(i, jq), inf)
    seg = jnp.where(ok, q, nq)
    best = jax.ops.segment_min(val, seg, num_segments=nq + 1)[:nq]
    is_best = ok & (val <= best[q])
    arg = jax.ops.segment_min(jnp.where(is_best, i, size), seg,
                              num_segments=nq + 1)[:nq]
    arg = jnp.where(valid_q & (arg < size), arg, m)
    best = jnp.where(valid_q, best, inf)
    # Padding queries point at index p, which stays (m, inf).
    opt = opt.at[j].set(jnp.where(j < p, arg, m).astype(jnp.int32))
    cur = cur.at[j].set(jnp.where(j < p, best, inf))
    return opt, cur

  opt, cur = jax.lax.fori_loop(0, n_levels, level_step, (opt, cur))
  return cur[:size], opt[:size]


def _side_tables(v, m, n_centres):
  """DP over one side (``v`` ordered far -> near 0, first ``m`` real).

  A cluster's error ``S2 - S1^2 / n`` cancels when its mean is large next
  to its spread, so the clusters' sums are taken of the values shifted by
  the side's median ``c`` (the error is shift invariant; the means get
  ``c`` back in :func:`_backtrack`). The cost of the entries left to the
  fixed zero level, ``sum x^2``, uses the unshifted values.
  """
  size = v.shape[0] + 1
  jj = jnp.arange(size)
  shift = jnp.where(m > 0, v[jnp.maximum(m, 1) // 2], 0).astype(v.dtype)
  centred = jnp.where(jnp.arange(v.shape[0]) < m, v - shift, 0)
  s1 = _sums.compensated_cumsum(centred)
  s2 = _sums.compensated_cumsum(centred * centred)
  tail = _sums.range_sum(_sums.compensated_cumsum(v * v), jj, m)
  inf = jnp.asarray(jnp.inf, v.dtype)
  f0 = jnp.where(jj == 0, 0, inf).astype(v.dtype)

  def g_of(f):
    total = jnp.where(jj <= m, f + tail, inf)
    return jnp.min(total), jnp.argmin(total).astype(jnp.int32)

  def step(f, _):
    cur, opt = _layer(f, s1, s2, m)
    g, jstar = g_of(cur)
    return cur, (opt, g, jstar)

  g0, j0 = g_of(f0)
  _, (opts, gs, jstars) = jax.lax.scan(step, f0, None, length=n_centres)
  gs = jnp.concatenate([g0[None], gs])
  jstars = jnp.concatenate([j0[None], jstars])
  return opts, gs, jstars, (s1, shift)


def _backtrack(opts, jstar, k, sums, n_centres):
  """Cluster means (``nan`` for unused slots) of the optimal partition."""
  s1, shift = sums

  def body(t, carry):
    j, out = carry
    layer = k - 1 - t                      # opts[layer] is F_{layer+1}
    active = layer >= 0
    i = jnp.where(active, opts[jnp.maximum(layer, 0), j], j)
    cnt = (j - i).astype(s1[0].dtype)
    mean = shift + _sums.range_sum(s1, i, j) / jnp.maximum(cnt, 1)
    out = out.at[t].set(jnp.where(active & (j > i), mean, jnp.nan))
    return i, out

  out = jnp.full((n_centres,), jnp.nan, s1[0].dtype)
  _, out = jax.lax.fori_loop(0, n_centres, body, (jstar, out))
  return out


def optimal_centres(s: jax.Array, n_centres: int) -> jax.Array:
  """Sorted optimal free centres for sorted values ``s`` (zeros ignored).

  Unused centres repeat a used one (or are 0 when no centre is used), so the
  result can be fed to nearest-level assignment directly.
  """
  n = s.shape[0]
  n_neg = jnp.sum(s < 0, dtype=jnp.int32)
  n_pos = jnp.sum(s > 0, dtype=jnp.int32)
  idx = jnp.arange(n)
  v_neg = jnp.where(idx < n_neg, s, 0)                 # far -> near
  v_pos = jnp.where(idx < n_pos, s[::-1], 0)           # far -> near
  opts_n, g_n, j_n, s1_n = _side_tables(v_neg, n_neg, n_centres)
  opts_p, g_p, j_p, s1_p = _side_tables(v_pos, n_pos, n_centres)
  k1 = jnp.argmin(g_n + g_p[::-1]).astype(jnp.int32)
  k2 = n_centres - k1
  c_neg = _backtrack(opts_n, j_n[k1], k1, s1_n, n_centres)
  c_pos = _backtrack(opts_p, j_p[k2], k2, s1_p, n_centres)
  c = jnp.sort(jnp.concatenate([c_neg, c_pos]))      # nan last
  fill = jnp.where(jnp.isnan(c[0]), 0, c[0])
  c = jnp.where(jnp.isnan(c), fill, c)
  return jnp.sort(_take_used(c, n_centres))


def _take_used(c, n_centres):
  """Keeps ``n_centres`` values of ``c`` (used ones first, then repeats)."""
  # c holds at most n_centres distinct used values followed by fill copies;
  # after the nan->fill replacement, the used values are unique except for
  # the fill duplicates, so the first n_centres of the de-duplicated,
  # sorted vector suffice.
  c = jnp.sort(c)
  first = jnp.concatenate([jnp.ones((1,), bool), c[1:] != c[:-1]])
  slot = jnp.cumsum(first) - 1
  out = jnp.full((n_centres,), c[0], c.dtype)
  return out.at[jnp.where(first, slot, n_centres)].set(c, mode='drop')
