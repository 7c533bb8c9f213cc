"""The packed model file: write, read and size it with NumPy alone.

This module imports only the standard library and NumPy, so a deployment
needs neither JAX, Flax, Optax nor Orbax: copy this one file and load it
by path::

  import importlib.util
  spec = importlib.util.spec_from_file_location('atmc_format', PATH)
  fmt = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fmt)
  model = fmt.load('model.atmc')       # model.variables, model.metadata

Container. The file is an *uncompressed* NumPy ``.npz`` (a ZIP archive
with stored members, written by ``np.savez``) holding two ``uint8``
arrays: ``header`` (UTF-8 JSON) and ``payload`` (every tensor's bytes,
concatenated). ``np.load`` reads it with ``allow_pickle=False``, the
format is documented and stable, and any ZIP tool can list it. Two
members rather than one per tensor keep the container's overhead at a few
hundred bytes (each member costs a ZIP entry and a 128-byte ``.npy``
header). Storing (not deflating) keeps the file size equal to the
accounted size plus indices plus overhead, which the size report checks.

The header is compact JSON: ``format``, ``version``,
``dense_weight_count``, ``kernel_shapes`` (dense kernel shape per
factorized layer), ``metadata`` (model name and config, threat model,
metrics) and ``tensors``, one row per tensor: ``[name, shape, dtype]`` for
an uncompressed tensor, ``[name, shape, dtype, pos, nnz, d, index_bytes,
val, code_bits]`` for a compressed one (rows, not objects, keep the header
of a LeNet under 1.5 KB).

Per tensor, in the header's ``tensors`` order, the payload holds:

* an **uncompressed** tensor (biases, BatchNorm): its raw little-endian
  bytes (``dtype`` recorded);
* a **compressed** tensor (the leaves the accounting counts: kernels,
  ``U``/``V``/``C`` factors): the positions of its non-zeros in row-major
  order, as ``pos``:

  - ``none`` (no non-zeros) or ``all`` (no zeros): no bytes;
  - ``bitmap``: ``ceil(size / 8)`` bytes, bit ``i`` (little-endian within
    a byte) set where entry ``i`` is non-zero;
  - ``deltas``: the gaps ``p[0], p[1] - p[0] - 1, ...`` as unsigned
    LEB128 varints (7 bits a byte, high bit = more bytes follow);

  whichever of ``bitmap`` and ``deltas`` is smaller; then its non-zero
  values as ``val``:

  - ``codebook``: with ``d`` distinct non-zero values and
    ``c = ceil(log2 d)``, the codes (indices into the sorted codebook)
    bit-packed at ``c`` bits each, little-endian, ``ceil(nnz * c / 8)``
    bytes (none when ``d = 1``), then the ``d`` float32 codebook values;
  - ``float32``: the ``nnz`` values as float32;

  ``codebook`` exactly when the paper's accounting quantises the tensor
  (``2**c < nnz``, ``atmc_jax.optim.tensor_size_bits``), so the codes and
  codebook take the accounted bits rounded up to whole bytes.

Factorized layers (``U``, ``V``, ``C`` in one dict) and fixed-rank
layers (``B``, ``A``: the ALR model) are stored as their factors;
:func:`load` materialises ``kernel = (U·V + I_offset + C).T`` (the
identity offset on the square factor, as ``atmc_jax.models.compose``) or
``kernel = (B·A).T``, reshaped to the dense kernel shape recorded at save
time (``(fan_in, out)`` when none was recorded).
"""

import json
import os
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

FORMAT = 'atmc_jax.packed'
VERSION = 1
FLOAT_BITS = 32
# The U·V+C factor names and the layer test, defined here once for all of
# atmc_jax (models, optim, training import them): this module imports only
# NumPy, so it can hold them and still load by file path.
FACTOR_NAMES = ('U', 'V', 'C')
LOW_RANK_NAMES = ('B', 'A')


def is_factorized_layer(node: Any) -> bool:
  """Whether ``node`` is one U·V+C layer: a mapping with ``U``, ``V``, ``C``.

  The three entries are arrays (not sub-mappings that happen to be named
  so).
  """
  return isinstance(node, Mapping) and all(
      k in node and not isinstance(node[k], Mapping) for k in FACTOR_NAMES)


