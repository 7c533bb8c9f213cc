"""Deterministic, resumable, multi-process batching with NumPy augmentation.

A batch is a dict ``{"image": float32 (B, H, W, C) in [0, 1], "label": int32
(B,), "mask": float32 (B,)}``; ``mask`` is 1 for real examples and 0 for the
padding that completes a last partial batch (evaluation), so every step sees
one shape. Training batches carry an all-ones mask for a uniform structure.

Everything random is a pure function of integers, so any batch can be rebuilt
on any process without replaying the epoch:

* the epoch order is ``permutation(N)`` from the generator seeded with
  ``(seed, epoch)``;
* the augmentation of global batch ``b`` uses the generator seeded with
  ``(seed, epoch, b)`` and draws the parameters of the whole global batch, of
  which each process applies its own slice.

Hence ``start_batch=k`` yields exactly the batches ``k, k+1, ...`` of a full
pass, and the per-process slices of ``process_count`` processes concatenate to
the single-process batch, augmentation included.

Augmentations (vectorised over the batch, ``p = 4``):

* ``crop_flip``: zero-pad ``p`` + random ``H x W`` crop + horizontal flip with
  probability 1/2 (torchvision ``Pad(4)``, ``RandomCrop(32)``,
  ``RandomHorizontalFlip``);
* ``reflect_crop_flip``: the same on a reflect-padded image (torchvision
  ``padding_mode='reflect'``, edge not repeated). Flipping before or after the
  crop gives the same distribution (a flip maps crop offset ``o`` to
  ``2p - o``, and offsets are uniform on ``[0, 2p]``), so one gather does both.
"""

import queue
import threading
from typing import Any, Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from atmc_jax.data._datasets import AUGMENTATIONS

PAD = 4
_MAX_SEED = 2**32
_PERMUTATION_STREAM = 0
_AUGMENT_STREAM = 1


