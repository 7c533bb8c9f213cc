"""Tests for atmc_jax.export: the packed file, its size, NumPy inference."""

import functools
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from atmc_jax import data
from atmc_jax import export
from atmc_jax import models
from atmc_jax import optim
from atmc_jax import projections

_EXPORT_DIR = pathlib.Path(export.__file__).resolve().parent


def _load_by_path(name):
  """A NumPy-only module of atmc_jax/export, loaded by file path."""
  spec = importlib.util.spec_from_file_location(
      f'standalone_{name}', _EXPORT_DIR / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_fmt = _load_by_path('_format')


def _tmp(test_case, name='model.atmc'):
  d = tempfile.mkdtemp()
  test_case.addCleanup(lambda: [os.remove(os.path.join(d, f))
                                for f in os.listdir(d)] and os.rmdir(d))
  return os.path.join(d, name)


def _fmnist_available():
  d = data.find_idx_dir()
  return d is not None and os.path.exists(
      os.path.join(d, 't10k-images-idx3-ubyte.gz'))


def _sparse(rng, shape, nnz, levels=None):
  x = np.zeros(int(np.prod(shape)), np.float32)
  idx = rng.choice(x.size, nnz, replace=False)
  if levels is None:
    x[idx] = rng.standard_normal(nnz).astype(np.float32) + 3.0
  else:
    table = np.linspace(-1, 1, levels).astype(np.float32)
    table[table == 0] = 0.01
    vals = table[np.arange(nnz) % levels]  # every level used
    x[idx] = vals
  return x.reshape(shape)


class FormatTest(parameterized.TestCase):
  """Encoding of single tensors (NumPy only)."""

  def test_varints_round_trip(self):
    v = np.array([0, 1, 127, 128, 16383, 16384, 2**35, 2**64 - 1], np.uint64)
    buf = _fmt.varint_encode(v)
    self.assertLen(buf, 1 + 1 + 1 + 2 + 2 + 3 + 6 + 10)
    np.testing.assert_array_equal(_fmt.varint_decode(buf, v.size), v)
    with self.assertRaisesRegex(ValueError, 'do not hold 9 varints'):
      _fmt.varint_decode(buf, 9)
    with self.assertRaisesRegex(ValueError, 'do not hold'):
      _fmt.varint_decode(buf[:-1], v.size)

  @parameterized.parameters(1, 2, 3, 7, 8, 9, 15, 16)
  def test_codes_round_trip_and_size(self, bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=101)
    buf = _fmt.pack_codes(codes, bits)
    self.assertLen(buf, (101 * bits + 7) // 8)
    np.testing.assert_array_equal(_fmt.unpack_codes(buf, 101, bits), codes)

  @parameterized.named_parameters(
      # name, shape, nnz, levels, expected (pos, val, code_bits)
      ('empty_tensor', (0, 5), 0, None, ('none', 'none', 0)),
      ('all_zeros', (7, 9), 0, None, ('none', 'none', 0)),
      ('one_level', (40, 30), 50, 1, ('deltas', 'codebook', 0)),
      ('one_bit_codes', (40, 30), 50, 2, ('deltas', 'codebook', 1)),
      ('d_equals_2_to_b', (40, 30), 300, 16, ('bitmap', 'codebook', 4)),
      ('d_just_above_2_to_b', (40, 30), 300, 17, ('bitmap', 'codebook', 5)),
      ('not_quantised', (40, 30), 60, None, ('deltas', 'float32', 0)),
      ('d_equals_nnz_power_of_two', (10, 10), 8, 8, ('deltas', 'float32', 0)),
      ('no_zeros', (6, 5), 30, 4, ('all', 'codebook', 2)),
      ('big_gaps', (1, 100000), 3, None, ('deltas', 'float32', 0)),
      ('scalar', (), 1, None, ('all', 'float32', 0)),
  )
  def test_tensor_round_trip_and_size(self, shape, nnz, levels, expected):
    rng = np.random.default_rng(0)
    x = _sparse(rng, shape, nnz, levels)
    entry, segments = _fmt.encode_tensor('t', x, True)
    entry = _fmt.row_to_entry(_fmt.entry_to_row(entry))  # as stored
    back = _fmt.decode_tensor(entry, b''.join(segments))
    np.testing.assert_array_equal(back, x)
    self.assertEqual(back.shape, x.shape)
    self.assertEqual(back.dtype, np.float32)
    self.assertEqual((entry['pos'], entry['val'], entry.get('code_bits', 0)),
                     expected)
    # Codes + codebook (or values) take the accounted bits, rounded up to
    # whole bytes; the index is the smaller of bitmap and deltas.
    accounted = optim.tensor_size_bits(x)['bits']
    self.assertEqual(_fmt.accounted_bits(entry['nnz'], entry['distinct']),
                     accounted)
    sizes = _fmt.segment_sizes(entry)
    self.assertEqual(8 * (sizes['codes'] + sizes['values']) - accounted,
                     (-accounted) % 8 if entry['val'] == 'codebook' else 0)
    bitmap = (x.size + 7) // 8
    if entry['pos'] in ('bitmap', 'deltas'):
      self.assertLessEqual(sizes['index'], bitmap)
    else:
      self.assertEqual(sizes['index'], 0)

  def test_uncompressed_and_bad_tensors(self):
    for x in (np.arange(5, dtype=np.float32), np.arange(4, dtype=np.int32),
              np.ones((2, 3), np.float64)):
      entry, segments = _fmt.encode_tensor('b', x, False)
      back = _fmt.decode_tensor(entry, b''.join(segments))
      np.testing.assert_array_equal(back, x)
      self.assertEqual(back.dtype, x.dtype)
    with self.assertRaisesRegex(ValueError, 'not exactly representable'):
      _fmt.encode_tensor('w', np.full((2, 2), 0.1, np.float64), True)
    with self.assertRaisesRegex(ValueError, 'non-finite'):
      _fmt.encode_tensor('w', np.full((2, 2), np.nan, np.float32), True)
    with self.assertRaisesRegex(ValueError, 'floating point'):
      _fmt.encode_tensor('w', np.ones((2, 2), np.int32), True)

  def test_random_trees_round_trip(self):
    rng = np.random.default_rng(3)
    for trial in range(5):
      tensors = []
      for i in range(rng.integers(1, 6)):
        shape = tuple(rng.integers(0, 9, size=rng.integers(0, 4)))
        size = int(np.prod(shape))
        nnz = int(rng.integers(0, size + 1))
        levels = [None, 1, 2, 4, 256][rng.integers(0, 5)]
        x = _sparse(rng, shape, nnz, levels if nnz else None)
        tensors.append((f'params/l{i}/w', x, bool(rng.integers(0, 2))))
      path = _tmp(self)
      _fmt.write(path, tensors, metadata={'trial': trial})
      loaded = _fmt.load(path)
      self.assertEqual(loaded.metadata, {'trial': trial})
      for name, x, _ in tensors:
        _, layer, leaf = name.split('/')
        np.testing.assert_array_equal(
            loaded.variables['params'][layer][leaf], x)

  def test_not_a_packed_file(self):
    path = _tmp(self, 'x.npz')
    with open(path, 'wb') as f:
      np.savez(f, a=np.zeros(3))
    with self.assertRaisesRegex(ValueError, 'not a packed model'):
      _fmt.load(path)
    with open(path, 'wb') as f:
      np.savez(f, header=np.frombuffer(b'{"format":"x"}', np.uint8),
               payload=np.zeros(0, np.uint8))
    with self.assertRaisesRegex(ValueError, 'version'):
      _fmt.load(path)


def _lenet_params(factorized, seed=0):
  model = models.create_model('lenet', num_classes=10, factorized=factorized)
  return model, model.init(jax.random.key(seed),
                           jnp.zeros((1, 28, 28, 1)))['params']


def _dense_like():
  model = models.create_model('lenet', num_classes=10)
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 28, 28, 1))))['params']


