"""Tests for the ATMC models: sizes, dense == factorized, call convention."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax import models

_SHAPES = {'lenet': (28, 28, 1), 'resnet34': (32, 32, 3),
           'wrn16_8': (32, 32, 3), 'resnet18': (32, 32, 3),
           'resnet_tiny': (8, 8, 3)}


def _sizes(params):
  """(dense weights, factor-space entries, C entries, biases) of params."""
  kernels = factors = c_size = biases = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = path[-1].key
    size = int(np.prod(leaf.shape))
    if name == 'kernel':
      kernels += size
    elif name in ('U', 'V', 'C'):
      factors += size
      c_size += size if name == 'C' else 0
    elif name == 'bias' and 'bn' not in str(path[-2].key):
      biases += size
  return kernels, factors, c_size, biases


def _abstract_variables(model, shape):
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1,) + shape, jnp.float32))


class SizesTest(parameterized.TestCase):

  @parameterized.parameters(
      # name, classes, dense weights, U/V/C entries (spec §3.1), biases.
      ('lenet', 10, 430_500, 1_114_000, 580),
      ('resnet34', 10, 21_265_088, 45_131_965, 10),
      ('resnet34', 100, 21_311_168, None, 100),
      ('wrn16_8', 10, 10_954_160, 23_367_108, 10),
  )
  def test_weight_counts(self, name, classes, dense, factor_space, biases):
    shape = _SHAPES[name]
    v_dense = _abstract_variables(
        models.create_model(name, num_classes=classes), shape)
    v_fact = _abstract_variables(
        models.create_model(name, num_classes=classes, factorized=True),
        shape)
    k, f, c, b = _sizes(v_dense['params'])
    self.assertEqual((k, f, c, b), (dense, 0, 0, biases))
    k, f, c, b = _sizes(v_fact['params'])
    self.assertEqual(k, 0)
    self.assertEqual(c, dense)  # The L0 budget base: sum of the C sizes.
    self.assertEqual(b, biases)
    if factor_space is not None:
      self.assertEqual(f, factor_space)
    # Same non-weight leaves (biases, BN) in both variants.
    strip = lambda t: {  # pylint: disable=g-long-lambda
        '/'.join(str(p.key) for p in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(t)[0]
        if path[-1].key not in ('kernel', 'U', 'V', 'C')}
    self.assertEqual(strip(v_dense), strip(v_fact))

  def test_resnet34_layers(self):
    v = _abstract_variables(models.ResNet34(num_classes=10), (32, 32, 3))
    shapes = [x.shape for x in jax.tree.leaves(v['params']) if x.ndim >= 2]
    self.assertLen(shapes, 37)
    self.assertEqual(sum(s[:2] == (3, 3) for s in shapes), 33)
    self.assertEqual(sum(s[:2] == (1, 1) for s in shapes), 3)
    self.assertIn('batch_stats', v)

  def test_wrn16_8_layers(self):
    v = _abstract_variables(models.WRN16_8(num_classes=10), (32, 32, 3))
    shapes = [x.shape for x in jax.tree.leaves(v['params']) if x.ndim >= 2]
    self.assertLen(shapes, 17)


def _numpy_variables(model, shape, seed=0):
  """Random variables with the model's structure, drawn cheaply with NumPy.

  Kernels ~ N(0, 1 / fan_in), biases and BN affine params and statistics
  perturbed around their defaults, so that every leaf matters.
  """
  rng = np.random.default_rng(seed)
  abstract = _abstract_variables(model, shape)

  def fill(path, leaf):
    name = path[-1].key
    if leaf.ndim >= 2:
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.standard_normal(leaf.shape) / np.sqrt(fan_in)
    elif name in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = 0.1 * rng.standard_normal(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _equivalence(model_name, num_classes, batch, train, conv_impl):
  """Dense logits on p, factorized logits on factorize(p), round trip ok."""
  shape = _SHAPES[model_name]
  dense = models.create_model(model_name, num_classes=num_classes,
                              conv_impl=conv_impl)
  fact = models.create_model(model_name, num_classes=num_classes,
                             factorized=True, conv_impl=conv_impl)
  x = jax.random.uniform(jax.random.key(1), (batch,) + shape)
  variables = _numpy_variables(dense, shape)
  fvars = models.factorize(variables)
  back = models.materialize(fvars['params'], like=variables['params'])
  round_trip = jax.tree.all(jax.tree.map(
      lambda a, b: a.shape == b.shape and bool(jnp.all(a == b)), back,
      variables['params']))
  mutable = ['batch_stats'] if train and 'batch_stats' in variables else False

  @jax.jit
  def run(variables, fvars):
    outs = []
    for model, v in ((dense, variables), (fact, fvars)):
      y = model.apply(v, x, train=train, mutable=mutable,
                      rngs={'dropout': jax.random.key(2)})
      outs.append(y[0] if mutable else y)
    return outs

  y_dense, y_fact = run(variables, fvars)
  return y_dense, y_fact, round_trip


class EquivalenceTest(parameterized.TestCase):

  @parameterized.parameters(
      # ResNet-34 and WRN-16-8 use the lax conv only to compile faster in
      # tests; im2col == lax is tested in layers_test.py.
      ('lenet', 10, 8, False, 'auto'),
      ('resnet_tiny', 10, 4, False, 'auto'),
      ('resnet_tiny', 10, 4, True, 'auto'),
      ('resnet34', 10, 2, False, 'lax'),
      ('wrn16_8', 10, 2, False, 'lax'),
      ('wrn16_8', 10, 2, True, 'lax'),
  )
  def test_factorized_equals_dense(self, name, classes, batch, train, impl):
    y_dense, y_fact, round_trip = _equivalence(name, classes, batch, train,
                                               impl)
    chex.assert_shape(y_dense, (batch, classes))
    self.assertEqual(y_dense.dtype, jnp.float32)
    self.assertGreater(float(jnp.std(y_dense)), 0.0)
    self.assertLess(float(jnp.max(jnp.abs(y_dense - y_fact))), 1e-5)
    self.assertTrue(bool(round_trip))


class FreshFactorizedTest(parameterized.TestCase):

  @parameterized.parameters(('lenet', 'auto'),)
  def test_fresh_factorized_model_is_sensible(self, name, impl):
    shape = _SHAPES[name]
    dense = models.create_model(name, num_classes=10, conv_impl=impl)
    fact = models.create_model(name, num_classes=10, factorized=True,
                               conv_impl=impl)
    x = jax.random.uniform(jax.random.key(1), (8,) + shape)

    @jax.jit
    def run(x):
      dvars = dense.init(jax.random.key(0), x)
      fvars = fact.init(jax.random.key(0), x)
      back = models.materialize(fvars['params'], like=dvars['params'])
      mvars = dict(fvars, params=back)
      return (dvars, fvars, back, dense.apply(dvars, x),
              fact.apply(fvars, x), dense.apply(mvars, x))

    dvars, fvars, back, y_dense, y_fact, y_mat = run(x)
    # The materialised fresh factorized model is the same function ...
    np.testing.assert_allclose(y_mat, y_fact, atol=1e-5, rtol=1e-5)
    # ... with square factors and C at zero, and W drawn like the dense init.
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        fvars['params'])[0]:
      if path[-1].key == 'C' or (leaf.ndim == 2 and
                                 leaf.shape[0] == leaf.shape[1]
                                 and path[-1].key in ('U', 'V')):
        np.testing.assert_array_equal(leaf, 0.0)
    w_std = [float(jnp.std(k)) for k in jax.tree.leaves(back) if k.ndim >= 2]
    d_std = [float(jnp.std(k)) for k in jax.tree.leaves(dvars['params'])
             if k.ndim >= 2]
    np.testing.assert_allclose(w_std, d_std, rtol=0.25)
    # Logits on the same scale as the dense model's.
    ratio = float(jnp.std(y_fact) / jnp.std(y_dense))
    self.assertBetween(ratio, 0.2, 5.0)


def _tiny(**kwargs):
  # The lax conv compiles faster; these tests are not about the conv path.
  kwargs.setdefault('conv_impl', 'lax')
  return models.create_model('resnet_tiny', num_classes=10, **kwargs)


@functools.lru_cache(maxsize=None)
def _tiny_variables():
  return _numpy_variables(_tiny(), _SHAPES['resnet_tiny'])


class CallConventionTest(parameterized.TestCase):

  def test_batch_norm_train_mode_updates_stats(self):
    model = _tiny()
    x = jax.random.uniform(jax.random.key(1), (4,) + _SHAPES['resnet_tiny'])
    variables = _tiny_variables()
    logits, upd = jax.jit(functools.partial(
        model.apply, train=True, mutable=['batch_stats']))(variables, x)
    chex.assert_shape(logits, (4, 10))
    chex.assert_trees_all_equal_structs(upd['batch_stats'],
                                        variables['batch_stats'])
    before = variables['batch_stats']['bn1']['mean']
    self.assertGreater(float(jnp.max(jnp.abs(
        upd['batch_stats']['bn1']['mean'] - before))), 0.0)
    with self.assertRaises(Exception):  # batch_stats is immutable.
      model.apply(variables, x, train=True)

  def test_bn_axis_name_averages_statistics(self):
    x = jax.random.uniform(jax.random.key(1), (8,) + _SHAPES['resnet_tiny'])
    plain = _tiny()
    synced = _tiny(bn_axis_name='batch')
    variables = _tiny_variables()
    apply = lambda m, xs: m.apply(variables, xs, train=True,  # pylint: disable=g-long-lambda
                                  mutable=['batch_stats'])
    want_logits, want = jax.jit(functools.partial(apply, plain))(x)
    got_logits, got = jax.jit(jax.vmap(
        functools.partial(apply, synced), axis_name='batch'))(
            x.reshape((2, 4) + x.shape[1:]))
    np.testing.assert_allclose(got_logits.reshape(8, 10), want_logits,
                               atol=1e-4, rtol=1e-4)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], got), want,
                                atol=1e-5, rtol=1e-4)

  def test_wrn_dropout_and_init(self):
    model = models.WideResNet(num_classes=10, depth=10, widen_factor=2,
                              dropout_rate=0.4, conv_impl='lax')
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    params = variables['params']
    # Init of the reference: conv N(0, 2 / (k^2 out)), BN (1, 0), FC bias 0.
    kernel = params['block3_0']['conv2']['kernel']  # (3, 3, 128, 128)
    np.testing.assert_allclose(jnp.std(kernel), np.sqrt(2 / (9 * 128)),
                               rtol=0.02)
    np.testing.assert_allclose(jnp.mean(kernel), 0.0, atol=1e-3)
    np.testing.assert_array_equal(params['bn1']['scale'], 1.0)
    np.testing.assert_array_equal(params['bn1']['bias'], 0.0)
    np.testing.assert_array_equal(params['fc']['bias'], 0.0)

    train_fn = jax.jit(lambda v, k: model.apply(
        v, x, train=True, mutable=['batch_stats'], rngs={'dropout': k})[0])
    a = train_fn(variables, jax.random.key(3))
    b = train_fn(variables, jax.random.key(3))
    c = train_fn(variables, jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    self.assertGreater(float(jnp.max(jnp.abs(a - c))), 0.0)
    eval_fn = jax.jit(lambda v: model.apply(v, x, train=False))
    np.testing.assert_array_equal(eval_fn(variables), eval_fn(variables))
    with self.assertRaises(Exception):  # Dropout needs an rng in training.
      model.apply(variables, x, train=True, mutable=['batch_stats'])

  def test_normalisation_inside_model(self):
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    x = jax.random.uniform(jax.random.key(1), (2,) + _SHAPES['resnet_tiny'])
    plain = _tiny()
    normed = _tiny(mean=mean, std=std)
    variables = _tiny_variables()
    x_norm = (x - jnp.asarray(mean)) / jnp.asarray(std)
    np.testing.assert_allclose(
        jax.jit(normed.apply)(variables, x),
        jax.jit(plain.apply)(variables, x_norm), atol=1e-5, rtol=1e-5)
    with self.assertRaisesRegex(ValueError, 'std entries must be > 0'):
      models.create_model('resnet_tiny', num_classes=10,
                          std=(0.2, 0.0, 0.2)).init(jax.random.key(0), x)
    with self.assertRaisesRegex(ValueError, 'expected 1 or 3'):
      models.create_model('resnet_tiny', num_classes=10,
                          mean=(0.1, 0.2)).init(jax.random.key(0), x)

  def test_conv_impls_agree_on_factorized_lenet(self):
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    a = models.CaffeLeNet(factorized=True, conv_impl='im2col')
    b = models.CaffeLeNet(factorized=True, conv_impl='lax')
    variables = _numpy_variables(a, (28, 28, 1))  # Random U, V and C.
    np.testing.assert_allclose(jax.jit(a.apply)(variables, x),
                               jax.jit(b.apply)(variables, x),
                               atol=1e-4, rtol=1e-4)

  def test_bfloat16_compute(self):
    model = _tiny(dtype=jnp.bfloat16)
    x = jax.random.uniform(jax.random.key(1), (2,) + _SHAPES['resnet_tiny'])
    variables = _tiny_variables()
    self.assertTrue(all(leaf.dtype == jnp.float32
                        for leaf in jax.tree.leaves(variables)))
    logits = jax.jit(model.apply)(variables, x)
    self.assertEqual(logits.dtype, jnp.float32)
    chex.assert_tree_all_finite(logits)


class RegistryTest(parameterized.TestCase):

  def test_names(self):
    self.assertContainsSubset(['lenet', 'resnet34', 'wrn16_8', 'resnet_tiny'],
                              models.model_names())
    self.assertEqual(models.model_names(), sorted(models.MODELS))
    m = models.create_model('wrn16_8', num_classes=10, factorized=True)
    self.assertIsInstance(m, models.WideResNet)
    self.assertEqual((m.depth, m.widen_factor, m.dropout_rate, m.factorized),
                     (16, 8, 0.4, True))
    self.assertIsInstance(models.create_model('lenet', num_classes=10),
                          models.CaffeLeNet)

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "unknown model 'vgg16'"):
      models.create_model('vgg16', num_classes=10)
    with self.assertRaisesRegex(ValueError, 'num_classes must be >= 1'):
      models.create_model('lenet', num_classes=0)
    x = jnp.zeros((1, 16, 16, 3))
    with self.assertRaisesRegex(ValueError, 'depth must be 6n'):
      jax.eval_shape(models.WideResNet(depth=12).init, jax.random.key(0), x)
    with self.assertRaisesRegex(ValueError, 'conv_impl must be one of'):
      jax.eval_shape(models.CaffeLeNet(conv_impl='fast').init,
                     jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


if __name__ == '__main__':
  absltest.main()
