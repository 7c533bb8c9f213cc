"""Whole-split reads from ``tfds.data_source`` (no TensorFlow needed).

``tfds.data_source`` gives random access to a dataset prepared in the
``array_record`` format. Reading needs only ``tensorflow-datasets`` and
``array_record``; *preparing* a dataset (download + conversion) needs internet
and TensorFlow once (``pip install tensorflow-cpu``, the ``prepare`` extra,
then
``tfds build <name> --file_format=array_record``). ``tfds.load`` is never used:
it needs TensorFlow at read time.
"""

import os
from typing import Any, Optional, Sequence

import numpy as np

# Records fetched per ``__getitems__`` call: large enough for the parallel
# reads of ``array_record`` to pay off, small enough to bound the memory of
# the decoded Python objects of one chunk.
_CHUNK = 2048


def tfds_data_dir(data_dir: Optional[str] = None) -> str:
  """The directory tfds reads from: ``data_dir``, ``$TFDS_DATA_DIR`` or
  ``~/tensorflow_datasets``."""
  if data_dir:
    return data_dir
  return os.environ.get('TFDS_DATA_DIR',
                        os.path.join(os.path.expanduser('~'),
                                     'tensorflow_datasets'))


def _get_records(source: Any, keys: Sequence[int]) -> Sequence[Any]:
  """Fetches ``keys`` in one batched read, one by one where unsupported."""
  getitems = getattr(source, '__getitems__', None)
  if getitems is not None:
    try:
      return getitems(keys)
    except TypeError:
      # A data source without a working batched read (tfds's mocked sources
      # among them); random access one record at a time still works.
      pass
  return [source[k] for k in keys]


def read_data_source(
    source: Any,
    *,
    image_key: str = 'image',
    label_key: str = 'label',
) -> tuple[np.ndarray, np.ndarray]:
  """Reads every record of a random-access data source into two arrays.

  Args:
    source: a sequence-like data source (``len`` and integer indexing, and
      optionally ``__getitems__`` for batched reads) whose records are dicts
      holding ``image_key`` (uint8 ``(H, W, C)``) and ``label_key`` (integer).
    image_key: the image feature name.
    label_key: the label feature name.

  Returns:
    ``(images, labels)``: uint8 ``(N, H, W, C)`` and int32 ``(N,)``.

  Raises:
    ValueError: the source is empty or its images differ in shape.
  """
  n = len(source)
  if n == 0:
    raise ValueError(f'data source {source!r} holds 0 records; accepted: >= 1.')
  images = labels = None
  for start in range(0, n, _CHUNK):
    keys = list(range(start, min(start + _CHUNK, n)))
    records = _get_records(source, keys)
    if images is None:
      first = np.asarray(records[0][image_key])
      images = np.empty((n,) + first.shape, np.uint8)
      labels = np.empty((n,), np.int32)
    for i, record in zip(keys, records):
      image = np.asarray(record[image_key])
      if image.shape != images.shape[1:]:
        raise ValueError(f'record {i}: image shape {image.shape}; expected '
                         f'{images.shape[1:]} like record 0.')
      images[i] = image
      labels[i] = record[label_key]
  return images, labels


def load_tfds_split(
    tfds_name: str,
    split: str,
    *,
    data_dir: Optional[str] = None,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads a whole tfds split through ``tfds.data_source``.

  Args:
    tfds_name: the tfds dataset name (e.g. ``'cifar10'``, ``'svhn_cropped'``).
    split: the tfds split name (e.g. ``'train'``).
    data_dir: the tfds data directory (default: ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    download: let tfds download and prepare the dataset (in the
      ``array_record`` format) when it is missing; needs internet and
      TensorFlow.

  Returns:
    ``(images, labels)``: uint8 ``(N, H, W, C)`` and int32 ``(N,)``.

  Raises:
    FileNotFoundError: the dataset is not prepared under the data directory
      (and ``download`` is False, or preparing it failed).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    source = tfds.data_source(tfds_name, split=split, data_dir=data_dir,
                              download=download)
  except (NotImplementedError, FileNotFoundError, AssertionError,
          ImportError, OSError) as e:
    root = tfds_data_dir(data_dir)
    dataset_dir = os.path.join(root, tfds_name.split('/')[0].split(':')[0])
    if os.path.isdir(dataset_dir):
      # Something is there (another version or the tfrecord format): show
      # what tfds says about it.
      found = f'{dataset_dir!r} exists but cannot be read ({e})'
    else:
      found = f'no {dataset_dir!r}'
    raise FileNotFoundError(
        f'tfds dataset {tfds_name!r} (split {split!r}) is not prepared in the '
        f'array_record format under {root!r}: {found}. '
        'Preparing a tfds dataset needs internet and TensorFlow once: '
        'pip install tensorflow-cpu (the "prepare" extra of atmc_jax), then '
        f'tfds build {tfds_name} --file_format=array_record'
        + (f' --data_dir {data_dir}' if data_dir else '') + '.') from e
  return read_data_source(source)
