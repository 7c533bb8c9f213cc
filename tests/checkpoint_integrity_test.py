"""Checkpoint digests: real orbax files corrupted, fallback, set aside."""

import logging
import os

import numpy as np
import pytest

from atmc_jax import training
from atmc_jax.training import _checkpoint


def _tree(step):
  return {'w': np.arange(64, dtype=np.float32) * step, 'step': np.int32(step)}


def _target():
  return _tree(0)


def _saved(tmp_path, steps=(1, 2, 3), keep=5):
  ckpts = training.Checkpoints(str(tmp_path), keep=keep, best_metric='m')
  for step in steps:
    ckpts.save(step, _tree(step), {'step': step})
    ckpts.save_best(step, _tree(step), {'step': step}, {'m': float(step)})
  return ckpts


def _data_files(step_dir):
  """The files orbax wrote the arrays' bytes into."""
  out = []
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    if os.path.basename(root) == 'd':
      out += [os.path.join(root, f) for f in files]
  assert out, step_dir
  return sorted(out)


def _flip_bit(path):
  with open(path, 'r+b') as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x10
    f.seek(0)
    f.write(data)


def _truncate(path):
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.truncate(size // 2)


def _garbage(path):
  size = os.path.getsize(path)
  with open(path, 'wb') as f:
    f.write(np.random.default_rng(0).bytes(size))


def _remove_metadata(step_dir):
  os.remove(os.path.join(step_dir, 'state', '_METADATA'))


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records
          if r.levelno == logging.WARNING and r.filename == '_checkpoint.py']


def test_save_writes_a_digest_that_verifies(tmp_path):
  ckpts = _saved(tmp_path)
  for series in ('checkpoints', 'best'):
    for step in (os.listdir(tmp_path / series)):
      step_dir = str(tmp_path / series / step)
      assert os.path.exists(os.path.join(step_dir, _checkpoint.DIGEST_FILE))
      assert _checkpoint.verify_digest(step_dir) is None
  ckpts.close()


@pytest.mark.parametrize('corrupt', ['flip', 'truncate', 'garbage',
                                     'no_metadata'])
def test_corrupt_latest_falls_back_and_is_set_aside(tmp_path, caplog,
                                                    corrupt):
  ckpts = _saved(tmp_path)
  step_dir = str(tmp_path / 'checkpoints' / '3')
  if corrupt == 'no_metadata':
    _remove_metadata(step_dir)
    expected_file = 'state/_METADATA: missing'
  else:
    path = _data_files(step_dir)[0]
    {'flip': _flip_bit, 'truncate': _truncate, 'garbage': _garbage}[corrupt](
        path)
    expected_file = os.path.relpath(path, step_dir) + ': SHA-256 mismatch'
  caplog.set_level(logging.WARNING)
  state, meta = ckpts.restore(_target())
  assert meta['step'] == 2 and int(state['step']) == 2
  np.testing.assert_array_equal(state['w'], _tree(2)['w'])
  lines = _warnings(caplog)
  assert len(lines) == 1, lines
  assert 'step 3' in lines[0] and expected_file in lines[0]
  assert '3.corrupt-1' in lines[0]
  # Renamed aside, not deleted; the manager no longer lists it.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == [
      '1', '2', '3.corrupt-1']
  assert ckpts.latest_step() == 2
  # The series goes on: step 3 is saved again beside the set-aside one.
  ckpts.save(3, _tree(3), {'step': 3})
  state, meta = ckpts.restore(_target())
  assert meta['step'] == 3
  assert os.path.isdir(tmp_path / 'checkpoints' / '3.corrupt-1')
  ckpts.close()


def test_all_corrupt_is_an_error_naming_them_also_on_a_rerun(tmp_path):
  ckpts = _saved(tmp_path, steps=(1, 2))
  for step in ('1', '2'):
    _flip_bit(_data_files(str(tmp_path / 'checkpoints' / step))[0])
  with pytest.raises(training.CheckpointError,
                     match=r'step 2 .*SHA-256 mismatch.*step 1 .*mismatch'):
    ckpts.restore(_target())
  ckpts.close()
  # A rerun does not silently start over.
  again = training.Checkpoints(str(tmp_path), keep=5, best_metric='m')
  with pytest.raises(training.CheckpointError,
                     match=r'set aside earlier: 1.corrupt-1, 2.corrupt-1'):
    again.restore(_target())
  with pytest.raises(training.CheckpointError, match='set aside earlier'):
    training.restore_state_dict(str(tmp_path))
  again.close()


def test_checkpoint_without_digest_loads_with_one_warning(tmp_path, caplog):
  ckpts = _saved(tmp_path)
  os.remove(tmp_path / 'checkpoints' / '3' / _checkpoint.DIGEST_FILE)
  caplog.set_level(logging.WARNING)
  state, meta = ckpts.restore(_target())
  assert meta['step'] == 3 and int(state['step']) == 3
  lines = _warnings(caplog)
  assert len(lines) == 1 and 'unverified' in lines[0], lines
  ckpts.close()


def test_checkpoint_without_digest_that_does_not_load_is_set_aside(
    tmp_path, caplog):
  ckpts = _saved(tmp_path)
  step_dir = str(tmp_path / 'checkpoints' / '3')
  os.remove(os.path.join(step_dir, _checkpoint.DIGEST_FILE))
  _remove_metadata(step_dir)
  caplog.set_level(logging.WARNING)
  _, meta = ckpts.restore(_target())
  assert meta['step'] == 2
  assert any('does not load' in l and '3.corrupt-1' in l
             for l in _warnings(caplog))
  ckpts.close()


def test_intact_checkpoint_that_does_not_fit_the_target_is_not_set_aside(
    tmp_path):
  ckpts = _saved(tmp_path)
  with pytest.raises(ValueError) as err:
    ckpts.restore({'v': np.zeros(64, np.float32), 'step': np.int32(0)})
  assert not isinstance(err.value, training.CheckpointError)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2', '3']
  ckpts.close()


def test_restore_state_dict_falls_back(tmp_path, caplog):
  ckpts = _saved(tmp_path)
  ckpts.close()
  _garbage(_data_files(str(tmp_path / 'checkpoints' / '3'))[0])
  caplog.set_level(logging.WARNING)
  state, meta = training.restore_state_dict(str(tmp_path))
  assert meta['step'] == 2
  np.testing.assert_array_equal(state['w'], _tree(2)['w'])
  assert len(_warnings(caplog)) == 1


def test_corrupt_best_falls_back_to_the_same_step_of_the_latest_series(
    tmp_path, caplog):
  ckpts = _saved(tmp_path)
  best_dir = str(tmp_path / 'best' / '3')
  _flip_bit(_data_files(best_dir)[0])
  caplog.set_level(logging.WARNING)
  state, meta = training.restore_state_dict(str(tmp_path), best=True)
  assert meta['step'] == 3
  np.testing.assert_array_equal(state['w'], _tree(3)['w'])
  assert os.listdir(tmp_path / 'best') == ['3.corrupt-1']
  # And again (the best series now holds only the set-aside step).
  _, meta = ckpts.restore_best(_target())
  assert meta['step'] == 3
  # Without that step in the latest series, it is an error.
  _flip_bit(_data_files(str(tmp_path / 'checkpoints' / '3'))[0])
  with pytest.raises(training.CheckpointError, match='best'):
    training.restore_state_dict(str(tmp_path), best=True)
  ckpts.close()
