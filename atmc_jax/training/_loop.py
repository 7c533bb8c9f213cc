"""``train_and_evaluate(config, workdir)``: one stage of the ATMC pipeline.

The loop, in order:

1. **Config**: :func:`apply_stage` fills the stage's defaults, then
   :func:`validate_config` rejects a bad config before anything is built.
2. **Data**: the training split minus its last ``config.num_val`` examples
   (validation), and the test split; each host reads its slice of every
   global batch; the order is a pure function of ``(seed, epoch)``.
3. **Model & optimizer**: random init, or the params of
   ``config.init_from`` (another stage's workdir; dense params are factorized
   when this stage's model is); the one-shot start of the compression
   (magnitude pruning, singular-value truncation, projection); SGD + weight
   decay wrapped by the compression transform.
4. **Resume**: the latest checkpoint of ``workdir``, if any; training goes on
   from its step, mid-epoch included (``start_batch``).
5. **Train**: the pmapped step; every random key is
   ``fold_in(key, step)``, so an interrupted and resumed run ends with the
   params of an uninterrupted one. Checkpoints every
   ``config.checkpoint_every_steps`` steps and at each epoch end; SIGTERM
   (and ``config.max_steps``) saves and returns.
6. **Evaluate** each epoch on validation (clean and PGD accuracy of the
   trained and of the deployable params, nnz, bits, compression ratio), keep
   the best checkpoint by validation ATA of the deployable params (clean
   accuracy for natural-loss stages), and at the end on the test split.

Non-finite losses: the per-step losses stay on device and are fetched once
every ``config.log_every_steps`` steps and before every checkpoint (one
host sync per interval instead of one per step); a NaN/Inf stops the run
with ``FloatingPointError`` naming the first bad step, before any state
after it is saved, so the latest checkpoint is the last good one.

Outputs in ``workdir``: ``checkpoints/``, ``best/``, ``metrics.jsonl`` (one
line per evaluation), ``summary.json`` (written only when the run finishes)
and ``config.json``.

Reruns (``_workdir``): a workdir belongs to one config (a differing config
is refused before anything is written, except the keys a caller allows); a
finished workdir is left alone (``reevaluate`` evaluates it again into a new
file); a resumed run first cuts ``metrics.jsonl`` back to the restored step,
and the per-step training metrics of a checkpoint's epoch travel in its
meta, so the epoch's averages equal those of an uninterrupted run.
Checkpoints are verified on restore (``_checkpoint``).
"""

import functools
import json
import os
import signal
import threading
import time
from typing import Any, Optional, Sequence

from absl import logging
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from atmc_jax import attacks
from atmc_jax import data
from atmc_jax import models
from atmc_jax import optim
from atmc_jax._src.base import json_default as _json_default
from atmc_jax.training import _checkpoint
from atmc_jax.training import _config
from atmc_jax.training import _optimizer
from atmc_jax.training import _state
from atmc_jax.training import _steps
from atmc_jax.training import _workdir
from atmc_jax.training import parallel

SUMMARY_FILE = _workdir.SUMMARY_FILE
METRICS_FILE = _workdir.METRICS_FILE


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


# ----------------------------------------------------------- evaluation


def attack_kwargs(attack) -> dict[str, Any]:
  """The ``attacks.pgd`` keyword arguments of a config's attack block."""
  kw = dict(epsilon=float(attack.epsilon), num_steps=int(attack.num_steps),
            norm=attack.norm, random_start=bool(attack.random_start))
  if attack.get('step_size') is not None:
    kw['step_size'] = float(attack.step_size)
  if attack.get('num_restarts', 1) != 1:
    kw['num_restarts'] = int(attack.num_restarts)
  return kw


def paper_attack_kwargs(config) -> dict[str, Any]:
  """The paper's evaluation attack (spec §2.3): deterministic BIM.

  ``K = config.train_attack.num_steps`` signed steps of ``1.25 * eps / K``
  from the clean input (no random start, one restart), at the evaluation
  attack's epsilon and norm: the attack the paper trains with and reports.
  """
  epsilon = float(config.eval.attack.epsilon)
  num_steps = int(config.train_attack.num_steps)
  return dict(epsilon=epsilon, num_steps=num_steps,
              norm=config.eval.attack.norm, random_start=False,
              step_size=attacks.reference_step_size(epsilon, num_steps))


