"""``config.eval.autoattack_examples``: AutoAttack in ``summary.json``."""

import json
import os
import tempfile

import jax
import pytest

from atmc_jax import attacks
from atmc_jax import training
from atmc_jax.training import _workdir
from experiments.configs import default

jax.config.update('jax_disable_most_optimizations', True)
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(tempfile.gettempdir(), 'atmc_jax_test_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

AFTER = [f'autoattack_after_{a.replace("-", "_")}'
         for a in attacks.STANDARD_ATTACKS]


def tiny_config(**eval_overrides):
  """LeNet, clean training on 8 test images: one epoch of 4 steps."""
  config = default.get_config()
  config.data_source = 'synthetic'
  config.synthetic_sizes = (96, 8)
  config.num_val = 32
  config.stage = 'natural'
  config.num_epochs = 1
  config.batch_size = 16
  config.eval_batch_size = 8
  config.learning_rate = 0.05
  config.train_attack.num_steps = 1
  config.eval.attack.num_steps = 1
  config.progress = False
  config.eval.autoattack = dict(num_steps=2, num_targets=2, num_queries=4,
                                pgd_steps=2)
  for k, v in eval_overrides.items():
    config.eval[k] = v
  return config


def test_summary_records_autoattack_on_the_deployable_model(tmp_path):
  workdir = str(tmp_path / 'run')
  # More examples than the test split holds: all 8 are attacked.
  summary = training.train_and_evaluate(
      tiny_config(autoattack_examples=1000), workdir)
  with open(os.path.join(workdir, 'summary.json')) as f:
    on_disk = json.load(f)
  for key in ['autoattack_accuracy', 'autoattack_examples',
              'autoattack_seconds', 'autoattack_masking_suspected',
              'autoattack_gap', 'autoattack_pgd2_accuracy',
              'autoattack_clean_accuracy', 'autoattack_settings'] + AFTER:
    assert on_disk[key] == summary[key], key
  assert summary['autoattack_examples'] == 8
  # All 8 test images: the clean accuracy is the summary's TA.
  assert summary['autoattack_clean_accuracy'] == pytest.approx(summary['ta'])
  # Cumulative: each attack only removes points; the last is AutoAttack's.
  chain = [summary['autoattack_clean_accuracy']] + [summary[k] for k in AFTER]
  assert chain == sorted(chain, reverse=True)
  assert summary[AFTER[-1]] == summary['autoattack_accuracy']
  assert summary['autoattack_gap'] == pytest.approx(
      summary['autoattack_pgd2_accuracy'] - summary['autoattack_accuracy'])
  assert summary['autoattack_masking_suspected'] == (
      summary['autoattack_gap'] > attacks.MASKING_GAP)
  assert summary['autoattack_seconds'] > 0
  assert summary['autoattack_settings'] == dict(
      epsilon=0.1, norm='linf', pgd_steps=2, version='reduced', num_steps=2,
      num_targets=2, num_queries=4)
  for value in chain:
    assert 0.0 <= value <= 1.0 and value * 8 == int(value * 8)


def test_off_by_default(tmp_path):
  config = tiny_config()
  assert config.eval.autoattack_examples is None
  summary = training.train_and_evaluate(config, str(tmp_path / 'off'))
  assert not [k for k in summary if k.startswith('autoattack')]


@pytest.mark.parametrize('value', [0, -3, True])
def test_bad_examples_are_rejected(value):
  config = training.apply_stage(tiny_config(autoattack_examples=value))
  with pytest.raises(ValueError, match=r'eval\.autoattack_examples=.*'
                     r'None \(no AutoAttack\) or an integer >= 1'):
    training.validate_config(config, num_devices=1)


def test_bad_settings_are_rejected():
  config = training.apply_stage(tiny_config(autoattack_examples=4))
  config.eval.autoattack.num_targets = 10
  with pytest.raises(ValueError, match=r'num_targets=10.*1\.\.9'):
    training.validate_config(config, num_devices=1)
  config.eval.autoattack.num_targets = 9
  config.eval.autoattack.num_queries = 0
  with pytest.raises(ValueError, match=r'num_queries=0.*integer >= 1'):
    training.validate_config(config, num_devices=1)
  config.eval.autoattack.num_queries = 4
  config.eval.attack.norm = 'l2'
  with pytest.raises(ValueError, match=r"eval\.attack\.norm='l2'.*'linf'"):
    training.validate_config(config, num_devices=1)


def test_a_workdir_saved_before_the_keys_existed_still_matches(tmp_path):
  config = training.apply_stage(default.get_config())
  saved = json.loads(config.to_json_best_effort())
  del saved['eval']['autoattack_examples'], saved['eval']['autoattack']
  with open(tmp_path / _workdir.CONFIG_FILE, 'w') as f:
    json.dump(saved, f)
  assert _workdir.config_changes(str(tmp_path), config) == {}
  config.eval.autoattack_examples = 100
  with pytest.raises(ValueError, match='eval.autoattack_examples'):
    _workdir.config_changes(str(tmp_path), config)
