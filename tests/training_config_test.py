"""Config validation, stage defaults, the optimizer and its schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from atmc_jax import optim
from atmc_jax import projections
from atmc_jax import training
from experiments.configs import default

jax.config.update('jax_disable_most_optimizations', True)


def _valid():
  return training.apply_stage(default.get_config())


@pytest.mark.parametrize('key,value,match', [
    ('dataset', 'imagenet', r'config.dataset=.*imagenet.*accepted'),
    ('model', 'vgg', r'config.model=.*vgg.*accepted'),
    ('stage', 'bogus', r'config.stage=.*bogus.*accepted'),
    ('sparsity', 0.0, r'config.sparsity=0.0.*\(0, 1\]'),
    ('sparsity', 1.5, r'config.sparsity=1.5.*\(0, 1\]'),
    ('bits', 0, r'config.bits=0.*1..16'),
    ('bits', 32, r'config.bits=32.*1..16'),
    ('batch_size', 100, r'config.batch_size=100.*multiple of the device'),
    ('eval_batch_size', 4, r'config.eval_batch_size=4.*multiple'),
    ('loss', 'hinge', r'config.loss=.*hinge.*accepted'),
    ('compression', 'prune', r'config.compression=.*prune.*accepted'),
    ('attack_bn_mode', 'x', r'config.attack_bn_mode=.*accepted'),
    ('data_source', 'web', r'config.data_source=.*web.*accepted'),
    ('num_epochs', 0, r'config.num_epochs=0'),
    ('learning_rate', -1.0, r'config.learning_rate=-1.0'),
    ('num_val', 0, r'config.num_val=0.*>= 1'),
    ('rho', 0.0, r'config.rho=0.0.*finite number > 0'),
    ('rho', float('inf'), r'config.rho=inf.*finite number > 0'),
    ('quantizer_init', 'kmeans++', r"config.quantizer_init='kmeans\+\+'.*"
     r"'quantile', 'forgy'"),
])
def test_invalid_values_name_the_key(key, value, match):
  config = _valid()
  config[key] = value
  with pytest.raises(ValueError, match=match):
    training.validate_config(config, num_devices=8)


def test_invalid_attack_values():
  config = _valid()
  config.train_attack.epsilon = -0.1
  with pytest.raises(ValueError, match=r'config.train_attack.epsilon=-0.1'):
    training.validate_config(config, num_devices=8)
  config = _valid()
  config.eval.attack.norm = 'l1'
  with pytest.raises(ValueError, match=r'config.eval.attack.norm=.*l1'):
    training.validate_config(config, num_devices=8)


def test_invalid_config_fails_before_training(tmp_path):
  config = default.get_config()
  config.stage = 'nope'
  with pytest.raises(ValueError, match='config.stage'):
    training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_pruning_stage_needs_a_warm_start():
  config = default.get_config()
  config.stage = 'ap'
  with pytest.raises(ValueError, match='config.init_from'):
    training.validate_config(training.apply_stage(config), num_devices=8)


@pytest.mark.parametrize('stage,loss,compression,factorized,bits', [
    ('natural', 'natural', 'none', False, None),
    ('da', 'adversarial', 'none', False, None),
    ('nap', 'natural', 'fixed_support', False, None),
    ('ap', 'adversarial', 'fixed_support', False, None),
    ('al0', 'adversarial', 'l0', False, None),
    ('alr', 'adversarial', 'low_rank', False, None),
    ('atmc32', 'adversarial', 'l0', True, None),
    ('atmc8', 'adversarial', 'atmc', True, 8),
])
def test_stage_defaults(stage, loss, compression, factorized, bits):
  config = default.get_config()
  config.stage = stage
  out = training.apply_stage(config)
  assert (out.loss, out.compression, out.factorized, out.bits) == (
      loss, compression, factorized, bits)
  assert config.loss is None  # The input is not modified.


def test_explicit_keys_override_the_stage():
  config = default.get_config()
  config.stage = 'atmc8'
  config.bits = 4
  config.adv_loss = 'mixed'
  out = training.apply_stage(config)
  assert out.bits == 4 and out.loss == 'mixed'


def test_lr_schedule_steps_down_at_epoch_starts():
  schedule = training.lr_schedule(0.1, 10, (2, 3))
  lrs = [float(schedule(t)) for t in (0, 19, 20, 29, 30, 99)]
  np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
                             rtol=1e-6)


def test_lr_schedule_decays_twice_at_an_epoch_listed_twice():
  """Like PyTorch's MultiStepLR, which counts repeated milestones."""
  schedule = training.lr_schedule(0.1, 10, (2, 2, 3), decay_factor=0.5)
  lrs = [float(schedule(t)) for t in (19, 20, 30)]
  np.testing.assert_allclose(lrs, [0.1, 0.025, 0.0125], rtol=1e-6)


