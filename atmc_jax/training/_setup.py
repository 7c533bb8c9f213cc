"""The pieces one stage is built from: data, devices, model, warm start.

:func:`build_stage` turns a stage-applied config into a :class:`Stage`: the
splits (the training split minus its last ``config.num_val`` examples for
validation, and the test split), the model (random init, or the params of
``config.init_from``, another stage's workdir; dense params are factorized
when this stage's model is), the one-shot start of the compression
(magnitude pruning, singular-value truncation, projection), the optimizer
and the initial :class:`~atmc_jax.training.TrainState`.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

from absl import logging
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from atmc_jax import data
from atmc_jax import models
from atmc_jax import optim
from atmc_jax.training import _checkpoint
from atmc_jax.training import _config
from atmc_jax.training import _optimizer
from atmc_jax.training import _state
from atmc_jax.training import _workdir


# ----------------------------------------------------------------- data


def synthetic_split(spec, num_examples: int, *, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Learnable random data shaped like ``spec`` (for smoke tests).

  Each class has a fixed random template; an image is its class template
  blended with uniform noise, as uint8.
  """
  rng = np.random.default_rng([seed, 7])
  templates = rng.random((spec.num_classes,) + tuple(spec.image_shape))
  labels = rng.integers(0, spec.num_classes, num_examples).astype(np.int32)
  noise = rng.random((num_examples,) + tuple(spec.image_shape))
  images = 0.6 * templates[labels] + 0.4 * noise
  return (images * 255).astype(np.uint8), labels


