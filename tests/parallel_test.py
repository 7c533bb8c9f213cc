"""Data parallelism: 8 devices == 1 device with the full batch."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from atmc_jax import models
from atmc_jax import training
from atmc_jax.training import parallel

jax.config.update('jax_disable_most_optimizations', True)

BATCH = 16


def _setup(loss='mixed', attack_bn_mode='eval'):
  model = models.create_model('resnet_tiny', num_classes=4,
                              bn_axis_name='batch')
  x = jax.random.uniform(jax.random.PRNGKey(1), (BATCH, 8, 8, 3))
  y = jax.random.randint(jax.random.PRNGKey(2), (BATCH,), 0, 4)
  variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
  tx = optax.chain(optax.add_decayed_weights(1e-4),
                   optax.sgd(0.1, momentum=0.9))
  state = jax.device_get(training.TrainState.create(
      variables['params'], variables['batch_stats'], tx))
  step = training.make_train_step(
      model, tx, loss=loss,
      attack=dict(epsilon=0.1, num_steps=2, random_start=False),
      attack_bn_mode=attack_bn_mode)
  return model, state, step, {'image': np.asarray(x), 'label': np.asarray(y)}


def _run(step, state, batch, devices, num_steps=2):
  p_step = parallel.pmap_train_step(step, devices=devices, donate=False)
  rstate = parallel.replicate(state, devices)
  sharded = parallel.shard_batch(batch, len(devices))
  key = jax.random.PRNGKey(3)
  metrics = None
  for _ in range(num_steps):
    rstate, metrics = p_step(rstate, sharded, key)
  return rstate, parallel.unreplicate(metrics)


@pytest.fixture(scope='module')
def runs():
  """Two steps (mixed loss, PGD crafted in BN train mode) on 8 and 1 devices.

  The 8-device step is wrapped in ``chex.assert_max_traces(n=1)``.
  """
  _, state, step, batch = _setup('mixed', 'train')
  r8, m8 = _run(chex.assert_max_traces(step, n=1), state, batch,
                jax.devices(), num_steps=3)
  r1, m1 = _run(step, state, batch, jax.devices()[:1], num_steps=3)
  return state, r8, m8, r1, m1


def test_eight_devices_equal_one_device_full_batch(runs):
  assert jax.device_count() == 8
  state, r8, m8, r1, m1 = runs
  s8, s1 = parallel.unreplicate(r8), parallel.unreplicate(r1)
  assert int(s8.step) == int(s1.step) == 3
  # Params moved, and moved the same way.
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), s1.params,
                       state.params)
  assert max(jax.tree.leaves(moved)) > 1e-4
  chex.assert_trees_all_close(s8.params, s1.params, rtol=2e-4, atol=2e-5)
  # Cross-device BatchNorm: running statistics of the full batch.
  chex.assert_trees_all_close(s8.batch_stats, s1.batch_stats, rtol=2e-4,
                              atol=2e-5)
  chex.assert_trees_all_close(m8, m1, rtol=1e-4, atol=1e-5)
  assert set(m8) == {'loss', 'accuracy', 'adv_accuracy'}


def test_replicas_stay_identical_and_step_compiled_once(runs):
  # The fixture ran 3 steps through assert_max_traces(n=1): one trace.
  _, r8, _, _, _ = runs
  for leaf in jax.tree.leaves(jax.device_get(r8.params)):
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))


def test_eval_step_counts_respect_padding_mask():
  model, state, _, batch = _setup()
  batch = dict(batch, mask=np.r_[np.ones(10), np.zeros(6)].astype(np.float32))
  p_eval = parallel.pmap_eval_step(training.make_eval_step(
      model, attack=dict(epsilon=0.1, num_steps=2, random_start=False)))
  out = p_eval(parallel.replicate(state.params),
               parallel.replicate(state.batch_stats),
               parallel.shard_batch(batch), jax.random.PRNGKey(0))
  out = parallel.unreplicate(out)
  assert float(out['count']) == 10.0
  logits = model.apply({'params': state.params,
                        'batch_stats': state.batch_stats},
                       batch['image'][:10], train=False)
  expected = float(np.sum(np.argmax(logits, -1) == batch['label'][:10]))
  assert float(out['clean_correct']) == expected
  assert 0 <= float(out['adv_correct']) <= float(out['clean_correct'])


def test_shard_replicate_roundtrip_and_errors():
  tree = {'a': np.arange(6.0).reshape(2, 3), 'b': np.float32(2.0)}
  rep = parallel.replicate(tree)
  assert rep['a'].shape == (8, 2, 3)
  chex.assert_trees_all_equal(parallel.unreplicate(rep), tree)
  sharded = parallel.shard_batch({'x': np.zeros((16, 3))})
  assert sharded['x'].shape == (8, 2, 3)
  with pytest.raises(ValueError, match='not divisible'):
    parallel.shard_batch({'x': np.zeros((12, 3))})
  batches = [{'x': np.full((8, 2), i, np.float32)} for i in range(3)]
  got = [np.asarray(b['x'])[:, 0, 0] for b in
         parallel.prefetch_to_device(batches, size=2)]
  assert [g.tolist() for g in got] == [[i] * 8 for i in range(3)]


def test_only_parallel_module_calls_pmap():
  import pathlib  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(training.__file__).resolve().parents[1]
  offenders = [
      str(p.relative_to(root)) for p in root.rglob('*.py')
      if 'jax.pmap(' in p.read_text() and p.name != 'parallel.py']
  assert not offenders, offenders


def test_train_step_rejects_bad_modes():
  model = models.create_model('resnet_tiny', num_classes=4)
  with pytest.raises(ValueError, match='loss'):
    training.make_train_step(model, optax.sgd(0.1), loss='bogus', attack={})
  with pytest.raises(ValueError, match='attack_bn_mode'):
    training.make_train_step(model, optax.sgd(0.1), loss='mixed', attack={},
                             attack_bn_mode='bogus')
