"""Reader for MNIST-format IDX files (MNIST, Fashion-MNIST).

An IDX file is a 4-byte magic number ``00 00 <type code> <ndim>``, ``ndim``
big-endian uint32 dimensions, then the array in C order (big-endian for
multi-byte types). Files may be gzip-compressed (``.gz``).

The Debian package ``dataset-fashion-mnist`` installs the Fashion-MNIST files
under ``/usr/share/datasets/fashion-mnist/``; :func:`find_idx_dir` finds them.
``make mnist`` (``python -m experiments.get_mnist``) installs the verified
MNIST files under :func:`cache_dir` ``/mnist``.
"""

import gzip
import os
from typing import Optional
import zlib

import numpy as np

DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
CACHE_ENV = 'ATMC_JAX_DATA'


def cache_dir() -> str:
  """atmc_jax's data cache: ``$ATMC_JAX_DATA``, else ``~/.cache/atmc_jax``.

  Datasets installed by the project's commands live in a sub-directory per
  dataset (``<cache_dir>/mnist``); they are looked at only when no
  ``data_dir`` is given.
  """
  return os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'atmc_jax')

IDX_SPLITS = ('train', 'test')
_SPLIT_PREFIX = {'train': 'train', 'test': 't10k'}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'),
           0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'),
           0x0E: np.dtype('>f8')}


def _read_bytes(path: str) -> bytes:
  """Returns the (decompressed) content of ``path``."""
  with open(path, 'rb') as f:
    raw = f.read()
  if not path.endswith('.gz'):
    return raw
  # One zlib call on the whole buffer is faster than streaming through
  # ``gzip.open``; multi-member archives fall back to ``gzip``.
  try:
    d = zlib.decompressobj(wbits=31)
    data = d.decompress(raw) + d.flush()
    if not d.eof:
      raise EOFError('compressed stream ends early')
    if d.unused_data:
      data = gzip.decompress(raw)
  except (zlib.error, EOFError, gzip.BadGzipFile) as e:
    raise ValueError(f'{path!r} is not a valid gzip file: {e}') from e
  return data


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzip-compressed) into a NumPy array.

  Args:
    path: the file; a name ending in ``.gz`` is gunzipped first.

  Returns:
    A writable array in native byte order with the shape and dtype the header
    declares.

  Raises:
    ValueError: the file is not a valid IDX file (bad magic number, unknown
      type code, truncated header, or a payload whose size disagrees with the
      header), or a ``.gz`` file is not valid gzip.
  """
  data = _read_bytes(path)
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f'{path!r} is not an IDX file (bad magic number; '
                     'expected bytes 00 00 <type> <ndim>).')
  type_code, ndim = data[2], data[3]
  if type_code not in _DTYPES:
    raise ValueError(f'{path!r}: unknown IDX type code {type_code:#x}; '
                     f'accepted: {sorted(hex(c) for c in _DTYPES)}.')
  if ndim < 1:
    raise ValueError(f'{path!r}: IDX ndim={ndim}; accepted: ndim >= 1.')
  offset = 4 + 4 * ndim
  if len(data) < offset:
    raise ValueError(f'{path!r}: truncated header ({len(data)} bytes, '
                     f'{offset} needed for ndim={ndim}).')
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big')
                for i in range(ndim))
  dtype = np.dtype(_DTYPES[type_code])
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) - offset != expected:
    raise ValueError(f'{path!r}: header says {shape} ({expected} bytes) but '
                     f'the file holds {len(data) - offset} bytes.')
  arr = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
  return arr.astype(dtype.newbyteorder('='))


def idx_stems(split: str) -> tuple[str, str]:
  prefix = _SPLIT_PREFIX[split]
  return f'{prefix}-images-idx3-ubyte', f'{prefix}-labels-idx1-ubyte'


def _existing(data_dir: str, stem: str) -> Optional[str]:
  for suffix in ('.gz', ''):
    path = os.path.join(data_dir, stem + suffix)
    if os.path.isfile(path):
      return path
  return None


def _find_file(data_dir: str, stem: str) -> str:
  path = _existing(data_dir, stem)
  if path is None:
    raise FileNotFoundError(
        f'no {stem}[.gz] under {data_dir!r}; expected MNIST-format IDX files '
        '(train-images-idx3-ubyte, train-labels-idx1-ubyte, '
        't10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally '
        '.gz).')
  return path


def has_idx_split(data_dir: Optional[str], split: str) -> bool:
  """Whether ``data_dir`` holds the IDX image and label files of ``split``."""
  if split not in _SPLIT_PREFIX:
    raise ValueError(f'split={split!r}; accepted: {list(IDX_SPLITS)}.')
  if not data_dir:
    return False
  return all(_existing(data_dir, stem) for stem in idx_stems(split))


def load_idx_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Loads ``split`` ('train' or 'test') of an MNIST-format directory.

  Args:
    data_dir: directory holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``
      (each optionally ``.gz``).
    split: ``'train'`` or ``'test'``.

  Returns:
    ``(images, labels)``: uint8 images of shape ``(N, H, W, 1)`` and int32
    labels of shape ``(N,)``.

  Raises:
    ValueError: unknown ``split``, or files that are not IDX or do not form a
      dataset.
    FileNotFoundError: a file is missing.
  """
  if split not in _SPLIT_PREFIX:
    raise ValueError(f'split={split!r}; accepted: {list(IDX_SPLITS)}.')
  image_stem, label_stem = idx_stems(split)
  images = read_idx(_find_file(data_dir, image_stem))
  labels = read_idx(_find_file(data_dir, label_stem))
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(f'{data_dir!r}/{split}: images {images.shape} and '
                     f'labels {labels.shape} do not form a dataset.')
  if images.dtype != np.uint8:
    raise ValueError(f'{data_dir!r}/{split}: image dtype {images.dtype}; '
                     'accepted: uint8.')
  return images[..., None], labels.astype(np.int32)


def find_idx_dir(data_dir: Optional[str] = None) -> Optional[str]:
  """Returns the directory to read Fashion-MNIST IDX files from.

  Args:
    data_dir: an explicit directory, returned as is when given.

  Returns:
    ``data_dir`` if given, else the Debian Fashion-MNIST directory when its
    training files exist, else None.
  """
  if data_dir:
    return data_dir
  if has_idx_split(DEBIAN_FASHION_MNIST_DIR, 'train'):
    return DEBIAN_FASHION_MNIST_DIR
  return None
