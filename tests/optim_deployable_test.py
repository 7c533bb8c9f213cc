"""Tests for deployable_params: from the optimizer state and by keywords."""

import functools

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from atmc_jax import optim
from atmc_jax import projections


def _params():
  rng = np.random.default_rng(1)
  return {
      'w1': jnp.asarray(rng.standard_normal((6, 5)), jnp.float32),
      'w2': jnp.asarray(rng.standard_normal((5, 4)), jnp.float32),
      'bias': jnp.asarray(rng.standard_normal(4), jnp.float32),
  }


def _grads(t):
  rng = np.random.default_rng(100 + t)
  return jax.tree.map(
      lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype),
      _params())


def _run(tx, params, steps=3):
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  for t in range(steps):
    updates, state = update(_grads(t), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _nnz(tree, keys):
  return sum(int(jnp.count_nonzero(tree[k])) for k in keys)


def _max_distinct(tree, keys):
  return max(len(np.unique(np.asarray(tree[k])[np.asarray(tree[k]) != 0]))
             for k in keys)


class FromStateTest(absltest.TestCase):

  def test_atmc_state_matches_keyword_form(self):
    mask = {'w1': True, 'w2': True, 'bias': False}
    for bits, quantizer, init in ((None, 'lloyd', 'quantile'),
                                  (2, 'lloyd', 'quantile'),
                                  (2, 'lloyd', 'forgy'),
                                  (3, 'optimal', 'quantile')):
      with self.subTest(bits=bits, quantizer=quantizer, init=init):
        tx = optim.atmc(optax.sgd(0.05), budget=9, bits=bits,
                        admm_interval=1, mask=mask, quantizer=quantizer,
                        quantizer_init=init)
        params, state = _run(tx, _params())
        # Perturb theta off the constraint set: deployment re-projects.
        params = jax.tree.map(lambda p: p + 0.01, params)
        from_state = optim.deployable_params(params, state)
        by_keywords = optim.deployable_params(
            params, budget=9, bits=bits, mask=mask, quantizer=quantizer,
            quantizer_init=init)
        chex.assert_trees_all_equal(from_state, by_keywords)
        self.assertLessEqual(_nnz(from_state, ['w1', 'w2']), 9)
        np.testing.assert_array_equal(from_state['bias'], params['bias'])
        if bits:
          self.assertLessEqual(_max_distinct(from_state, ['w1', 'w2']),
                               2**bits)

  def test_custom_mask_is_read_from_the_state(self):
    mask = {'w1': True, 'w2': False, 'bias': False}
    tx = optim.atmc(optax.sgd(0.05), budget=4, bits=1, mask=mask)
    params, state = _run(tx, _params())
    params = dict(params, w2=params['w2'] + 1.0)
    out = optim.deployable_params(params, state)
    self.assertLessEqual(_nnz(out, ['w1']), 4)
    self.assertLessEqual(_max_distinct(out, ['w1']), 2)
    np.testing.assert_array_equal(out['w2'], params['w2'])  # unselected

  def test_use_copy_deploys_z(self):
    tx = optim.atmc(optax.sgd(0.05), budget=9, bits=2, admm_interval=1)
    params, state = _run(tx, _params(), steps=4)
    out = optim.deployable_params(params, state, use_copy=True)
    for k in ('w1', 'w2'):
      np.testing.assert_array_equal(out[k], state.z[k])
    np.testing.assert_array_equal(out['bias'], params['bias'])
    self.assertLessEqual(_nnz(out, ['w1', 'w2']), 9)
    self.assertLessEqual(_max_distinct(out, ['w1', 'w2']), 4)
    # The copy does not depend on theta; the re-projection does.
    moved = jax.tree.map(lambda p: p + 0.3, params)
    chex.assert_trees_all_equal(
        optim.deployable_params(moved, state, use_copy=True),
        dict(out, bias=moved['bias']))
    self.assertFalse(np.array_equal(
        optim.deployable_params(moved, state)['w1'], out['w1']))

  def test_inject_hyperparams_follows_a_changed_budget(self):
    tx = optax.inject_hyperparams(optim.atmc, static_args=('bits', 'mask'))(
        inner=optax.sgd(0.05), budget=9, bits=2, rho=0.5)
    params, state = _run(tx, _params(), steps=2)
    self.assertEqual(int(state.inner_state.constraint.budget), 9)
    state.hyperparams['budget'] = jnp.asarray(3, jnp.int32)
    params, state = _run_from(tx, params, state)
    out = optim.deployable_params(params, state)
    self.assertEqual(int(state.inner_state.constraint.budget), 3)
    self.assertLessEqual(_nnz(out, ['w1', 'w2']), 3)
    self.assertLessEqual(_max_distinct(out, ['w1', 'w2']), 4)
    chex.assert_trees_all_equal(
        out, optim.deployable_params(params, budget=3, bits=2))
    copy = optim.deployable_params(params, state, use_copy=True)
    np.testing.assert_array_equal(copy['w1'], state.inner_state.z['w1'])

  def test_wrapped_in_multi_steps_and_chain(self):
    tx = optax.MultiSteps(
        optim.atmc(optax.sgd(0.05), budget=7, bits=1), every_k_schedule=2)
    params, state = _run(tx, _params(), steps=2)
    chex.assert_trees_all_equal(
        optim.deployable_params(params, (optax.EmptyState(), state)),
        optim.deployable_params(params, budget=7, bits=1))

  def test_fixed_support_masks_with_the_support(self):
    start = optim.deployable_params(_params(), budget=10)
    tx = optim.fixed_support(optax.sgd(0.05))
    params, state = _run(tx, start)
    support = jax.tree.map(lambda p: p != 0, start)
    dirty = jax.tree.map(lambda p: p + 1.0, params)  # off the support
    out = optim.deployable_params(dirty, state)
    for k in ('w1', 'w2'):
      np.testing.assert_array_equal(out[k] != 0, support[k])
      np.testing.assert_array_equal(
          out[k], jnp.where(support[k], dirty[k], 0.0))
    np.testing.assert_array_equal(out['bias'], dirty['bias'])

  def test_projected_returns_the_params(self):
    tx = optim.projected(optax.sgd(0.05), functools.partial(
        projections.project_l0, k=6))
    params, state = _run(tx, _params())
    out = optim.deployable_params(params, state)
    chex.assert_trees_all_equal(out, params)
    self.assertLessEqual(_nnz(out, ['w1', 'w2']), 6)

  def test_state_is_arrays_only_and_jit_stable(self):
    tx = optim.atmc(optax.sgd(0.05), budget=9, bits=2)
    state = jax.jit(tx.init)(_params())
    for leaf in jax.tree.leaves(state.constraint):
      self.assertIsInstance(leaf, jax.Array)
    self.assertEqual(int(state.constraint.bits), 2)
    self.assertEqual(
        jax.tree.map(bool, state.constraint.selected),
        {'w1': True, 'w2': True, 'bias': False})
    state32 = optim.atmc(optax.sgd(0.05), budget=9).init(_params())
    self.assertEqual(int(state32.constraint.bits), 0)

  def test_errors(self):
    params = _params()
    atmc8 = optim.atmc(optax.sgd(0.05), budget=9, bits=2)
    atmc32 = optim.atmc(optax.sgd(0.05), budget=9)
    state8 = atmc8.init(params)
    cases = [
        (lambda: optim.deployable_params(params), 'budget=k'),
        (lambda: optim.deployable_params(params, state8, budget=3),
         'both a state'),
        (lambda: optim.deployable_params(params, use_copy=True),
         'needs the optimizer state'),
        (lambda: optim.deployable_params(params, atmc32.init(params),
                                         use_copy=True), 'bits=None'),
        (lambda: optim.deployable_params(
            params, optim.fixed_support(optax.sgd(0.1)).init(params),
            use_copy=True), 'FixedSupportState'),
        (lambda: optim.deployable_params(params, (state8, state8)),
         'holds 2 compression states'),
        (lambda: optim.deployable_params(params, optax.sgd(0.1).init(params)),
         'holds 0 compression states'),
        (lambda: optim.deployable_params({'w1': params['w1']}, state8),
         'does not match'),
        (lambda: jax.jit(optim.deployable_params)(params, state8),
         'outside jax.jit'),
    ]
    for fn, regex in cases:
      with self.subTest(regex):
        with self.assertRaisesRegex(ValueError, regex):
          fn()


def _run_from(tx, params, state, steps=2):
  update = jax.jit(tx.update)
  for t in range(steps):
    updates, state = update(_grads(10 + t), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


if __name__ == '__main__':
  absltest.main()
