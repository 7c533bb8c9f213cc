"""Attacks and evaluations run a factorized model as its dense twin."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from atmc_jax import attacks
from atmc_jax import models
from atmc_jax import training
from atmc_jax.training import _steps
from atmc_jax.training import parallel

LENET_SHAPE = (28, 28, 1)
SMALL_SHAPE = (8, 8, 3)
ATTACK = dict(epsilon=0.1, step_size=0.03, random_start=True)


def _perturbed(params, key, scale=0.02):
  """Params with every factor non-zero (U, V, C all matter)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten(
      [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
       for leaf, k in zip(leaves, keys)])


def _setup(name, shape, batch=4, **kwargs):
  model = models.create_model(name, num_classes=10, factorized=True,
                              **kwargs)
  x = jax.random.uniform(jax.random.PRNGKey(1), (batch,) + shape)
  y = jnp.arange(batch) % 10
  variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
  params = _perturbed(variables['params'], jax.random.PRNGKey(5))
  return model, params, variables.get('batch_stats', {}), x, y


@pytest.mark.parametrize('name,shape,kwargs', [
    ('lenet', LENET_SHAPE, {}),
    ('resnet_tiny', SMALL_SHAPE, {}),
    ('wrn16_8', SMALL_SHAPE, dict(depth=10, widen_factor=1)),
])
def test_dense_twin_computes_the_factorized_logits(name, shape, kwargs):
  model, params, stats, x, _ = _setup(name, shape, **kwargs)
  twin, dense_params = models.dense_twin(model, params, shape)
  assert not twin.factorized and type(twin) is type(model)
  # The conv kernels have the dense layout (kh, kw, in, out).
  like = models.create_model(name, num_classes=10, **kwargs).init(
      jax.random.PRNGKey(0), x[:1], train=False)['params']
  assert (jax.tree.map(jnp.shape, dense_params)
          == jax.tree.map(jnp.shape, like))
  want = model.apply({'params': params, 'batch_stats': stats}, x)
  got = twin.apply({'params': dense_params, 'batch_stats': stats}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_dense_model_is_returned_unchanged():
  model = models.create_model('lenet', num_classes=10)
  params = {'a': jnp.ones(3)}
  twin, twin_params = models.dense_twin(model, params, LENET_SHAPE)
  assert twin is model and twin_params is params


def test_dense_twin_under_pmap_equals_eager():
  model, params, _, _, _ = _setup('lenet', LENET_SHAPE)
  devices = jax.devices()[:2]
  mapped = jax.pmap(lambda p: models.dense_twin(model, p, LENET_SHAPE)[1],
                    devices=devices)(parallel.replicate(params, devices))
  eager = models.dense_twin(model, params, LENET_SHAPE)[1]
  jax.tree.map(lambda m, e: np.testing.assert_array_equal(m[1], e),
               mapped, eager)


@pytest.mark.parametrize('image_shape', [(28, 28), (28, 0, 1)])
def test_bad_image_shape_raises(image_shape):
  model, params, _, _, _ = _setup('lenet', LENET_SHAPE)
  with pytest.raises(ValueError, match='image_shape'):
    models.dense_twin(model, params, image_shape)


def test_factorized_logits_fn_needs_image_shape():
  model, params, _, _, _ = _setup('lenet', LENET_SHAPE)
  with pytest.raises(ValueError, match='image_shape=None'):
    training.make_logits_fn(model, params, {})


def _sub_jaxprs(params):
  for value in params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


def _factor_products(jaxpr, params, loops_only=True):
  """``U·V`` products (``compose``) in the jaxpr, or in its loop bodies."""
  pairs = {(layer['U'].shape, layer['V'].shape) for layer in params.values()}
  count = 0

  def visit(jpr, in_loop):
    nonlocal count
    for eqn in jpr.eqns:
      if (in_loop and eqn.primitive.name == 'dot_general' and tuple(
          v.aval.shape for v in eqn.invars) in pairs):
        count += 1
      for sub in _sub_jaxprs(eqn.params):
        visit(sub, in_loop or eqn.primitive.name in ('while', 'scan'))

  visit(jaxpr.jaxpr, not loops_only)
  return count


def test_attack_loop_forms_no_factor_products():
  model, params, stats, x, y = _setup('lenet', LENET_SHAPE)

  def attack(logits_fn, z):
    return attacks.pgd(logits_fn, z, y, jax.random.PRNGKey(3), num_steps=3,
                       **ATTACK)

  def factorized(p, z):
    return attack(lambda u: model.apply({'params': p}, u), z)

  def densified(p, z):
    return attack(training.make_logits_fn(model, p, stats,
                                          image_shape=LENET_SHAPE), z)

  def logits(p, z):
    return training.make_logits_fn(model, p, stats,
                                   image_shape=LENET_SHAPE)(z)

  # The factorized model forms its 4 matrices in every iteration; the dense
  # twin forms them once, outside the loop.
  assert _factor_products(jax.make_jaxpr(factorized)(params, x), params) > 0
  assert _factor_products(jax.make_jaxpr(densified)(params, x), params) == 0
  assert _factor_products(jax.make_jaxpr(densified)(params, x), params,
                          loops_only=False) == 4
  assert _factor_products(jax.make_jaxpr(logits)(params, x), params,
                          loops_only=False) == 4


@pytest.mark.parametrize('name,shape', [('lenet', LENET_SHAPE),
                                        ('resnet_tiny', SMALL_SHAPE)])
def test_attack_iterates_equal_those_on_the_factorized_model(name, shape):
  """Every sign-PGD iterate (same key, random start) agrees bit for bit.

  The twin's kernels are ``compose(U, V, C)`` laid out as the factorized
  layer lays them out, so no rounding differs; the tolerance is 0.
  """
  model, params, stats, x, y = _setup(name, shape)
  variables = {'params': params, 'batch_stats': stats}
  factorized = lambda z: model.apply(variables, z, train=False)
  densified = training.make_logits_fn(model, params, stats,
                                      image_shape=shape)
  key = jax.random.PRNGKey(3)
  for k in (1, 2, 5):
    want = attacks.pgd(factorized, x, y, key, num_steps=k, **ATTACK)
    got = attacks.pgd(densified, x, y, key, num_steps=k, **ATTACK)
    np.testing.assert_array_equal(got, want, err_msg=f'iterate {k}')


def _one_train_step(model, params, x, y, loss):
  tx = optax.sgd(0.05, momentum=0.9)
  state = training.TrainState.create(params, {}, tx)
  step = training.make_train_step(
      model, tx, loss=loss, attack=dict(num_steps=3, **ATTACK))
  p_step = parallel.pmap_train_step(step, devices=jax.devices()[:1],
                                    donate=False)
  batch = parallel.shard_batch({'image': np.asarray(x),
                                'label': np.asarray(y)}, 1)
  new_state, metrics = p_step(parallel.replicate(state, jax.devices()[:1]),
                              batch, jax.random.PRNGKey(7))
  return parallel.unreplicate(new_state), parallel.unreplicate(metrics)


@pytest.mark.parametrize('loss', ['mixed', 'adversarial'])
def test_train_step_unchanged_by_the_dense_attack(loss, monkeypatch):
  model, params, _, x, y = _setup('lenet', LENET_SHAPE)
  new_state, new_metrics = _one_train_step(model, params, x, y, loss)
  # The previous code path: the attack runs the factorized model itself.
  monkeypatch.setattr(_steps.models, 'dense_twin',
                      lambda model, params, image_shape: (model, params))
  old_state, old_metrics = _one_train_step(model, params, x, y, loss)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
      new_state.params, old_state.params)
  assert not jax.tree.all(jax.tree.map(
      lambda a, b: bool(jnp.array_equal(a, b)), new_state.params, params))
  for k in new_metrics:
    np.testing.assert_allclose(new_metrics[k], old_metrics[k], rtol=1e-6)


def test_eval_step_of_factorized_equals_dense_model():
  model, params, _, x, y = _setup('lenet', LENET_SHAPE, batch=8)
  dense = models.create_model('lenet', num_classes=10)
  dense_params = models.dense_twin(model, params, LENET_SHAPE)[1]
  batch = parallel.shard_batch({'image': np.asarray(x),
                                'label': np.asarray(y)}, 1)
  devices = jax.devices()[:1]
  counts = {}
  for name, (m, p) in {'factorized': (model, params),
                       'dense': (dense, dense_params)}.items():
    step = parallel.pmap_eval_step(
        training.make_eval_step(m, attack=dict(num_steps=3, **ATTACK)),
        devices=devices)
    out = step(parallel.replicate(p, devices), parallel.replicate({}, devices),
               batch, jax.random.PRNGKey(2))
    counts[name] = jax.device_get(parallel.unreplicate(out))
  assert counts['factorized'] == counts['dense']
  assert counts['dense']['count'] == 8