class _Evaluator:
  """Clean and PGD accuracy of replicated params over a whole split."""

  def __init__(self, config, model, p_eval, devices):
    self._config = config
    self._model = model
    self._p_eval = p_eval
    self._devices = devices

  def __call__(self, params_r, stats_r, split, key, desc='eval'):
    images, labels = split
    batches = data.iterate_batches(
        images, labels, batch_size=self._config.eval_batch_size, seed=0,
        epoch=0, shuffle=False, augment='none', drop_remainder=False,
        process_index=jax.process_index(),
        process_count=jax.process_count())
    totals = None
    for i, batch in enumerate(tqdm.tqdm(
        parallel.prefetch_to_device(batches, 2, self._devices), desc=desc,
        leave=False,
        disable=not self._config.progress or jax.process_index() != 0,
        total=len(batches))):
      out = self._p_eval(params_r, stats_r, batch,
                         jax.random.fold_in(key, i))
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = {k: float(np.asarray(v)[0]) for k, v in
              jax.device_get(totals).items()}
    count = max(totals['count'], 1.0)
    return {'accuracy': totals['clean_correct'] / count,
            'adv_accuracy': totals.get('adv_correct', float('nan')) / count,
            'count': int(totals['count'])}


def _size_stats(compression, deployable, dense_count) -> dict[str, Any]:
  """nnz, model bits and compression ratio of the deployable params."""
  stats = optim.compression_stats(deployable, dense_count)
  out = {'nnz': int(stats['nnz']), 'model_bits': int(stats['bits']),
         'compression_ratio': float(stats['ratio']),
         'max_distinct': int(stats['max_distinct'])}
  alr_bits = compression.low_rank_bits(deployable)
  if alr_bits is not None:
    out['model_bits'] = alr_bits
    out['compression_ratio'] = alr_bits / (32.0 * dense_count)
  return out


def _strong_eval(config, model, params, batch_stats, split, key):
  """PGD-k with restarts, APGD-CE and their per-example worst case."""
  strong = config.eval.strong_attack
  base_kw = dict(epsilon=float(config.eval.attack.epsilon),
                 norm=config.eval.attack.norm)
  suite = {
      f'pgd{strong.pgd_steps}x{strong.pgd_restarts}': functools.partial(
          attacks.pgd, num_steps=strong.pgd_steps,
          num_restarts=strong.pgd_restarts, random_start=True, **base_kw),
      'apgd_ce': functools.partial(attacks.apgd, num_steps=strong.apgd_steps,
                                   **base_kw),
  }
  logits_fn = _steps.logits_partial(model, params, batch_stats,
                                    image_shape=split[0].shape[1:])
  return attacks.robust_accuracy(
      logits_fn, _unpadded_batches(split, config.eval_batch_size), suite, key)


def _unpadded_batches(split, batch_size):
  """``(images in [0, 1], labels)`` batches of a split, in order, unpadded."""
  for batch in data.iterate_batches(
      *split, batch_size=batch_size, seed=0, epoch=0, shuffle=False,
      augment='none', drop_remainder=False):
    keep = np.asarray(batch['mask']) > 0
    yield np.asarray(batch['image'])[keep], np.asarray(batch['label'])[keep]


