"""Tests for ``project_quantize``, ``quantize_codebook`` and ``dequantize``."""

import functools
import itertools

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
from atmc_jax.projections import _quantize

_SHAPES = [(2, 5), (3, 4), (1, 7)]


@st.composite
def trees(draw):
  """Fixed shapes (few compilations); ties, zeros and all-zero leaves."""
  tree = {}
  for i, shape in enumerate(_SHAPES):
    kind = draw(st.sampled_from(['ties', 'floats', 'zeros', 'sparse']))
    if kind == 'zeros':
      x = np.zeros(shape, np.float32)
    elif kind == 'ties':
      x = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(
          [0.0, 1.0, -1.0, 2.0, -3.0, 0.25])))
    else:
      x = draw(hnp.arrays(np.float32, shape, elements=st.floats(
          -4, 4, width=32, allow_subnormal=False)))
      if kind == 'sparse':
        x = x * draw(hnp.arrays(bool, shape))
    tree[f'w{i}'] = x
  tree['bias'] = np.linspace(-1, 1, 5).astype(np.float32)
  return tree


@functools.lru_cache(maxsize=None)
def _jitted(bits, method):
  return jax.jit(lambda t: projections.project_quantize(t, bits,
                                                        method=method))


def _distinct_nonzero(x):
  x = np.asarray(x)
  return np.unique(x[x != 0]).size


def _sse(a, b):
  return float(np.sum((np.asarray(a, np.float64) - np.asarray(b)) ** 2))


def _brute_force_sse(x, n_levels):
  """Exact optimum by enumerating every labelling into {0, 1..K}."""
  v = np.asarray(x, np.float64)
  v = v[v != 0]
  best = np.inf
  for lab in itertools.product(range(n_levels + 1), repeat=v.size):
    lab = np.array(lab)
    cost = np.sum(v[lab == 0] ** 2)
    for g in range(1, n_levels + 1):
      w = v[lab == g]
      if w.size:
        cost += np.sum((w - w.mean()) ** 2)
    best = min(best, cost)
  return best


@settings(max_examples=30, deadline=None)
@given(tree=trees(), bits=st.sampled_from([1, 2]),
       method=st.sampled_from(['lloyd', 'optimal']))
def test_invariants(tree, bits, method):
  out = _jitted(bits, method)(tree)
  chex.assert_trees_all_equal_structs(out, tree)
  chex.assert_trees_all_equal_dtypes(out, tree)
  np.testing.assert_array_equal(out['bias'], tree['bias'])
  for name in ('w0', 'w1', 'w2'):
    x, q = np.asarray(tree[name]), np.asarray(out[name])
    assert _distinct_nonzero(q) <= 2 ** bits
    assert np.all(q[x == 0] == 0), 'a zero became non-zero'
    if _distinct_nonzero(x) <= 2 ** bits:
      np.testing.assert_array_equal(q, x)  # feasible leaves untouched
    # Every entry sits at its nearest level in {0} U codebook.
    levels = np.concatenate([[0.0], np.unique(q[q != 0])])
    nearest = np.min(np.abs(x[..., None] - levels), axis=-1)
    np.testing.assert_allclose(np.abs(x - q), nearest, atol=1e-6)
  chex.assert_trees_all_equal(_jitted(bits, method)(out), out)  # idempotent


@settings(max_examples=25, deadline=None)
@given(x=hnp.arrays(np.float32, (2, 4), elements=st.one_of(
    st.just(0.0), st.floats(-3, 3, width=32, allow_subnormal=False))))
def test_optimal_matches_brute_force_and_beats_lloyd(x):
  tree = {'x': x}
  q_opt = np.asarray(_jitted(1, 'optimal')(tree)['x'])
  q_lloyd = np.asarray(_jitted(1, 'lloyd')(tree)['x'])
  best = _brute_force_sse(x, 2)
  assert _sse(q_opt, x) == pytest.approx(best, rel=1e-4, abs=1e-5)
  assert _sse(q_opt, x) <= _sse(q_lloyd, x) * (1 + 1e-5) + 1e-6


