"""Training configuration: stage defaults and validation.

A config is an ``ml_collections.ConfigDict`` (see
``experiments/configs/default.py`` for every key). ``config.stage`` names one
method of the ATMC paper's comparison; :func:`apply_stage` fills the keys the
stage decides (loss, compression transform, factorized model, bits) wherever
the config leaves them unset (``None``), so that ``--config.stage=ap`` on the
command line switches all of them at once while explicit overrides still win.

| stage | loss | compression | model | notes |
|---|---|---|---|---|
| ``natural`` | natural | none | dense | clean training |
| ``da`` | adversarial | none | dense | dense adversarial training |
| ``nap`` | natural | fixed_support | dense | one-shot magnitude pruning, then natural fine-tuning |
| ``ap`` | adversarial | fixed_support | dense | one-shot magnitude pruning, then adversarial fine-tuning |
| ``al0`` | adversarial | l0 | dense | L0-projected adversarial training |
| ``alr`` | adversarial | low_rank | dense, held as ``B·A`` factors | global singular-value truncation, then fine-tuning of the factors with the ranks fixed |
| ``atmc32`` | adversarial | l0 | factorized | L0 projection over U, V, C |
| ``atmc8`` | adversarial | atmc | factorized | L0 projection + ADMM k-means codebooks (8 bits) |

"adversarial" above means ``config.adv_loss``: ``"adversarial"`` (the paper:
pure PGD loss) or ``"mixed"`` (the reference code for MNIST and CIFAR-10:
``0.5 * clean + 0.5 * adversarial``).

``config.eval.autoattack_examples`` (``None``: off; else an integer >= 1)
makes the run end with AutoAttack (standard version) and PGD-20 on the first
that many test examples of the deployable model, at ``config.eval.attack``'s
epsilon (L-inf only); ``config.eval.autoattack`` holds the attacks'
iterations, targets and queries (the standard version's by default).
"""

import math
import numbers

import jax
import ml_collections

from atmc_jax import data
from atmc_jax import models
from atmc_jax.projections import QUANTIZER_INITS
from atmc_jax.projections import QUANTIZERS

STAGES = ('natural', 'da', 'nap', 'ap', 'al0', 'alr', 'atmc32', 'atmc8')
LOSSES = ('natural', 'adversarial', 'mixed')
COMPRESSIONS = ('none', 'fixed_support', 'l0', 'atmc', 'low_rank')
ATTACK_BN_MODES = ('eval', 'train')
NORMS = ('linf', 'l2')
DATA_SOURCES = ('auto', 'idx', 'tfds', 'synthetic')

# stage -> (natural loss?, compression, factorized, default bits)
_STAGE_TABLE = {
    'natural': (True, 'none', False, None),
    'da': (False, 'none', False, None),
    'nap': (True, 'fixed_support', False, None),
    'ap': (False, 'fixed_support', False, None),
    'al0': (False, 'l0', False, None),
    'alr': (False, 'low_rank', False, None),
    'atmc32': (False, 'l0', True, None),
    'atmc8': (False, 'atmc', True, 8),
}


def _fail(key, value, accepted):
  raise ValueError(f'config.{key}={value!r} is invalid; accepted: {accepted}.')


