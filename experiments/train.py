r"""Trains and evaluates one stage of the ATMC pipeline.

Usage::

  python -m experiments.train \
      --config experiments/configs/fmnist_lenet.py --workdir runs/fmnist_da \
      [--config.stage=al0 --config.init_from=runs/fmnist_da ...]

Rerunning with the same ``--workdir`` resumes an interrupted run; a
finished run is left alone (``--reevaluate`` evaluates it again into a new
file). A workdir belongs to one config: a rerun with another config is
refused, except for the keys named in ``--allow_config_change`` (e.g.
``num_epochs`` to extend a run; see ``docs/reliability.md``). On a
multi-host TPU pod slice, run the same command on every host (see
``docs/training.md``).
"""

import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from atmc_jax.training import _workdir
from atmc_jax.training import parallel
from experiments import _cli
from experiments import _logs

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_bool('library_logs', False, 'Also show the INFO/WARNING log '
                  'lines of the libraries (orbax, ...).')
flags.DEFINE_list('allow_config_change', [], 'Config keys that may differ '
                  "from the workdir's saved config.json (only num_epochs, "
                  'log_every_steps, checkpoint_every_steps, keep_checkpoints).')
flags.DEFINE_bool('reevaluate', False, 'Evaluate a finished run again on the '
                  'test split, into summary.reevaluated.<n>.json.')
flags.mark_flags_as_required(['config', 'workdir'])
flags.register_validator(
    'allow_config_change',
    lambda keys: set(keys) <= set(_workdir.OVERRIDABLE_KEYS),
    message='accepted: any of ' + ', '.join(_workdir.OVERRIDABLE_KEYS)
    + ' (other keys change what a run computes: use a new workdir)')


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
  summary = training.train_and_evaluate(
      FLAGS.config, FLAGS.workdir,
      allow_config_change=FLAGS.allow_config_change,
      reevaluate=FLAGS.reevaluate)
  if jax.process_index() == 0:
    print(json.dumps(summary, indent=2, default=str))


if __name__ == '__main__':
  app.run(main, flags_parser=_cli.parse_flags)
