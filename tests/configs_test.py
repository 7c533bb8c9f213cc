"""Every config in experiments/configs builds; paper configs run two steps."""

import importlib
import os
import pathlib
import tempfile

import jax
import pytest

from atmc_jax import training

jax.config.update('jax_disable_most_optimizations', True)
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(tempfile.gettempdir(), 'atmc_jax_test_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'experiments' / (
    'configs')
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob('*.py')
                 if not p.stem.startswith('_'))
# Paper configs take the stage as their config string.
PAPER = ('mnist_lenet', 'cifar10_resnet34', 'cifar100_resnet34', 'svhn_wrn')
# Tiny versions of the paper models (same code paths, fewer channels).
TINY_MODEL_KWARGS = {
    'lenet': {},
    'resnet34': {'stage_sizes': (1, 1), 'widths': (8, 16)},
    'wrn16_8': {'depth': 10, 'widen_factor': 1},
}


def _load(name):
  return importlib.import_module(f'experiments.configs.{name}')


def _is_training_config(config):
  return 'stage' in config and 'train_attack' in config


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_and_validates(name):
  module = _load(name)
  assert module.__doc__ and 'python -m experiments.' in module.__doc__
  config = module.get_config()
  if not _is_training_config(config):
    pytest.skip(f'{name} is not a train_and_evaluate config')
  training.validate_config(training.apply_stage(config), num_devices=8)
  stages = training.STAGES if name in PAPER else (config.stage,)
  for stage in stages:
    cfg = module.get_config(stage) if name in PAPER else module.get_config()
    cfg.init_from = 'runs/parent_stage'
    cfg = training.apply_stage(cfg)
    training.validate_config(cfg, num_devices=8)
    assert cfg.stage == stage


def test_paper_recipes_follow_the_readme():
  cfg = _load('cifar10_resnet34')
  da, al0, atmc8 = (cfg.get_config(s) for s in ('da', 'al0', 'atmc8'))
  assert (da.num_epochs, da.learning_rate, tuple(da.lr_decay_epochs)) == (
      200, 0.05, (80, 120, 150))
  assert (al0.learning_rate, tuple(al0.lr_decay_epochs)) == (
      0.01, (30, 60, 90, 120))
  assert atmc8.num_epochs == 150
  atmc8 = training.apply_stage(atmc8)
  assert (atmc8.bits, atmc8.compression, atmc8.factorized) == (8, 'atmc',
                                                               True)
  assert da.adv_loss == 'mixed' and da.batch_size == 128
  assert da.train_attack.epsilon == pytest.approx(4 / 255)
  assert da.train_attack.num_steps == 7
  assert _load('cifar100_resnet34').get_config().adv_loss == 'adversarial'
  mnist = _load('mnist_lenet').get_config()
  assert mnist.train_attack.num_steps == 16
  assert mnist.train_attack.epsilon == pytest.approx(76 / 255)
  with pytest.raises(ValueError, match='config string'):
    cfg.get_config('bogus')


@pytest.mark.parametrize('name,stage', [
    ('mnist_lenet', 'atmc8'), ('cifar10_resnet34', 'al0'),
    ('cifar100_resnet34', 'da'), ('svhn_wrn', 'da')])
def test_paper_config_runs_two_steps_on_synthetic_data(name, stage, tmp_path):
  config = _load(name).get_config(stage)
  config.data_source = 'synthetic'
  config.synthetic_sizes = (64, 16)
  config.num_val = 16
  config.batch_size = 16
  config.eval_batch_size = 16
  config.max_steps = 2
  config.progress = False
  config.allow_random_init = True
  config.sparsity = 0.2
  config.admm_interval = 1
  if stage == 'atmc8':
    config.bits = 2  # Fewer k-means centres: the same code, less CPU.
  config.train_attack.num_steps = 1
  config.eval.attack.num_steps = 1
  for k, v in TINY_MODEL_KWARGS[config.model].items():
    config.model_kwargs[k] = v
  out = training.train_and_evaluate(config, str(tmp_path))
  assert out['status'] == 'stopped' and out['steps'] == 2
  state, meta = training.restore_state_dict(str(tmp_path))
  assert int(state['step']) == 2 and meta['stage'] == stage