def num_batches(n: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Number of batches of ``batch_size`` in ``n`` examples.

  Args:
    n: number of examples, ``>= 0``.
    batch_size: global batch size, ``>= 1``.
    drop_remainder: drop (True) or keep (False) a last partial batch.

  Returns:
    ``n // batch_size`` if ``drop_remainder`` else ``ceil(n / batch_size)``.

  Raises:
    ValueError: ``n < 0`` or ``batch_size < 1``.
  """
  if n < 0:
    raise ValueError(f'n={n}; accepted: n >= 0.')
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size}; accepted: batch_size >= 1.')
  return n // batch_size if drop_remainder else -(-n // batch_size)


def _check_seed(name: str, value: int) -> int:
  if isinstance(value, bool) or not 0 <= int(value) < _MAX_SEED:
    raise ValueError(f'{name}={value}; accepted: an int in [0, 2**32).')
  return int(value)


def _rng(*words: int) -> np.random.Generator:
  # Four 32-bit words, always: distinct tuples give distinct seed sequences.
  return np.random.default_rng(list(words))


def epoch_permutation(n: int, *, seed: int, epoch: int) -> np.ndarray:
  """The example order of ``epoch``: a pure function of ``(seed, epoch)``."""
  seed = _check_seed('seed', seed)
  epoch = _check_seed('epoch', epoch)
  return _rng(_PERMUTATION_STREAM, seed, epoch, 0).permutation(n)


def _augment_params(rng: np.random.Generator, batch: int, pad: int):
  offsets = rng.integers(0, 2 * pad + 1, size=(2, batch))
  flips = rng.random(batch) < 0.5
  return offsets[0], offsets[1], flips


def _apply_augment(images: np.ndarray, kind: str, oy: np.ndarray,
                   ox: np.ndarray, flips: np.ndarray, pad: int) -> np.ndarray:
  """Pads, crops at ``(oy, ox)`` and flips where ``flips``."""
  b, h, w, c = images.shape
  if b == 0:
    return images.copy()
  mode = 'constant' if kind == 'crop_flip' else 'reflect'
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
  wp = w + 2 * pad
  # Each output row is one contiguous run of ``w * c`` elements of the padded
  # image: gather all ``b * h`` runs at once from a sliding-window view (a
  # few times faster than a per-pixel fancy index).
  runs = sliding_window_view(padded.reshape(b, -1), w * c, axis=1)
  starts = ((oy[:, None] + np.arange(h)) * wp + ox[:, None]) * c
  out = runs[np.arange(b)[:, None], starts].reshape(b, h, w, c)
  out[flips] = out[flips, :, ::-1]
  return out


def augment_batch(images: np.ndarray, kind: str, rng: np.random.Generator,
                  *, pad: int = PAD) -> np.ndarray:
  """Applies a random training augmentation to a batch, per image.

  Args:
    images: ``(B, H, W, C)`` array (any dtype; values are only moved).
    kind: one of ``'none'``, ``'crop_flip'`` (zero padding) or
      ``'reflect_crop_flip'`` (reflect padding, edge not repeated).
    rng: NumPy generator drawing the crop offsets (uniform on ``[0, 2 pad]``
      per axis) and the flips (probability 1/2).
    pad: padding on each side before the ``H x W`` crop.

  Returns:
    An array of the same shape and dtype.

  Raises:
    ValueError: unknown ``kind``, a non-4-D batch or a negative ``pad``.
  """
  if kind not in AUGMENTATIONS:
    raise ValueError(f'augment={kind!r}; accepted: {list(AUGMENTATIONS)}.')
  if images.ndim != 4:
    raise ValueError(f'images of shape {images.shape}; accepted: '
                     '(B, H, W, C).')
  if pad < 0:
    raise ValueError(f'pad={pad}; accepted: pad >= 0.')
  if kind == 'none':
    return images
  oy, ox, flips = _augment_params(rng, len(images), pad)
  return _apply_augment(images, kind, oy, ox, flips, pad)


def _to_float(images: np.ndarray, out: np.ndarray) -> None:
  """Writes ``images`` as float32 in ``[0, 1]`` into ``out`` (no temporary)."""
  if images.dtype == np.uint8:
    np.divide(images, np.float32(255), out=out, casting='unsafe')
  else:
    out[...] = images


class BatchIterator:
  """Iterator over the batches of one epoch (see :func:`iterate_batches`).

  ``len()`` is the number of batches still to come; ``num_batches`` the
  number in the whole epoch.
  """

  def __init__(
      self,
      images: np.ndarray,
      labels: np.ndarray,
      *,
      batch_size: int,
      seed: int,
      epoch: int,
      shuffle: bool = True,
      augment: str = 'none',
      drop_remainder: bool = True,
      start_batch: int = 0,
      process_index: int = 0,
      process_count: int = 1,
  ):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4:
      raise ValueError(f'images of shape {images.shape}; accepted: '
                       '(N, H, W, C).')
    if labels.shape != images.shape[:1]:
      raise ValueError(f'labels of shape {labels.shape}; accepted: '
                       f'({len(images)},) to match the images.')
    if augment not in AUGMENTATIONS:
      raise ValueError(f'augment={augment!r}; accepted: {list(AUGMENTATIONS)}.')
    if process_count < 1:
      raise ValueError(f'process_count={process_count}; accepted: >= 1.')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index}; accepted: '
                       f'0 <= process_index < {process_count}.')
    if batch_size < 1 or batch_size % process_count:
      raise ValueError(f'batch_size={batch_size}; accepted: a positive '
                       f'multiple of process_count={process_count}.')
    self._seed = _check_seed('seed', seed)
    self._epoch = _check_seed('epoch', epoch)
    self.num_batches = num_batches(len(images), batch_size, drop_remainder)
    if not 0 <= start_batch <= self.num_batches:
      raise ValueError(f'start_batch={start_batch}; accepted: '
                       f'0 <= start_batch <= {self.num_batches}.')
    self._images = images
    self._labels = labels.astype(np.int32, copy=False)
    self._batch_size = batch_size
    self._augment = augment
    self._local = batch_size // process_count
    self._lo = process_index * self._local
    if shuffle:
      self._order = epoch_permutation(len(images), seed=seed, epoch=epoch)
    else:
      self._order = np.arange(len(images))
    self._next = start_batch

  def __iter__(self) -> 'BatchIterator':
    return self

  def __len__(self) -> int:
    return self.num_batches - self._next

  def batch(self, index: int) -> dict[str, np.ndarray]:
    """Builds this process's part of global batch ``index`` (random access)."""
    if not 0 <= index < self.num_batches:
      raise ValueError(f'batch index {index}; accepted: '
                       f'0 <= index < {self.num_batches}.')
    start = index * self._batch_size
    global_ids = self._order[start:start + self._batch_size]
    ids = global_ids[self._lo:self._lo + self._local]
    real = len(ids)
    images = self._images[ids]
    labels = self._labels[ids]
    if self._augment != 'none':
      rng = _rng(_AUGMENT_STREAM, self._seed, self._epoch, index)
      oy, ox, flips = _augment_params(rng, self._batch_size, PAD)
      part = slice(self._lo, self._lo + real)
      images = _apply_augment(images, self._augment, oy[part], ox[part],
                              flips[part], PAD)
    image = np.empty((self._local,) + self._images.shape[1:], np.float32)
    _to_float(images, image[:real])
    image[real:] = 0.0
    label = np.zeros((self._local,), np.int32)
    label[:real] = labels
    mask = np.zeros((self._local,), np.float32)
    mask[:real] = 1.0
    return {'image': image, 'label': label, 'mask': mask}

  def __next__(self) -> dict[str, np.ndarray]:
    if self._next >= self.num_batches:
      raise StopIteration
    index = self._next
    self._next += 1
    return self.batch(index)


def iterate_batches(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    augment: str = 'none',
    drop_remainder: bool = True,
    start_batch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> BatchIterator:
  """Iterates over one epoch of batches, deterministically.

  Global batch ``b`` holds the examples ``order[b * B:(b + 1) * B]`` with
  ``order = permutation(N)`` drawn from ``(seed, epoch)`` (``arange(N)`` when
  ``shuffle`` is False); process ``p`` of ``P`` yields its contiguous slice
  ``[p * B / P, (p + 1) * B / P)`` of every global batch. With
  ``drop_remainder=False`` the last partial batch is padded with zero images
  and labels whose ``mask`` is 0.

  Training: ``shuffle=True, drop_remainder=True, augment=spec.augment``.
  Evaluation: ``shuffle=False, drop_remainder=False, augment='none'``, and
  weight per-example metrics by ``batch["mask"]``.

  Args:
    images: ``(N, H, W, C)`` uint8 (scaled by 1/255) or float in ``[0, 1]``.
    labels: ``(N,)`` integer labels.
    batch_size: the GLOBAL batch size, a multiple of ``process_count``.
    seed: base seed in ``[0, 2**32)``.
    epoch: epoch number in ``[0, 2**32)``; each epoch has its own order.
    shuffle: permute the examples (else dataset order).
    augment: one of ``'none'``, ``'crop_flip'``, ``'reflect_crop_flip'``.
    drop_remainder: drop a last partial batch (else pad it and mask it).
    start_batch: first batch to yield, ``0 <= start_batch <= num_batches``;
      skipping costs nothing (index arithmetic), for resuming mid-epoch.
    process_index: this process, ``0 <= process_index < process_count``.
    process_count: number of processes sharing each global batch.

  Returns:
    A :class:`BatchIterator` yielding ``{"image": float32 (B/P, H, W, C),
    "label": int32 (B/P,), "mask": float32 (B/P,)}`` NumPy dicts.

  Raises:
    ValueError: for any argument outside the ranges above.

  Examples:
    >>> import numpy as np
    >>> from atmc_jax import data
    >>> images = np.zeros((10, 4, 4, 1), np.uint8)
    >>> labels = np.arange(10)
    >>> batches = data.iterate_batches(
    ...     images, labels, batch_size=4, seed=0, epoch=0, shuffle=False,
    ...     drop_remainder=False)
    >>> len(batches)
    3
    >>> last = list(batches)[-1]
    >>> last['image'].shape, last['label'].tolist(), last['mask'].tolist()
    ((4, 4, 4, 1), [8, 9, 0, 0], [1.0, 1.0, 0.0, 0.0])
  """
  return BatchIterator(
      images, labels, batch_size=batch_size, seed=seed, epoch=epoch,
      shuffle=shuffle, augment=augment, drop_remainder=drop_remainder,
      start_batch=start_batch, process_index=process_index,
      process_count=process_count)


_ITEM, _END, _ERROR = range(3)


def _put(q: queue.Queue, stop: threading.Event, entry) -> bool:
  while not stop.is_set():
    try:
      q.put(entry, timeout=0.05)
      return True
    except queue.Full:
      continue
  return False


def _produce(source: Iterator[Any], q: queue.Queue,
             stop: threading.Event) -> None:
  # A plain function (no reference to the consumer object), so an abandoned
  # consumer is garbage-collected and its ``__del__`` stops this thread.
  try:
    for item in source:
      if not _put(q, stop, (_ITEM, item)):
        return
    _put(q, stop, (_END, None))
  except BaseException as e:  # pylint: disable=broad-except
    _put(q, stop, (_ERROR, e))


class _Prefetcher:
  """Iterator that fills a bounded queue from a background thread."""

  def __init__(self, iterator: Iterator[Any], size: int):
    self._queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(
        target=_produce, args=(iterator, self._queue, self._stop),
        daemon=True)
    self._thread.start()

  def __iter__(self) -> '_Prefetcher':
    return self

  def __next__(self) -> Any:
    if self._done:
      raise StopIteration
    kind, item = self._queue.get()
    if kind == _ITEM:
      return item
    self.close()
    if kind == _ERROR:
      raise item
    raise StopIteration

  def close(self) -> None:
    """Stops the background thread (pending items are dropped)."""
    self._done = True
    self._stop.set()

  def __del__(self):
    self._stop.set()


def prefetch(iterator: Iterator[Any], size: int = 2) -> Iterator[Any]:
  """Runs ``iterator`` ahead in a background thread, ``size`` items deep.

  Batch assembly in NumPy releases the GIL for its copies, so it overlaps with
  the accelerator step. Exceptions of ``iterator`` are re-raised at the
  corresponding ``next()``. Call ``close()`` on the result to stop early.

  Args:
    iterator: any iterable.
    size: queue capacity, ``>= 1``.

  Returns:
    An iterator over the same items in the same order.

  Raises:
    ValueError: ``size < 1``.
  """
  if size < 1:
    raise ValueError(f'size={size}; accepted: size >= 1.')
  return _Prefetcher(iter(iterator), size)