def test_lloyd_fixed_point_and_optimal_on_larger_leaf():
  key = jax.random.key(0)
  x = jax.random.normal(key, (40, 50))
  x = x * (jax.random.uniform(jax.random.key(1), x.shape) < 0.5)
  tree = {'x': x}
  bits = 3
  q = np.asarray(_jitted(bits, 'lloyd')(tree)['x'])
  xn = np.asarray(x)
  assert _distinct_nonzero(q) == 2 ** bits
  # At convergence every level is the mean of the entries mapped to it.
  for c in np.unique(q[q != 0]):
    np.testing.assert_allclose(c, xn[q == c].mean(), rtol=1e-5, atol=1e-6)
  q_opt = np.asarray(_jitted(bits, 'optimal')(tree)['x'])
  assert _distinct_nonzero(q_opt) <= 2 ** bits
  assert _sse(q_opt, xn) <= _sse(q, xn) * (1 + 1e-5)
  assert np.count_nonzero(q) <= np.count_nonzero(xn)


def test_sparse_large_leaf_uses_compaction_consistently():
  # A 256 x 256 leaf with 600 non-zeros is solved on a compacted copy; the
  # result must match the same values in a small dense leaf.
  vals = jax.random.normal(jax.random.key(5), (600,))
  pos = jnp.arange(600) * 109
  big = jnp.zeros((256 * 256,)).at[pos].set(vals).reshape(256, 256)
  fn = jax.jit(lambda t: projections.project_quantize(t, 3))
  out = fn({'big': big, 'small': vals.reshape(20, 30)})
  got = np.asarray(out['big']).reshape(-1)[np.asarray(pos)]
  np.testing.assert_allclose(got, np.asarray(out['small']).reshape(-1),
                             rtol=1e-5, atol=1e-6)
  assert np.count_nonzero(np.asarray(out['big'])) <= 600
  assert _distinct_nonzero(out['big']) <= 8


def test_forgy_reference_mode():
  x = jax.random.normal(jax.random.key(2), (30, 30))
  fn = jax.jit(lambda t, k: projections.project_quantize(
      t, 2, init='forgy', key=k))
  out1 = fn({'x': x}, jax.random.key(0))['x']
  out2 = fn({'x': x}, jax.random.key(0))['x']
  np.testing.assert_array_equal(out1, out2)
  assert _distinct_nonzero(out1) <= 4
  with pytest.raises(ValueError, match='key'):
    projections.project_quantize({'x': x}, 2, init='forgy')


def test_codebook_round_trip():
  key = jax.random.key(3)
  tree = {'a': jax.random.normal(key, (20, 30)),
          'b': jnp.array([[0., 1.5, 1.5], [-2., 0., 0.]]),
          'z': jnp.zeros((3, 3)),
          'bias': jnp.ones((4,))}
  bits = 2
  q = projections.project_quantize(tree, bits)
  books, codes = projections.quantize_codebook(tree, bits)
  back = projections.dequantize(books, codes, tree)
  chex.assert_trees_all_equal(back, q)
  assert books['bias'] is None and codes['bias'] is None
  assert books['a'].shape == (4,) and codes['a'].dtype == jnp.int32
  assert np.all(np.diff(np.asarray(books['a'])) >= 0)
  np.testing.assert_array_equal(books['b'], [-2., 1.5, 1.5, 1.5])
  np.testing.assert_array_equal(codes['b'], [[0, 2, 2], [1, 0, 0]])
  np.testing.assert_array_equal(codes['z'], np.zeros((3, 3)))


def test_atmc_is_feasible():
  key = jax.random.key(4)
  tree = {'a': jax.random.normal(key, (30, 40)),
          'b': jax.random.normal(key, (3, 3, 4, 8)),
          'bias': jnp.ones((8,))}
  k, bits = 300, 2
  out = jax.jit(lambda t: projections.project_atmc(t, k, bits))(tree)
  nnz = sum(int(jnp.count_nonzero(out[n])) for n in ('a', 'b'))
  assert nnz <= k
  for n in ('a', 'b'):
    assert _distinct_nonzero(out[n]) <= 2 ** bits
  np.testing.assert_array_equal(out['bias'], tree['bias'])