def apply_stage(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns a copy of ``config`` with the stage's defaults filled in.

  Keys decided by the stage (``loss``, ``compression``, ``factorized``,
  ``bits``) are set only where the config leaves them ``None``.

  Args:
    config: a training config with ``config.stage`` in :data:`STAGES`.

  Returns:
    A new (unlocked) ``ConfigDict``.

  Raises:
    ValueError: ``config.stage`` is not one of :data:`STAGES`.
  """
  if config.stage not in _STAGE_TABLE:
    _fail('stage', config.stage, STAGES)
  natural, compression, factorized, bits = _STAGE_TABLE[config.stage]
  config = ml_collections.ConfigDict(config.to_dict())
  if config.get('loss') is None:
    config.loss = 'natural' if natural else config.adv_loss
  if config.get('compression') is None:
    config.compression = compression
  if config.get('factorized') is None:
    config.factorized = factorized
  if config.get('bits') is None and bits is not None:
    config.bits = bits
  return config


def _check_attack(prefix, attack):
  if attack.norm not in NORMS:
    _fail(f'{prefix}.norm', attack.norm, NORMS)
  if not attack.epsilon >= 0:
    _fail(f'{prefix}.epsilon', attack.epsilon, 'a number >= 0')
  if attack.num_steps < 1:
    _fail(f'{prefix}.num_steps', attack.num_steps, 'an integer >= 1')
  if attack.get('step_size') is not None and not attack.step_size > 0:
    _fail(f'{prefix}.step_size', attack.step_size, 'None or a number > 0')
  if attack.get('num_restarts', 1) < 1:
    _fail(f'{prefix}.num_restarts', attack.num_restarts, 'an integer >= 1')


def _check_autoattack(config):
  """``config.eval.autoattack_examples`` and ``config.eval.autoattack``."""
  examples = config.eval.get('autoattack_examples')
  if examples is None:
    return
  if (isinstance(examples, bool) or not isinstance(examples, numbers.Integral)
      or examples < 1):
    _fail('eval.autoattack_examples', examples,
          'None (no AutoAttack) or an integer >= 1 (the first that many '
          'test examples)')
  if config.eval.attack.norm != 'linf':
    _fail('eval.attack.norm', config.eval.attack.norm,
          "'linf' when config.eval.autoattack_examples is set (FAB-T and "
          'Square are L-inf only)')
  settings = config.eval.get('autoattack') or ml_collections.ConfigDict()
  for key in ('num_steps', 'num_targets', 'num_queries', 'pgd_steps'):
    value = settings.get(key, 1)
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
        or value < 1):
      _fail(f'eval.autoattack.{key}', value, 'an integer >= 1')
  classes = data.DATASETS[config.dataset].num_classes
  if settings.get('num_targets', 9) > classes - 1:
    _fail('eval.autoattack.num_targets', settings.num_targets,
          f'an integer in 1..{classes - 1} (the classes of '
          f'{config.dataset!r} but the true one)')


def validate_config(config: ml_collections.ConfigDict,
                    num_devices: int | None = None) -> None:
  """Checks a (stage-applied) config before anything is built.

  Args:
    config: the output of :func:`apply_stage`.
    num_devices: the global device count the batch is split over
      (default ``jax.device_count()``).

  Raises:
    ValueError: naming the bad key, its value and the accepted values.
  """
  if num_devices is None:
    num_devices = jax.device_count()
  if config.stage not in STAGES:
    _fail('stage', config.stage, STAGES)
  if config.dataset not in data.DATASETS:
    _fail('dataset', config.dataset, sorted(data.DATASETS))
  if config.data_source not in DATA_SOURCES:
    _fail('data_source', config.data_source, DATA_SOURCES)
  if config.model not in models.MODELS:
    _fail('model', config.model, models.model_names())
  if config.quantizer not in QUANTIZERS:
    _fail('quantizer', config.quantizer, QUANTIZERS)
  if config.get('quantizer_init', 'quantile') not in QUANTIZER_INITS:
    _fail('quantizer_init', config.quantizer_init, QUANTIZER_INITS)
  if (config.get('quantizer_init', 'quantile') == 'forgy'
      and config.quantizer != 'lloyd'):
    _fail('quantizer_init', config.quantizer_init,
          "'quantile' (config.quantizer is not 'lloyd'), or 'forgy' with "
          "config.quantizer='lloyd'")
  if config.loss not in LOSSES:
    _fail('loss', config.loss, LOSSES)
  if config.adv_loss not in ('adversarial', 'mixed'):
    _fail('adv_loss', config.adv_loss, ('adversarial', 'mixed'))
  if config.compression not in COMPRESSIONS:
    _fail('compression', config.compression, COMPRESSIONS)
  if config.attack_bn_mode not in ATTACK_BN_MODES:
    _fail('attack_bn_mode', config.attack_bn_mode, ATTACK_BN_MODES)
  if not 0.0 < config.sparsity <= 1.0:
    _fail('sparsity', config.sparsity, 'a fraction in (0, 1]')
  if config.bits is not None and not (
      isinstance(config.bits, int) and 1 <= config.bits <= 16):
    _fail('bits', config.bits, 'None (no quantisation) or an integer in 1..16')
  if config.compression == 'atmc' and config.bits is None:
    _fail('bits', config.bits,
          'an integer in 1..16 when config.compression="atmc"')
  if (isinstance(config.rho, bool) or not isinstance(config.rho, numbers.Real)
      or not math.isfinite(config.rho) or not config.rho > 0):
    _fail('rho', config.rho, 'a finite number > 0 (the ADMM penalty)')
  if config.admm_interval < 1:
    _fail('admm_interval', config.admm_interval, 'an integer >= 1')
  for key in ('batch_size', 'eval_batch_size'):
    value = config[key]
    if value < 1 or value % num_devices:
      _fail(key, value,
            f'a positive multiple of the device count ({num_devices})')
  if config.num_epochs < 1:
    _fail('num_epochs', config.num_epochs, 'an integer >= 1')
  if not config.learning_rate > 0:
    _fail('learning_rate', config.learning_rate, 'a number > 0')
  if not 0.0 <= config.momentum < 1.0:
    _fail('momentum', config.momentum, 'a number in [0, 1)')
  if not config.weight_decay >= 0:
    _fail('weight_decay', config.weight_decay, 'a number >= 0')
  if not 0.0 < config.lr_decay_factor <= 1.0:
    _fail('lr_decay_factor', config.lr_decay_factor, 'a number in (0, 1]')
  for key in ('max_train_examples', 'max_test_examples'):
    if config.get(key) is not None and config[key] < 1:
      _fail(key, config[key], 'None (all examples) or an integer >= 1')
  if config.bits is not None and config.compression != 'atmc':
    _fail('bits', config.bits,
          f'None for compression={config.compression!r} (stage '
          f'{config.stage!r} does not quantise; bits apply to '
          'compression="atmc" only)')
  if any(e < 0 for e in config.lr_decay_epochs):
    _fail('lr_decay_epochs', config.lr_decay_epochs, 'epochs >= 0')
  if config.num_val < 1:
    _fail('num_val', config.num_val,
          'an integer >= 1 (models are selected on the validation split)')
  if config.max_steps is not None and config.max_steps < 1:
    _fail('max_steps', config.max_steps, 'None or an integer >= 1')
  if config.checkpoint_every_steps < 1:
    _fail('checkpoint_every_steps', config.checkpoint_every_steps,
          'an integer >= 1')
  if config.keep_checkpoints < 1:
    _fail('keep_checkpoints', config.keep_checkpoints, 'an integer >= 1')
  if config.log_every_steps < 1:
    _fail('log_every_steps', config.log_every_steps, 'an integer >= 1')
  needs_init = config.compression in ('fixed_support', 'low_rank')
  if needs_init and not config.init_from and not config.allow_random_init:
    _fail('init_from', config.init_from,
          f'the workdir of a trained stage (stage {config.stage!r} prunes or '
          'truncates a trained model; set config.allow_random_init=True to '
          'start from random weights)')
  _check_attack('train_attack', config.train_attack)
  _check_attack('eval.attack', config.eval.attack)
  _check_autoattack(config)
