"""``train_and_evaluate(config, workdir)``: one stage of the ATMC pipeline.

The loop, in order:

1. **Config**: :func:`apply_stage` fills the stage's defaults, then
   :func:`validate_config` rejects a bad config before anything is built.
2. **Set up** (``_setup``): the training split minus its last
   ``config.num_val`` examples (validation), and the test split; each host
   reads its slice of every global batch; the order is a pure function of
   ``(seed, epoch)``. The model: random init, or the params of
   ``config.init_from`` (another stage's workdir; dense params are
   factorized when this stage's model is); the one-shot start of the
   compression (magnitude pruning, singular-value truncation, projection);
   SGD + weight decay wrapped by the compression transform.
3. **Restore**: the latest checkpoint of ``workdir``, if any; training goes
   on from its step, mid-epoch included (``start_batch``).
4. **Train**: the pmapped step; every random key is
   ``fold_in(key, step)``, so an interrupted and resumed run ends with the
   params of an uninterrupted one. Checkpoints every
   ``config.checkpoint_every_steps`` steps and at each epoch end; SIGTERM
   (and ``config.max_steps``) saves and returns.
5. **Evaluate** (``_evaluate``) each epoch on validation (clean and PGD
   accuracy of the trained and of the deployable params, nnz, bits,
   compression ratio), keep the best checkpoint by validation ATA of the
   deployable params (clean accuracy for natural-loss stages).
6. **Finish**: the test split, on the selected and on the last state;
   ``summary.json``.

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

import dataclasses
import json
import signal
import threading
import time
from typing import Any, Sequence

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np
import tqdm

from atmc_jax import data
from atmc_jax._src.base import json_default as _json_default
from atmc_jax.training import _checkpoint
from atmc_jax.training import _config
from atmc_jax.training import _evaluate
from atmc_jax.training import _setup
from atmc_jax.training import _steps
from atmc_jax.training import _workdir
from atmc_jax.training import parallel

SUMMARY_FILE = _workdir.SUMMARY_FILE
METRICS_FILE = _workdir.METRICS_FILE


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: epath.PathLike, *,
                       allow_config_change: Sequence[str] = (),
                       reevaluate: bool = False) -> dict[str, Any]:
  """Trains and evaluates one stage; resumes ``workdir`` if it has a run.

  Args:
    config: a training config (``experiments/configs/default.py``).
    workdir: where checkpoints, ``metrics.jsonl`` and ``summary.json`` go;
      an ``etils.epath`` path (end-to-end runs are tested on local paths).
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
    ``steps``, the ``autoattack_*`` keys of
    :func:`~atmc_jax.training._evaluate.autoattack_eval` when
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
  devices = _setup.select_devices(config)
  is_main = jax.process_index() == 0
  finished = _open_workdir(config, workdir, allow_config_change, reevaluate,
                           is_main)
  if finished is not None:
    return finished
  stage = _setup.build_stage(config, axis_name=parallel.AXIS_NAME)
  checkpoints, state, epoch_log = _restore(config, workdir, stage,
                                           reevaluate=reevaluate,
                                           is_main=is_main)
  p_train = parallel.pmap_train_step(_steps.make_train_step(
      stage.model, stage.tx, loss=config.loss,
      attack=_evaluate.attack_kwargs(config.train_attack),
      attack_bn_mode=config.attack_bn_mode), devices=devices)
  evaluate = _evaluate.StageEvaluator(config, stage, devices)
  run = _Run(rstate=parallel.replicate(state, devices),
             step=int(state.step), epoch_log=epoch_log)
  stop_at = stage.total_steps if config.max_steps is None else min(
      stage.total_steps, config.max_steps)

  with _Preemption() as preemption:
    for epoch in range(run.step // stage.steps_per_epoch, config.num_epochs):
      if preemption.sync() or run.step >= stop_at:
        break
      host_state = _train_epoch(config, workdir, stage, run, epoch, p_train,
                                devices, checkpoints, preemption, stop_at)
      if run.step % stage.steps_per_epoch:  # Stopped mid-epoch.
        _save(checkpoints, config, stage, host_state, run.epoch_log)
        break
      _end_epoch(config, workdir, stage, run, epoch, host_state, evaluate,
                 checkpoints)
      if run.step < stage.total_steps and (preemption.sync()
                                           or run.step >= stop_at):
        break

  if run.step < stage.total_steps:
    return _stopped(checkpoints, run.step, stage.total_steps)
  summary, test_record = _test_summary(config, workdir, stage, run,
                                       evaluate, checkpoints)
  summary['wall_time_s'] = time.time() - wall_start
  _write_summary(workdir, summary, test_record, reevaluate=reevaluate,
                 is_main=is_main)
  checkpoints.close()
  return summary


# --------------------------------------------------------------- resume


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
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
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


def _selection_metric(config) -> str:
  """The validation metric that selects the checkpoint a stage reports.

  Natural-loss stages select on clean validation accuracy, the others on
  robust validation accuracy (both of the deployable params).
  """
  return ('val_deployable_accuracy' if config.loss == 'natural'
          else 'val_deployable_adv_accuracy')


def _restore(config, workdir, stage, *, reevaluate, is_main):
  """``(checkpoints, state, epoch_log)``: the latest checkpoint, if any.

  ``state`` is the restored state (or the stage's initial one) and
  ``epoch_log`` the per-step training metrics of its unfinished epoch;
  a resumed run's ``metrics.jsonl`` is cut back to the restored step.
  """
  checkpoints = _checkpoint.Checkpoints(
      workdir, keep=config.keep_checkpoints,
      best_metric=_selection_metric(config))
  restored, restored_meta = checkpoints.restore(stage.state)
  state = stage.state
  if restored is not None:
    state = restored
    logging.info('Resumed %s at step %d.', workdir, int(state.step))
  start_step = int(state.step)
  _check_progress(config, start_step, stage.total_steps)
  if is_main and not reevaluate:
    _workdir.cut_metrics(workdir, start_step)
  return checkpoints, state, _restored_epoch_log(restored_meta)


# ----------------------------------------------------------- epoch loop


@dataclasses.dataclass
class _Run:
  """What the epoch loop carries from step to step.

  Attributes:
    rstate: the replicated :class:`~atmc_jax.training.TrainState`.
    step: the optimizer steps taken so far (restored ones included).
    epoch_log: ``(step, metrics)`` of the current epoch's fetched steps.
    train_time: seconds spent in this process's training epochs.
    trained_steps: the steps this process trained.
    epoch_start: when the current epoch began (``time.time()``).
  """

  rstate: Any
  step: int
  epoch_log: list[tuple[int, dict[str, float]]]
  train_time: float = 0.0
  trained_steps: int = 0
  epoch_start: float = 0.0


def _meta(config, stage, step, epoch_log=()) -> dict[str, Any]:
  """A checkpoint's meta: its position and its epoch's training metrics."""
  spe = stage.steps_per_epoch
  return {'step': int(step), 'epoch': int(step) // spe,
          'batch': int(step) % spe, 'stage': config.stage,
          'epoch_log': [[int(s), m] for s, m in epoch_log]}


def _save(checkpoints, config, stage, host_state, epoch_log) -> None:
  step = int(host_state.step)
  checkpoints.save(step, host_state, _meta(config, stage, step, epoch_log))


def _train_epoch(config, workdir, stage, run, epoch, p_train, devices,
                 checkpoints, preemption, stop_at):
  """Trains ``epoch`` from ``run.step`` to its end or a stop.

  Fetches the per-step metrics into ``run.epoch_log`` every
  ``config.log_every_steps`` steps, before every checkpoint and at the end
  (raising on a non-finite loss), and checkpoints every
  ``config.checkpoint_every_steps`` steps within the epoch.

  Returns:
    The host state after the epoch's last step.
  """
  spe = stage.steps_per_epoch
  start_batch = run.step - epoch * spe
  batches = data.iterate_batches(
      *stage.splits['train'], batch_size=config.batch_size,
      seed=config.seed, epoch=epoch, shuffle=True, augment=stage.spec.augment,
      drop_remainder=True, start_batch=start_batch,
      process_index=jax.process_index(), process_count=jax.process_count())
  run.epoch_start = time.time()
  bar = tqdm.tqdm(total=spe, initial=start_batch,
                  desc=f'epoch {epoch + 1}/{config.num_epochs}', leave=False,
                  disable=not config.progress or jax.process_index() != 0)
  pending = []
  for batch in parallel.prefetch_to_device(batches, config.prefetch, devices):
    run.rstate, metrics = p_train(run.rstate, batch, stage.train_key)
    run.step += 1
    run.trained_steps += 1
    pending.append((run.step, metrics))
    bar.update(1)
    end_of_epoch = run.step % spe == 0
    stop = preemption.sync() or run.step >= stop_at
    checkpoint_due = run.step % config.checkpoint_every_steps == 0
    if (run.step % config.log_every_steps == 0 or stop or end_of_epoch
        or checkpoint_due):
      run.epoch_log += _check_finite(pending, workdir, checkpoints)
      pending = []
      if run.epoch_log:
        bar.set_postfix(loss=f'{run.epoch_log[-1][1]["loss"]:.4f}')
    if checkpoint_due and not end_of_epoch:
      _save(checkpoints, config, stage, parallel.unreplicate(run.rstate),
            run.epoch_log)
    if stop and not end_of_epoch:
      break
  bar.close()
  run.train_time += time.time() - run.epoch_start
  return parallel.unreplicate(run.rstate)


def _end_epoch(config, workdir, stage, run, epoch, host_state, evaluate,
               checkpoints) -> None:
  """Evaluates on validation, records the metrics, checkpoints the epoch."""
  step = run.step
  results, _ = evaluate(host_state, 'val', epoch)
  train_metrics = {}
  if run.epoch_log:
    for k in run.epoch_log[0][1]:
      train_metrics[f'train_{k}'] = float(
          np.mean([m[k] for _, m in run.epoch_log]))
  record = dict(step=step, epoch=epoch + 1, split='val',
                learning_rate=stage.learning_rate(step - 1), **train_metrics,
                **results)
  run.epoch_log = []
  if jax.process_index() == 0:
    _append_jsonl(epath.Path(workdir) / METRICS_FILE, record)
  logging.info(
      'epoch %d/%d step %d: loss %.4f | val TA %.4f ATA %.4f | '
      'deployable TA %.4f ATA %.4f | nnz %s CR %.5f | %.1fs',
      epoch + 1, config.num_epochs, step,
      train_metrics.get('train_loss', float('nan')),
      results['val_accuracy'], results['val_adv_accuracy'],
      results['val_deployable_accuracy'],
      results['val_deployable_adv_accuracy'], results.get('nnz'),
      results.get('compression_ratio', float('nan')),
      time.time() - run.epoch_start)
  _save(checkpoints, config, stage, host_state, run.epoch_log)
  best_metric = _selection_metric(config)
  checkpoints.save_best(step, host_state, _meta(config, stage, step),
                        {best_metric: results[best_metric]})


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
          + (f'step {last} in {epath.Path(workdir) / "checkpoints"}'
             if last is not None else 'none (no checkpoint was saved yet)')
          + '. Lower config.learning_rate or check the data.')
  return [(s, {k: float(np.asarray(v).ravel()[0]) for k, v in m.items()})
          for s, m in zip(steps, fetched)]


