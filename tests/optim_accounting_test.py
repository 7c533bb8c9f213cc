"""Tests for the model-size accounting in atmc_jax.optim."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from atmc_jax import optim

# CaffeLeNet: (out, fan_in) of conv1, conv2, fc1, fc2.
_LENET_LAYERS = {'conv1': (20, 25), 'conv2': (50, 500), 'fc1': (500, 800),
                 'fc2': (10, 500)}
_LENET_KERNELS = {'conv1': (5, 5, 1, 20), 'conv2': (5, 5, 20, 50),
                  'fc1': (800, 500), 'fc2': (500, 10)}


def _dense_lenet(rng, fill=True):
  """LeNet params by hand: Linen layout (HWIO conv kernels, in x out)."""
  params = {}
  for name, shape in _LENET_KERNELS.items():
    kernel = rng.standard_normal(shape).astype(np.float32) if fill else (
        np.zeros(shape, np.float32))
    params[name] = {'kernel': kernel,
                    'bias': np.ones(shape[-1], np.float32)}
  return params


def _factorized_lenet():
  """Zero U, V, C (r = min(out, fan_in)) plus a bias per layer."""
  params = {}
  for name, (out, fan_in) in _LENET_LAYERS.items():
    r = min(out, fan_in)
    params[name] = {'U': np.zeros((out, r), np.float32),
                    'V': np.zeros((r, fan_in), np.float32),
                    'C': np.zeros((out, fan_in), np.float32),
                    'bias': np.zeros(out, np.float32)}
  return params


class TensorSizeTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('zeros', np.zeros((4, 4)), 0, 0, 0),
      ('distinct_float32', np.arange(1.0, 17.0).reshape(4, 4), 16, 16,
       32 * 16),
      # 4 levels over 100 non-zeros: 2-bit codes plus a 4-entry codebook.
      ('four_levels', np.tile([1.0, -2.0, 3.0, 0.5, 0.0], 25).reshape(5, 25),
       100, 4, 100 * 2 + 32 * 4),
      # One level: 0-bit codes, one float32 codebook entry.
      ('one_level', np.array([[0.0, 2.0, 2.0, 2.0, 2.0, 2.0]]), 5, 1, 32),
      # 2**ceil(log2 4) = 4 is not < nnz = 4: stored as float32.
      ('boundary', np.array([[1.0, 2.0], [3.0, 4.0]]), 4, 4, 128),
      ('three_of_four', np.array([[1.0, 2.0], [3.0, 3.0]]), 4, 3, 128),
      # 2**ceil(log2 3) = 4 < 5: 5 * 2 + 3 * 32.
      ('three_of_five', np.array([[1.0, 2.0, 3.0, 3.0, 3.0]]), 5, 3, 106),
  )
  def test_formula(self, x, nnz, distinct, bits):
    s = optim.tensor_size_bits(x)
    self.assertEqual(s['nnz'], nnz)
    self.assertEqual(s['distinct'], distinct)
    self.assertEqual(s['bits'], bits)
    self.assertEqual(s['size'], x.size)

  def test_negative_zero_is_zero(self):
    s = optim.tensor_size_bits(np.array([[-0.0, 0.0, 1.0]]))
    self.assertEqual((s['nnz'], s['distinct'], s['bits']), (1, 1, 32))


class DenseCountTest(absltest.TestCase):

  def test_lenet_dense_count_and_bits(self):
    params = _dense_lenet(np.random.default_rng(0))
    self.assertEqual(optim.dense_weight_count(params), 430_500)
    # Spec 4.2: LeNet's dense size is 13,776,000 bits (biases excluded).
    self.assertEqual(optim.model_size_bits(params), 13_776_000)
    self.assertEqual(optim.compression_ratio(params), 1.0)

  def test_factorized_lenet_counts_c_only(self):
    params = _factorized_lenet()
    self.assertEqual(optim.dense_weight_count(params), 430_500)
    factor_entries = sum(
        params[l][k].size for l in params for k in ('U', 'V', 'C'))
    self.assertEqual(factor_entries, 1_114_000)  # spec 3.1 table
    self.assertEqual(optim.model_size_bits(params), 0)

  def test_mixed_tree_and_mask(self):
    params = _factorized_lenet()
    params['conv1'] = {'kernel': np.ones((5, 5, 1, 20), np.float32),
                       'bias': np.zeros(20, np.float32)}
    self.assertEqual(optim.dense_weight_count(params), 430_500)
    # Select only fc1's factors: the dense count is fc1's out * fan_in.
    mask = {l: {k: (l == 'fc1' and k != 'bias') for k in v}
            for l, v in params.items()}
    self.assertEqual(optim.dense_weight_count(params, mask), 400_000)
    # A selected bias counts its size.
    mask['conv1']['bias'] = True
    self.assertEqual(optim.dense_weight_count(params, mask), 400_020)

  def test_bad_mask_raises(self):
    with self.assertRaisesRegex(ValueError, 'mask structure'):
      optim.dense_weight_count({'a': np.ones((2, 2))}, {'b': True})


class CompressionRatioTest(absltest.TestCase):

  def test_pruned_float32_ratio_is_density(self):
    rng = np.random.default_rng(1)
    params = _dense_lenet(rng)
    p = 0.01
    k = int(p * 430_500)
    flat_sizes = [params[l]['kernel'].size for l in params]
    keep = rng.permutation(sum(flat_sizes))[:k]
    on = np.zeros(sum(flat_sizes), bool)
    on[keep] = True
    offset = 0
    for l, size in zip(params, flat_sizes):
      kern = params[l]['kernel']
      params[l]['kernel'] = np.where(
          on[offset:offset + size].reshape(kern.shape), kern, 0.0)
      offset += size
    stats = optim.compression_stats(params)
    self.assertEqual(stats['nnz'], k)
    self.assertEqual(stats['bits'], 32 * k)
    self.assertAlmostEqual(stats['ratio'], k / 430_500)
    self.assertAlmostEqual(stats['density'], k / 430_500)
    self.assertEqual(stats['dense_bits'], 13_776_000)
    self.assertSetEqual(set(stats['leaves']),
                        {f'{l}/kernel' for l in _LENET_KERNELS})

  def _atmc8_lenet(self, p, rng):
    """k = p * dense non-zeros spread over U, V, C by size, 8-bit levels."""
    params = _factorized_lenet()
    names = [(l, t) for l in params for t in ('U', 'V', 'C')]
    sizes = np.array([params[l][t].size for l, t in names])
    k = int(p * 430_500)
    share = np.floor(k * sizes / sizes.sum()).astype(int)
    share[np.argmax(sizes)] += k - share.sum()
    for (l, t), n in zip(names, share):
      x = params[l][t].reshape(-1)
      levels = rng.standard_normal(256).astype(np.float32)
      pos = rng.permutation(x.size)[:n]
      # Every level used once when there is room, then random levels.
      idx = np.concatenate([rng.permutation(256),
                            rng.integers(0, 256, max(n - 256, 0))])[:n]
      x[pos] = levels[idx]
      params[l][t] = x.reshape(params[l][t].shape)
    return params, k

  def test_atmc8_ratio_matches_spec_figure(self):
    rng = np.random.default_rng(2)
    for p in (0.01, 0.05, 0.1, 0.2):
      params, k = self._atmc8_lenet(p, rng)
      stats = optim.compression_stats(params, 430_500)
      self.assertEqual(stats['nnz'], k)
      self.assertLessEqual(stats['max_distinct'], 256)
      # Spec 4.2: CR ~ p/4 plus at most 12 codebooks of 256 float32
      # (<= 0.0071 for LeNet); unquantised small tensors cost 32 bits each,
      # which the bound p/4 + 0.0071 also covers here.
      self.assertGreaterEqual(stats['ratio'], p / 4)
      self.assertLessEqual(stats['ratio'], p / 4 + 12 * 256 * 32 / 13_776_000)
      # Exact: 8-bit codes plus codebooks for the quantised tensors.
      expected = sum(
          s['nnz'] * 8 + 32 * s['distinct'] if s['quantized']
          else 32 * s['nnz'] for s in stats['leaves'].values())
      self.assertEqual(stats['bits'], expected)
    # The figure's MNIST ATMC-8 x-positions (spec 4.2), with non-zeros
    # spread over the factors in proportion to their sizes.
    for p, figure_cr in ((0.01, 0.0048), (0.05, 0.0165), (0.1, 0.030),
                         (0.2, 0.055)):
      params, _ = self._atmc8_lenet(p, rng)
      cr = optim.compression_ratio(params, 430_500)
      self.assertAlmostEqual(cr / figure_cr, 1.0, delta=0.1, msg=f'p={p}')

  def test_bad_dense_count_raises(self):
    with self.assertRaisesRegex(ValueError, r'dense_weight_count.*\[1, inf\)'):
      optim.compression_ratio({'a': np.ones((2, 2))}, 0)
    with self.assertRaisesRegex(ValueError, r'\[1, inf\)'):
      optim.compression_stats({'a': np.ones(2)}, None)  # nothing selected


if __name__ == '__main__':
  absltest.main()
