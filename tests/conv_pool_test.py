"""Tests for the fused convolution + 2x2 max pooling op."""

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from atmc_jax import models


def _reference(x, kernel, bias, strides, padding):
  """XLA's convolution, the bias, then flax's max pooling."""
  pads = padding
  if isinstance(padding, int):
    pads = ((padding, padding), (padding, padding))
  y = lax.conv_general_dilated(
      x, kernel, strides, pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=lax.Precision.HIGHEST)
  if bias is not None:
    y = y + bias
  return nn.max_pool(y, (2, 2), strides=(2, 2), padding='VALID')


def _integers(key, shape, low, high):
  """Small integers as float32: every sum below is exact, ties are exact."""
  return jax.random.randint(key, shape, low, high).astype(jnp.float32)


# (name, kernel, strides, padding, input (H, W), input channels): LeNet's
# two layers, even and odd kernels, odd conv outputs (the last row/column is
# dropped by the pooling), explicit and 'SAME' padding, one channel, and a
# stride of 2 (which takes the unfused path).
_CASES = (
    ('lenet_conv1', (5, 5), 1, 'VALID', (28, 28), 1),
    ('lenet_conv2', (5, 5), 1, 'VALID', (12, 12), 20),
    ('3x3_same', (3, 3), 1, 'SAME', (8, 10), 3),
    ('3x3_valid_odd_out', (3, 3), 1, 'VALID', (8, 9), 2),
    ('2x2_valid', (2, 2), 1, 'VALID', (9, 8), 3),
    ('4x2_pad1', (4, 2), 1, 1, (7, 6), 2),
    ('1x1', (1, 1), 1, 'VALID', (5, 6), 4),
    ('5x3_explicit', (5, 3), 1, ((2, 1), (0, 1)), (9, 7), 2),
    ('3x3_stride2', (3, 3), 2, 1, (10, 10), 3),
)


class ConvMaxPoolTest(parameterized.TestCase):

  @parameterized.named_parameters(*_CASES)
  def test_value_and_gradients_equal_flax_with_ties(self, k, s, padding, hw,
                                                    c_in):
    # Integer data in a small range makes many windows tie (and zero rows
    # make whole windows equal to the bias), so this checks the tie rule
    # too: the gradient goes to the first maximum, as in nn.max_pool.
    keys = jax.random.split(jax.random.key(0), 4)
    x = _integers(keys[0], (2,) + hw + (c_in,), 0, 3)
    x = x.at[:, : hw[0] // 2].set(0.0)
    kernel = _integers(keys[1], k + (c_in, 5), -2, 3)
    bias = _integers(keys[2], (5,), -2, 3)
    want = _reference(x, kernel, bias, (s, s), padding)
    cot = jax.random.normal(keys[3], want.shape)

    for impl in ('im2col', 'lax'):
      def loss(a, b, c, impl=impl):
        y = models.conv2d_max_pool(a, b, c, strides=s, padding=padding,
                                   impl=impl,
                                   precision=lax.Precision.HIGHEST)
        return jnp.sum(y * cot), y

      (_, got), grads = jax.jit(jax.value_and_grad(
          loss, argnums=(0, 1, 2), has_aux=True))(x, kernel, bias)
      np.testing.assert_array_equal(got, want, err_msg=impl)
      want_grads = jax.grad(
          lambda a, b, c: jnp.sum(
              _reference(a, b, c, (s, s), padding) * cot),
          argnums=(0, 1, 2))(x, kernel, bias)
      for name, g, w in zip(('x', 'kernel', 'bias'), grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4,
                                   err_msg=f'{impl} d{name}')

  def test_tie_gradient_goes_to_first_maximum(self):
    # A 1x1 identity kernel: the op is plain 2x2 max pooling.
    x = jnp.array([[0., 1.], [1., 1.]]).reshape(1, 2, 2, 1)
    kernel = jnp.ones((1, 1, 1, 1))
    g = jax.grad(lambda z: jnp.sum(models.conv2d_max_pool(
        z, kernel, padding='VALID', impl='im2col')))(x)
    np.testing.assert_array_equal(g.ravel(), [0., 1., 0., 0.])
    x = jnp.full((1, 2, 2, 1), 3.0)
    g = jax.grad(lambda z: jnp.sum(models.conv2d_max_pool(
        z, kernel, padding='VALID', impl='im2col')))(x)
    np.testing.assert_array_equal(g.ravel(), [1., 0., 0., 0.])

  def test_two_d_kernel_and_no_bias(self):
    x = jax.random.normal(jax.random.key(1), (3, 12, 12, 4))
    kernel = jax.random.normal(jax.random.key(2), (5, 5, 4, 6))
    a = models.conv2d_max_pool(x, kernel, padding='VALID', impl='im2col')
    b = models.conv2d_max_pool(x, kernel.reshape(100, 6), kernel_size=5,
                               padding='VALID', impl='im2col')
    want = _reference(x, kernel, None, (1, 1), 'VALID')
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-5)

  def test_conv_modules_with_max_pool(self):
    x = jax.random.uniform(jax.random.key(3), (2, 12, 12, 3))
    for cls in (models.Conv, models.FactorizedConv):
      plain = cls(7, 5, padding='VALID', conv_impl='lax')
      fused = cls(7, 5, padding='VALID', max_pool=True)
      variables = plain.init(jax.random.key(4), x)
      self.assertEqual(
          jax.tree.structure(variables),
          jax.tree.structure(fused.init(jax.random.key(4), x)))
      want = nn.max_pool(plain.apply(variables, x), (2, 2), strides=(2, 2))
      np.testing.assert_allclose(fused.apply(variables, x), want,
                                 rtol=1e-5, atol=1e-5, err_msg=cls.__name__)

  def test_bad_arguments_raise(self):
    x = jnp.zeros((1, 6, 6, 2))
    kernel = jnp.zeros((3, 3, 2, 4))
    with self.assertRaisesRegex(ValueError, r'bias must have shape \(4,\)'):
      models.conv2d_max_pool(x, kernel, jnp.zeros(3))
    with self.assertRaisesRegex(ValueError, 'at least 2x2'):
      models.conv2d_max_pool(x, jnp.zeros((6, 6, 2, 4)), padding='VALID')
    with self.assertRaisesRegex(ValueError, 'NHWC'):
      models.conv2d_max_pool(jnp.zeros((6, 6, 2)), kernel)
    with self.assertRaisesRegex(ValueError, 'input channels'):
      models.conv2d_max_pool(x, jnp.zeros((3, 3, 5, 4)))
    with self.assertRaisesRegex(ValueError, 'kernel_size'):
      models.conv2d_max_pool(x, jnp.zeros((18, 4)))
    with self.assertRaisesRegex(ValueError, 'conv_impl'):
      models.conv2d_max_pool(x, kernel, impl='cudnn')


if __name__ == '__main__':
  absltest.main()