def _autoattack_eval(config, model, params, batch_stats, split, key
                     ) -> dict[str, Any]:
  """AutoAttack and PGD on the first ``eval.autoattack_examples`` examples.

  The comparison of ``--suite autoattack`` in
  ``experiments/evaluate_attacks.py``: PGD with random start and the default
  step (``pgd_steps`` steps, 20 by default) and AutoAttack (APGD-CE, APGD-T,
  FAB-T, Square, each on the points still robust), both at
  ``config.eval.attack``'s epsilon; batches of ``config.eval_batch_size``.

  Returns:
    The summary keys ``autoattack_accuracy``,
    ``autoattack_after_<attack>`` (accuracy after the attacks up to that
    one), ``autoattack_clean_accuracy``, ``autoattack_pgd<k>_accuracy``,
    ``autoattack_gap`` (PGD minus AutoAttack accuracy),
    ``autoattack_masking_suspected`` (:func:`atmc_jax.attacks.
    masking_suspected`), ``autoattack_examples`` (the test split may hold
    fewer than asked), ``autoattack_seconds`` (the AutoAttack calls),
    ``autoattack_pgd_seconds`` and ``autoattack_settings``.
  """
  settings = config.eval.autoattack
  n = min(int(config.eval.autoattack_examples), len(split[1]))
  split = (split[0][:n], split[1][:n])
  epsilon = float(config.eval.attack.epsilon)
  norm = config.eval.attack.norm
  kw = dict(num_steps=int(settings.num_steps),
            num_targets=int(settings.num_targets),
            num_queries=int(settings.num_queries))
  standard = (kw['num_steps'], kw['num_targets'],
              kw['num_queries']) == (100, 9, 5000)
  pgd_name = f'pgd{int(settings.pgd_steps)}'
  logits_fn = _steps.logits_partial(model, params, batch_stats,
                                    image_shape=split[0].shape[1:])
  t0 = time.time()
  pgd = attacks.robust_accuracy(
      logits_fn, _unpadded_batches(split, config.eval_batch_size),
      {pgd_name: functools.partial(attacks.pgd, epsilon=epsilon, norm=norm,
                                   num_steps=int(settings.pgd_steps))}, key)
  pgd_seconds = time.time() - t0
  t0 = time.time()
  counts = dict.fromkeys(attacks.STANDARD_ATTACKS, 0.0)
  robust = 0
  for b, (x, y) in enumerate(_unpadded_batches(split,
                                               config.eval_batch_size)):
    res = attacks.autoattack(logits_fn, x, y, jax.random.fold_in(key, b),
                             epsilon=epsilon, norm=norm, **kw)
    for name in attacks.STANDARD_ATTACKS:
      counts[name] += res.accuracy[name] * len(y)
    robust += int(res.robust.sum())
  seconds = time.time() - t0
  out = {f'autoattack_after_{name.replace("-", "_")}': c / n
         for name, c in counts.items()}
  out.update(
      autoattack_accuracy=robust / n,
      autoattack_clean_accuracy=pgd['clean'],
      **{f'autoattack_{pgd_name}_accuracy': pgd[pgd_name]},
      autoattack_gap=pgd[pgd_name] - robust / n,
      autoattack_examples=n, autoattack_seconds=seconds,
      autoattack_pgd_seconds=pgd_seconds,
      autoattack_settings=dict(
          epsilon=epsilon, norm=norm, pgd_steps=int(settings.pgd_steps),
          version='standard' if standard else 'reduced', **kw))
  out['autoattack_masking_suspected'] = attacks.masking_suspected(
      out['autoattack_gap'])
  return out


# ---------------------------------------------------------------- loop


class _Preemption:
  """Turns SIGTERM into a flag the loop polls (main thread only).

  ``requested`` is this process's flag; :meth:`sync` combines it across
  processes, so a SIGTERM on any host stops every host at the same step.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def sync(self) -> bool:
    """Agrees on the flag across processes (a collective: call it on all)."""
    return parallel.any_process(self.requested)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def _check_finite(pending, workdir, checkpoints):
  """Fetches the pending per-step metrics; raises on a non-finite loss."""
  if not pending:
    return []
  steps = [s for s, _ in pending]
  fetched = jax.device_get([m for _, m in pending])
  for step, metrics in zip(steps, fetched):
    loss = np.asarray(metrics['loss'])
    if not np.all(np.isfinite(loss)):
      last = checkpoints.latest_step()
      raise FloatingPointError(
          f'non-finite training loss {loss.ravel()[0]} at step {step}; '
          'stopping. The last good checkpoint is '
          + (f'step {last} in {os.path.join(workdir, "checkpoints")}'
             if last is not None else 'none (no checkpoint was saved yet)')
          + '. Lower config.learning_rate or check the data.')
  return [(s, {k: float(np.asarray(v).ravel()[0]) for k, v in m.items()})
          for s, m in zip(steps, fetched)]


def _trees_equal(a, b) -> bool:
  """Whether two host pytrees have the same structure and equal leaves."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _best_value(metrics_path, metric, step):
  """The validation ``metric`` recorded at ``step`` in ``metrics.jsonl``."""
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      for line in f:
        record = json.loads(line)
        if record.get('split') == 'val' and record.get('step') == step:
          return record.get(metric)
  return None


