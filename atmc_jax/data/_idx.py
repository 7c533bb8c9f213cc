"""Reader for MNIST-format IDX files (MNIST, Fashion-MNIST).

The Debian package ``dataset-fashion-mnist`` installs the Fashion-MNIST files
under ``/usr/share/datasets/fashion-mnist/``; :func:`find_idx_dir` finds them.
"""

import gzip
import os
from typing import Optional

import numpy as np

DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'

_SPLIT_PREFIX = {'train': 'train', 'test': 't10k'}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'),
           0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'),
           0x0E: np.dtype('>f8')}


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzip-compressed) into a NumPy array.

  Raises:
    ValueError: the file is not a valid IDX file.
  """
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f'{path!r} is not an IDX file (bad magic number).')
  type_code, ndim = data[2], data[3]
  if type_code not in _DTYPES:
    raise ValueError(f'{path!r}: unknown IDX type code {type_code:#x}; '
                     f'accepted: {sorted(hex(c) for c in _DTYPES)}.')
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big')
                for i in range(ndim))
  dtype = np.dtype(_DTYPES[type_code])
  offset = 4 + 4 * ndim
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) - offset != expected:
    raise ValueError(f'{path!r}: header says {shape} ({expected} bytes) but '
                     f'the file holds {len(data) - offset} bytes.')
  arr = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
  return arr.astype(dtype.newbyteorder('='))


def _find_file(data_dir: str, stem: str) -> str:
  for suffix in ('.gz', ''):
    path = os.path.join(data_dir, stem + suffix)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
      f'no {stem}[.gz] under {data_dir!r}; expected MNIST-format IDX files '
      '(train-images-idx3-ubyte, train-labels-idx1-ubyte, '
      't10k-images-idx3-ubyte, t10k-labels-idx1-ubyte).')


def load_idx_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Loads ``split`` ('train' or 'test') of an MNIST-format directory.

  Returns:
    ``(images, labels)``: uint8 images of shape ``(N, 28, 28, 1)`` and int32
    labels of shape ``(N,)``.
  """
  if split not in _SPLIT_PREFIX:
    raise ValueError(f'split={split!r}; accepted: {sorted(_SPLIT_PREFIX)}.')
  prefix = _SPLIT_PREFIX[split]
  images = read_idx(_find_file(data_dir, f'{prefix}-images-idx3-ubyte'))
  labels = read_idx(_find_file(data_dir, f'{prefix}-labels-idx1-ubyte'))
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(f'{data_dir!r}/{split}: images {images.shape} and '
                     f'labels {labels.shape} do not form a dataset.')
  return images[..., None], labels.astype(np.int32)


def find_idx_dir(data_dir: Optional[str] = None) -> Optional[str]:
  """Returns ``data_dir`` if given, else the Debian Fashion-MNIST directory
  when it exists, else None."""
  if data_dir:
    return data_dir
  if os.path.exists(os.path.join(DEBIAN_FASHION_MNIST_DIR,
                                 'train-images-idx3-ubyte.gz')):
    return DEBIAN_FASHION_MNIST_DIR
  return None
