"""Tests for batching, shuffling, resuming, sharding and augmentation."""

import threading

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from atmc_jax import data

_N, _B = 100, 16


def _dataset(n=_N, shape=(8, 8, 3), seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
  # Each image carries its index in pixel (0, 0, 0) (and in the label) so
  # batches can be traced back to examples.
  images[:, 0, 0, 0] = np.arange(n) % 256
  labels = np.arange(n, dtype=np.int32)
  return images, labels


def _collect(**kwargs):
  images, labels = kwargs.pop('data', _dataset())
  return list(data.iterate_batches(images, labels, **kwargs))


def _assert_batches_equal(test, a, b):
  test.assertEqual(len(a), len(b))
  for x, y in zip(a, b):
    test.assertEqual(set(x), {'image', 'label', 'mask'})
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


class NumBatchesTest(parameterized.TestCase):

  @parameterized.parameters((100, 16, True, 6), (100, 16, False, 7),
                            (96, 16, False, 6), (5, 16, True, 0),
                            (0, 4, False, 0))
  def test_values(self, n, b, drop, expected):
    self.assertEqual(data.num_batches(n, b, drop), expected)

  def test_bad_values(self):
    with self.assertRaisesRegex(ValueError, 'batch_size >= 1'):
      data.num_batches(10, 0)
    with self.assertRaisesRegex(ValueError, 'n >= 0'):
      data.num_batches(-1, 2)


class IterateBatchesTest(parameterized.TestCase):

  def test_train_batches_structure_and_range(self):
    batches = _collect(batch_size=_B, seed=3, epoch=0, augment='crop_flip')
    self.assertLen(batches, _N // _B)
    seen = []
    for batch in batches:
      self.assertEqual(batch['image'].shape, (_B, 8, 8, 3))
      self.assertEqual(batch['image'].dtype, np.float32)
      self.assertEqual(batch['label'].dtype, np.int32)
      self.assertEqual(batch['mask'].dtype, np.float32)
      np.testing.assert_array_equal(batch['mask'], np.ones(_B))
      self.assertGreaterEqual(batch['image'].min(), 0.0)
      self.assertLessEqual(batch['image'].max(), 1.0)
      seen.extend(batch['label'])
    # Without replacement: distinct examples, drop_remainder drops N % B.
    self.assertLen(set(seen), len(seen))
    self.assertLen(seen, _B * (_N // _B))

  def test_pixels_scaled_to_unit_interval(self):
    images, labels = _dataset()
    batch = next(data.iterate_batches(images, labels, batch_size=_B, seed=0,
                                      epoch=0, shuffle=False))
    np.testing.assert_allclose(batch['image'], images[:_B] / 255.0,
                               rtol=1e-6)
    np.testing.assert_array_equal(batch['label'], labels[:_B])

  def test_same_seed_epoch_same_batches(self):
    kw = dict(batch_size=_B, seed=7, epoch=2, augment='reflect_crop_flip')
    _assert_batches_equal(self, _collect(**kw), _collect(**kw))

  def test_different_epoch_or_seed_different_order(self):
    def order(seed, epoch):
      return np.concatenate([b['label'] for b in _collect(
          batch_size=_B, seed=seed, epoch=epoch)])
    base = order(7, 0)
    self.assertFalse(np.array_equal(base, order(7, 1)))
    self.assertFalse(np.array_equal(base, order(8, 0)))
    np.testing.assert_array_equal(base, order(7, 0))
    # A real shuffle, not the dataset order.
    self.assertFalse(np.array_equal(np.sort(base), base))

  @parameterized.parameters('none', 'crop_flip', 'reflect_crop_flip')
  def test_start_batch_equals_dropping_batches(self, augment):
    full = _collect(batch_size=_B, seed=5, epoch=3, augment=augment)
    for k in (0, 1, 4, len(full)):
      it = data.iterate_batches(*_dataset(), batch_size=_B, seed=5, epoch=3,
                                augment=augment, start_batch=k)
      self.assertLen(it, len(full) - k)
      _assert_batches_equal(self, list(it), full[k:])

  def test_start_batch_out_of_range(self):
    with self.assertRaisesRegex(ValueError, r'0 <= start_batch <= 6'):
      _collect(batch_size=_B, seed=0, epoch=0, start_batch=7)

  @parameterized.parameters((2, True, 'crop_flip'), (4, False, 'none'),
                            (8, True, 'reflect_crop_flip'))
  def test_process_slices_partition_global_batch(self, count, drop, augment):
    kw = dict(batch_size=_B, seed=11, epoch=1, augment=augment,
              drop_remainder=drop, shuffle=drop)
    single = _collect(**kw)
    per_process = [_collect(process_index=p, process_count=count, **kw)
                   for p in range(count)]
    for b, batch in enumerate(single):
      parts = [pp[b] for pp in per_process]
      for k in batch:
        for part in parts:
          self.assertEqual(part[k].shape[0], _B // count)
        np.testing.assert_array_equal(
            np.concatenate([part[k] for part in parts]), batch[k])

  def test_process_arguments_validated(self):
    with self.assertRaisesRegex(ValueError, 'multiple of process_count=3'):
      _collect(batch_size=_B, seed=0, epoch=0, process_count=3)
    with self.assertRaisesRegex(ValueError, 'process_index=2'):
      _collect(batch_size=_B, seed=0, epoch=0, process_index=2,
               process_count=2)

  def test_eval_padding_and_mask(self):
    images, labels = _dataset()
    batches = _collect(batch_size=_B, seed=0, epoch=0, shuffle=False,
                       drop_remainder=False)
    self.assertLen(batches, 7)
    for batch in batches[:-1]:
      np.testing.assert_array_equal(batch['mask'], np.ones(_B))
    last = batches[-1]
    real = _N - 6 * _B
    self.assertEqual(last['image'].shape, (_B, 8, 8, 3))
    np.testing.assert_array_equal(last['mask'],
                                  [1.0] * real + [0.0] * (_B - real))
    np.testing.assert_array_equal(last['label'][:real], labels[-real:])
    np.testing.assert_array_equal(last['label'][real:], 0)
    np.testing.assert_array_equal(last['image'][real:], 0.0)
    # Every example exactly once, in order.
    got = np.concatenate([b['label'][b['mask'] > 0] for b in batches])
    np.testing.assert_array_equal(got, labels)
    np.testing.assert_allclose(
        np.concatenate([b['image'][b['mask'] > 0] for b in batches]),
        images / 255.0, rtol=1e-6)

  def test_eval_fewer_examples_than_processes(self):
    images, labels = _dataset(n=3)
    parts = [_collect(data=(images, labels), batch_size=8, seed=0, epoch=0,
                      shuffle=False, drop_remainder=False, process_index=p,
                      process_count=4) for p in range(4)]
    masks = np.concatenate([p[0]['mask'] for p in parts])
    np.testing.assert_array_equal(masks, [1, 1, 1, 0, 0, 0, 0, 0])

  def test_augmented_eval_with_empty_process_slice(self):
    images, labels = _dataset(n=3)
    kw = dict(data=(images, labels), batch_size=8, seed=0, epoch=0,
              augment='reflect_crop_flip', drop_remainder=False,
              process_count=4)
    last = _collect(process_index=3, **kw)[0]
    np.testing.assert_array_equal(last['mask'], [0, 0])
    np.testing.assert_array_equal(last['image'], 0.0)
    first = _collect(process_index=0, **kw)[0]
    np.testing.assert_array_equal(first['mask'], [1, 1])

  def test_float_images_pass_through(self):
    images = np.random.default_rng(0).random((10, 4, 4, 1)).astype(np.float64)
    batch = next(data.iterate_batches(images, np.zeros(10), batch_size=5,
                                      seed=0, epoch=0, shuffle=False))
    self.assertEqual(batch['image'].dtype, np.float32)
    np.testing.assert_allclose(batch['image'], images[:5], rtol=1e-6)

  def test_bad_arguments(self):
    images, labels = _dataset()
    cases = [
        (dict(augment='rotate'), 'augment'),
        (dict(seed=-1), r'seed=-1; accepted: an int in \[0, 2\*\*32\)'),
        (dict(epoch=2**32), 'epoch'),
        (dict(batch_size=0), 'batch_size=0'),
    ]
    for override, message in cases:
      kw = dict(batch_size=_B, seed=0, epoch=0)
      kw.update(override)
      with self.assertRaisesRegex(ValueError, message):
        data.iterate_batches(images, labels, **kw)
    with self.assertRaisesRegex(ValueError, r'\(N, H, W, C\)'):
      data.iterate_batches(images[..., 0], labels, batch_size=_B, seed=0,
                           epoch=0)
    with self.assertRaisesRegex(ValueError, 'labels of shape'):
      data.iterate_batches(images, labels[:-1], batch_size=_B, seed=0,
                           epoch=0)


class AugmentTest(parameterized.TestCase):

  def _images(self, b=64, h=8, w=8, c=3):
    rng = np.random.default_rng(1)
    # Strictly positive pixels, so zeros can only come from padding.
    return rng.integers(1, 256, (b, h, w, c), dtype=np.uint8)

  @parameterized.parameters('crop_flip', 'reflect_crop_flip')
  def test_shape_dtype_range_not_identity(self, kind):
    images = self._images()
    out = data.augment_batch(images, kind, np.random.default_rng(0))
    self.assertEqual(out.shape, images.shape)
    self.assertEqual(out.dtype, images.dtype)
    changed = np.any(out != images, axis=(1, 2, 3))
    self.assertGreater(changed.mean(), 0.8)
    floats = data.augment_batch(images / 255.0, kind,
                                np.random.default_rng(0))
    self.assertGreaterEqual(floats.min(), 0.0)
    self.assertLessEqual(floats.max(), 1.0)
    np.testing.assert_allclose(floats, out / 255.0)

  def test_none_is_identity(self):
    images = self._images()
    out = data.augment_batch(images, 'none', np.random.default_rng(0))
    np.testing.assert_array_equal(out, images)

  def test_every_output_is_a_shifted_possibly_flipped_input(self):
    images = self._images(b=32)
    for kind, mode in (('crop_flip', 'constant'),
                       ('reflect_crop_flip', 'reflect')):
      out = data.augment_batch(images, kind, np.random.default_rng(2))
      padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode=mode)
      flips = 0
      for i in range(len(images)):
        candidates = [(f, oy, ox) for f in (False, True)
                      for oy in range(9) for ox in range(9)
                      if np.array_equal(
                          out[i], (padded[i, :, ::-1] if f else padded[i])
                          [oy:oy + 8, ox:ox + 8])]
        self.assertNotEmpty(candidates, f'{kind}: image {i}')
        flips += candidates[0][0]
      self.assertBetween(flips, 4, 28)

  def test_zero_vs_reflect_padding(self):
    images = self._images(b=256)
    zero = data.augment_batch(images, 'crop_flip', np.random.default_rng(0))
    reflect = data.augment_batch(images, 'reflect_crop_flip',
                                 np.random.default_rng(0))
    # Same offsets and flips (same generator): identical where the crop stays
    # inside the image; zeros vs reflected pixels where it leaves it.
    zero_pixels = np.all(zero == 0, axis=-1)
    self.assertGreater(zero_pixels.mean(), 0.05)
    self.assertFalse(np.any(np.all(reflect == 0, axis=-1)))
    np.testing.assert_array_equal(zero[~zero_pixels], reflect[~zero_pixels])

  def test_offsets_and_flips_cover_the_range(self):
    # A one-hot 1x1 "image" inside an otherwise constant image reveals the
    # offset: crop offset o moves the pixel from column 4 to 4 + 4 - o.
    images = np.full((2000, 9, 9, 1), 7, np.uint8)
    images[:, 4, 4, 0] = 200
    out = data.augment_batch(images, 'crop_flip', np.random.default_rng(0))
    ys, xs = np.nonzero(out[..., 0] == 200)[1:]
    self.assertEqual(sorted(set(ys.tolist())), list(range(9)))
    self.assertEqual(sorted(set(xs.tolist())), list(range(9)))

  def test_bad_kind(self):
    with self.assertRaisesRegex(ValueError, 'accepted'):
      data.augment_batch(self._images(), 'cutout', np.random.default_rng(0))


class PrefetchTest(absltest.TestCase):

  def test_same_items_in_order(self):
    images, labels = _dataset()
    kw = dict(batch_size=_B, seed=1, epoch=0, augment='crop_flip')
    direct = list(data.iterate_batches(images, labels, **kw))
    fetched = list(data.prefetch(data.iterate_batches(images, labels, **kw),
                                 size=3))
    _assert_batches_equal(self, fetched, direct)

  def test_exception_propagates(self):
    def gen():
      yield 1
      raise RuntimeError('boom')
    it = data.prefetch(gen())
    self.assertEqual(next(it), 1)
    with self.assertRaisesRegex(RuntimeError, 'boom'):
      next(it)

  def test_close_stops_thread(self):
    def endless():
      i = 0
      while True:
        yield i
        i += 1
    before = threading.active_count()
    it = data.prefetch(endless(), size=2)
    self.assertEqual([next(it), next(it)], [0, 1])
    it.close()
    it._thread.join(timeout=5)  # pylint: disable=protected-access
    self.assertFalse(it._thread.is_alive())  # pylint: disable=protected-access
    self.assertEqual(threading.active_count(), before)
    with self.assertRaises(StopIteration):
      next(it)

  def test_bad_size(self):
    with self.assertRaisesRegex(ValueError, 'size=0'):
      data.prefetch(iter([]), size=0)


if __name__ == '__main__':
  absltest.main()
