"""Tests for the fast CPU ops and the dense layers of atmc_jax.models."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from atmc_jax import models


def _distinct(key, shape):
  """Values with no ties (a random permutation of 0..n-1, scaled)."""
  n = int(np.prod(shape))
  return jax.random.permutation(key, n).reshape(shape).astype(
      jnp.float32) / n


class MaxPoolTest(parameterized.TestCase):

  @parameterized.parameters((2, 8, 8, 3), (3, 7, 9, 2), (1, 24, 24, 20))
  def test_equals_flax_max_pool(self, n, h, w, c):
    x = jax.random.normal(jax.random.key(0), (n, h, w, c))
    got = jax.jit(models.max_pool_2x2)(x)
    want = jax.jit(lambda z: nn.max_pool(z, (2, 2), strides=(2, 2),
                                         padding='VALID'))(x)
    chex.assert_shape(got, (n, h // 2, w // 2, c))
    np.testing.assert_array_equal(got, want)

  @parameterized.parameters((2, 8, 8, 3), (2, 7, 9, 2))
  def test_gradient_equals_flax_without_ties(self, n, h, w, c):
    x = _distinct(jax.random.key(1), (n, h, w, c))
    cot = jax.random.normal(jax.random.key(2), (n, h // 2, w // 2, c))
    g_got = jax.jit(jax.grad(
        lambda z: jnp.sum(models.max_pool_2x2(z) * cot)))(x)
    g_want = jax.jit(jax.grad(lambda z: jnp.sum(
        nn.max_pool(z, (2, 2), strides=(2, 2)) * cot)))(x)
    np.testing.assert_array_equal(g_got, g_want)
    # Exactly one entry per window receives the cotangent.
    self.assertEqual(int(jnp.count_nonzero(g_got)), n * (h // 2) * (w // 2)
                     * c)

  def test_gradient_with_ties_splits_mass(self):
    x = jnp.ones((1, 2, 2, 1))
    g = jax.grad(lambda z: jnp.sum(models.max_pool_2x2(z)))(x)
    np.testing.assert_allclose(jnp.sum(g), 1.0)

  def test_bad_input_raises(self):
    with self.assertRaisesRegex(ValueError, 'H, W >= 2'):
      models.max_pool_2x2(jnp.zeros((1, 1, 4, 3)))
    with self.assertRaisesRegex(ValueError, 'H, W, C'):
      models.max_pool_2x2(jnp.zeros((4, 3)))


# (kernel, strides, padding, in spatial): every configuration the models use
# (LeNet 5x5 VALID; ResNet/WRN 3x3 pad 1 at strides 1/2, 1x1 shortcuts at
# stride 2), plus 'SAME' and asymmetric explicit padding.
_CONV_CASES = (
    ('lenet_5x5_valid', 5, 1, 'VALID', 12),
    ('3x3_pad1', 3, 1, 1, 8),
    ('3x3_pad1_stride2', 3, 2, 1, 8),
    ('3x3_pad1_stride2_odd', 3, 2, 1, 9),
    ('1x1_stride2', 1, 2, 0, 8),
    ('1x1_valid', 1, 1, 'VALID', 5),
    ('3x3_same_stride2', 3, 2, 'SAME', 8),
    ('3x3_explicit', 3, 1, ((0, 2), (1, 0)), 6),
    ('2x3_rect', (2, 3), (1, 2), 'SAME', 7),
)


class Conv2dTest(parameterized.TestCase):

  @parameterized.named_parameters(*_CONV_CASES)
  def test_im2col_equals_lax_conv(self, k, s, padding, hw):
    kh, kw = (k, k) if isinstance(k, int) else k
    x = jax.random.normal(jax.random.key(0), (2, hw, hw + 1, 3))
    kernel = jax.random.normal(jax.random.key(1), (kh, kw, 3, 4))
    strides = (s, s) if isinstance(s, int) else s
    pads = padding
    if isinstance(padding, int):
      pads = ((padding, padding), (padding, padding))

    @jax.jit
    def run(a, b):
      want = lax.conv_general_dilated(
          a, b, strides, pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          precision=lax.Precision.HIGHEST)
      return want, [models.conv2d(a, b, strides=s, padding=padding,
                                  impl=impl, precision=lax.Precision.HIGHEST)
                    for impl in ('im2col', 'lax')]

    want, (got, got_lax) = run(x, kernel)
    chex.assert_shape(got, want.shape)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got_lax, want, atol=1e-6, rtol=1e-6)

  @parameterized.named_parameters(*_CONV_CASES[:3], _CONV_CASES[4])
  def test_im2col_gradients_equal_lax(self, k, s, padding, hw):
    x = jax.random.normal(jax.random.key(3), (2, hw, hw, 3))
    kernel = jax.random.normal(jax.random.key(4), (k, k, 3, 4))

    def loss(impl):
      def f(a, b):
        y = models.conv2d(a, b, strides=s, padding=padding, impl=impl,
                          precision=lax.Precision.HIGHEST)
        return jnp.sum(jnp.sin(y))
      return jax.jit(jax.grad(f, argnums=(0, 1)))(x, kernel)

    chex.assert_trees_all_close(loss('im2col'), loss('lax'), atol=1e-4,
                                rtol=1e-4)

  @parameterized.named_parameters(
      ('lenet_5x5_valid', 5, 1, 'VALID', 28),
      ('3x3_pad1_stride2', 3, 2, 1, 9),
      ('2x3_rect_same', (2, 3), (1, 2), 'SAME', 7),
  )
  def test_one_input_channel_matches_lax(self, k, s, padding, hw):
    # C_in == 1 takes the lax-forward / im2col-backward custom_vjp path.
    kh, kw = (k, k) if isinstance(k, int) else k
    x = jax.random.normal(jax.random.key(5), (3, hw, hw + 1, 1))
    kernel = jax.random.normal(jax.random.key(6), (kh, kw, 1, 6))

    def run(impl):
      def f(a, b):
        return models.conv2d(a, b, strides=s, padding=padding, impl=impl,
                             precision=lax.Precision.HIGHEST)

      def loss(a, b):
        return jnp.sum(jnp.sin(f(a, b)))

      return jax.jit(f)(x, kernel), jax.jit(jax.grad(loss, (0, 1)))(x, kernel)

    (y, grads), (y_lax, grads_lax) = run('im2col'), run('lax')
    chex.assert_shape(y, y_lax.shape)
    np.testing.assert_allclose(y, y_lax, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(grads, grads_lax, atol=1e-4, rtol=1e-4)
    # The 2-D kernel form takes the same path.
    y2 = models.conv2d(x, kernel.reshape(kh * kw, 6), kernel_size=(kh, kw),
                       strides=s, padding=padding, impl='im2col',
                       precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(y2, y_lax, atol=1e-5, rtol=1e-5)

  def test_two_d_kernel_matches_four_d(self):
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 2))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 2, 5))
    for impl in ('im2col', 'lax'):
      a = models.conv2d(x, kernel, padding=1, impl=impl)
      b = models.conv2d(x, kernel.reshape(18, 5), kernel_size=3, padding=1,
                        impl=impl)
      np.testing.assert_array_equal(a, b)

  def test_auto_picks_im2col_on_cpu(self):
    self.assertEqual(jax.default_backend(), 'cpu')
    x = jnp.zeros((1, 6, 6, 2))
    kernel = jnp.zeros((3, 3, 2, 5))
    jaxpr = str(jax.make_jaxpr(
        lambda a, b: models.conv2d(a, b, impl='auto'))(x, kernel))
    self.assertNotIn('conv_general_dilated', jaxpr)
    self.assertIn('dot_general', jaxpr)
    jaxpr = str(jax.make_jaxpr(
        lambda a, b: models.conv2d(a, b, impl='lax'))(x, kernel))
    self.assertIn('conv_general_dilated', jaxpr)

  def test_bad_arguments_raise(self):
    x = jnp.zeros((1, 6, 6, 2))
    kernel = jnp.zeros((3, 3, 2, 5))
    with self.assertRaisesRegex(ValueError, "conv_impl must be one of"):
      models.conv2d(x, kernel, impl='cudnn')
    with self.assertRaisesRegex(ValueError, 'padding must be'):
      models.conv2d(x, kernel, padding='FULL')
    with self.assertRaisesRegex(ValueError, 'non-negative'):
      models.conv2d(x, kernel, padding=-1)
    with self.assertRaisesRegex(ValueError, 'strides'):
      models.conv2d(x, kernel, strides=0)
    with self.assertRaisesRegex(ValueError, 'input channels'):
      models.conv2d(jnp.zeros((1, 6, 6, 3)), kernel)
    with self.assertRaisesRegex(ValueError, 'kernel_size'):
      models.conv2d(x, kernel.reshape(18, 5))


class DenseLayersTest(parameterized.TestCase):

  @parameterized.parameters('im2col', 'lax')
  def test_conv_module_matches_flax_conv(self, impl):
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    ours = models.Conv(4, 3, strides=2, padding=1, conv_impl=impl)
    params = ours.init(jax.random.key(1), x)['params']
    chex.assert_shape(params['kernel'], (3, 3, 3, 4))
    flax_conv = nn.Conv(4, (3, 3), strides=2, padding=((1, 1), (1, 1)),
                        precision=lax.Precision.HIGHEST)
    want = flax_conv.apply({'params': params}, x)
    got = ours.apply({'params': params}, x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

  def test_default_init_is_pytorch_uniform(self):
    x = jnp.zeros((1, 10, 10, 20))
    params = jax.jit(models.Conv(50, 5, padding='VALID').init)(
        jax.random.key(0), x)['params']
    bound = 1.0 / np.sqrt(5 * 5 * 20)
    for leaf in (params['kernel'], params['bias']):
      self.assertLessEqual(float(jnp.max(jnp.abs(leaf))), bound)
    self.assertGreater(float(jnp.max(jnp.abs(params['kernel']))),
                       0.95 * bound)
    # Uniform(-b, b) has std b / sqrt(3).
    np.testing.assert_allclose(jnp.std(params['kernel']), bound / np.sqrt(3),
                               rtol=0.05)

  def test_dense_module_and_dtype(self):
    x = jax.random.normal(jax.random.key(0), (3, 7))
    layer = models.Dense(5)
    params = layer.init(jax.random.key(1), x)['params']
    y = layer.apply({'params': params}, x)
    np.testing.assert_allclose(y, x @ params['kernel'] + params['bias'],
                               rtol=1e-6, atol=1e-6)
    y16 = models.Dense(5, dtype=jnp.bfloat16).apply({'params': params}, x)
    self.assertEqual(y16.dtype, jnp.bfloat16)
    self.assertEqual(params['kernel'].dtype, jnp.float32)


if __name__ == '__main__':
  absltest.main()