def load_data(config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{'train', 'val', 'test'}`` -> ``(images uint8, labels int32)``."""
  spec = data.DATASETS[config.dataset]
  if config.data_source == 'synthetic':
    n_train, n_test = config.synthetic_sizes
    images, labels = synthetic_split(spec, n_train + n_test, seed=config.seed)
    train = (images[:n_train], labels[:n_train])
    test = (images[n_train:], labels[n_train:])
  else:
    kwargs = dict(data_dir=config.data_dir or None, source=config.data_source)
    train = data.load_split(config.dataset, 'train', **kwargs)
    test = data.load_split(config.dataset, 'test', **kwargs)
  if config.max_train_examples is not None:
    train = (train[0][:config.max_train_examples],
             train[1][:config.max_train_examples])
  if config.max_test_examples is not None:
    test = (test[0][:config.max_test_examples],
            test[1][:config.max_test_examples])
  train, val = data.train_val_split(*train, config.num_val)
  return {'train': train, 'val': val, 'test': test}


# ---------------------------------------------------------------- model


def create_model(config, spec, *, axis_name: Optional[str] = None):
  """The stage's model, with BatchNorm reducing over ``axis_name``."""
  kwargs = dict(config.model_kwargs.to_dict()) if config.model_kwargs else {}
  model_cls = models.MODELS[config.model]
  while isinstance(model_cls, functools.partial):
    model_cls = model_cls.func
  fields = getattr(model_cls, '__dataclass_fields__', {})
  if 'mean' in fields and spec.mean is not None:
    kwargs.setdefault('mean', tuple(spec.mean))
    kwargs.setdefault('std', tuple(spec.std))
  if 'bn_axis_name' in fields and axis_name is not None:
    kwargs.setdefault('bn_axis_name', axis_name)
  return models.create_model(config.model, num_classes=spec.num_classes,
                             factorized=bool(config.factorized), **kwargs)


def _has_factors(params) -> bool:
  return any(models.is_factorized_layer(node) for node in jax.tree.leaves(
      params, is_leaf=models.is_factorized_layer))


def init_variables(config, model, spec, key) -> tuple[Any, Any]:
  """``(params, batch_stats)``: random, or warm-started from another run."""
  dummy = jnp.zeros((1,) + tuple(spec.image_shape), jnp.float32)
  variables = jax.jit(lambda k: model.init(
      {'params': k, 'dropout': k}, dummy, train=False))(key)
  params = jax.device_get(variables['params'])
  batch_stats = jax.device_get(variables.get('batch_stats', {}))
  if not config.init_from:
    return params, batch_stats
  _workdir.require_finished(config.init_from)
  source, _ = _checkpoint.restore_state_dict(
      config.init_from, best=config.init_from_best)
  src_params = source['params']
  if config.factorized and not _has_factors(src_params):
    src_params = models.factorize(src_params)
  elif not config.factorized and _has_factors(src_params):
    src_params = models.materialize(src_params, like=params)
  try:
    params = flax.serialization.from_state_dict(params, src_params)
    if batch_stats:
      batch_stats = flax.serialization.from_state_dict(
          batch_stats, source.get('batch_stats') or {})
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(
        f'config.init_from={config.init_from!r} holds params that do not fit '
        f'config.model={config.model!r} (factorized={config.factorized}): '
        f'{e}') from e
  params = jax.tree.map(lambda t, s: np.asarray(s, np.asarray(t).dtype),
                        variables['params'], params)
  return params, batch_stats


# ---------------------------------------------------------------- stage


def select_devices(config: ml_collections.ConfigDict) -> list[jax.Device]:
  """The local devices ``config.num_devices`` asks for; validates the config.

  Raises:
    ValueError: a ``num_devices`` this host cannot give, or an invalid
      config (:func:`~atmc_jax.training.validate_config`).
  """
  devices = jax.local_devices()
  if config.num_devices:
    if jax.process_count() > 1 or not 1 <= config.num_devices <= len(devices):
      raise ValueError(
          f'config.num_devices={config.num_devices} is invalid; accepted: '
          f'None (all devices) or 1..{len(devices)} on a single host.')
    devices = devices[:config.num_devices]
  _config.validate_config(
      config, num_devices=len(devices) * jax.process_count())
  return devices


@dataclasses.dataclass(frozen=True)
class Stage:
  """What one stage trains and evaluates, built by :func:`build_stage`.

  Attributes:
    spec: the dataset's :class:`~atmc_jax.data.DatasetSpec`.
    splits: ``{'train', 'val', 'test'}`` -> ``(images, labels)``.
    steps_per_epoch: optimizer steps per epoch (full batches only).
    total_steps: ``steps_per_epoch * config.num_epochs``.
    model: the model that runs the stage's params (BatchNorm reducing over
      :data:`~atmc_jax.training.parallel.AXIS_NAME`).
    compression: from :func:`~atmc_jax.training.prepare_compression`.
    dense_count: the dense model's weight count (for the budget and the
      compression ratio).
    tx: the stage's optimizer.
    learning_rate: the learning rate at an optimizer update count.
    state: the initial host :class:`~atmc_jax.training.TrainState`.
    train_key: the key every training step folds its step into.
    eval_key: the key every evaluation folds its epoch into.
    data_source: ``{'train', 'test'}`` -> where the split was read
      (:func:`~atmc_jax.data.locate_split`, or ``'synthetic'``).
  """

  spec: data.DatasetSpec
  splits: dict[str, tuple[np.ndarray, np.ndarray]]
  steps_per_epoch: int
  total_steps: int
  model: Any
  compression: _optimizer.Compression
  dense_count: int
  tx: optax.GradientTransformation
  learning_rate: Callable[[int], float]
  state: _state.TrainState
  train_key: jax.Array
  eval_key: jax.Array
  data_source: dict[str, str] = dataclasses.field(default_factory=dict)


def data_sources(config) -> dict[str, str]:
  """Where the train and test splits are read from (logged, summarised)."""
  if config.data_source == 'synthetic':
    return {'train': 'synthetic', 'test': 'synthetic'}
  return {split: data.locate_split(config.dataset, split,
                                   data_dir=config.data_dir or None,
                                   source=config.data_source)
          for split in ('train', 'test')}


def build_stage(config: ml_collections.ConfigDict, *,
                axis_name: Optional[str]) -> Stage:
  """Data, model, compression start, optimizer and initial state.

  Raises:
    ValueError: a batch larger than the training split, an unfinished or
      unfitting ``config.init_from``.
  """
  spec = data.DATASETS[config.dataset]
  splits = load_data(config)
  sources = data_sources(config)
  logging.info('%s: train split from %s, test split from %s%s.',
               config.dataset, sources['train'], sources['test'],
               '' if config.data_dir else ' (data_dir unset: found by the '
               'automatic lookup)')
  n_train = len(splits['train'][0])
  steps_per_epoch = data.num_batches(n_train, config.batch_size,
                                     drop_remainder=True)
  if steps_per_epoch < 1:
    raise ValueError(
        f'config.batch_size={config.batch_size} exceeds the {n_train} '
        'training examples; accepted: batch_size <= training examples.')

  key = jax.random.PRNGKey(config.seed)
  init_key, train_key, eval_key = jax.random.split(key, 3)
  model = create_model(config, spec, axis_name=axis_name)
  params, batch_stats = init_variables(config, model, spec, init_key)
  dense_count = int(optim.dense_weight_count(params))
  params, compression = _optimizer.prepare_compression(config, params)
  params = jax.device_get(params)
  tx = _optimizer.make_optimizer(config, params, compression,
                                 steps_per_epoch)
  state = jax.device_get(_state.TrainState.create(params, batch_stats, tx))
  return Stage(spec=spec, splits=splits, steps_per_epoch=steps_per_epoch,
               total_steps=steps_per_epoch * config.num_epochs,
               model=compression.wrap_model(model), compression=compression,
               dense_count=dense_count, tx=tx,
               learning_rate=_optimizer.current_lr(config, steps_per_epoch),
               state=state,
               train_key=train_key, eval_key=eval_key, data_source=sources)