def _sgd():
  return optax.sgd(0.01)


class SaveLoadTest(parameterized.TestCase):
  """Every compressed kind through save / load."""

  def _check_round_trip(self, deployed, state_or_stats, factorized):
    path = _tmp(self)
    report = export.save(path, deployed, state_or_stats,
                         metadata={'model': 'lenet'},
                         like=_dense_like() if factorized else None)
    raw = export.load(path, materialize=False)
    for (_, a), (_, b) in zip(
        jax.tree_util.tree_flatten_with_path(deployed)[0],
        jax.tree_util.tree_flatten_with_path(raw.variables['params'])[0]):
      np.testing.assert_array_equal(np.asarray(a), b)
    self.assertEqual(jax.tree.structure(raw.variables['params']),
                     jax.tree.structure(jax.device_get(deployed)))
    self.assertEqual(report['total']['accounted_bits'],
                     optim.model_size_bits(deployed))
    dense = export.load(path).variables['params']
    expected = (models.materialize(deployed, like=_dense_like())
                if factorized else deployed)
    for (_, a), (_, b) in zip(
        jax.tree_util.tree_flatten_with_path(expected)[0],
        jax.tree_util.tree_flatten_with_path(dense)[0]):
      self.assertEqual(np.shape(a), b.shape)
      np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-6)
    return report

  def test_pruned_dense_fixed_support(self):  # AP / NAP
    _, params = _lenet_params(False)
    start = optim.deployable_params(params, budget=4000)
    tx = optim.fixed_support(_sgd())
    state = tx.init(start)
    deployed = optim.deployable_params(start, state)
    report = self._check_round_trip(deployed, state, False)
    self.assertEqual(report['total']['dense_weight_count'], 430500)

  def test_pruned_dense_l0(self):  # AL0
    _, params = _lenet_params(False)
    state = optim.atmc(_sgd(), budget=4000).init(params)
    deployed = optim.deployable_params(params, state)
    report = self._check_round_trip(deployed, state, False)
    self.assertEqual(sum(r['nnz'] or 0 for r in report['tensors']), 4000)

  def test_factorized_32_bit(self):  # ATMC-32
    _, params = _lenet_params(True)
    stats = None
    deployed = optim.deployable_params(params, budget=4300)
    stats = optim.compression_stats(deployed)
    self._check_round_trip(deployed, stats, True)

  def test_factorized_8_bit(self):  # ATMC-8
    _, params = _lenet_params(True)
    state = optim.atmc(_sgd(), budget=4300, bits=8).init(params)
    deployed = optim.deployable_params(params, state)
    report = self._check_round_trip(deployed, state, True)
    self.assertTrue(any(r['val'] == 'codebook' for r in report['tensors']))

  def test_low_rank_factor_pairs(self):  # ALR: kernel = (B·A).T
    _, dense = _lenet_params(False)
    ranks = {'conv1': {'kernel': 3, 'bias': None},
             'conv2': {'kernel': 4, 'bias': None},
             'fc1': {'kernel': 5, 'bias': None},
             'fc2': {'kernel': 2, 'bias': None}}
    b_tree, a_tree = projections.low_rank_factors(dense, ranks)
    params = jax.device_get(models.to_low_rank(dense, b_tree, a_tree))
    path = _tmp(self)
    report = export.save(path, params, None, like=_dense_like())
    raw = export.load(path, materialize=False).variables['params']
    for layer in ('conv1', 'fc1'):
      for k in ('B', 'A', 'bias'):
        np.testing.assert_array_equal(raw[layer][k], params[layer][k])
    rows = {r['name']: r for r in report['tensors']}
    self.assertEqual(rows['params/fc1/A']['pos'], 'all')
    self.assertEqual(rows['params/fc1/bias']['kind'], 'dense')
    # Stored as float32 factors: the accounted size is ALR's 32 r (m + n).
    self.assertEqual(report['total']['accounted_bits'],
                     models.low_rank_bits(params))
    loaded = export.load(path).variables['params']
    expected = models.materialize(params, like=_dense_like())
    for layer in ('conv1', 'conv2', 'fc1', 'fc2'):
      self.assertEqual(loaded[layer]['kernel'].shape,
                       expected[layer]['kernel'].shape)
      np.testing.assert_allclose(loaded[layer]['kernel'],
                                 expected[layer]['kernel'], atol=1e-6)

  def test_batch_stats_and_metadata(self):
    params = {'conv': {'kernel': np.ones((3, 3, 2, 4), np.float32)},
              'bn': {'scale': np.ones(4, np.float32),
                     'bias': np.zeros(4, np.float32)}}
    stats = {'bn': {'mean': np.arange(4, dtype=np.float32),
                    'var': np.ones(4, np.float32)}}
    path = _tmp(self)
    export.save(path, params, None, batch_stats=stats,
                metadata={'model': 'resnet_tiny', 'metrics': {'ta': 0.5}})
    loaded = export.load(path)
    np.testing.assert_array_equal(
        loaded.variables['batch_stats']['bn']['mean'], stats['bn']['mean'])
    self.assertEqual(loaded.metadata['metrics'], {'ta': 0.5})

  def test_save_rejects_params_that_are_not_deployable(self):
    _, params = _lenet_params(False)
    state = optim.atmc(_sgd(), budget=4000, bits=4).init(params)
    with self.assertRaisesRegex(ValueError, "above the state's budget 4000"):
      export.save(_tmp(self), params, state)
    l0_only = optim.deployable_params(params, budget=4000)
    with self.assertRaisesRegex(ValueError, r'distinct non-zero values.*2\^4'):
      export.save(_tmp(self), l0_only, state)
    stats = optim.compression_stats(optim.deployable_params(params, state))
    with self.assertRaisesRegex(ValueError, 'the stats say'):
      export.save(_tmp(self), l0_only, stats)