def _write_json(path, obj):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, default=_json_default)
  os.replace(tmp, path)


def _open_workdir(config, workdir, allow_config_change, reevaluate,
                  is_main) -> dict[str, Any] | None:
  """Checks a rerun against the workdir before anything is written.

  Returns:
    The saved summary of a finished run to leave alone, else ``None`` (the
    config recorded, a finished run being extended reopened).
  """
  changes = _workdir.config_changes(workdir, config, allow_config_change)
  finished = _workdir.is_finished(workdir)
  old_epochs, new_epochs = (changes or {}).get('num_epochs', (0, 0))
  extends = isinstance(old_epochs, int) and new_epochs > old_epochs
  if reevaluate:
    if not finished or extends:
      raise ValueError(
          f'reevaluate=True needs the finished run of {workdir!r} at its '
          'config (' + ('num_epochs changed' if finished else
                        f'it has no {SUMMARY_FILE}') + '); accepted: a '
          'finished workdir rerun with its own config.')
    return None
  if finished and not extends:
    logging.info('%s holds a finished run (%s); left alone (reevaluate=True '
                 'evaluates it again into a new file).', workdir,
                 SUMMARY_FILE)
    return _workdir.read_summary(workdir)
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    if finished:
      _workdir.reopen_finished(workdir)
    _workdir.record_config(workdir, config, changes)
  return None


def _check_progress(config, start_step, total_steps) -> None:
  if start_step > total_steps:
    raise ValueError(
        f'config.num_epochs={config.num_epochs} ({total_steps} steps) is '
        f'behind the restored step {start_step}; accepted: num_epochs '
        'covering the steps already trained.')