# --------------------------------------------------------------- finish


def _stopped(checkpoints, step, total_steps) -> dict[str, Any]:
  checkpoints.close()
  logging.info('Stopped at step %d of %d; rerun with the same workdir to '
               'resume.', step, total_steps)
  return {'status': 'stopped', 'steps': step, 'total_steps': total_steps}


def _test_summary(config, workdir, stage, run, evaluate, checkpoints
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(summary, test record)``: the test split's metrics.

  Of the checkpoint selected on validation, and of the last state
  (``last_*``: robust overfitting stays visible).
  """
  last_state = parallel.unreplicate(run.rstate)
  selected_state, selected_meta = checkpoints.restore_best(last_state)
  if selected_state is None:  # No epoch finished in this process's run.
    selected_state, selected_meta = last_state, _meta(config, stage, run.step)
  selected_step = int(selected_meta['step'])
  results, deployable = evaluate(selected_state, 'test', config.num_epochs,
                                 paper=True)
  if selected_step == run.step:
    last_results = results
  else:
    last_results, _ = evaluate(last_state, 'test', config.num_epochs,
                               paper=True)
  best_metric = _selection_metric(config)
  summary = {
      'status': 'finished', 'stage': config.stage, 'dataset': config.dataset,
      'data_source': dict(stage.data_source),
      'model': config.model, 'factorized': bool(config.factorized),
      'loss': config.loss, 'compression': config.compression,
      'sparsity': config.sparsity, 'bits': config.bits,
      'budget': stage.compression.budget,
      'dense_weight_count': stage.dense_count,
      **results,
      'ta': results['test_deployable_accuracy'],
      'ata': results['test_deployable_adv_accuracy'],
      'ata_paper': results['test_deployable_paper_adv_accuracy'],
      'selected_step': selected_step,
      'selection_metric': best_metric,
      'selection_value': _best_value(epath.Path(workdir) / METRICS_FILE,
                                     best_metric, selected_step),
      **{f'last_{k}': v for k, v in last_results.items()},
      'last_ta': last_results['test_deployable_accuracy'],
      'last_ata': last_results['test_deployable_adv_accuracy'],
      'last_ata_paper': last_results['test_deployable_paper_adv_accuracy'],
      'last_step': run.step,
      'eval_attack': _evaluate.attack_kwargs(config.eval.attack),
      'train_attack': _evaluate.attack_kwargs(config.train_attack),
      'paper_attack': _evaluate.paper_attack_kwargs(config),
      'steps': run.step, 'epochs': config.num_epochs,
      'best_step': selected_step,
      'train_time_s': run.train_time,
      'examples_per_s': (run.trained_steps * config.batch_size
                         / run.train_time if run.train_time > 0
                         else float('nan')),
  }
  if config.eval.strong:
    strong = evaluate.strong(deployable, selected_state.batch_stats)
    summary.update({f'test_deployable_strong_{k}': v
                    for k, v in strong.items()})
  if config.eval.get('autoattack_examples') is not None:
    summary.update(evaluate.autoattack(deployable,
                                       selected_state.batch_stats))
  record = dict(step=selected_step, epoch=config.num_epochs, split='test',
                **results)
  return summary, record


def _write_summary(workdir, summary, test_record, *, reevaluate,
                   is_main) -> None:
  """``summary.json`` and the test line of ``metrics.jsonl``.

  With ``reevaluate``: ``summary.reevaluated.<n>.json`` only.
  """
  if is_main and reevaluate:
    path = _workdir.next_free(workdir, 'summary.reevaluated')
    _write_json(path, summary)
    logging.info('Reevaluated %s into %s.', workdir, path)
  elif is_main:
    _append_jsonl(epath.Path(workdir) / METRICS_FILE, test_record)
    _write_json(epath.Path(workdir) / SUMMARY_FILE, summary)
  logging.info('test (step %d, selected on %s): TA %.4f ATA %.4f '
               '(deployable %.4f / %.4f, paper protocol %.4f), CR %s',
               summary['selected_step'], summary['selection_metric'],
               summary['test_accuracy'], summary['test_adv_accuracy'],
               summary['ta'], summary['ata'], summary['ata_paper'],
               summary.get('compression_ratio'))


# ---------------------------------------------------------------- utils


def _best_value(metrics_path, metric, step):
  """The validation ``metric`` recorded at ``step`` in ``metrics.jsonl``."""
  if metrics_path.exists():
    with metrics_path.open() as f:
      for line in f:
        record = json.loads(line)
        if record.get('split') == 'val' and record.get('step') == step:
          return record.get(metric)
  return None


def _append_jsonl(path, record) -> None:
  _workdir.append_line(path, json.dumps(record, default=_json_default))


def _write_json(path, obj):
  _workdir.write_text_atomically(
      path, json.dumps(obj, indent=2, default=_json_default))