def _sgd_reference(w, grads, lr, wd, momentum):
  """PyTorch SGD: buf = m buf + g + wd w; w -= lr buf."""
  buf = np.zeros_like(w)
  for g in grads:
    buf = momentum * buf + g + wd * w
    w = w - lr * buf
  return w


@pytest.mark.parametrize('decay_all', [False, True])
def test_optimizer_is_pytorch_sgd_with_masked_decay(decay_all):
  config = _valid()
  config.learning_rate = 0.1
  config.weight_decay = 0.01
  config.weight_decay_all = decay_all
  params = {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones((3,))}
  params, comp = training.prepare_compression(config, params)
  tx = training.make_optimizer(config, params, comp, steps_per_epoch=100)
  state = tx.init(params)
  grads = [jax.tree.map(lambda p, s=s: jnp.full_like(p, s), params)
           for s in (0.5, -0.2, 0.3)]
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  g_np = [np.asarray(g['kernel']) for g in grads]
  np.testing.assert_allclose(
      params['kernel'], _sgd_reference(np.ones((2, 3)), g_np, 0.1, 0.01, 0.9),
      rtol=1e-5)
  g_np = [np.asarray(g['bias']) for g in grads]
  np.testing.assert_allclose(
      params['bias'], _sgd_reference(np.ones(3), g_np, 0.1,
                                     0.01 if decay_all else 0.0, 0.9),
      rtol=1e-5)


def _toy_compression(stage, sparsity, seed):
  """A stage-applied config and ``prepare_compression`` of two toy layers."""
  config = default.get_config()
  config.stage = stage
  config.sparsity = sparsity
  config.allow_random_init = True
  config = training.apply_stage(config)
  rng = np.random.default_rng(seed)
  params = {'a': {'kernel': jnp.asarray(rng.normal(size=(6, 8)), jnp.float32),
                  'bias': jnp.ones((8,))},
            'b': {'kernel': jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}}
  params, comp = training.prepare_compression(config, params)
  return config, params, comp