def _restored_epoch_log(meta) -> list[tuple[int, dict[str, float]]]:
  """The per-step training metrics of the checkpoint's unfinished epoch."""
  return [(int(s), dict(m)) for s, m in (meta or {}).get('epoch_log', [])]


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str, *,
                       allow_config_change: Sequence[str] = (),
                       reevaluate: bool = False) -> dict[str, Any]:
  """Trains and evaluates one stage; resumes ``workdir`` if it has a run.

  Args:
    config: a training config (``experiments/configs/default.py``).
    workdir: where checkpoints, ``metrics.jsonl`` and ``summary.json`` go.
    allow_config_change: keys that may differ from the workdir's saved
      config (``_workdir.OVERRIDABLE_KEYS``: ``num_epochs`` to extend a run,
      the logging and checkpoint cadence).
    reevaluate: evaluate a finished run again on the test split, into
      ``summary.reevaluated.<n>.json`` (``summary.json`` and
      ``metrics.jsonl`` untouched); without it a finished run is left alone
      and its saved summary returned.

  Returns:
    The summary: test TA / ATA of the trained and of the deployable params
    (``test_accuracy``, ``test_adv_accuracy``, ``test_deployable_accuracy``,
    ``test_deployable_adv_accuracy``; ``ta``/``ata`` are the deployable
    ones), ``nnz``, ``model_bits``, ``compression_ratio``,
    ``dense_weight_count``, ``budget``, ``wall_time_s``, ``examples_per_s``,
    ``steps``, the ``autoattack_*`` keys of :func:`_autoattack_eval` when
    ``config.eval.autoattack_examples`` is set, and ``status``
    (``"finished"``, or ``"stopped"`` when
    ``config.max_steps`` or SIGTERM ended the run early; ``summary.json`` is
    written only for finished runs).

  Raises:
    ValueError: an invalid config (before anything is built), a config
      that differs from the workdir's, an unfinished ``init_from``.
    CheckpointError: the workdir's checkpoints exist but none verifies.
    FloatingPointError: a non-finite training loss.
  """
  wall_start = time.time()
  config = _config.apply_stage(config)
  devices = jax.local_devices()
  if config.num_devices:
    if jax.process_count() > 1 or not 1 <= config.num_devices <= len(devices):
      raise ValueError(
          f'config.num_devices={config.num_devices} is invalid; accepted: '
          f'None (all devices) or 1..{len(devices)} on a single host.')
    devices = devices[:config.num_devices]
  _config.validate_config(
      config, num_devices=len(devices) * jax.process_count())
  is_main = jax.process_index() == 0
  finished = _open_workdir(config, workdir, allow_config_change, reevaluate,
                           is_main)
  if finished is not None:
    return finished

  # Data.
  spec = data.DATASETS[config.dataset]
  splits = load_data(config)
  n_train = len(splits['train'][0])
  steps_per_epoch = data.num_batches(n_train, config.batch_size,
                                     drop_remainder=True)
  if steps_per_epoch < 1:
    raise ValueError(
        f'config.batch_size={config.batch_size} exceeds the {n_train} '
        'training examples; accepted: batch_size <= training examples.')
  total_steps = steps_per_epoch * config.num_epochs

  # Model & optimizer.
  key = jax.random.PRNGKey(config.seed)
  init_key, train_key, eval_key = jax.random.split(key, 3)
  model = create_model(config, spec, axis_name=parallel.AXIS_NAME)
  params, batch_stats = init_variables(config, model, spec, init_key)
  dense_count = int(optim.dense_weight_count(params))
  params, compression = _optimizer.prepare_compression(config, params)
  model = compression.wrap_model(model)
  params = jax.device_get(params)
  tx = _optimizer.make_optimizer(config, params, compression,
                                 steps_per_epoch)
  state = jax.device_get(_state.TrainState.create(params, batch_stats, tx))
  deployable_fn = jax.jit(compression.deployable)
  lr_at = _optimizer.current_lr(config, steps_per_epoch)

  # Resume. Natural-loss stages select the best checkpoint on clean
  # validation accuracy, the others on robust validation accuracy.
  best_metric = ('val_deployable_accuracy' if config.loss == 'natural'
                 else 'val_deployable_adv_accuracy')
  checkpoints = _checkpoint.Checkpoints(
      workdir, keep=config.keep_checkpoints, best_metric=best_metric)
  restored, restored_meta = checkpoints.restore(state)
  if restored is not None:
    state = restored
    logging.info('Resumed %s at step %d.', workdir, int(state.step))
  start_step = int(state.step)
  _check_progress(config, start_step, total_steps)
  if is_main and not reevaluate:
    _workdir.cut_metrics(workdir, start_step)

  # Steps.
  train_attack = attack_kwargs(config.train_attack)
  eval_attack = attack_kwargs(config.eval.attack)
  paper_attack = paper_attack_kwargs(config)
  p_train = parallel.pmap_train_step(_steps.make_train_step(
      model, tx, loss=config.loss, attack=train_attack,
      attack_bn_mode=config.attack_bn_mode), devices=devices)
  evaluate = _Evaluator(config, model, parallel.pmap_eval_step(
      _steps.make_eval_step(model, attack=eval_attack), devices=devices),
                        devices)
  evaluate_paper = _Evaluator(config, model, parallel.pmap_eval_step(
      _steps.make_eval_step(model, attack=paper_attack), devices=devices),
                              devices)
  rstate = parallel.replicate(state, devices)

  def evaluate_all(host_state, split_name, epoch, *, paper=False):
    """Metrics of the trained and the deployable params on one split.

    The deployable params are evaluated separately only where they differ
    from the trained ones (ATMC-8's codebook projection); elsewhere the
    trained model's numbers are reused. ``paper`` adds the paper-protocol
    ATA (:func:`paper_attack_kwargs`) of the deployable params.
    """
    params_r = parallel.replicate(host_state.params, devices)
    stats_r = parallel.replicate(host_state.batch_stats, devices)
    ekey = jax.random.fold_in(eval_key, epoch)
    split = splits[split_name]
    deployable = jax.device_get(deployable_fn(host_state.params))
    same = _trees_equal(deployable, host_state.params)
    trained = evaluate(params_r, stats_r, split, ekey,
                       desc=f'{split_name} (trained)')
    dep_r = params_r if same else parallel.replicate(deployable, devices)
    dep = trained if same else evaluate(
        dep_r, stats_r, split, ekey, desc=f'{split_name} (deployable)')
    out = {}
    for k in ('accuracy', 'adv_accuracy'):
      out[f'{split_name}_{k}'] = trained[k]
      out[f'{split_name}_deployable_{k}'] = dep[k]
    if paper:
      out[f'{split_name}_deployable_paper_adv_accuracy'] = evaluate_paper(
          dep_r, stats_r, split, ekey,
          desc=f'{split_name} (paper attack)')['adv_accuracy']
    out[f'{split_name}_count'] = trained['count']
    out.update(_size_stats(compression, deployable, dense_count))
    return out, deployable

  def meta(step, epoch_log=()):
    return {'step': int(step), 'epoch': int(step) // steps_per_epoch,
            'batch': int(step) % steps_per_epoch,
            'stage': config.stage,
            'epoch_log': [[int(s), m] for s, m in epoch_log]}

  metrics_path = os.path.join(workdir, METRICS_FILE)
  pending, epoch_log = [], _restored_epoch_log(restored_meta)
  step = start_step
  stop_at = total_steps if config.max_steps is None else min(
      total_steps, config.max_steps)
  train_time, trained_steps = 0.0, 0
  status = 'finished'

  def save(host_state):
    checkpoints.save(int(host_state.step), host_state,
                     meta(int(host_state.step), epoch_log))

  with _Preemption() as preemption:
    first_epoch = start_step // steps_per_epoch
    for epoch in range(first_epoch, config.num_epochs):
      start_batch = start_step - epoch * steps_per_epoch if (
          epoch == first_epoch) else 0
      if preemption.sync() or step >= stop_at:
        break
      batches = data.iterate_batches(
          *splits['train'], batch_size=config.batch_size, seed=config.seed,
          epoch=epoch, shuffle=True, augment=spec.augment,
          drop_remainder=True, start_batch=start_batch,
          process_index=jax.process_index(),
          process_count=jax.process_count())
      t0 = time.time()
      bar = tqdm.tqdm(total=steps_per_epoch, initial=start_batch,
                      desc=f'epoch {epoch + 1}/{config.num_epochs}',
                      leave=False,
                      disable=not config.progress or not is_main)
      for batch in parallel.prefetch_to_device(batches, config.prefetch,
                                               devices):
        rstate, metrics = p_train(rstate, batch, train_key)
        step += 1
        trained_steps += 1
        pending.append((step, metrics))
        bar.update(1)
        end_of_epoch = step % steps_per_epoch == 0
        stop = preemption.sync() or step >= stop_at
        if step % config.log_every_steps == 0 or stop or end_of_epoch or (
            step % config.checkpoint_every_steps == 0):
          epoch_log += _check_finite(pending, workdir, checkpoints)
          pending = []
          if epoch_log:
            bar.set_postfix(loss=f'{epoch_log[-1][1]["loss"]:.4f}')
        if step % config.checkpoint_every_steps == 0 and not end_of_epoch:
          save(parallel.unreplicate(rstate))
        if stop and not end_of_epoch:
          break
      bar.close()
      train_time += time.time() - t0
      host_state = parallel.unreplicate(rstate)
      if step % steps_per_epoch:  # Stopped mid-epoch.
        save(host_state)
        status = 'stopped'
        break
      # End of epoch: evaluate on validation, checkpoint, keep the best.
      results, _ = evaluate_all(host_state, 'val', epoch)
      train_metrics = {}
      if epoch_log:
        for k in epoch_log[0][1]:
          train_metrics[f'train_{k}'] = float(
              np.mean([m[k] for _, m in epoch_log]))
      record = dict(step=step, epoch=epoch + 1, split='val',
                    learning_rate=lr_at(step - 1), **train_metrics, **results)
      epoch_log = []
      if is_main:
        with open(metrics_path, 'a') as f:
          f.write(json.dumps(record, default=_json_default) + '\n')
      logging.info(
          'epoch %d/%d step %d: loss %.4f | val TA %.4f ATA %.4f | '
          'deployable TA %.4f ATA %.4f | nnz %s CR %.5f | %.1fs',
          epoch + 1, config.num_epochs, step,
          train_metrics.get('train_loss', float('nan')),
          results['val_accuracy'], results['val_adv_accuracy'],
          results['val_deployable_accuracy'],
          results['val_deployable_adv_accuracy'], results.get('nnz'),
          results.get('compression_ratio', float('nan')), time.time() - t0)
      save(host_state)
      checkpoints.save_best(step, host_state, meta(step),
                            {best_metric: results[best_metric]})
      if step < total_steps and (preemption.sync() or step >= stop_at):
        status = 'stopped'
        break

  if step < total_steps:
    status = 'stopped'
  if status == 'stopped':
    checkpoints.close()
    logging.info('Stopped at step %d of %d; rerun with the same workdir to '
                 'resume.', step, total_steps)
    return {'status': 'stopped', 'steps': step, 'total_steps': total_steps}

  # Final test evaluation: the checkpoint selected on validation, and the
  # last state (``last_*``: robust overfitting stays visible).
  last_state = parallel.unreplicate(rstate)
  selected_state, selected_meta = checkpoints.restore_best(last_state)
  if selected_state is None:  # No epoch finished in this process's run.
    selected_state, selected_meta = last_state, meta(step)
  selected_step = int(selected_meta['step'])
  results, deployable = evaluate_all(selected_state, 'test',
                                     config.num_epochs, paper=True)
  if selected_step == step:
    last_results = results
  else:
    last_results, _ = evaluate_all(last_state, 'test', config.num_epochs,
                                   paper=True)
  host_state = selected_state
  summary = {
      'status': 'finished', 'stage': config.stage, 'dataset': config.dataset,
      'model': config.model, 'factorized': bool(config.factorized),
      'loss': config.loss, 'compression': config.compression,
      'sparsity': config.sparsity, 'bits': config.bits,
      'budget': compression.budget, 'dense_weight_count': dense_count,
      **results,
      'ta': results['test_deployable_accuracy'],
      'ata': results['test_deployable_adv_accuracy'],
      'ata_paper': results['test_deployable_paper_adv_accuracy'],
      'selected_step': selected_step,
      'selection_metric': best_metric,
      'selection_value': _best_value(metrics_path, best_metric,
                                     selected_step),
      **{f'last_{k}': v for k, v in last_results.items()},
      'last_ta': last_results['test_deployable_accuracy'],
      'last_ata': last_results['test_deployable_adv_accuracy'],
      'last_ata_paper': last_results['test_deployable_paper_adv_accuracy'],
      'last_step': step,
      'eval_attack': eval_attack, 'train_attack': train_attack,
      'paper_attack': paper_attack,
      'steps': step, 'epochs': config.num_epochs,
      'best_step': selected_step,
      'train_time_s': train_time,
      'examples_per_s': (trained_steps * config.batch_size / train_time
                         if train_time > 0 else float('nan')),
  }
  if config.eval.strong:
    strong = _strong_eval(config, model, deployable, host_state.batch_stats,
                          splits['test'], jax.random.fold_in(eval_key, 2**31 - 1))
    summary.update({f'test_deployable_strong_{k}': v
                    for k, v in strong.items()})
  if config.eval.get('autoattack_examples') is not None:
    summary.update(_autoattack_eval(
        config, model, deployable, host_state.batch_stats, splits['test'],
        jax.random.fold_in(eval_key, 2**31 - 2)))
  summary['wall_time_s'] = time.time() - wall_start
  if is_main and reevaluate:
    path = _workdir.next_free(workdir, 'summary.reevaluated')
    _write_json(path, summary)
    logging.info('Reevaluated %s into %s.', workdir, path)
  elif is_main:
    with open(metrics_path, 'a') as f:
      f.write(json.dumps(dict(step=selected_step, epoch=config.num_epochs,
                              split='test', **results),
                         default=_json_default) + '\n')
    _write_json(os.path.join(workdir, SUMMARY_FILE), summary)
  checkpoints.close()
  logging.info('test (step %d, selected on %s): TA %.4f ATA %.4f '
               '(deployable %.4f / %.4f, paper protocol %.4f), CR %s',
               selected_step, best_metric, results['test_accuracy'],
               results['test_adv_accuracy'], summary['ta'], summary['ata'],
               summary['ata_paper'], results.get('compression_ratio'))
  return summary
