"""The optax contract, checked for every transformation in atmc_jax.optim."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from atmc_jax import optim
from atmc_jax import projections

_BUDGET = 12


def _inner(learning_rate=0.05):
  return optax.chain(optax.add_decayed_weights(1e-4),
                     optax.sgd(learning_rate, momentum=0.9))


# name -> (factory, kwargs, static_args for inject_hyperparams)
_TRANSFORMS = {
    'atmc32': (optim.atmc, dict(budget=_BUDGET), ('bits', 'mask')),
    'atmc8': (optim.atmc, dict(budget=_BUDGET, bits=8, admm_interval=2),
              ('bits', 'mask')),
    'fixed_support': (optim.fixed_support, dict(), ()),
    'projected_l0': (
        optim.projected,
        dict(project_fn=functools.partial(projections.project_l0,
                                          k=_BUDGET)),
        ('project_fn',)),
}
_NAMES = [(name, name) for name in _TRANSFORMS]


def _params():
  rng = np.random.default_rng(0)
  return {
      'dense': {'kernel': jnp.asarray(rng.standard_normal((6, 5)),
                                      jnp.float32),
                'bias': jnp.zeros(5, jnp.float32)},
      'out': {'kernel': jnp.asarray(rng.standard_normal((5, 3)),
                                    jnp.float32)},
  }


def _start(name):
  """The starting point: pruned for fixed_support, dense otherwise."""
  params = _params()
  if name == 'fixed_support':
    params = optim.deployable_params(params, budget=_BUDGET)
  return params


def _loss(params):
  target = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  return sum(jnp.sum((p - t)**2) for p, t in
             zip(jax.tree.leaves(params), jax.tree.leaves(target)))


def _kernel_nnz(params):
  return int(jnp.count_nonzero(params['dense']['kernel'])
             + jnp.count_nonzero(params['out']['kernel']))


def _make(name, **overrides):
  factory, kwargs, _ = _TRANSFORMS[name]
  return factory(_inner(), **{**kwargs, **overrides})


def _shapes_and_dtypes(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


class ContractTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    chex.clear_trace_counter()

  @parameterized.named_parameters(_NAMES)
  def test_jit_steps_stable_state_and_feasibility(self, name):
    tx = _make(name)
    params = _start(name)
    state = jax.jit(tx.init)(params)

    with self.subTest('init on abstract shapes'):
      abstract = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
      chex.assert_trees_all_equal_shapes_and_dtypes(
          jax.eval_shape(tx.init, abstract), state)

    with self.subTest('state holds arrays only'):
      for leaf in jax.tree.leaves(state):
        self.assertIsInstance(leaf, jax.Array)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
      grads = jax.grad(_loss)(params)
      updates, state = tx.update(grads, state, params,
                                 unexpected_extra_arg=1.0)
      return optax.apply_updates(params, updates), state

    losses = [float(_loss(params))]
    for _ in range(4):
      new_params, new_state = step(params, state)
      chex.assert_trees_all_equal_structs(new_state, state)
      chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
      chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)
      chex.assert_tree_all_finite((new_params, new_state))
      self.assertLessEqual(_kernel_nnz(new_params), _BUDGET)
      params, state = new_params, new_state
      losses.append(float(_loss(params)))
    self.assertLess(losses[-1], losses[0])

  @parameterized.named_parameters(_NAMES)
  def test_inject_hyperparams(self, name):
    factory, kwargs, static_args = _TRANSFORMS[name]
    lr = optax.linear_schedule(0.05, 0.01, transition_steps=3)
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=lr)
    if factory is optim.atmc:
      kwargs = dict(kwargs, rho=optax.linear_schedule(0.1, 1.0, 3))
    tx = optax.inject_hyperparams(factory, static_args=static_args)(
        inner, **kwargs)
    params = _start(name)
    state = jax.jit(tx.init)(params)
    step = jax.jit(tx.update)
    for _ in range(3):
      updates, new_state = step(jax.grad(_loss)(params), state, params)
      chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
      params, state = optax.apply_updates(params, updates), new_state
      self.assertLessEqual(_kernel_nnz(params), _BUDGET)
    self.assertAlmostEqual(
        float(state.inner_state.inner_state.hyperparams['learning_rate']),
        float(lr(2)), places=6)

  @parameterized.named_parameters(_NAMES)
  def test_gradient_accumulation(self, name):
    tx = optax.MultiSteps(_make(name), every_k_schedule=2)
    params = _start(name)
    state = jax.jit(tx.init)(params)
    step = jax.jit(tx.update)
    for t in range(4):
      updates, state = step(jax.grad(_loss)(params), state, params)
      new_params = optax.apply_updates(params, updates)
      if t % 2 == 0:  # accumulating: no step
        chex.assert_trees_all_equal(new_params, params)
      else:  # a projected step on the accumulated gradients
        self.assertLessEqual(_kernel_nnz(new_params), _BUDGET)
      params = new_params

  @parameterized.named_parameters(_NAMES)
  def test_pmap_replicated_matches_single_device(self, name):
    tx = _make(name)
    params = _start(name)
    state = jax.jit(tx.init)(params)
    grads = jax.grad(_loss)(params)
    single = jax.jit(tx.update)(grads, state, params)
    n = jax.local_device_count()
    replicate = lambda t: jax.tree.map(lambda x: jnp.stack([x] * n), t)
    multi = jax.pmap(tx.update)(replicate(grads), replicate(state),
                                replicate(params))
    for i in (0, n - 1):
      chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], multi),
                                  single, atol=1e-6)

  @parameterized.named_parameters(_NAMES)
  def test_params_none_raises(self, name):
    tx = _make(name)
    params = _start(name)
    state = tx.init(params)
    with self.assertRaisesRegex(ValueError, 'requires the current value'):
      tx.update(jax.grad(_loss)(params), state)


if __name__ == '__main__':
  absltest.main()