@pytest.mark.parametrize('stage', ['ap', 'al0', 'atmc8'])
def test_compression_stages_meet_the_budget(stage):
  config, params, comp = _toy_compression(stage, 0.25, seed=0)
  assert comp.budget == int(0.25 * (48 + 32))
  tx = training.make_optimizer(config, params, comp, steps_per_epoch=10)
  state = jax.jit(tx.init)(params)
  support = jax.tree.map(lambda p: np.asarray(p) != 0, params)

  @jax.jit
  def step(params, state, scale):
    grads = jax.tree.map(lambda p: jnp.full_like(p, scale), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for i in range(3):
    params, state = step(params, state, 0.1 * (i + 1))
  nnz = sum(int(np.count_nonzero(params[l]['kernel'])) for l in 'ab')
  assert nnz <= comp.budget
  if stage == 'ap':  # The mask stays fixed.
    for l in 'ab':
      assert not np.any((np.asarray(params[l]['kernel']) != 0)
                        & ~support[l]['kernel'])
  deployable = jax.jit(comp.deployable)(params)
  nnz = sum(int(np.count_nonzero(deployable[l]['kernel'])) for l in 'ab')
  assert nnz <= comp.budget
  if stage == 'atmc8':
    assert comp.bits == 8


def test_forgy_needs_lloyd():
  config = _valid()
  config.quantizer_init = 'forgy'
  training.validate_config(config, num_devices=8)
  config.quantizer = 'optimal'
  with pytest.raises(ValueError, match=r"config.quantizer_init='forgy'"):
    training.validate_config(config, num_devices=8)


def test_quantizer_init_reaches_the_optimizer():
  config, params, comp = _toy_compression('atmc8', 0.5, seed=2)
  config.bits = comp.bits = 3
  config.quantizer_init = 'forgy'
  params, comp = training.prepare_compression(config, params)
  assert comp.quantizer_init == 'forgy'
  tx = training.make_optimizer(config, params, comp, steps_per_epoch=10)
  z = tx.init(params).z
  expected = projections.project_atmc(params, comp.budget, 3, init='forgy',
                                      key=optim.quantizer_key(0))
  quantile = projections.project_atmc(params, comp.budget, 3)
  for l in 'ab':
    np.testing.assert_allclose(z[l]['kernel'], expected[l]['kernel'],
                               atol=1e-6)
  assert any(not np.array_equal(z[l]['kernel'], quantile[l]['kernel'])
             for l in 'ab')
  np.testing.assert_allclose(
      comp.deployable(params)['a']['kernel'], expected['a']['kernel'],
      atol=1e-6)


def test_low_rank_stage_trains_the_factors():
  """ALR (spec §4.3): global truncation, then B = U_r sqrt(S_r), A = ..."""
  rng = np.random.default_rng(1)
  dense = {'a': np.asarray(rng.normal(size=(6, 8)), np.float32),
           'b': np.asarray(rng.normal(size=(8, 4)), np.float32)}
  config, params, comp = _toy_compression('alr', 0.3, seed=1)
  ranks = (comp.ranks['a']['kernel'], comp.ranks['b']['kernel'])
  assert all(isinstance(r, int) and r >= 1 for r in ranks)
  assert sum(ranks) == int(0.3 * (6 + 4))  # Of all 10 singular values.
  # The kernels are replaced by their factors, of the fixed ranks.
  for name, r in zip('ab', ranks):
    layer = params[name]
    assert 'kernel' not in layer
    out, fan_in = dense[name].shape[1], dense[name].shape[0]
    assert layer['B'].shape == (out, r) and layer['A'].shape == (r, fan_in)
    # B·A is the rank-r truncation of W = kernel.T (Eckart-Young).
    u, s, vt = np.linalg.svd(dense[name].T, full_matrices=False)
    truncation = (u[:, :r] * s[:r]) @ vt[:r]
    np.testing.assert_allclose(np.asarray(layer['B'] @ layer['A']),
                               truncation, atol=1e-5)
    # B = U_r sqrt(S_r): its columns have norms sqrt(s), as do A's rows.
    np.testing.assert_allclose(np.linalg.norm(layer['B'], axis=0),
                               np.sqrt(s[:r]), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(layer['A'], axis=1),
                               np.sqrt(s[:r]), rtol=1e-5)
  assert params['a']['bias'].shape == (8,)
  assert comp.low_rank_bits(params) == 32 * (ranks[0] * (8 + 6)
                                             + ranks[1] * (4 + 8))
  # The optimizer trains the factors themselves (no projection needed).
  tx = training.make_optimizer(config, params, comp, steps_per_epoch=10)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  new = optax.apply_updates(params, updates)
  for name in 'ab':
    for k in ('B', 'A'):
      assert new[name][k].shape == params[name][k].shape
      assert not np.allclose(new[name][k], params[name][k])
  # The factors are the deployed model: exactly rank r, nothing to project.
  assert comp.deployable(new) is new


def test_low_rank_model_forms_the_kernels():
  """LowRankModel applies a dense model with kernels (B·A).T."""
  from atmc_jax import models  # pylint: disable=g-import-not-at-top
  model = models.create_model('lenet', num_classes=10)
  x = jnp.asarray(np.random.default_rng(0).random((4, 28, 28, 1)),
                  jnp.float32)
  dense = model.init(jax.random.key(0), x)['params']
  config = default.get_config()
  config.stage = 'alr'
  config.sparsity = 0.05
  config = training.apply_stage(config)
  factors, comp = training.prepare_compression(config, dense)
  wrapped = comp.wrap_model(model)
  assert isinstance(wrapped, models.LowRankModel)
  kernel_shapes = {k: v['kernel'].shape for k, v in dense.items()}
  formed = wrapped.dense_params(factors)
  assert {k: v['kernel'].shape for k, v in formed.items()} == kernel_shapes
  np.testing.assert_allclose(
      np.asarray(wrapped.apply({'params': factors}, x)),
      np.asarray(model.apply({'params': formed}, x)), rtol=1e-6)
  # Gradients reach B and A.
  grads = jax.grad(lambda p: wrapped.apply({'params': p}, x).sum())(factors)
  assert float(jnp.abs(grads['fc1']['B']).sum()) > 0
  assert float(jnp.abs(grads['conv1']['A']).sum()) > 0
