"""One process of a CPU run of ``train_and_evaluate`` (tests/multihost_test.py).

Usage::

  python tests/_multihost_driver.py '<spec as JSON>'

The spec's keys: ``process_id``, ``num_processes``, ``port`` (the
coordinator's, on localhost; unused with one process), ``workdir``,
``config`` (overrides of ``tiny_config()``), ``sigterm_after`` (send SIGTERM
to this process after that many training steps of this call, or null) and
``out`` (where this process writes ``{"process_index", "process_count",
"device_count", "summary"}`` as JSON).

The device count comes from the environment
(``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``).
"""

import json
import os
import signal
import sys
import tempfile

import jax

jax.config.update('jax_platforms', 'cpu')
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.config.update('jax_disable_most_optimizations', True)
# Every run compiles the same steps: a persistent cache shares them.
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(tempfile.gettempdir(), 'atmc_jax_test_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def tiny_config(**overrides):
  """LeNet, stage al0, synthetic Fashion-MNIST: one epoch of 4 steps."""
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.dataset = 'fashion_mnist'
  config.data_source = 'synthetic'
  config.synthetic_sizes = (96, 32)
  config.num_val = 32
  config.model = 'lenet'
  config.stage = 'al0'
  config.sparsity = 0.2
  config.num_epochs = 1
  config.batch_size = 16
  config.eval_batch_size = 16
  config.learning_rate = 0.05
  config.train_attack.epsilon = 0.1
  config.train_attack.num_steps = 1
  config.eval.attack.epsilon = 0.1
  config.eval.attack.num_steps = 1
  config.checkpoint_every_steps = 1
  config.keep_checkpoints = 10
  config.log_every_steps = 1
  config.progress = False
  for k, v in overrides.items():
    config[k] = v
  return config


def _send_sigterm_after(num_steps):
  """Makes the loop's train step SIGTERM this process after ``num_steps``."""
  from atmc_jax.training import parallel  # pylint: disable=g-import-not-at-top
  make = parallel.pmap_train_step

  def pmap_train_step(*args, **kwargs):
    step = make(*args, **kwargs)
    calls = [0]

    def counted(*a):
      out = step(*a)
      calls[0] += 1
      if calls[0] == num_steps:
        os.kill(os.getpid(), signal.SIGTERM)
      return out

    return counted

  parallel.pmap_train_step = pmap_train_step


def main(spec):
  from atmc_jax.training import parallel  # pylint: disable=g-import-not-at-top
  if spec['num_processes'] > 1:
    # What experiments/train.py does, from the environment it documents.
    os.environ.update(JAX_COORDINATOR_ADDRESS=f'localhost:{spec["port"]}',
                      JAX_NUM_PROCESSES=str(spec['num_processes']),
                      JAX_PROCESS_ID=str(spec['process_id']))
  parallel.initialize_distributed()
  from atmc_jax import training  # pylint: disable=g-import-not-at-top
  if spec.get('sigterm_after'):
    _send_sigterm_after(spec['sigterm_after'])
  summary = training.train_and_evaluate(
      tiny_config(**spec.get('config', {})), spec['workdir'])
  with open(spec['out'], 'w') as f:
    json.dump({'process_index': jax.process_index(),
               'process_count': jax.process_count(),
               'device_count': jax.device_count(),
               'summary': summary}, f, default=str)


if __name__ == '__main__':
  main(json.loads(sys.argv[1]))
