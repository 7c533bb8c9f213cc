"""A short real run on a Fashion-MNIST subset learns and is attackable."""

import os
import tempfile

import jax
import pytest

from atmc_jax import data
from atmc_jax import training
from experiments.configs import fmnist_lenet

jax.config.update('jax_disable_most_optimizations', True)
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(tempfile.gettempdir(), 'atmc_jax_test_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def _have_fashion_mnist():
  try:
    data.load_split('fashion_mnist', 'test', source='idx')
  except (FileNotFoundError, ValueError):
    return False
  return True


@pytest.mark.skipif(
    not _have_fashion_mnist(),
    reason='Fashion-MNIST IDX files not found (install the Debian package '
    'dataset-fashion-mnist, which puts them under '
    '/usr/share/datasets/fashion-mnist/).')
def test_short_adversarial_run_learns(tmp_path):
  config = fmnist_lenet.get_config()
  config.data_source = 'idx'
  config.max_train_examples = 3000
  config.num_val = 500
  config.max_test_examples = 1000
  config.batch_size = 32
  config.eval_batch_size = 256
  config.num_epochs = 3  # 78 steps per epoch: 234 steps.
  # 0.05 sits at the edge of stability here (batch 32, momentum 0.9): a
  # change in float rounding alone can tip it into divergence.
  config.learning_rate = 0.02
  config.lr_decay_epochs = ()
  config.train_attack.num_steps = 1
  config.eval.attack.num_steps = 5
  config.progress = False
  # One device: 8 fake devices share 2 cores badly for ~250 steps.
  config.num_devices = 1
  summary = training.train_and_evaluate(config, str(tmp_path))
  assert summary['status'] == 'finished' and summary['steps'] == 234
  # data_dir unset: the automatic lookup found the Debian copy, and says so.
  sources = summary['data_source']
  assert set(sources) == {'train', 'test'}, sources
  if not os.path.isdir(os.path.join(data.cache_dir(), 'fashion_mnist')):
    assert all(v == f'idx:{data.DEBIAN_FASHION_MNIST_DIR}'
               for v in sources.values()), sources
  # Ten balanced classes: chance is 0.1.
  assert summary['test_accuracy'] > 0.5, summary
  assert summary['test_adv_accuracy'] < summary['test_accuracy'], summary
  assert summary['ta'] == summary['test_accuracy']  # Dense: deployable = W.
