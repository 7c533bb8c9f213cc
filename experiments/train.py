r"""Trains and evaluates one stage of the ATMC pipeline.

Usage::

  python -m experiments.train \
      --config experiments/configs/fmnist_lenet.py --workdir runs/fmnist_da \
      [--config.stage=al0 --config.init_from=runs/fmnist_da ...]

Rerunning with the same ``--workdir`` resumes an interrupted run. On a
multi-host TPU pod slice, run the same command on every host (see
``docs/training.md``).
"""

import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from atmc_jax.training import parallel
from experiments import _logs

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_bool('library_logs', False, 'Also show the INFO/WARNING log '
                  'lines of the libraries (orbax, ...).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  _logs.quiet_libraries(not FLAGS.library_logs)
  parallel.initialize_distributed()
  # Imported after the distributed runtime is up.
  from atmc_jax import training  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  summary = training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(json.dumps(summary, indent=2, default=str))


if __name__ == '__main__':
  app.run(main)
