"""``project_quantize`` (Lloyd) at every size and bit width.

Heavy-tailed leaves (Student-t, 3 degrees of freedom) from 300 to 5,000,000
entries and ``bits`` in ``[1, 16]``: each entry sits at its nearest level in
``{0} U codebook``, at most ``2**bits`` non-zero levels are used, and the
squared error never increases with ``bits``.
"""

import functools

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atmc_jax import projections


@functools.lru_cache(maxsize=None)
def _jitted(bits):
  return jax.jit(lambda x: projections.project_quantize({'w': x}, bits)['w'])


def _heavy_tailed(n, seed, zeros=0.0):
  rng = np.random.default_rng(seed)
  x = rng.standard_t(3, size=n).astype(np.float32)
  if zeros:
    x = np.where(rng.uniform(size=n) < zeros, np.float32(0), x)
  return x.reshape(-1, 100) if n % 100 == 0 else x.reshape(1, -1)


def _check(x, bits):
  """Quantises ``x``; asserts the level count and nearest-level property.

  Returns:
    ``(squared error, number of non-zero levels)``.
  """
  q = np.asarray(_jitted(bits)(jnp.asarray(x))).ravel()
  x = np.asarray(x).ravel()
  levels = np.unique(q[q != 0])
  assert levels.size <= 2 ** bits
  assert np.all(q[x == 0] == 0)
  # Distances to the nearest level of {0} U levels, exactly (float64 holds
  # the difference of two float32 values exactly).
  full = np.concatenate([[0.0], levels]).astype(np.float64)
  full.sort()
  xd, qd = x.astype(np.float64), q.astype(np.float64)
  i = np.searchsorted(full, xd)
  lo = full[np.clip(i - 1, 0, full.size - 1)]
  hi = full[np.clip(i, 0, full.size - 1)]
  nearest = np.minimum(np.abs(xd - lo), np.abs(xd - hi))
  # A value at the float32-rounded midpoint of two levels may go either
  # way: allow one float32 ulp of the value.
  slack = np.spacing(np.abs(x)).astype(np.float64)
  far = np.abs(xd - qd) > nearest + slack
  assert not far.any(), (
      f'{far.sum()} of {x.size} entries are not at their nearest level '
      f'(levels={levels.size}, bits={bits}); e.g. x={x[far][:3]}, '
      f'q={q[far][:3]}')
  return float(np.sum((xd - qd) ** 2)), levels.size


@settings(max_examples=12, deadline=None)
@given(n=st.sampled_from([300, 4_000, 70_000]),
       bits=st.integers(1, 16), seed=st.integers(0, 2 ** 16),
       zeros=st.sampled_from([0.0, 0.5]))
def test_nearest_level_and_level_count(n, bits, seed, zeros):
  _check(_heavy_tailed(n, seed, zeros), bits)


def test_error_never_increases_with_bits():
  # 70,000 entries: above 2**16 distinct values, so no bit width leaves the
  # leaf unchanged, and (2K - 1) * nnz >= 2**31 from 14 bits on.
  x = _heavy_tailed(70_000, 0)
  sse = [_check(x, bits)[0] for bits in (1, 2, 3, 4, 6, 8, 11, 14, 15, 16)]
  assert all(b <= a for a, b in zip(sse, sse[1:])), sse


def test_large_leaves():
  x = _heavy_tailed(300_000, 1)
  (sse8, _), (sse14, _) = _check(x, 8), _check(x, 14)
  assert sse14 <= sse8 / 1.5, (sse8, sse14)
  # (2K - 1) * nnz >= 2**31 for K = 256: the quantile ranks need more than
  # int32 products.
  _, n_levels = _check(_heavy_tailed(5_000_000, 2), 8)
  assert n_levels == 256


def test_compensated_range_sums_do_not_degrade_with_length():
  from atmc_jax.projections import _sums  # pylint: disable=g-import-not-at-top
  n = 2_000_000
  x = np.sort(np.random.default_rng(3).standard_t(3, n).astype(np.float32))
  prefix = jax.jit(_sums.compensated_cumsum)(jnp.asarray(x))
  i = np.random.default_rng(4).integers(0, n - 1000, 5000)
  j = i + np.random.default_rng(5).integers(1, 1000, i.size)
  got = np.asarray(jax.jit(_sums.range_sum)(prefix, i, j), np.float64)
  exact = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
  absolute = np.concatenate([[0.0], np.cumsum(np.abs(x), dtype=np.float64)])
  rel = np.abs(got - (exact[j] - exact[i])) / (absolute[j] - absolute[i])
  # A plain float32 cumsum is off by several times the range's own sum here.
  assert rel.max() < 1e-4, rel.max()
