"""Tests for the low-rank projections and the ALR global rank rule."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atmc_jax import projections


def _tree():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  return {'dense': jax.random.normal(k1, (12, 7)),
          'conv': jax.random.normal(k2, (3, 3, 2, 5)),
          'scaled': 10.0 * jax.random.normal(k3, (6, 9)),
          'bias': jnp.ones((5,))}


def _matrix(x):
  x = np.asarray(x, np.float64)
  return x.reshape(-1, x.shape[-1]).T


def _numpy_truncate(x, r):
  w = _matrix(x)
  u, s, vt = np.linalg.svd(w, full_matrices=False)
  w = (u[:, :r] * s[:r]) @ vt[:r]
  return w.T.reshape(np.shape(x))


def test_fixed_rank_matches_numpy():
  tree = _tree()
  out = jax.jit(lambda t: projections.project_low_rank(t, 2))(tree)
  chex.assert_trees_all_equal_structs(out, tree)
  chex.assert_trees_all_equal_dtypes(out, tree)
  np.testing.assert_array_equal(out['bias'], tree['bias'])
  for name in ('dense', 'conv', 'scaled'):
    assert np.linalg.matrix_rank(_matrix(out[name]), tol=1e-4) <= 2
    np.testing.assert_allclose(out[name], _numpy_truncate(tree[name], 2),
                               rtol=1e-4, atol=1e-4)
  # Idempotent; a large rank is the identity.
  again = projections.project_low_rank(out, 2)
  chex.assert_trees_all_close(again, out, rtol=1e-4, atol=1e-4)
  chex.assert_trees_all_equal(projections.project_low_rank(tree, 100), tree)


def test_per_leaf_ranks_and_factors():
  tree = _tree()
  ranks = {'dense': 3, 'conv': 1, 'scaled': 4, 'bias': None}
  out = projections.project_low_rank(tree, ranks)
  b, a = projections.low_rank_factors(tree, ranks)
  assert b['bias'] is None and a['bias'] is None
  for name, r in ranks.items():
    if r is None:
      continue
    m, n = _matrix(tree[name]).shape
    assert b[name].shape == (m, r) and a[name].shape == (r, n)
    np.testing.assert_allclose(b[name] @ a[name], _matrix(out[name]),
                               rtol=1e-4, atol=1e-4)
    # Balanced factors: B^T B == A A^T == diag(S_r).
    np.testing.assert_allclose(b[name].T @ b[name], a[name] @ a[name].T,
                               rtol=1e-4, atol=1e-4)


def test_global_keeps_globally_largest_singular_values():
  tree = _tree()
  frac = 0.4
  ranks = projections.low_rank_ranks(tree, frac)
  out = jax.jit(lambda t: projections.project_low_rank_global(t, frac))(tree)
  names = ('dense', 'conv', 'scaled')
  svals = {n: np.linalg.svd(_matrix(tree[n]), compute_uv=False)
           for n in names}
  total = sum(s.size for s in svals.values())
  n_keep = int(np.floor(frac * total))
  threshold = np.sort(np.concatenate(list(svals.values())))[::-1][n_keep - 1]
  for n in names:
    expected = max(1, int(np.sum(svals[n] >= threshold)))
    assert int(ranks[n]) == expected
    np.testing.assert_allclose(out[n], _numpy_truncate(tree[n], expected),
                               rtol=1e-4, atol=1e-4)
    kept = np.linalg.svd(_matrix(out[n]), compute_uv=False)[:expected]
    np.testing.assert_allclose(kept, svals[n][:expected], rtol=1e-4)
  # The large-scale leaf takes most of the budget.
  assert int(ranks['scaled']) > int(ranks['dense'])
  assert ranks['bias'] is None
  # Zero fraction still keeps rank 1 per leaf.
  zero = projections.low_rank_ranks(tree, 0.0)
  assert all(int(zero[n]) == 1 for n in names)


def test_bad_input():
  tree = {'a': jnp.ones((3, 3)), 'i': jnp.ones((3, 3), jnp.int32)}
  with pytest.raises(ValueError, match=r'rank .* \[0, inf\)'):
    projections.project_low_rank({'a': tree['a']}, -1)
  with pytest.raises(ValueError, match=r'keep_fraction .* \[0, 1\]'):
    projections.project_low_rank_global({'a': tree['a']}, 1.5)
  with pytest.raises(ValueError, match='mask structure'):
    projections.project_low_rank(tree, 1, mask={'a': True})
  with pytest.raises(ValueError, match='floating'):
    projections.low_rank_ranks(tree, 0.5, mask={'a': True, 'i': True})
  with pytest.raises(ValueError, match='rank must be'):
    projections.low_rank_factors({'a': tree['a']}, {'b': 1})