def _atmc8_lenet():
  """A random factorized LeNet, pruned to 4,300 non-zeros and 8 bits.

  Each factor is scaled to standard deviation 0.5 first, so that the
  global budget keeps about 1% of every layer (at PyTorch's initial scale
  it would keep no fc1 weight, and the logits would not depend on x).
  """
  model, params = _lenet_params(True, seed=1)
  params = jax.tree.map(
      lambda x: 0.5 * x / jnp.std(x) if x.ndim == 2 and jnp.std(x) > 0 else x,
      params)
  state = optim.atmc(_sgd(), budget=4300, bits=8).init(params)
  return model, optim.deployable_params(params, state), state


class Atmc8LeNetTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.params, cls.state = _atmc8_lenet()
    cls.dir = tempfile.mkdtemp()
    cls.path = os.path.join(cls.dir, 'lenet8.atmc')
    cls.metadata = {
        'model': 'lenet',
        'model_config': {'num_classes': 10, 'factorized': True,
                         'mean': [0.2860], 'std': [0.3530]},
        'dataset': 'fashion_mnist', 'stage': 'atmc8', 'sparsity': 0.01,
        'bits': 8,
        'threat_model': {'norm': 'linf', 'epsilon': 0.1,
                         'attack': {'num_steps': 10, 'step_size': 0.025,
                                    'random_start': True}},
        'metrics': {'ta': 0.8612, 'ata': 0.7423, 'compression_ratio': 0.0049},
    }
    cls.report = export.save(cls.path, cls.params, cls.state,
                             metadata=cls.metadata, like=_dense_like())

  def test_file_size_is_the_accounted_size_plus_indices_and_overhead(self):
    t = self.report['total']
    self.assertEqual(sum(r['nnz'] or 0 for r in self.report['tensors']), 4300)
    self.assertBetween(t['accounted_bits'], 50000, 70000)
    self.assertEqual(t['file_bytes'], os.path.getsize(self.path))
    self.assertEqual(t['uncompressed_bits'], 32 * 580)  # the biases
    overhead = (t['file_bytes'] - t['accounted_bits'] / 8
                - t['index_bits'] / 8 - t['uncompressed_bits'] / 8)
    # Byte rounding, the JSON header and the ZIP/.npy framing: under 2 KB.
    self.assertLess(overhead, 2048)
    self.assertEqual(t['header_bytes'] + t['container_bytes']
                     + t['payload_bytes'], t['file_bytes'])
    self.assertAlmostEqual(t['paper_ratio'],
                           optim.compression_ratio(self.params, 430500))
    self.assertAlmostEqual(t['file_ratio'],
                           t['file_bytes'] / (4 * (430500 + 580)))
    text = export.format_size_report(self.report)
    self.assertIn(f'file bytes on disk: {t["file_bytes"]}', text)
    self.assertIn('paper ratio', text)
    self.assertIn('file ratio', text)

  def test_numpy_forward_matches_flax_on_fashion_mnist(self):
    if not _fmnist_available():
      self.skipTest('Fashion-MNIST IDX files absent')
    images, labels = data.load_split('fashion_mnist', 'test')
    x = images[:300].astype(np.float32) / 255.0
    del labels
    model = models.create_model('lenet', num_classes=10, factorized=True,
                                mean=(0.2860,), std=(0.3530,))
    expected = np.asarray(model.apply({'params': self.params}, x))
    loaded = export.load(self.path)
    nm = _load_by_path('_numpy_models')
    got = nm.logits(loaded.variables, loaded.metadata, x)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    # The logits depend on the image (every layer kept some weights).
    self.assertGreater(expected.std(axis=0).min(), 0.1)
    self.assertGreater(len(set(expected.argmax(1))), 1)
    # The dense Flax model on the loaded weights computes the same.
    dense = models.create_model('lenet', num_classes=10,
                                mean=(0.2860,), std=(0.3530,))
    np.testing.assert_allclose(
        np.asarray(dense.apply(loaded.variables, x)), expected, atol=1e-5)

  def test_torch_layout_nchw_forward_matches(self):
    loaded = export.load(self.path)
    params = loaded.variables['params']
    torch = export.to_torch_layout(params, export.lenet_flatten_shapes(params))
    self.assertEqual(torch['conv1.weight'].shape, (20, 1, 5, 5))
    self.assertEqual(torch['conv2.weight'].shape, (50, 20, 5, 5))
    self.assertEqual(torch['fc1.weight'].shape, (500, 800))
    self.assertEqual(torch['fc2.weight'].shape, (10, 500))
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    nm = _load_by_path('_numpy_models')
    expected = nm.logits(loaded.variables, loaded.metadata, x)
    np.testing.assert_allclose(
        _torch_style_lenet(torch, x.transpose(0, 3, 1, 2),
                           mean=0.2860, std=0.3530), expected, atol=1e-5)

  def test_load_needs_numpy_only(self):
    out = os.path.join(self.dir, 'logits.npy')
    script = f'''
import importlib.util, sys
BLOCKED = ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'chex',
           'tensorflow', 'tensorflow_datasets', 'ml_collections', 'atmc_jax')
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED:
      raise ImportError('blocked: ' + name)
    return None
sys.meta_path.insert(0, Block())
def load(name):
  spec = importlib.util.spec_from_file_location(
      name, {str(_EXPORT_DIR)!r} + '/' + name + '.py')
  m = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(m)
  return m
fmt, nm, tl = load('_format'), load('_numpy_models'), load('_torch_layout')
import numpy as np
model = fmt.load({self.path!r})
x = np.linspace(0, 1, 4 * 28 * 28, dtype=np.float32).reshape(4, 28, 28, 1)
np.save({out!r}, nm.logits(model.variables, model.metadata, x))
tl.to_torch_layout(model.variables['params'])
print(fmt.format_size_report(fmt.size_report({self.path!r})))
assert not [m for m in sys.modules if m.split('.')[0] in BLOCKED]
'''
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          text=True, cwd='/', timeout=120)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertIn('file bytes on disk', proc.stdout)
    x = np.linspace(0, 1, 4 * 28 * 28, dtype=np.float32).reshape(4, 28, 28, 1)
    model = models.create_model('lenet', num_classes=10, factorized=True,
                                mean=(0.2860,), std=(0.3530,))
    np.testing.assert_allclose(np.load(out), model.apply(
        {'params': self.params}, x), atol=1e-5)

  def test_model_card(self):
    summary = {'stage': 'atmc8', 'dataset': 'fashion_mnist', 'model': 'lenet',
               'ta': 0.8612, 'ata': 0.7423, 'nnz': 4300, 'sparsity': 0.01,
               'bits': 8, 'compression': 'atmc', 'ignored_key': 1}
    json_path, md_path = export.write_model_card(
        self.path, summary,
        checks={'test_examples': 10, 'test_accuracy': 0.5})
    self.assertEqual(export.card_paths(self.path), (json_path, md_path))
    with open(json_path) as f:
      card = json.load(f)
    self.assertEqual(card['training']['ta'], 0.8612)
    self.assertNotIn('ignored_key', card['training'])
    self.assertEqual(card['size']['file_bytes'], os.path.getsize(self.path))
    self.assertEqual(card['checks'],
                     {'test_examples': 10, 'test_accuracy': 0.5})
    with open(md_path) as f:
      md = f.read()
    self.assertIn('| TA (test, deployable) | 0.8612 |', md)
    with self.assertRaisesRegex(ValueError, "no 'ta'"):
      export.write_model_card(self.path, {'stage': 'da'})


def _torch_style_lenet(w, x_nchw, mean, std):
  """LeNet in NCHW with PyTorch-layout weights (a reference, NumPy)."""
  def conv(x, weight, bias):
    o, i, kh, kw = weight.shape
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    # (N, C, H', W', kh, kw) x (O, C, kh, kw) -> (N, O, H', W')
    return np.einsum('nchwij,ocij->nohw', win, weight) + bias[:, None, None]

  def pool(x):
    n, c, h, ww = x.shape
    return x.reshape(n, c, h // 2, 2, ww // 2, 2).max(axis=(3, 5))

  x = (x_nchw - mean) / std
  x = pool(conv(x, w['conv1.weight'], w['conv1.bias']))
  x = pool(conv(x, w['conv2.weight'], w['conv2.bias']))
  x = x.reshape(x.shape[0], -1)  # NCHW flatten, as torch.flatten
  x = np.maximum(x @ w['fc1.weight'].T + w['fc1.bias'], 0)
  return x @ w['fc2.weight'].T + w['fc2.bias']


if __name__ == '__main__':
  absltest.main()
