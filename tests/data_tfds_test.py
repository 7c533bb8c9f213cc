"""Tests for loading tfds data sources, with ``tfds.testing.mock_data``."""

import importlib.resources
import io
import os
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core.features import image_feature
from tensorflow_datasets.testing import test_utils

from atmc_jax import data

_NUM = 23


class _Source:
  """A minimal random-access source that counts batched reads."""

  def __init__(self, records):
    self.records = records
    self.batched_calls = 0

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]

  def __getitems__(self, keys):
    self.batched_calls += 1
    return [self.records[k] for k in keys]


class MockedTfdsTest(parameterized.TestCase):

  @parameterized.parameters('mnist', 'fashion_mnist', 'cifar10', 'cifar100',
                            'svhn')
  def test_every_dataset(self, name):
    spec = data.DATASETS[name]
    with tfds.testing.mock_data(num_examples=_NUM,
                                policy=tfds.testing.MockPolicy.USE_CODE):
      for split in ('train', 'test'):
        images, labels = data.load_split(name, split, source='tfds')
        self.assertEqual(images.shape, (_NUM,) + spec.image_shape)
        self.assertEqual(images.dtype, np.uint8)
        self.assertEqual(labels.shape, (_NUM,))
        self.assertEqual(labels.dtype, np.int32)
        self.assertGreaterEqual(labels.min(), 0)
        self.assertLess(labels.max(), spec.num_classes)
        # Random mock pixels span the uint8 range; not a constant image.
        self.assertGreater(images.max(), 128)
        self.assertGreater(len(np.unique(images)), 100)

  def test_records_match_the_data_source(self):
    with tfds.testing.mock_data(num_examples=_NUM,
                                policy=tfds.testing.MockPolicy.USE_CODE):
      images, labels = data.load_split('cifar10', 'train', source='tfds')
      source = tfds.data_source('cifar10', split='train')
      for i in (0, 7, _NUM - 1):
        np.testing.assert_array_equal(images[i], source[i]['image'])
        self.assertEqual(labels[i], source[i]['label'])

  def test_auto_falls_back_to_tfds_without_idx_files(self):
    with tempfile.TemporaryDirectory() as empty:
      with tfds.testing.mock_data(num_examples=_NUM,
                                  policy=tfds.testing.MockPolicy.USE_CODE):
        images, _ = data.load_split('mnist', 'test', data_dir=empty)
    self.assertEqual(images.shape, (_NUM, 28, 28, 1))

  def test_read_data_source_batched_and_chunked(self):
    rng = np.random.default_rng(0)
    n = 2 * 2048 + 5  # three chunks
    records = [{'image': rng.integers(0, 256, (2, 3, 1), dtype=np.uint8),
                'label': np.int64(i % 7)} for i in range(n)]
    source = _Source(records)
    images, labels = data.read_data_source(source)
    self.assertEqual(source.batched_calls, 3)
    np.testing.assert_array_equal(images,
                                  np.stack([r['image'] for r in records]))
    np.testing.assert_array_equal(labels, np.arange(n) % 7)

  def test_read_data_source_rejects_ragged_and_empty(self):
    records = [{'image': np.zeros((2, 2, 1), np.uint8), 'label': 0},
               {'image': np.zeros((3, 2, 1), np.uint8), 'label': 1}]
    with self.assertRaisesRegex(ValueError, 'record 1'):
      data.read_data_source(_Source(records))
    with self.assertRaisesRegex(ValueError, '0 records'):
      data.read_data_source(_Source([]))


def _encode_png_with_pil(self, image):
  del self
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buf, format='PNG')
  return buf.getvalue()


