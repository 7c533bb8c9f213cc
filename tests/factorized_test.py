"""Tests for the U·V+C layers and factorize / materialize."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from atmc_jax import models


def _nnz(tree):
  return sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree.leaves(tree))


class ComposeTest(parameterized.TestCase):

  @parameterized.parameters((6, 4), (4, 6), (5, 5))
  def test_identity_offset_formula(self, out, fan_in):
    shapes = models.factor_shapes(out, fan_in)
    r = min(out, fan_in)
    self.assertEqual(shapes, {'U': (out, r), 'V': (r, fan_in),
                              'C': (out, fan_in)})
    keys = jax.random.split(jax.random.key(0), 3)
    u, v, c = (jax.random.normal(k, shapes[n]) for k, n in zip(keys, 'UVC'))
    u, v, c = map(np.asarray, (u, v, c))
    if fan_in <= out:
      want = u @ (v + np.eye(fan_in)) + c
    else:
      want = (u + np.eye(out)) @ v + c
    np.testing.assert_allclose(models.compose(u, v, c), want, rtol=1e-5,
                               atol=1e-5)

  def test_bad_shapes_raise(self):
    with self.assertRaisesRegex(ValueError, 'expected U'):
      models.compose(jnp.zeros((3, 2)), jnp.zeros((3, 4)), jnp.zeros((3, 4)))


class FactorizedLayerTest(parameterized.TestCase):

  @parameterized.parameters((7, 3), (3, 7))
  def test_dense_layer_params_and_output(self, fan_in, out):
    x = jax.random.normal(jax.random.key(0), (4, fan_in))
    layer = models.FactorizedDense(out)
    params = jax.jit(layer.init)(jax.random.key(1), x)['params']
    r = min(fan_in, out)
    chex.assert_shape([params['U'], params['V'], params['C'], params['bias']],
                      [(out, r), (r, fan_in), (out, fan_in), (out,)])
    # Fresh init: the square factor and C are zero, W sits in the other one.
    square, other = ('V', 'U') if fan_in <= out else ('U', 'V')
    np.testing.assert_array_equal(params[square], 0.0)
    np.testing.assert_array_equal(params['C'], 0.0)
    self.assertEqual(_nnz(params[other]), out * fan_in)
    # Arbitrary factors: y = x W^T + b with W from the identity-offset rule.
    keys = jax.random.split(jax.random.key(2), 3)
    params = dict(params, **{n: jax.random.normal(k, params[n].shape)
                             for k, n in zip(keys, 'UVC')})
    w = models.compose(params['U'], params['V'], params['C'])
    want = x @ w.T + params['bias']
    got = layer.apply({'params': params}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  @parameterized.product(impl=('im2col', 'lax'), case=((3, 8), (20, 4)))
  def test_conv_layout_is_transposed_reshape(self, impl, case):
    c_in, out = case  # fan_in = 9 * c_in vs out covers both branches.
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, c_in))
    layer = models.FactorizedConv(out, 3, strides=2, padding=1,
                                  conv_impl=impl)
    params = jax.jit(layer.init)(jax.random.key(1), x)['params']
    keys = jax.random.split(jax.random.key(2), 3)
    params = dict(params, **{n: jax.random.normal(k, params[n].shape)
                             for k, n in zip(keys, 'UVC')})
    w = models.compose(params['U'], params['V'], params['C'])
    kernel = w.T.reshape(3, 3, c_in, out)
    want = lax.conv_general_dilated(
        x, kernel, (2, 2), ((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=lax.Precision.HIGHEST) + params['bias']
    got = jax.jit(layer.apply)({'params': params}, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  def test_fresh_init_statistics_match_dense_init(self):
    x = jnp.zeros((1, 12, 12, 20))
    dense = jax.jit(models.Conv(50, 5, padding='VALID').init)(
        jax.random.key(0), x)['params']
    fact = jax.jit(models.FactorizedConv(50, 5, padding='VALID').init)(
        jax.random.key(0), x)['params']
    w = models.compose(fact['U'], fact['V'], fact['C'])
    bound = 1.0 / np.sqrt(500)
    self.assertLessEqual(float(jnp.max(jnp.abs(w))), bound)
    np.testing.assert_allclose(jnp.std(w), jnp.std(dense['kernel']),
                               rtol=0.05)

  def test_gradients_reach_all_factors(self):
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 2))
    layer = models.FactorizedConv(4, 3)
    params = jax.jit(layer.init)(jax.random.key(1), x)['params']
    params = jax.tree.map(lambda p: p + 0.1, params)
    grads = jax.jit(jax.grad(
        lambda p: jnp.sum(layer.apply({'params': p}, x) ** 2)))(params)
    for name in ('U', 'V', 'C', 'bias'):
      self.assertGreater(float(jnp.max(jnp.abs(grads[name]))), 0.0, name)


def _dense_params():
  keys = jax.random.split(jax.random.key(0), 4)
  return {
      'conv': {'kernel': jax.random.normal(keys[0], (3, 3, 2, 4)),
               'bias': jnp.arange(4.0)},  # fan_in 18 > out 4.
      'stem': {'kernel': jax.random.normal(keys[1], (1, 1, 3, 16))},  # 3 < 16.
      'block': {'fc': {'kernel': jax.random.normal(keys[2], (6, 6)),
                       'bias': jnp.ones(6)},
                'bn': {'scale': jnp.ones(4), 'bias': jnp.zeros(4)}},
  }


class ConversionTest(parameterized.TestCase):

  def test_factorize_layout_and_round_trip(self):
    p = _dense_params()
    f = models.factorize(p)
    self.assertEqual(set(f['conv']), {'U', 'V', 'C', 'bias'})
    chex.assert_shape([f['conv']['U'], f['conv']['V'], f['conv']['C']],
                      [(4, 4), (4, 18), (4, 18)])
    np.testing.assert_array_equal(f['conv']['V'],
                                  p['conv']['kernel'].reshape(18, 4).T)
    np.testing.assert_array_equal(f['conv']['U'], 0.0)
    chex.assert_shape([f['stem']['U'], f['stem']['V'], f['stem']['C']],
                      [(16, 3), (3, 3), (16, 3)])
    np.testing.assert_array_equal(f['stem']['U'],
                                  p['stem']['kernel'].reshape(3, 16).T)
    np.testing.assert_array_equal(f['stem']['V'], 0.0)
    chex.assert_trees_all_equal(f['block']['bn'], p['block']['bn'])
    chex.assert_trees_all_equal(f['conv']['bias'], p['conv']['bias'])
    # Exact inverse, also under jit.
    chex.assert_trees_all_equal(models.materialize(f, like=p), p)
    chex.assert_trees_all_equal(
        jax.jit(lambda q: models.materialize(models.factorize(q), like=p))(p),
        p)

  def test_materialize_without_like_gives_two_d_kernels(self):
    p = _dense_params()
    m = models.materialize(models.factorize(p))
    np.testing.assert_array_equal(m['conv']['kernel'],
                                  p['conv']['kernel'].reshape(18, 4))
    np.testing.assert_array_equal(m['block']['fc']['kernel'],
                                  p['block']['fc']['kernel'])

  def test_materialize_bad_like_raises(self):
    f = models.factorize(_dense_params())
    with self.assertRaisesRegex(ValueError, 'no kernel'):
      models.materialize(f, like={'conv': {}, 'stem': {}, 'block': {}})
    bad = _dense_params()
    bad['conv']['kernel'] = jnp.zeros((3, 3, 2, 5))
    with self.assertRaisesRegex(ValueError, 'does not hold'):
      models.materialize(f, like=bad)

  def test_nnz_preserved_on_sparse_weights(self):
    p = _dense_params()
    keys = iter(jax.random.split(jax.random.key(5), 8))
    p = jax.tree.map(
        lambda x: x * (jax.random.uniform(next(keys), x.shape) < 0.2)
        if x.ndim >= 2 else x, p)
    kernels = [p['conv']['kernel'], p['stem']['kernel'],
               p['block']['fc']['kernel']]
    nnz_w = _nnz(kernels)
    self.assertGreater(nnz_w, 0)
    self.assertLess(nnz_w, sum(k.size for k in kernels) // 2)
    f = models.factorize(p)
    factors = [f['conv'][n] for n in 'UVC'] + [f['stem'][n] for n in 'UVC'] + [
        f['block']['fc'][n] for n in 'UVC']
    self.assertEqual(_nnz(factors), nnz_w)

  def test_factorize_whole_variables_dict(self):
    variables = {'params': _dense_params(),
                 'batch_stats': {'bn': {'mean': jnp.ones(4),
                                        'var': jnp.ones(4)}}}
    f = models.factorize(variables)
    chex.assert_trees_all_equal(f['batch_stats'], variables['batch_stats'])
    self.assertIn('U', f['params']['conv'])


if __name__ == '__main__':
  absltest.main()
