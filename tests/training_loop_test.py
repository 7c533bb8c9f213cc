"""train_and_evaluate: resume equivalence, best checkpoint, NaN stop, warm start."""

import json
import logging
import os
import shutil
import signal
import tempfile

import chex
import jax
import numpy as np
import pytest

from atmc_jax import models
from atmc_jax import training
from atmc_jax.training import _loop
from experiments.configs import default

jax.config.update('jax_disable_most_optimizations', True)
# The runs below compile the same steps again (new closures, same HLO): a
# persistent cache turns those recompilations into cache hits.
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(tempfile.gettempdir(), 'atmc_jax_test_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def tiny_config(**overrides):
  """ResNet-tiny on synthetic CIFAR-shaped data: 4 steps per epoch."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.data_source = 'synthetic'
  config.synthetic_sizes = (96, 32)
  config.num_val = 32
  config.model = 'resnet_tiny'
  config.stage = 'al0'
  config.sparsity = 0.2
  config.num_epochs = 2
  config.batch_size = 16
  config.eval_batch_size = 16
  config.learning_rate = 0.05
  config.lr_decay_epochs = (1,)
  config.train_attack.epsilon = 4 / 255
  config.train_attack.num_steps = 1
  config.eval.attack.epsilon = 4 / 255
  config.eval.attack.num_steps = 1
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  config.progress = False
  for k, v in overrides.items():
    config[k] = v
  return config


def _final_state(workdir):
  state, meta = training.restore_state_dict(workdir)
  return state, meta


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  summary = training.train_and_evaluate(tiny_config(), workdir)
  return workdir, summary


def test_full_run_outputs(full_run):
  workdir, summary = full_run
  assert summary['status'] == 'finished'
  assert summary['steps'] == 8
  with open(os.path.join(workdir, 'summary.json')) as f:
    on_disk = json.load(f)
  assert on_disk['ta'] == summary['ta']
  for key in ('test_accuracy', 'test_adv_accuracy', 'test_deployable_accuracy',
              'test_deployable_adv_accuracy', 'nnz', 'model_bits',
              'compression_ratio', 'dense_weight_count', 'wall_time_s',
              'examples_per_s'):
    assert key in summary, key
  # L0 stage: the deployable model meets the budget exactly.
  assert summary['budget'] == int(0.2 * summary['dense_weight_count'])
  assert summary['nnz'] <= summary['budget']
  assert summary['compression_ratio'] == pytest.approx(
      summary['nnz'] / summary['dense_weight_count'])
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['split'] for r in records] == ['val', 'val', 'test']
  assert [r['epoch'] for r in records[:2]] == [1, 2]
  # Learning rate x0.1 from epoch 1 on.
  assert records[0]['learning_rate'] == pytest.approx(0.05)
  assert records[1]['learning_rate'] == pytest.approx(0.005)


def test_best_checkpoint_is_the_best_validation_epoch(full_run):
  workdir, summary = full_run
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    val = [json.loads(l) for l in f if '"val"' in l]
  best = max(r['val_deployable_adv_accuracy'] for r in val)
  best_steps = [r['step'] for r in val
                if r['val_deployable_adv_accuracy'] == best]
  assert summary['best_step'] in best_steps
  state, meta = training.restore_state_dict(workdir, best=True)
  assert meta['step'] == summary['best_step']
  assert int(state['step']) == summary['best_step']


def test_reports_the_checkpoint_selected_on_validation(tmp_path,
                                                      monkeypatch):
  """The last epoch ascends the loss: the summary reports an earlier step."""
  from atmc_jax.training import _optimizer  # pylint: disable=g-import-not-at-top
  steps_per_epoch = 16

  def spiked(learning_rate, spe, decay_epochs, decay_factor=0.1):
    del decay_epochs, decay_factor
    assert spe == steps_per_epoch
    return lambda count: jax.numpy.where(count < 2 * spe, learning_rate, -learning_rate)

  monkeypatch.setattr(_optimizer, 'lr_schedule', spiked)
  workdir = str(tmp_path / 'run')
  # LeNet learns the synthetic templates within two epochs of clean
  # training; selection is on clean validation accuracy for this stage.
  config = tiny_config(num_epochs=3, stage='natural', model='lenet',
                       dataset='fashion_mnist', learning_rate=0.05,
                       synthetic_sizes=(288, 64), batch_size=16,
                       checkpoint_every_steps=100)
  summary = training.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  val = [r for r in records if r['split'] == 'val']
  metric = 'val_deployable_accuracy'
  assert summary['selection_metric'] == metric
  best = max(r[metric] for r in val)
  assert val[-1][metric] < best  # The spike made the last epoch worse.
  assert summary['selected_step'] in [r['step'] for r in val
                                      if r[metric] == best]
  assert summary['selected_step'] < summary['last_step'] == 48
  assert summary['selection_value'] == best
  # The reported test numbers are the selected checkpoint's, not the last's.
  state, meta = training.restore_state_dict(workdir, best=True)
  assert meta['step'] == summary['selected_step']
  applied = training.apply_stage(config)
  spec = _loop.data.DATASETS[applied.dataset]
  model = training.create_model(applied, spec)
  images, labels = training.load_data(applied)['test']
  logits = model.apply({'params': state['params']},
                       images.astype(np.float32) / 255.0, train=False)
  accuracy = float(np.mean(np.argmax(logits, -1) == labels))
  assert summary['test_accuracy'] == pytest.approx(accuracy, abs=1e-6)
  assert summary['ta'] == summary['test_deployable_accuracy']
  assert summary['ta'] > summary['last_ta']
  assert [r['split'] for r in records][-1] == 'test'
  assert records[-1]['step'] == summary['selected_step']
  # The paper-protocol ATA is reported beside PGD-20's.
  assert 0.0 <= summary['ata_paper'] <= summary['ta']
  assert summary['paper_attack']['random_start'] is False
  assert summary['paper_attack']['step_size'] == pytest.approx(
      1.25 * config.eval.attack.epsilon / config.train_attack.num_steps)


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_interrupted_and_resumed_run_equals_uninterrupted(full_run, tmp_path):
  workdir, summary = full_run
  resumed = str(tmp_path / 'resumed')
  out = training.train_and_evaluate(tiny_config(max_steps=3), resumed)
  assert out['status'] == 'stopped' and out['steps'] == 3
  assert not os.path.exists(os.path.join(resumed, 'summary.json'))
  mid, meta = _final_state(resumed)
  assert int(mid['step']) == 3 and meta['batch'] == 3 and meta['epoch'] == 0
  # The unfinished run cannot seed another stage.
  with pytest.raises(ValueError, match='not a finished run.*summary.json'):
    _warm_started('atmc32', resumed)
  # A kill after an epoch's metrics line and before its checkpoint: the
  # line is on disk, the checkpoint is not.
  with open(os.path.join(resumed, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps(dict(_records(workdir)[0], train_loss=-1.0)) + '\n')
  final = training.train_and_evaluate(tiny_config(), resumed)
  assert final['status'] == 'finished'
  a, _ = _final_state(workdir)
  b, _ = _final_state(resumed)
  chex.assert_trees_all_equal(a['params'], b['params'])
  chex.assert_trees_all_equal(a['batch_stats'], b['batch_stats'])
  chex.assert_trees_all_equal(a['opt_state'], b['opt_state'])
  for key in ('test_accuracy', 'test_adv_accuracy', 'nnz'):
    assert final[key] == summary[key]
  # metrics.jsonl: no duplicate epoch record; the epoch cut at step 3 has
  # the training averages of the uninterrupted run (all 4 steps).
  assert _records(resumed) == _records(workdir)


def test_corrupt_checkpoint_falls_back_and_continues_bit_identically(
    full_run, tmp_path, caplog):
  workdir, summary = full_run
  resumed = str(tmp_path / 'resumed')
  training.train_and_evaluate(tiny_config(max_steps=6), resumed)
  ckpt_dir = os.path.join(resumed, 'checkpoints')
  assert sorted(os.listdir(ckpt_dir)) == ['2', '4', '6']
  # A flipped bit in one of step 6's array files.
  data_dir = os.path.join(ckpt_dir, '6', 'state', 'ocdbt.process_0', 'd')
  path = os.path.join(data_dir, sorted(os.listdir(data_dir))[0])
  with open(path, 'r+b') as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 1
    f.seek(0)
    f.write(data)
  # All checkpoints corrupt: a copy of the workdir stops with an error
  # naming them, before training.
  broken = str(tmp_path / 'broken')
  shutil.copytree(resumed, broken)
  for step in ('2', '4'):
    os.remove(os.path.join(broken, 'checkpoints', step, 'state', '_METADATA'))
  with pytest.raises(training.CheckpointError,
                     match=r'step 6 .*mismatch.*step 4 .*_METADATA: missing'
                     r'.*step 2 '):
    training.train_and_evaluate(tiny_config(), broken)
  caplog.set_level(logging.WARNING)
  caplog.clear()
  final = training.train_and_evaluate(tiny_config(), resumed)
  lines = [r.getMessage() for r in caplog.records
           if r.filename == '_checkpoint.py' and r.levelno == logging.WARNING]
  assert len(lines) == 1 and 'step 6' in lines[0], lines
  assert os.path.relpath(path, os.path.join(ckpt_dir, '6')) in lines[0]
  assert '6.corrupt-1' in os.listdir(ckpt_dir)
  a, _ = _final_state(workdir)
  b, _ = _final_state(resumed)
  chex.assert_trees_all_equal(a, b)
  assert final['test_adv_accuracy'] == summary['test_adv_accuracy']
  assert _records(resumed) == _records(workdir)


def test_a_finished_run_is_left_alone_unless_reevaluated(full_run):
  workdir, summary = full_run
  with open(os.path.join(workdir, 'metrics.jsonl'), 'rb') as f:
    metrics = f.read()
  mtime = os.path.getmtime(os.path.join(workdir, 'summary.json'))
  again = training.train_and_evaluate(tiny_config(), workdir)
  assert again['ta'] == summary['ta'] and again['status'] == 'finished'
  out = training.train_and_evaluate(tiny_config(), workdir, reevaluate=True)
  with open(os.path.join(workdir, 'summary.reevaluated.1.json')) as f:
    assert json.load(f)['test_adv_accuracy'] == out['test_adv_accuracy']
  assert out['test_accuracy'] == summary['test_accuracy']
  with open(os.path.join(workdir, 'metrics.jsonl'), 'rb') as f:
    assert f.read() == metrics  # No second test record.
  assert os.path.getmtime(os.path.join(workdir, 'summary.json')) == mtime


def test_a_workdir_belongs_to_one_config(full_run, tmp_path):
  workdir, _ = full_run
  before = sorted(os.listdir(workdir))
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = f.read()
  with pytest.raises(ValueError, match=r'learning_rate: 0.05 -> 0.1; '
                     r'train_attack.num_steps: 1 -> 2\). A workdir belongs'):
    training.train_and_evaluate(
        tiny_config(learning_rate=0.1, num_epochs=3,
                    train_attack=dict(tiny_config().train_attack,
                                      num_steps=2)),
        workdir, allow_config_change=['num_epochs'])
  with pytest.raises(ValueError, match=r'allow_config_change=learning_rate '
                     r'is invalid; accepted: any of num_epochs'):
    training.train_and_evaluate(tiny_config(learning_rate=0.1), workdir,
                                allow_config_change=['learning_rate'])
  with pytest.raises(ValueError, match=r'num_epochs: 2 -> 3'):
    training.train_and_evaluate(tiny_config(num_epochs=3), workdir)
  assert sorted(os.listdir(workdir)) == before
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == saved
  # Allowed: one more epoch on a copy; the earlier config and summary are
  # kept beside the new ones.
  longer = str(tmp_path / 'longer')
  shutil.copytree(workdir, longer)
  out = training.train_and_evaluate(
      tiny_config(num_epochs=3, log_every_steps=2), longer,
      allow_config_change=['num_epochs', 'log_every_steps'])
  assert out['status'] == 'finished' and out['steps'] == 12
  with open(os.path.join(longer, 'config.1.json')) as f:
    assert f.read() == saved
  with open(os.path.join(longer, 'config.json')) as f:
    assert json.load(f)['num_epochs'] == 3
  with open(os.path.join(longer, 'summary.1.json')) as f:
    assert json.load(f)['steps'] == 8
  records = _records(longer)
  assert [(r['split'], r['step']) for r in records[:2]] == [
      ('val', 4), ('val', 8)]
  assert records[:2] == _records(workdir)[:2]
  assert [r['split'] for r in records] == ['val', 'val', 'val', 'test']


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / 'nan')
  config = tiny_config(learning_rate=1e38, checkpoint_every_steps=1,
                       stage='da', weight_decay=0.0)
  with pytest.raises(FloatingPointError, match=r'at step \d+') as err:
    training.train_and_evaluate(config, workdir)
  bad_step = int(str(err.value).split('at step ')[1].split(';')[0])
  state, _ = _final_state(workdir)
  assert int(state['step']) < bad_step
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))


def _warm_started(stage, init_from):
  """``(model, spec, params, batch_stats)`` of ``stage`` warm-started."""
  config = training.apply_stage(tiny_config(stage=stage, init_from=init_from))
  spec = _loop.data.DATASETS[config.dataset]
  model = training.create_model(config, spec)
  params, stats = training.init_variables(config, model, spec,
                                          jax.random.PRNGKey(0))
  return model, spec, params, stats


def test_warm_start_factorizes_a_dense_run(full_run):
  workdir, _ = full_run
  model, spec, params, stats = _warm_started('atmc32', workdir)
  source, _ = training.restore_state_dict(workdir, best=True)
  chex.assert_trees_all_close(
      models.materialize(params, like=source['params']), source['params'],
      atol=1e-6)
  chex.assert_trees_all_equal(stats, source['batch_stats'])
  x = np.random.default_rng(0).random((4, 32, 32, 3), np.float32)
  dense_model = training.create_model(
      training.apply_stage(tiny_config()), spec)
  out_f = model.apply({'params': params, 'batch_stats': stats}, x)
  out_d = dense_model.apply({'params': source['params'],
                             'batch_stats': source['batch_stats']}, x)
  np.testing.assert_allclose(out_f, out_d, rtol=1e-4, atol=1e-4)


def test_natural_stage_selects_on_clean_validation_accuracy(tmp_path):
  summary = training.train_and_evaluate(
      tiny_config(stage='natural', num_epochs=1), str(tmp_path))
  assert summary['status'] == 'finished'
  assert summary['best_step'] is not None


def test_warm_start_materializes_a_factorized_run(full_run, tmp_path):
  workdir, _ = full_run
  factorized_dir = str(tmp_path / 'atmc32')
  training.train_and_evaluate(
      tiny_config(stage='atmc32', init_from=workdir, num_epochs=1),
      factorized_dir)
  model, spec, params, stats = _warm_started('da', factorized_dir)
  fresh = model.init(jax.random.PRNGKey(1),
                     np.zeros((1, 32, 32, 3), np.float32))['params']
  chex.assert_trees_all_equal_shapes(params, fresh)
  # The dense model computes the factorized run's function.
  source, _ = training.restore_state_dict(factorized_dir, best=True)
  factorized_model = training.create_model(
      training.apply_stage(tiny_config(stage='atmc32')), spec)
  x = np.random.default_rng(0).random((4, 32, 32, 3), np.float32)
  out_d = model.apply({'params': params, 'batch_stats': stats}, x)
  out_f = factorized_model.apply({'params': source['params'],
                                  'batch_stats': source['batch_stats']}, x)
  np.testing.assert_allclose(out_d, out_f, rtol=1e-4, atol=1e-4)


def test_sigterm_sets_the_stop_flag():
  with _loop._Preemption() as preemption:  # pylint: disable=protected-access
    assert not preemption.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.requested
  assert signal.getsignal(signal.SIGTERM) is not preemption._handle  # pylint: disable=protected-access


def test_checkpoints_keep_last_n_and_best(tmp_path):
  ckpts = training.Checkpoints(str(tmp_path), keep=2, best_metric='m')
  target = {'w': np.zeros(3, np.float32), 'step': np.int32(0)}
  for step, metric in [(1, 0.1), (2, 0.7), (3, 0.3), (4, 0.5)]:
    tree = {'w': np.full(3, step, np.float32), 'step': np.int32(step)}
    ckpts.save(step, tree, {'step': step})
    ckpts.save_best(step, tree, {'step': step}, {'m': metric})
  assert ckpts.latest_step() == 4
  assert ckpts.best_step() == 2
  best, meta = ckpts.restore_best(target)
  assert meta['step'] == 2 and best['w'].tolist() == [2.0] * 3
  latest, _ = ckpts.restore(target)
  assert latest['w'].tolist() == [4.0] * 3
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '4']
  ckpts.close()