class PreparedArrayRecordTest(absltest.TestCase):
  """The real (unmocked) path: an array_record dataset on disk."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.data_dir = cls._tmp.name
    # Preparing a dataset needs TensorFlow only to encode PNGs (PIL does it
    # here) and tfds's builder code looks up ``importlib_resources`` (the
    # stdlib module serves). Reading afterwards needs neither.
    with mock.patch.dict(sys.modules, {
        'importlib_resources': sys.modules.get('importlib_resources',
                                               importlib.resources)}), \
        mock.patch.object(image_feature._ImageEncoder, '_encode_image',
                          _encode_png_with_pil):
      test_utils.DummyMnist(data_dir=cls.data_dir,
                            file_format='array_record').download_and_prepare()

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def test_batched_read_matches_random_access(self):
    source = tfds.data_source('dummy_mnist', split='train',
                              data_dir=self.data_dir, download=False)
    calls = []
    original = type(source).__getitems__

    def spy(self, keys):
      calls.append(len(keys))
      return original(self, keys)

    with mock.patch.object(type(source), '__getitems__', spy):
      images, labels = data.load_tfds_split('dummy_mnist', 'train',
                                            data_dir=self.data_dir)
    self.assertEqual(calls, [len(source)])  # one batched read, no fallback
    self.assertEqual(images.shape, (len(source), 28, 28, 1))
    self.assertEqual(images.dtype, np.uint8)
    self.assertEqual(labels.dtype, np.int32)
    for i in range(len(source)):
      np.testing.assert_array_equal(images[i], source[i]['image'])
      self.assertEqual(labels[i], source[i]['label'])
    self.assertGreater(len(np.unique(labels)), 1)

  def test_unknown_split_of_prepared_dataset(self):
    with self.assertRaisesRegex(ValueError, "Unknown split 'validation'"):
      data.load_tfds_split('dummy_mnist', 'validation',
                           data_dir=self.data_dir)


class MissingDataTest(absltest.TestCase):

  def test_clear_error_when_nothing_is_prepared(self):
    with tempfile.TemporaryDirectory() as empty:
      with self.assertRaises(FileNotFoundError) as cm:
        data.load_split('cifar10', 'train', data_dir=empty)
      message = str(cm.exception)
      self.assertIn(empty, message)
      self.assertIn('tensorflow-cpu', message)
      self.assertIn('prepare', message)
      self.assertIn('internet', message)
      self.assertIn('tfds build cifar10 --file_format=array_record', message)

  def test_clear_error_for_fashion_mnist(self):
    with tempfile.TemporaryDirectory() as empty:
      no_debian = os.path.join(empty, 'no-debian')
      with mock.patch('atmc_jax.data._idx.DEBIAN_FASHION_MNIST_DIR',
                      no_debian), \
          self.assertRaises(FileNotFoundError) as cm:
        data.load_split('fashion_mnist', 'test', data_dir=empty)
      message = str(cm.exception)
      self.assertIn(repr(empty), message)
      self.assertIn(repr(os.path.join(empty, 'fashion_mnist')), message)
      # An explicit data_dir is the only place looked at.
      self.assertNotIn(f'looked for in {repr(empty)}, '
                       f'{repr(os.path.join(empty, "fashion_mnist"))}, ',
                       message)
      self.assertIn('apt-get install dataset-fashion-mnist', message)
      self.assertIn('tensorflow-cpu', message)

  def test_tfds_source_error_does_not_mention_idx(self):
    with tempfile.TemporaryDirectory() as empty:
      with self.assertRaises(FileNotFoundError) as cm:
        data.load_split('mnist', 'test', data_dir=empty, source='tfds')
    self.assertNotIn('IDX', str(cm.exception))
    self.assertIn('tfds build mnist', str(cm.exception))

  def test_idx_source_only_for_idx_datasets(self):
    with self.assertRaisesRegex(ValueError, "'fashion_mnist', 'mnist'"):
      data.load_split('svhn', 'train', source='idx')
    with tempfile.TemporaryDirectory() as empty:
      with self.assertRaisesRegex(FileNotFoundError, 'IDX'):
        data.load_split('mnist', 'train', data_dir=empty, source='idx')


class RegistryTest(parameterized.TestCase):

  def test_unknown_names_and_arguments(self):
    with self.assertRaisesRegex(ValueError, "accepted: \\['cifar10', "):
      data.DATASETS['imagenet']  # pylint: disable=pointless-statement
    with self.assertRaisesRegex(ValueError, 'svhn'):
      data.get_dataset_spec('svhn_cropped')
    with self.assertRaisesRegex(ValueError, "split='extra'"):
      data.load_split('svhn', 'extra')
    with self.assertRaisesRegex(ValueError, "source='web'"):
      data.load_split('svhn', 'train', source='web')

  def test_specs_follow_the_reference_setup(self):
    self.assertEqual(sorted(data.DATASETS),
                     ['cifar10', 'cifar100', 'fashion_mnist', 'mnist', 'svhn'])
    for name in ('mnist', 'fashion_mnist', 'cifar10'):
      self.assertIsNone(data.DATASETS[name].mean)
      self.assertIsNone(data.DATASETS[name].std)
    c100, svhn = data.DATASETS['cifar100'], data.DATASETS['svhn']
    np.testing.assert_allclose(c100.mean, (0.4914, 0.4822, 0.4465))
    np.testing.assert_allclose(c100.std, (0.2023, 0.1994, 0.2010))
    np.testing.assert_allclose(np.array(svhn.mean) * 255, (125.3, 123.0, 113.9))
    np.testing.assert_allclose(np.array(svhn.std) * 255, (63.0, 62.1, 66.7))
    self.assertEqual(svhn.tfds_name, 'svhn_cropped')
    self.assertEqual((svhn.num_train, svhn.num_test), (73_257, 26_032))
    self.assertEqual(c100.num_classes, 100)
    self.assertEqual(data.DATASETS['cifar10'].augment, 'crop_flip')
    self.assertEqual(svhn.augment, 'reflect_crop_flip')
    self.assertEqual(data.DATASETS['mnist'].augment, 'none')
    self.assertEqual(data.DATASETS['cifar10'].batch_size, 128)

  def test_spec_validation(self):
    with self.assertRaisesRegex(ValueError, 'augment'):
      data.DatasetSpec('x', 'x', 10, (8, 8, 3), None, None, 'rotate', 'train',
                       'test', 1, 1)
    with self.assertRaisesRegex(ValueError, 'one per channel'):
      data.DatasetSpec('x', 'x', 10, (8, 8, 3), (0.5,), (0.5,), 'none',
                       'train', 'test', 1, 1)


class TrainValSplitTest(absltest.TestCase):

  def test_last_examples_are_held_out(self):
    images = np.arange(10)[:, None, None, None].astype(np.uint8)
    labels = np.arange(10, dtype=np.int32)
    (tx, ty), (vx, vy) = data.train_val_split(images, labels, 3)
    np.testing.assert_array_equal(ty, np.arange(7))
    np.testing.assert_array_equal(vy, [7, 8, 9])
    np.testing.assert_array_equal(vx[:, 0, 0, 0], [7, 8, 9])
    self.assertEqual(len(tx), 7)
    (tx, _), (vx, _) = data.train_val_split(images, labels, 0)
    self.assertEqual((len(tx), len(vx)), (10, 0))

  def test_bad_num_val(self):
    images, labels = np.zeros((4, 1, 1, 1)), np.zeros(4)
    for bad in (-1, 4, 5):
      with self.assertRaisesRegex(ValueError, 'accepted: 0 <= num_val < 4'):
        data.train_val_split(images, labels, bad)
    with self.assertRaisesRegex(ValueError, 'labels'):
      data.train_val_split(images, labels[:3], 1)


if __name__ == '__main__':
  absltest.main()