class LoadedModel(NamedTuple):
  """What :func:`load` returns.

  Attributes:
    variables: nested dicts of NumPy arrays by collection (``'params'``,
      and ``'batch_stats'`` for BatchNorm models), in the Flax layout, so
      ``model.apply(variables, x)`` works; factorized layers materialised
      as dense ``kernel`` unless ``load(..., materialize=False)``.
    metadata: the metadata given at save time (model, config, threat
      model, metrics).
    header: the whole header (format, version, tensor table, sizes).
  """

  variables: dict
  metadata: dict
  header: dict


# ----------------------------------------------------------- accounting


def accounted_bits(nnz: int, distinct: int) -> int:
  """The paper's size of a tensor (``atmc_jax.optim.tensor_size_bits``)."""
  if nnz == 0:
    return 0
  code_bits = (distinct - 1).bit_length()
  if 2**code_bits < nnz:
    return nnz * code_bits + FLOAT_BITS * distinct
  return FLOAT_BITS * nnz


# --------------------------------------------------------------- varints


def varint_encode(values: np.ndarray) -> bytes:
  """Unsigned LEB128 encoding of non-negative integers (vectorised)."""
  values = np.asarray(values, np.uint64).reshape(-1)
  if values.size == 0:
    return b''
  nbytes = np.ones(values.shape, np.int64)
  for j in range(1, 10):
    nbytes += values >= np.uint64(1) << np.uint64(7 * j)
  starts = np.cumsum(nbytes) - nbytes
  out = np.zeros(int(nbytes.sum()), np.uint8)
  for j in range(int(nbytes.max())):
    sel = nbytes > j
    byte = (values[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
    more = (nbytes[sel] > j + 1).astype(np.uint64) << np.uint64(7)
    out[starts[sel] + j] = (byte | more).astype(np.uint8)
  return out.tobytes()


def varint_decode(buf: bytes, count: int, what: str = 'varints') -> np.ndarray:
  """Decodes exactly ``count`` LEB128 varints from ``buf``.

  Raises:
    ValueError: ``buf`` does not hold exactly ``count`` whole varints.
  """
  b = np.frombuffer(buf, np.uint8)
  if count == 0 and b.size == 0:
    return np.zeros(0, np.uint64)
  ends = np.flatnonzero((b & 0x80) == 0)
  if ends.size != count or b.size == 0 or ends[-1] != b.size - 1:
    raise ValueError(f'{what}: {b.size} bytes do not hold {count} varints.')
  starts = np.concatenate([[0], ends[:-1] + 1])
  lengths = ends - starts + 1
  if lengths.max() > 10:
    raise ValueError(f'{what}: a varint longer than 10 bytes.')
  shift = np.arange(b.size) - np.repeat(starts, lengths)
  parts = (b & 0x7F).astype(np.uint64) << (7 * shift).astype(np.uint64)
  return np.add.reduceat(parts, starts)


# ---------------------------------------------------------- bit packing


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
  """``codes`` (each ``< 2**bits``) packed at ``bits`` bits, little-endian."""
  if bits == 0 or codes.size == 0:
    return b''
  codes = np.asarray(codes, np.uint32).reshape(-1, 1)
  planes = ((codes >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
  return np.packbits(planes.reshape(-1), bitorder='little').tobytes()


def unpack_codes(buf: bytes, count: int, bits: int) -> np.ndarray:
  """Inverse of :func:`pack_codes`."""
  if bits == 0:
    return np.zeros(count, np.int64)
  planes = np.unpackbits(np.frombuffer(buf, np.uint8), count=count * bits,
                         bitorder='little').reshape(count, bits)
  return (planes.astype(np.int64) << np.arange(bits)).sum(axis=1)


# ------------------------------------------------------------- encoding


def _encode_positions(flat_nonzero: np.ndarray, nz: np.ndarray):
  size, nnz = flat_nonzero.size, nz.size
  if nnz == 0:
    return 'none', b''
  if nnz == size:
    return 'all', b''
  bitmap = np.packbits(flat_nonzero, bitorder='little').tobytes()
  gaps = np.diff(nz, prepend=-1) - 1
  deltas = varint_encode(gaps)
  if len(deltas) < len(bitmap):
    return 'deltas', deltas
  return 'bitmap', bitmap


def _decode_positions(pos: str, buf: bytes, size: int, nnz: int,
                      name: str) -> np.ndarray:
  if pos == 'none':
    return np.zeros(0, np.int64)
  if pos == 'all':
    return np.arange(size)
  if pos == 'bitmap':
    bits = np.unpackbits(np.frombuffer(buf, np.uint8), count=size,
                         bitorder='little')
    nz = np.flatnonzero(bits)
  elif pos == 'deltas':
    gaps = varint_decode(buf, nnz, f'tensor {name!r} positions')
    nz = np.cumsum(gaps.astype(np.int64) + 1) - 1
  else:
    raise ValueError(f'tensor {name!r}: position encoding {pos!r}; '
                     "accepted: 'none', 'all', 'bitmap', 'deltas'.")
  if nz.size != nnz or (nnz and (nz[-1] >= size or nz[0] < 0)):
    raise ValueError(f'tensor {name!r}: positions do not match nnz={nnz} '
                     f'within size={size}.')
  return nz


def encode_tensor(name: str, x: np.ndarray, compressed: bool):
  """``(entry, segments)``: the header entry and payload byte strings."""
  x = np.asarray(x)
  entry = {'name': name, 'shape': list(x.shape)}
  if not compressed:
    dtype = x.dtype.newbyteorder('<')
    entry.update(kind='dense', dtype=dtype.str)
    return entry, [np.ascontiguousarray(x, dtype).tobytes()]
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f'tensor {name!r} has dtype {x.dtype}; accepted for '
                     'compressed tensors: floating point.')
  x32 = x.astype(np.float32)
  if not np.array_equal(x32.astype(x.dtype), x, equal_nan=True):
    raise ValueError(f'tensor {name!r} ({x.dtype}) is not exactly '
                     'representable in float32; accepted: float32 values.')
  if not np.all(np.isfinite(x32)):
    raise ValueError(f'tensor {name!r} holds non-finite values; accepted: '
                     'finite values.')
  flat = x32.reshape(-1)
  nonzero = flat != 0
  nz = np.flatnonzero(nonzero)
  values = flat[nz]
  pos, index = _encode_positions(nonzero, nz)
  codebook = np.unique(values)
  distinct = int(codebook.size)
  nnz = int(nz.size)
  code_bits = (distinct - 1).bit_length() if distinct else 0
  entry.update(kind='sparse', dtype=x.dtype.newbyteorder('<').str, nnz=nnz,
               distinct=distinct, pos=pos, index_bytes=len(index))
  if nnz == 0:
    entry['val'] = 'none'
    return entry, [index]
  if 2**code_bits < nnz:
    codes = np.searchsorted(codebook, values)
    entry.update(val='codebook', code_bits=code_bits)
    return entry, [index, pack_codes(codes, code_bits),
                   codebook.astype('<f4').tobytes()]
  entry['val'] = 'float32'
  return entry, [index, values.astype('<f4').tobytes()]


_DENSE_FIELDS = ('name', 'shape', 'dtype')
_SPARSE_FIELDS = ('name', 'shape', 'dtype', 'pos', 'nnz', 'distinct',
                  'index_bytes', 'val', 'code_bits')


def entry_to_row(entry: Mapping[str, Any]) -> list:
  """A header entry as the compact JSON row stored in the file."""
  if entry['kind'] == 'dense':
    return [entry[k] for k in _DENSE_FIELDS]
  return [entry.get(k, 0) for k in _SPARSE_FIELDS]


def row_to_entry(row: Sequence[Any]) -> dict:
  """Inverse of :func:`entry_to_row`.

  Raises:
    ValueError: the row has neither 3 nor 9 fields.
  """
  if len(row) == len(_DENSE_FIELDS):
    return dict(zip(_DENSE_FIELDS, row), kind='dense')
  if len(row) == len(_SPARSE_FIELDS):
    return dict(zip(_SPARSE_FIELDS, row), kind='sparse')
  raise ValueError(f'tensor row {row!r} has {len(row)} fields; accepted: '
                   f'{_DENSE_FIELDS} or {_SPARSE_FIELDS}.')


def segment_sizes(entry: Mapping[str, Any]) -> dict:
  """Bytes of each payload part of one tensor (index, codes, values)."""
  size = int(np.prod(entry['shape'], dtype=np.int64))
  if entry['kind'] == 'dense':
    return {'values': size * np.dtype(entry['dtype']).itemsize}
  nnz = int(entry['nnz'])
  out = {'index': int(entry['index_bytes']), 'codes': 0, 'values': 0}
  if entry['val'] == 'codebook':
    out['codes'] = (nnz * int(entry['code_bits']) + 7) // 8
    out['values'] = 4 * int(entry['distinct'])
  elif entry['val'] == 'float32':
    out['values'] = 4 * nnz
  return out


def decode_tensor(entry: Mapping[str, Any], buf: bytes) -> np.ndarray:
  """Inverse of :func:`encode_tensor`."""
  name, shape = entry['name'], tuple(int(s) for s in entry['shape'])
  size = int(np.prod(shape, dtype=np.int64))
  parts = segment_sizes(entry)
  if len(buf) != sum(parts.values()):
    raise ValueError(f'tensor {name!r}: {len(buf)} payload bytes, expected '
                     f'{sum(parts.values())}.')
  dtype = np.dtype(entry['dtype'])
  if entry['kind'] == 'dense':
    return np.frombuffer(buf, dtype).reshape(shape).astype(dtype.newbyteorder(
        '='))
  nnz = int(entry['nnz'])
  i = parts['index']
  nz = _decode_positions(entry['pos'], buf[:i], size, nnz, name)
  flat = np.zeros(size, np.float32)
  if entry['val'] == 'codebook':
    c = parts['codes']
    codes = unpack_codes(buf[i:i + c], nnz, int(entry['code_bits']))
    codebook = np.frombuffer(buf[i + c:], '<f4')
    if codes.size and codes.max() >= codebook.size:
      raise ValueError(f'tensor {name!r}: a code exceeds the codebook size '
                       f'{codebook.size}.')
    flat[nz] = codebook[codes]
  elif entry['val'] == 'float32':
    flat[nz] = np.frombuffer(buf[i:], '<f4')
  return flat.reshape(shape).astype(dtype.newbyteorder('='))


# --------------------------------------------------------------- writing


def write(path: str, tensors: Sequence[tuple[str, np.ndarray, bool]], *,
          metadata: Optional[Mapping[str, Any]] = None,
          dense_weight_count: Optional[int] = None,
          kernel_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> None:
  """Writes a packed model file.

  Args:
    path: the output file (written as given; no suffix is added).
    tensors: ``(name, array, compressed)`` triples; ``name`` is the
      ``/``-joined path of the leaf including its collection
      (``'params/conv1/kernel'``).
    metadata: JSON-serialisable metadata (model, config, threat model,
      metrics).
    dense_weight_count: the dense network's weight count (for the ratios).
    kernel_shapes: the dense kernel shape per factorized layer name
      (``'params/conv1'``), used by :func:`load` to materialise.

  Raises:
    ValueError: a name repeats, or a compressed tensor is not float32.
  """
  names = [t[0] for t in tensors]
  if len(set(names)) != len(names):
    raise ValueError(f'tensor names repeat: {sorted(names)}.')
  entries, payload = [], []
  for name, x, compressed in tensors:
    entry, segments = encode_tensor(name, x, compressed)
    entries.append(entry)
    payload.extend(segments)
  header = {
      'format': FORMAT, 'version': VERSION,
      'dense_weight_count': dense_weight_count,
      'kernel_shapes': {k: list(v) for k, v in (kernel_shapes or {}).items()},
      'metadata': dict(metadata or {}),
      'tensors': [entry_to_row(e) for e in entries],
  }
  text = json.dumps(header, separators=(',', ':'), sort_keys=False)
  data = np.frombuffer(b''.join(payload), np.uint8)
  with open(path, 'wb') as f:
    np.savez(f, header=np.frombuffer(text.encode('utf-8'), np.uint8),
             payload=data)


# --------------------------------------------------------------- reading


def read_header(path: str) -> dict:
  """The JSON header of a packed file.

  Raises:
    ValueError: the file is not a packed model of a known version.
  """
  with np.load(path, allow_pickle=False) as z:
    return _parse_header(z, path)


def _parse_header(z, path) -> dict:
  if 'header' not in z.files or 'payload' not in z.files:
    raise ValueError(f'{path!r} is not a packed model (members {z.files}); '
                     "accepted: a file written by atmc_jax.export.save.")
  header = json.loads(z['header'].tobytes().decode('utf-8'))
  if header.get('format') != FORMAT or header.get('version') != VERSION:
    raise ValueError(
        f'{path!r}: format {header.get("format")!r} version '
        f'{header.get("version")!r}; accepted: {FORMAT!r} version {VERSION}.')
  header['tensors'] = [row_to_entry(r) for r in header['tensors']]
  return header


def _set(tree: dict, name: str, value) -> None:
  keys = name.split('/')
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  tree[keys[-1]] = value


def _get(tree: dict, name: str):
  for k in name.split('/'):
    tree = tree[k]
  return tree


def compose(u: np.ndarray, v: np.ndarray, c: np.ndarray) -> np.ndarray:
  """``U·(V + I) + C`` (V square) or ``(U + I)·V + C``, as float32.

  The NumPy counterpart of ``atmc_jax.models.compose`` (computed in
  float64, then rounded).
  """
  out, fan_in = c.shape
  r = min(out, fan_in)
  if u.shape != (out, r) or v.shape != (r, fan_in):
    raise ValueError(f'factor shapes U{u.shape}, V{v.shape}, C{c.shape} do '
                     f'not match; expected U{(out, r)}, V{(r, fan_in)}.')
  u64, v64 = u.astype(np.float64), v.astype(np.float64)
  square = v64 if out < fan_in else u64
  return (u64 @ v64 + square + c).astype(np.float32)


def _holds(tree: dict, names: Sequence[str]) -> bool:
  return all(k in tree and not isinstance(tree[k], dict) for k in names)


def _materialize(tree: dict, kernel_shapes: Mapping[str, Sequence[int]],
                 path: str = '') -> dict:
  out = {}
  if is_factorized_layer(tree) or _holds(tree, LOW_RANK_NAMES):
    if is_factorized_layer(tree):
      names, w = FACTOR_NAMES, compose(tree['U'], tree['V'], tree['C'])
    else:  # Fixed-rank factors W = B·A (the ALR model).
      names = LOW_RANK_NAMES
      w = (tree['B'].astype(np.float64) @ tree['A']).astype(np.float32)
    shape = kernel_shapes.get(path)
    kernel = w.T
    out['kernel'] = kernel.reshape(shape) if shape else kernel
    for k, v in tree.items():
      if k not in names:
        out[k] = v
    return out
  for k, v in tree.items():
    sub = f'{path}/{k}' if path else k
    out[k] = _materialize(v, kernel_shapes, sub) if isinstance(v, dict) else v
  return out


def load(path: str, *, materialize: bool = True) -> LoadedModel:
  """Reads a packed model file with NumPy only.

  Args:
    path: a file written by ``atmc_jax.export.save``.
    materialize: replace each factorized layer's ``U, V, C`` by its dense
      ``kernel`` (Flax layout); ``False`` returns the stored tensors.

  Returns:
    A :class:`LoadedModel`.

  Raises:
    ValueError: the file is not a packed model, or is inconsistent.
  """
  with np.load(path, allow_pickle=False) as z:
    header = _parse_header(z, path)
    payload = z['payload'].tobytes()
  variables: dict = {}
  offset = 0
  for entry in header['tensors']:
    n = sum(segment_sizes(entry).values())
    _set(variables, entry['name'], decode_tensor(
        entry, payload[offset:offset + n]))
    offset += n
  if offset != len(payload):
    raise ValueError(f'{path!r}: {len(payload) - offset} payload bytes left '
                     'after the last tensor.')
  if materialize:
    variables = _materialize(variables, header.get('kernel_shapes') or {})
  return LoadedModel(variables=variables, metadata=header['metadata'],
                     header=header)


# ---------------------------------------------------------- size report


def size_report(path: str) -> dict:
  """The size of a packed file, per tensor and in total.

  Per tensor: ``accounted_bits`` (the paper's rule: codes + codebook, or
  float32 values; 0 for uncompressed tensors, which the paper does not
  count), ``index_bits`` (the stored positions), ``payload_bytes`` (all
  its bytes). Totals add ``uncompressed_bits`` (biases, BatchNorm),
  ``header_bytes``, ``container_bytes`` (ZIP and ``.npy`` framing),
  ``file_bytes`` (on disk), ``dense_float32_bytes`` (the dense float32
  model: dense weight count plus the uncompressed entries, 4 bytes each),
  ``paper_ratio`` (``accounted_bits / (32 * dense_weight_count)``) and
  ``file_ratio`` (``file_bytes / dense_float32_bytes``).

  Raises:
    ValueError: not a packed model file.
  """
  with np.load(path, allow_pickle=False) as z:
    header = _parse_header(z, path)
    header_bytes = int(z['header'].size)
    payload_bytes = int(z['payload'].size)
  rows = []
  uncompressed_entries = 0
  for e in header['tensors']:
    parts = segment_sizes(e)
    size = int(np.prod(e['shape'], dtype=np.int64))
    row = dict(name=e['name'], shape=list(e['shape']), kind=e['kind'],
               payload_bytes=sum(parts.values()))
    if e['kind'] == 'dense':
      uncompressed_entries += size
      row.update(accounted_bits=0, index_bits=0, nnz=None, distinct=None,
                 pos=None, val=None,
                 uncompressed_bits=8 * parts['values'])
    else:
      row.update(accounted_bits=accounted_bits(e['nnz'], e['distinct']),
                 index_bits=8 * parts['index'], nnz=e['nnz'],
                 distinct=e['distinct'], pos=e['pos'], val=e['val'],
                 uncompressed_bits=0)
    rows.append(row)
  file_bytes = os.path.getsize(path)
  dense_count = header.get('dense_weight_count')
  total = dict(
      accounted_bits=sum(r['accounted_bits'] for r in rows),
      index_bits=sum(r['index_bits'] for r in rows),
      uncompressed_bits=sum(r['uncompressed_bits'] for r in rows),
      payload_bytes=payload_bytes, header_bytes=header_bytes,
      container_bytes=file_bytes - payload_bytes - header_bytes,
      file_bytes=file_bytes, dense_weight_count=dense_count)
  if dense_count:
    total['dense_float32_bytes'] = 4 * (int(dense_count)
                                        + uncompressed_entries)
    total['paper_ratio'] = total['accounted_bits'] / (32.0 * dense_count)
    total['file_ratio'] = file_bytes / total['dense_float32_bytes']
  return {'tensors': rows, 'total': total}


def format_size_report(report: Mapping[str, Any]) -> str:
  """A plain-text table of :func:`size_report`."""
  lines = [f'{"tensor":<28} {"shape":<16} {"nnz":>8} {"d":>5} {"pos":>7} '
           f'{"accounted b":>12} {"index b":>9} {"bytes":>8}']
  for r in report['tensors']:
    lines.append(
        f'{r["name"]:<28} {"x".join(map(str, r["shape"])) or "()":<16} '
        f'{"" if r["nnz"] is None else r["nnz"]:>8} '
        f'{"" if r["distinct"] is None else r["distinct"]:>5} '
        f'{r["pos"] or "dense":>7} {r["accounted_bits"]:>12} '
        f'{r["index_bits"]:>9} {r["payload_bytes"]:>8}')
  t = report['total']
  lines += [
      f'accounted (paper) bits: {t["accounted_bits"]} '
      f'({t["accounted_bits"] / 8:.0f} bytes)',
      f'index bits: {t["index_bits"]} ({t["index_bits"] / 8:.0f} bytes)',
      f'uncompressed float32 bits (biases, BatchNorm): '
      f'{t["uncompressed_bits"]} ({t["uncompressed_bits"] / 8:.0f} bytes)',
      f'header bytes: {t["header_bytes"]}, container bytes: '
      f'{t["container_bytes"]}',
      f'file bytes on disk: {t["file_bytes"]}',
  ]
  if 'paper_ratio' in t:
    lines += [
        f'paper ratio (accounted bits / 32 x {t["dense_weight_count"]} dense '
        f'weights): {t["paper_ratio"]:.5f}',
        f'file ratio (file bytes / {t["dense_float32_bytes"]} dense float32 '
        f'bytes): {t["file_ratio"]:.5f}',
    ]
  return '\n'.join(lines)
