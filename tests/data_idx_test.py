"""Tests for the MNIST-format IDX reader."""

import gzip
import os
import struct
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from atmc_jax import data


def _idx_bytes(arr: np.ndarray, type_code: int) -> bytes:
  header = bytes([0, 0, type_code, arr.ndim])
  header += b''.join(struct.pack('>I', d) for d in arr.shape)
  return header + arr.tobytes()


def _write(path: str, payload: bytes) -> str:
  if path.endswith('.gz'):
    with gzip.open(path, 'wb') as f:
      f.write(payload)
  else:
    with open(path, 'wb') as f:
      f.write(payload)
  return path


class RealFashionMnistTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    if not data.has_idx_split(data.DEBIAN_FASHION_MNIST_DIR, 'test'):
      self.skipTest('Fashion-MNIST IDX files not found under '
                    f'{data.DEBIAN_FASHION_MNIST_DIR} '
                    '(apt-get install dataset-fashion-mnist).')

  def test_shapes_dtypes_labels(self):
    self.assertEqual(data.find_idx_dir(), data.DEBIAN_FASHION_MNIST_DIR)
    for split, n in (('train', 60_000), ('test', 10_000)):
      images, labels = data.load_idx_split(data.DEBIAN_FASHION_MNIST_DIR,
                                           split)
      self.assertEqual(images.shape, (n, 28, 28, 1))
      self.assertEqual(images.dtype, np.uint8)
      self.assertEqual(labels.shape, (n,))
      self.assertEqual(labels.dtype, np.int32)
      np.testing.assert_array_equal(np.unique(labels), np.arange(10))
      self.assertGreater(images.max(), 200)  # real pixels, not zeros
      # Balanced classes: Fashion-MNIST has n / 10 images per class.
      np.testing.assert_array_equal(np.bincount(labels), np.full(10, n // 10))

  def test_load_split_auto_uses_debian_files(self):
    images, labels = data.load_split('fashion_mnist', 'test')
    ref_images, ref_labels = data.load_idx_split(
        data.DEBIAN_FASHION_MNIST_DIR, 'test')
    np.testing.assert_array_equal(images, ref_images)
    np.testing.assert_array_equal(labels, ref_labels)


  def test_an_explicit_data_dir_is_the_only_place_looked_at(self):
    # The Debian copy exists, but an explicit empty data_dir must not fall
    # back to it: the error names the directory and the files expected.
    with tempfile.TemporaryDirectory() as empty:
      with self.assertRaisesRegex(FileNotFoundError,
                                  f't10k-images-idx3-ubyte.*{empty}'):
        data.load_split('fashion_mnist', 'test', data_dir=empty,
                        source='idx')

  def test_the_cache_is_looked_at_without_data_dir(self):
    with tempfile.TemporaryDirectory() as cache:
      os.makedirs(os.path.join(cache, 'mnist'))
      with mock.patch.dict(os.environ, {data._idx.CACHE_ENV: cache}):
        self.assertEqual(data.cache_dir(), cache)
        with self.assertRaisesRegex(FileNotFoundError,
                                    f'{cache}/mnist.*make mnist'):
          data.load_split('mnist', 'test', source='idx')


class SmallIdxTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name
    rng = np.random.default_rng(0)
    self.images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    self.labels = rng.integers(0, 10, (7,), dtype=np.uint8)

  def _write_split(self, split: str, suffix: str, directory=None):
    directory = directory or self.dir
    prefix = {'train': 'train', 'test': 't10k'}[split]
    _write(os.path.join(directory, f'{prefix}-images-idx3-ubyte{suffix}'),
           _idx_bytes(self.images, 0x08))
    _write(os.path.join(directory, f'{prefix}-labels-idx1-ubyte{suffix}'),
           _idx_bytes(self.labels, 0x08))

  @parameterized.parameters('', '.gz')
  def test_roundtrip(self, suffix):
    self._write_split('test', suffix)
    self.assertTrue(data.has_idx_split(self.dir, 'test'))
    self.assertFalse(data.has_idx_split(self.dir, 'train'))
    images, labels = data.load_idx_split(self.dir, 'test')
    np.testing.assert_array_equal(images, self.images[..., None])
    np.testing.assert_array_equal(labels, self.labels)
    self.assertEqual(labels.dtype, np.int32)
    self.assertTrue(images.flags.writeable)

  @parameterized.parameters(
      (0x0B, '>i2'), (0x0C, '>i4'), (0x0D, '>f4'), (0x0E, '>f8'), (0x09, 'i1'))
  def test_multibyte_types_native_order(self, code, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = _write(os.path.join(self.dir, 'x.idx.gz'), _idx_bytes(arr, code))
    out = data.read_idx(path)
    self.assertTrue(out.dtype.isnative)
    np.testing.assert_array_equal(out, arr)

  def test_load_split_reads_idx_from_data_dir_and_subdir(self):
    self._write_split('train', '.gz')
    images, _ = data.load_split('mnist', 'train', data_dir=self.dir,
                                source='idx')
    np.testing.assert_array_equal(images, self.images[..., None])
    # <data_dir>/<name>/ is searched too.
    sub = os.path.join(self.dir, 'fashion_mnist')
    os.makedirs(sub)
    self._write_split('test', '', directory=sub)
    images, _ = data.load_split('fashion_mnist', 'test', data_dir=self.dir)
    np.testing.assert_array_equal(images, self.images[..., None])

  def test_locate_split_names_the_directory_read(self):
    self._write_split('train', '.gz')
    sub = os.path.join(self.dir, 'mnist')
    os.makedirs(sub)
    self._write_split('test', '', directory=sub)
    real = os.path.realpath(self.dir)
    self.assertEqual(data.locate_split('mnist', 'train', data_dir=real),
                     f'idx:{real}')
    self.assertEqual(data.locate_split('mnist', 'test', data_dir=real),
                     f'idx:{os.path.join(real, "mnist")}')
    # No IDX files in an explicit data_dir: tfds is asked there, nowhere else.
    with tempfile.TemporaryDirectory() as empty:
      self.assertEqual(data.locate_split('mnist', 'test', data_dir=empty),
                       f'tfds:{empty}')
    with mock.patch.dict(os.environ, {'HOME': os.path.dirname(real)}):
      self.assertEqual(data.locate_split('mnist', 'train', data_dir=real),
                       f'idx:~/{os.path.basename(real)}')
    with self.assertRaisesRegex(ValueError, "source='csv'"):
      data.locate_split('mnist', 'train', data_dir=real, source='csv')

  def test_load_split_checks_shape_and_labels(self):
    self.images = self.images[:, :5, :4]
    self._write_split('train', '')
    with self.assertRaisesRegex(ValueError, r'image shape \(5, 4, 1\)'):
      data.load_split('mnist', 'train', data_dir=self.dir)
    self.images = np.zeros((7, 28, 28), np.uint8)
    self.labels[0] = 10
    self._write_split('train', '')
    with self.assertRaisesRegex(ValueError, r'accepted: \[0, 10\)'):
      data.load_split('mnist', 'train', data_dir=self.dir)

  @parameterized.named_parameters(
      ('bad_magic', b'\x01\x00\x08\x01\x00\x00\x00\x01\x07', 'magic'),
      ('short_file', b'\x00\x00', 'magic'),
      ('unknown_type', b'\x00\x00\x07\x01\x00\x00\x00\x01\x07', 'type code'),
      ('zero_ndim', b'\x00\x00\x08\x00', 'ndim'),
      ('truncated_header', b'\x00\x00\x08\x03\x00\x00\x00\x02', 'truncated'),
      ('size_mismatch', b'\x00\x00\x08\x01\x00\x00\x00\x03\x07\x07',
       'header says'),
      ('extra_bytes', b'\x00\x00\x08\x01\x00\x00\x00\x01\x07\x07',
       'header says'),
  )
  def test_corrupt_header_raises(self, payload, message):
    for suffix in ('', '.gz'):
      path = _write(os.path.join(self.dir, 'bad' + suffix), payload)
      with self.assertRaisesRegex(ValueError, message):
        data.read_idx(path)

  def test_corrupt_gzip_raises(self):
    path = os.path.join(self.dir, 'bad.gz')
    with open(path, 'wb') as f:
      f.write(b'\x1f\x8b\x08\x00garbage')
    with self.assertRaisesRegex(ValueError, 'gzip'):
      data.read_idx(path)

  def test_truncated_gzip_raises(self):
    path = os.path.join(self.dir, 'cut.gz')
    with open(path, 'wb') as f:
      f.write(gzip.compress(_idx_bytes(self.images, 0x08))[:-12])
    with self.assertRaisesRegex(ValueError, 'gzip'):
      data.read_idx(path)

  def test_multi_member_gzip(self):
    payload = _idx_bytes(self.images, 0x08)
    path = os.path.join(self.dir, 'multi.gz')
    with open(path, 'wb') as f:
      f.write(gzip.compress(payload[:10]) + gzip.compress(payload[10:]))
    np.testing.assert_array_equal(data.read_idx(path), self.images)

  def test_mismatched_lengths_raise(self):
    self._write_split('test', '')
    _write(os.path.join(self.dir, 't10k-labels-idx1-ubyte'),
           _idx_bytes(self.labels[:3], 0x08))
    with self.assertRaisesRegex(ValueError, 'do not form a dataset'):
      data.load_idx_split(self.dir, 'test')

  def test_bad_split_and_missing_files(self):
    with self.assertRaisesRegex(ValueError, "accepted: \\['train', 'test'\\]"):
      data.load_idx_split(self.dir, 'validation')
    with self.assertRaisesRegex(FileNotFoundError, 't10k-images-idx3-ubyte'):
      data.load_idx_split(self.dir, 'test')

  def test_find_idx_dir(self):
    self.assertEqual(data.find_idx_dir(self.dir), self.dir)


if __name__ == '__main__':
  absltest.main()
