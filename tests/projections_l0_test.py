"""Tests for the global hard threshold ``project_l0``."""

import chex
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atmc_jax import projections


def _leaf(draw, float_values, shape):
  kind = draw(st.sampled_from(['ties', 'floats', 'zeros']))
  if kind == 'zeros':
    return np.zeros(shape, np.float32)
  if kind == 'ties':
    elems = st.sampled_from([0.0, 1.0, -1.0, 2.0, -2.0, 0.5])
  else:
    elems = float_values
  return draw(hnp.arrays(np.float32, shape, elements=elems))


@st.composite
def trees(draw):
  floats = st.floats(-10, 10, width=32, allow_subnormal=False)
  # Fixed shapes (one compilation); contents vary, incl. ties and zeros.
  tree = {f'w{i}': _leaf(draw, floats, shape)
          for i, shape in enumerate([(1, 6), (3, 4), (2, 2)])}
  tree['bias'] = draw(hnp.arrays(np.float32, (3,), elements=floats))
  return tree


def _reference(tree, k):
  """Stable argsort reference (tree-flatten order, then row-major)."""
  leaves, treedef = jax.tree.flatten(tree)
  sel = [i for i, x in enumerate(leaves) if np.ndim(x) >= 2]
  flat = np.concatenate([np.ravel(leaves[i]) for i in sel])
  order = np.argsort(-np.abs(flat), kind='stable')
  keep = np.zeros(flat.size, bool)
  keep[order[:k]] = True
  out = list(leaves)
  off = 0
  for i in sel:
    x = np.asarray(leaves[i])
    out[i] = np.where(keep[off:off + x.size].reshape(x.shape), x, 0)
    off += x.size
  return jax.tree.unflatten(treedef, out)


_jit_l0 = jax.jit(projections.project_l0)


def _nnz(tree):
  return sum(int(np.count_nonzero(x)) for x in jax.tree.leaves(tree)
             if np.ndim(x) >= 2)


def _size(tree):
  return sum(np.size(x) for x in jax.tree.leaves(tree) if np.ndim(x) >= 2)


@settings(max_examples=40, deadline=None)
@given(tree=trees(), frac=st.floats(0, 1.2))
def test_matches_stable_argsort_reference(tree, frac):
  k = int(frac * _size(tree))
  out = _jit_l0(tree, jnp.int32(k))
  chex.assert_trees_all_equal_structs(out, tree)
  chex.assert_trees_all_equal_dtypes(out, tree)
  chex.assert_trees_all_equal(out, _reference(tree, k))
  assert _nnz(out) == min(k, _nnz(tree))
  # Unselected (1-D) leaf is untouched.
  np.testing.assert_array_equal(out['bias'], tree['bias'])
  # Idempotent.
  chex.assert_trees_all_equal(_jit_l0(out, jnp.int32(k)), out)


def test_exact_count_with_heavy_ties_and_traced_k():
  x = jnp.array([[1., -1., 1., 0.], [1., 2., -1., 1.]])
  tree = {'a': x, 'b': -x}
  for k in range(0, 17):
    out = _jit_l0(tree, jnp.int32(k))
    assert _nnz(out) == min(k, 14)
    chex.assert_trees_all_equal(out, _reference(tree, k))


def test_jit_equals_no_jit_and_float_types():
  key = jax.random.key(0)
  tree = {'a': jax.random.normal(key, (6, 5)),
          'b': jax.random.normal(key, (2, 3, 1, 2)).astype(jnp.bfloat16),
          'c': jnp.zeros((2, 2))}
  k = 17
  out = projections.project_l0(tree, k)
  chex.assert_trees_all_equal(jax.jit(projections.project_l0,
                                      static_argnums=1)(tree, k), out)
  chex.assert_trees_all_equal_dtypes(out, tree)
  assert _nnz(out) == k
  ref = _reference(jax.tree.map(lambda v: np.asarray(v, np.float32), tree), k)
  chex.assert_trees_all_equal(
      jax.tree.map(lambda v: np.asarray(v, np.float32), out), ref)


def test_large_exact_count_and_threshold():
  x = jax.random.normal(jax.random.key(1), (300, 1000))
  k = 12345
  out = projections.project_l0({'x': x}, k)['x']
  assert int(jnp.count_nonzero(out)) == k
  kept = np.abs(np.asarray(out)[np.asarray(out) != 0])
  dropped = np.abs(np.asarray(x)[np.asarray(out) == 0])
  assert kept.min() >= dropped.max()


def test_mask_respected():
  tree = {'a': jnp.arange(1., 7.).reshape(2, 3), 'b': jnp.ones((2, 2)) * 10}
  out = jax.jit(lambda t: projections.project_l0(
      t, 2, mask={'a': True, 'b': False}))(tree)
  np.testing.assert_array_equal(out['b'], tree['b'])
  np.testing.assert_array_equal(out['a'], [[0, 0, 0], [0, 5, 6]])
  out = jax.jit(lambda t: projections.project_l0(
      t, 2, mask=lambda p: {'a': False, 'b': True}))(tree)
  np.testing.assert_array_equal(out['a'], tree['a'])
  np.testing.assert_array_equal(out['b'], [[10, 10], [0, 0]])


def test_bad_input():
  tree = {'a': jnp.ones((2, 2)), 'i': jnp.ones((2, 2), jnp.int32)}
  with pytest.raises(ValueError, match=r'k must be .*\[0, inf\).*-1'):
    projections.project_l0({'a': tree['a']}, -1)
  with pytest.raises(ValueError, match='k must be'):
    projections.project_l0({'a': tree['a']}, 1.5)
  with pytest.raises(ValueError, match='mask structure'):
    projections.project_l0(tree, 1, mask={'a': True})
  with pytest.raises(ValueError, match='floating'):
    projections.project_l0(tree, 1, mask={'a': True, 'i': True})