@pytest.mark.parametrize('init', ['quantile', 'forgy'])
def test_budget_hint_changes_nothing(init):
  # ``max_nonzeros`` drops unreachable compacted copies: every value must
  # stay bit-identical to quantising each leaf on its own without the hint. The 256 x 256
  # leaves take the compacted path (capacity 1024 at 600 non-zeros); the
  # reference is the per-leaf solver with the leaf's own key.
  key = jax.random.key(7) if init == 'forgy' else None
  ks = jax.random.split(jax.random.key(8), 6)
  tree = {'a': jax.random.t(ks[0], 3.0, (20, 30)),
          'b': jax.random.t(ks[1], 3.0, (20, 30)),
          'c': jax.random.t(ks[2], 3.0, (7, 9))}
  for i, name in enumerate(('big1', 'big2')):
    pos = jax.random.choice(ks[3 + i], 256 * 256, (600,), replace=False)
    tree[name] = jnp.zeros((256 * 256,)).at[pos].set(
        jax.random.normal(ks[5], (600,))).reshape(256, 256)
  tree['bias'] = jnp.ones((5,))
  opts = dict(init=init, key=key)
  grouped = jax.jit(lambda t: projections.project_quantize(
      t, 3, max_nonzeros=600, **opts))(tree)
  names = sorted(tree)
  leaf_keys = dict(zip(names, jax.random.split(key, len(names))
                       if key is not None else [None] * len(names)))
  for name in names:
    if name == 'bias':
      continue
    max_iters, tol = _quantize._resolve_options('lloyd', None, None, init,
                                                key)
    alone = jax.jit(lambda x, k: _quantize._quantize_leaf(  # pylint: disable=cell-var-from-loop
        x, 3, 'lloyd', max_iters, tol, init, k))(tree[name], leaf_keys[name])
    np.testing.assert_array_equal(grouped[name], alone, err_msg=name)
  np.testing.assert_array_equal(grouped['bias'], tree['bias'])
  with pytest.raises(ValueError, match=r'max_nonzeros .*\[0, inf\)'):
    projections.project_quantize(tree, 3, max_nonzeros=-1)


def test_bad_input():
  tree = {'a': jnp.ones((2, 2)), 'i': jnp.ones((2, 2), jnp.int32)}
  for bits in (0, 17, 2.0, True):
    with pytest.raises(ValueError, match=r'bits must be .*\[1, 16\]'):
      projections.project_quantize({'a': tree['a']}, bits)
  with pytest.raises(ValueError, match='method'):
    projections.project_quantize({'a': tree['a']}, 2, method='kmeans')
  with pytest.raises(ValueError, match='mask structure'):
    projections.project_quantize(tree, 2, mask={'a': True})
  with pytest.raises(ValueError, match='floating'):
    projections.project_quantize(tree, 2, mask={'a': True, 'i': True})
  with pytest.raises(ValueError, match='k must be'):
    projections.project_atmc({'a': tree['a']}, -3, 2)


def test_non_finite_values():
  x = np.asarray(jax.random.normal(jax.random.key(6), (20, 30)))
  for bad in (np.nan, np.inf, -np.inf):
    y = x.copy()
    y[3, 4] = bad
    with pytest.raises(ValueError, match=r'finite values, got 1 non-finite '
                       r'entries .*leaf 0 of shape \(20, 30\)'):
      projections.project_quantize({'w': y}, 2)
    # Under jit the values cannot be checked: the whole leaf becomes NaN.
    out = _jitted(2, 'lloyd')({'w': y, 'bias': np.zeros(5, np.float32)})
    assert np.all(np.isnan(out['w']))
    np.testing.assert_array_equal(out['bias'], np.zeros(5))
  out = _jitted(2, 'lloyd')({'w': x, 'bias': np.zeros(5, np.float32)})
  assert np.all(np.isfinite(out['w']))


def test_optimal_is_exact_when_the_mean_dwarfs_the_spread():
  """S2 - S1^2/n cancels in float32 for 100 + U(0, 1): the DP shifts first."""
  rng = np.random.default_rng(0)
  x = (100 + rng.random(3000)).astype(np.float32)
  out = np.asarray(projections.project_quantize(
      {'w': x.reshape(60, 50)}, 1, method='optimal')['w']).ravel()
  sse = float(np.sum((out.astype(np.float64) - x) ** 2))
  # The optimum over all splits of the sorted values into two clusters
  # (zero stays unused this far from 0), in float64.
  xs = np.sort(x.astype(np.float64))
  c1, c2, n = np.cumsum(xs), np.cumsum(xs ** 2), len(xs)
  k = np.arange(1, n)
  left = c2[k - 1] - c1[k - 1] ** 2 / k
  right = (c2[-1] - c2[k - 1]) - (c1[-1] - c1[k - 1]) ** 2 / (n - k)
  best = float(np.min(left + right))
  assert sse == pytest.approx(best, rel=1e-5)
