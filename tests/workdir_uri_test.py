"""Workdir files and checkpoint digests on a ``gs://`` path (no network).

``etils.epath`` sends ``gs://`` paths to fsspec's ``gcs`` filesystem; here
fsspec's in-memory filesystem stands in for it. Orbax's own reads and writes
(tensorstore) are not covered: they need a real bucket.
"""

import json

from etils import epath
from etils.epath import backend as epath_backend
from fsspec.registry import _registry as fsspec_registry
from fsspec.implementations import memory
import pytest

from atmc_jax.training import _checkpoint
from atmc_jax.training import _workdir
from experiments.configs import default


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """A ``gs://`` directory backed by fsspec's memory filesystem."""
  # pylint: disable=protected-access
  monkeypatch.setitem(fsspec_registry, 'gcs',
                      memory.MemoryFileSystem)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  root = epath.Path(f'gs://atmc-test/{tmp_path.name}')
  root.mkdir(parents=True, exist_ok=True)
  try:
    yield root
  finally:
    root.rmtree(missing_ok=True)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()


def test_the_bucket_is_the_memory_filesystem(bucket):
  assert isinstance(epath_backend.fsspec_backend.fs(str(bucket)),
                    memory.MemoryFileSystem)
  assert str(bucket).startswith('gs://')


def test_a_workdir_keeps_its_config_on_gs(bucket):
  workdir = bucket / 'run'
  workdir.mkdir()
  config = default.get_config()
  assert _workdir.config_changes(workdir, config) is None
  _workdir.record_config(workdir, config, None)
  assert json.loads((workdir / 'config.json').read_text())['seed'] == (
      config.seed)
  assert _workdir.config_changes(workdir, config) == {}
  other = default.get_config()
  other.seed = config.seed + 1
  with pytest.raises(ValueError, match='seed'):
    _workdir.config_changes(workdir, other)
  longer = default.get_config()
  longer.num_epochs = config.num_epochs + 1
  changes = _workdir.config_changes(workdir, longer, ['num_epochs'])
  _workdir.record_config(workdir, longer, changes)
  assert sorted(p.name for p in workdir.iterdir()) == ['config.1.json',
                                                       'config.json']


def test_metrics_append_and_cut_back_on_gs(bucket):
  path = bucket / _workdir.METRICS_FILE
  for step in (1, 2, 3):
    _workdir.append_line(path, json.dumps({'step': step, 'split': 'val'}))
  _workdir.append_line(path, json.dumps({'step': 3, 'split': 'test'}))
  assert len(path.read_text().splitlines()) == 4
  assert _workdir.cut_metrics(bucket, 2) == 2
  assert [json.loads(l)['step'] for l in path.read_text().splitlines()] == [
      1, 2]
  assert not (bucket / (_workdir.METRICS_FILE + '.tmp')).exists()


def test_a_finished_run_is_reopened_on_gs(bucket):
  assert not _workdir.is_finished(bucket)
  _workdir.write_text_atomically(bucket / _workdir.SUMMARY_FILE,
                                 '{"status": "finished"}')
  assert _workdir.is_finished(bucket)
  assert _workdir.read_summary(bucket) == {'status': 'finished'}
  _workdir.require_finished(bucket)
  aside = _workdir.reopen_finished(bucket)
  assert aside == bucket / 'summary.1.json'
  assert not _workdir.is_finished(bucket)
  assert _workdir.next_free(bucket, 'summary') == bucket / 'summary.2.json'
  with pytest.raises(ValueError, match='not a directory'):
    _workdir.require_finished(bucket / 'missing')


def test_a_corrupt_checkpoint_is_found_and_set_aside_on_gs(bucket):
  step_dir = bucket / 'checkpoints' / '7'
  (step_dir / 'state').mkdir(parents=True)
  (step_dir / 'state' / 'data').write_bytes(b'\x00\x01' * 100)
  (step_dir / 'meta').write_text('{"step": 7}')
  _checkpoint.write_digest(step_dir)
  recorded = json.loads((step_dir / _checkpoint.DIGEST_FILE).read_text())
  assert sorted(recorded['files']) == ['meta', 'state/data']
  assert _checkpoint.verify_digest(step_dir) is None
  (step_dir / 'state' / 'data').write_bytes(b'\x00\x02' * 100)
  assert 'state/data: SHA-256 mismatch' in _checkpoint.verify_digest(step_dir)
  aside = _checkpoint.set_aside(step_dir)
  assert aside == bucket / 'checkpoints' / '7.corrupt-1'
  assert not step_dir.exists()
  assert _checkpoint.set_aside_steps(bucket / 'checkpoints') == [
      '7.corrupt-1']


def test_local_paths_are_made_absolute_and_uris_kept(bucket, tmp_path,
                                                     monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert _workdir.absolute('run') == epath.Path(tmp_path / 'run')
  assert _workdir.absolute(bucket) == bucket
