"""training.logits_partial: params are traced arguments, compiled once."""

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax import attacks
from atmc_jax import models
from atmc_jax import training


def _lenet(seed, factorized=False):
  model = models.create_model('lenet', num_classes=10, factorized=factorized)
  x = jnp.zeros((1, 28, 28, 1), jnp.float32)
  return model, model.init(jax.random.key(seed), x)['params']


def test_two_models_share_one_compiled_attack():
  model, p1 = _lenet(0)
  _, p2 = _lenet(1)
  x = jnp.asarray(np.random.default_rng(0).random((4, 28, 28, 1)),
                  jnp.float32)
  y = jnp.arange(4)
  attack = jax.jit(lambda lf, x, y, k: attacks.pgd(lf, x, y, k, epsilon=0.1,
                                                    num_steps=2))
  lf1 = training.logits_partial(model, p1, {})
  lf2 = training.logits_partial(models.create_model('lenet', num_classes=10),
                                p2, {})
  a1 = attack(lf1, x, y, jax.random.key(0))
  a2 = attack(lf2, x, y, jax.random.key(0))
  assert attack._cache_size() == 1  # pylint: disable=protected-access
  assert not np.allclose(a1, a2)  # Each model's own params were used.
  np.testing.assert_allclose(
      lf1(x), model.apply({'params': p1}, x), rtol=1e-6)


def test_params_are_not_baked_in_as_constants():
  model, params = _lenet(0)
  lf = training.logits_partial(model, params, {})
  x = jnp.zeros((2, 28, 28, 1), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda lf, x: lf(x))(lf, x)
  biggest = max((np.size(c) for c in jaxpr.consts), default=0)
  assert biggest < 500 * 800  # No fc1 kernel among the constants.


def test_a_factorized_model_runs_as_its_dense_twin():
  model, params = _lenet(0, factorized=True)
  lf = training.logits_partial(model, params, {}, image_shape=(28, 28, 1))
  assert 'kernel' in lf.args[0]['fc1']  # W formed once, outside the attack.
  x = jnp.asarray(np.random.default_rng(1).random((3, 28, 28, 1)),
                  jnp.float32)
  np.testing.assert_allclose(lf(x), model.apply({'params': params}, x),
                             rtol=1e-5, atol=1e-5)
