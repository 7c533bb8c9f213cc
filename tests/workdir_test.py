"""Unit tests for ``training._workdir.config_changes`` (no training)."""

import json
import os

import ml_collections
import pytest

from atmc_jax.training import _workdir


def _config(**kw):
  config = ml_collections.ConfigDict({'learning_rate': 0.1, 'num_epochs': 2,
                                      'max_steps': None})
  for k, v in kw.items():
    config[k] = v
  return config


def _save(workdir, config):
  with open(os.path.join(workdir, _workdir.CONFIG_FILE), 'w') as f:
    f.write(config.to_json_best_effort())


def test_new_run_and_unchanged_rerun(tmp_path):
  assert _workdir.config_changes(str(tmp_path), _config()) is None
  _save(tmp_path, _config())
  assert _workdir.config_changes(str(tmp_path), _config(max_steps=3)) == {
      'max_steps': (None, 3)}


def test_a_new_key_matches_only_at_its_neutral_value(tmp_path, monkeypatch):
  _save(tmp_path, _config())
  monkeypatch.setattr(_workdir, 'NEUTRAL_NEW_KEYS', {'extra_eval': None})
  assert _workdir.config_changes(str(tmp_path), _config(extra_eval=None)) == {}
  with pytest.raises(ValueError, match=r"extra_eval: '<absent>' -> 100"):
    _workdir.config_changes(str(tmp_path), _config(extra_eval=100))
  # A key not registered as added later is a difference at any value.
  with pytest.raises(ValueError, match=r"other_key: '<absent>' -> None"):
    _workdir.config_changes(str(tmp_path), _config(other_key=None))


def test_refusal_lists_every_key_and_allow_is_checked(tmp_path):
  _save(tmp_path, _config())
  with pytest.raises(ValueError, match=r'learning_rate: 0\.1 -> 0\.2'):
    _workdir.config_changes(str(tmp_path), _config(learning_rate=0.2))
  assert _workdir.config_changes(str(tmp_path), _config(num_epochs=3),
                                 ['num_epochs']) == {'num_epochs': (2, 3)}
  with pytest.raises(ValueError, match='allow_config_change=learning_rate'):
    _workdir.config_changes(str(tmp_path), _config(), ['learning_rate'])
  with open(os.path.join(tmp_path, _workdir.CONFIG_FILE)) as f:
    assert json.load(f)['learning_rate'] == 0.1
