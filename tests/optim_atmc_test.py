"""Tests for atmc, projected, fixed_support and deployable_params."""

import functools
import itertools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from atmc_jax import optim
from atmc_jax import projections


# Compiled once per (k, bits) and shape; shared by the tests below.
_PROJECT_ATMC = jax.jit(projections.project_atmc, static_argnums=(1, 2))
_PROJECT_L0 = jax.jit(projections.project_l0, static_argnums=(1,))


def _nnz(tree, keys=None):
  keys = keys or list(tree)
  return sum(int(jnp.count_nonzero(tree[k])) for k in keys)


def _distinct_nonzero(x):
  x = np.asarray(x)
  return np.unique(x[x != 0]).size


class _LeastSquares:
  """0.5 * ||A theta - b||^2 over two leaves, 'a' (2x4) and 'b' (2x3).

  The truth has 4 non-zeros whose values need 3 levels in leaf 'a', so the
  1-bit problem (2 levels per leaf) is not solved by quantising the L0
  solution.
  """

  shapes = {'a': (2, 4), 'b': (2, 3)}
  n = 14

  def __init__(self, seed=0, m=100, noise=0.01):
    rng = np.random.default_rng(seed)
    self.a_mat = rng.standard_normal((m, self.n)) / np.sqrt(m)
    truth = np.zeros(self.n)
    truth[[1, 5, 6, 11]] = [1.0, 1.3, -0.8, 0.9]
    self.b_vec = self.a_mat @ truth + noise * rng.standard_normal(m)
    self.leaf_of = np.array([0] * 8 + [1] * 6)

  def unflatten(self, v):
    v = jnp.asarray(v, jnp.float32)
    return {'a': v[:8].reshape(2, 4), 'b': v[8:].reshape(2, 3)}

  def flatten(self, tree):
    return jnp.concatenate([tree['a'].ravel(), tree['b'].ravel()])

  def loss(self, tree):
    r = jnp.asarray(self.a_mat, jnp.float32) @ self.flatten(tree) - self.b_vec
    return 0.5 * jnp.sum(r**2)

  def _best(self, designs):
    """Least squares over a batch of designs (N, m, c) -> best loss."""
    x = np.stack(designs)
    coef = np.einsum('nij,j->ni', np.linalg.pinv(x), self.b_vec)
    r = np.einsum('nmc,nc->nm', x, coef) - self.b_vec
    return float(np.min(0.5 * np.sum(r**2, axis=1)))

  def _canonical(self, support, labels):
    """Skips relabellings of a leaf's levels (each leaf starts at 0)."""
    seen = set()
    for i, lab in zip(support, labels):
      leaf = self.leaf_of[i]
      if leaf not in seen:
        seen.add(leaf)
        if lab != 0:
          return False
    return True

  def brute_force(self, k, levels=None):
    """The best loss with <= k non-zeros (and <= levels values per leaf)."""
    designs = []
    width = k if levels is None else 2 * levels
    for s in range(1, k + 1):
      for support in itertools.combinations(range(self.n), s):
        labellings = ([tuple(range(s))] if levels is None else
                      itertools.product(range(levels), repeat=s))
        for labels in labellings:
          if levels is not None and not self._canonical(support, labels):
            continue
          groups = {}
          for i, lab in zip(support, labels):
            groups.setdefault((self.leaf_of[i], lab), []).append(i)
          x = np.zeros((len(self.b_vec), width))
          for j, cols in enumerate(groups.values()):
            x[:, j] = self.a_mat[:, cols].sum(axis=1)
          designs.append(x)
    return self._best(designs)


def _run(tx, loss_fn, params, steps):
  """``steps`` jitted updates in a scan; returns params, state, nnz trace."""
  state = tx.init(params)

  @jax.jit
  def many(params, state):
    def body(carry, _):
      p, s = carry
      updates, s = tx.update(jax.grad(loss_fn)(p), s, p)
      p = optax.apply_updates(p, updates)
      nnz = sum(jnp.count_nonzero(x) for x in jax.tree.leaves(p))
      return (p, s), nnz
    (p, s), nnz = jax.lax.scan(body, (params, state), length=steps)
    return p, s, nnz

  return many(params, state)


class ToyProblemTest(absltest.TestCase):
  """ATMC reaches the brute-force optimum of a small least squares."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.problem = _LeastSquares()
    cls.k = 4
    zeros = cls.problem.unflatten(np.zeros(cls.problem.n))
    cls.p32, _, cls.nnz32 = _run(optim.atmc(optax.sgd(0.3), budget=cls.k),
                                 cls.problem.loss, zeros, 400)

  def test_atmc32_matches_brute_force(self):
    best = self.problem.brute_force(self.k)
    deployed = optim.deployable_params(self.p32, budget=self.k)
    self.assertLessEqual(_nnz(deployed), self.k)
    self.assertLessEqual(float(self.problem.loss(deployed)),
                         best * (1 + 1e-4) + 1e-7)
    # Every step was feasible, not only the last one.
    self.assertLessEqual(int(jnp.max(self.nnz32)), self.k)

  def test_atmc1_matches_brute_force_and_beats_naive_rounding(self):
    problem = self.problem
    best = problem.brute_force(self.k, levels=2)
    naive = float(problem.loss(_PROJECT_ATMC(self.p32, self.k, 1)))
    # The test is only meaningful if rounding the L0 solution is not enough.
    self.assertGreater(naive, best * 1.02)
    tx = optim.atmc(optax.sgd(0.3), budget=self.k, bits=1, rho=1.0,
                    admm_interval=10)
    params, state, nnz = _run(tx, problem.loss, self.p32, 300)
    self.assertLessEqual(int(jnp.max(nnz)), self.k)
    deployed = jax.jit(functools.partial(
        optim.deployable_params, budget=self.k, bits=1))(params)
    self.assertLessEqual(_nnz(deployed), self.k)
    for leaf in jax.tree.leaves(deployed):
      self.assertLessEqual(_distinct_nonzero(leaf), 2)
    self.assertLessEqual(float(problem.loss(deployed)),
                         best * (1 + 1e-3) + 1e-7)
    # ADMM has converged: theta is (almost) on its quantised copy.
    gap = sum(float(jnp.sum((params[k] - state.z[k])**2)) for k in params)
    self.assertLess(gap, 1e-6)


class AtmcTest(parameterized.TestCase):

  def _params(self, seed=0):
    rng = np.random.default_rng(seed)
    return {'w1': jnp.asarray(rng.standard_normal((6, 5)), jnp.float32),
            'w2': jnp.asarray(rng.standard_normal((5, 4)), jnp.float32),
            'bias': jnp.asarray(rng.standard_normal(4), jnp.float32)}

  def _grads(self, seed):
    return jax.tree.map(
        lambda x: jax.random.normal(jax.random.key(seed), x.shape),
        self._params())

  @parameterized.named_parameters(('atmc32', None), ('atmc8', 8))
  def test_update_is_projected_inner_step(self, bits):
    params, grads = self._params(), self._grads(1)
    inner = optax.chain(optax.add_decayed_weights(1e-2),
                        optax.sgd(0.1, momentum=0.9))
    tx = optim.atmc(inner, budget=15, bits=bits, rho=0.5)
    state = jax.jit(tx.init)(params)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    # Reproduce by hand: penalty gradient, inner step, global top-15.
    if bits is not None:
      grads = {k: g + 0.5 * (params[k] - state.z[k] + state.u[k])
                  if k != 'bias' else g for k, g in grads.items()}
    inner_updates, _ = inner.update(grads, inner.init(params), params)
    expected = _PROJECT_L0(optax.apply_updates(params, inner_updates), 15)
    chex.assert_trees_all_close(new_params, expected, atol=1e-6)
    self.assertEqual(_nnz(new_params, ['w1', 'w2']), 15)
    # The unselected bias takes the inner update unchanged.
    np.testing.assert_allclose(updates['bias'], inner_updates['bias'],
                               rtol=1e-6)
    self.assertEqual(int(new_state.count), 1)

  def test_state_layout(self):
    params = self._params()
    state = jax.jit(optim.atmc(optax.sgd(0.1), budget=15, bits=2).init)(
        params)
    z0 = _PROJECT_ATMC(params, 15, 2)
    for k in ('w1', 'w2'):
      np.testing.assert_array_equal(state.z[k], z0[k])
      np.testing.assert_array_equal(state.u[k], jnp.zeros_like(params[k]))
    self.assertEqual(state.z['bias'].shape, ())
    self.assertEqual(state.u['bias'].shape, ())
    state32 = optim.atmc(optax.sgd(0.1), budget=15).init(params)
    for leaf in jax.tree.leaves((state32.z, state32.u)):
      self.assertEqual(leaf.shape, ())

  def test_admm_runs_exactly_at_documented_counts(self):
    params = self._params()
    interval, steps = 3, 10
    tx = optim.atmc(optax.sgd(0.05), budget=15, bits=2, rho=0.1,
                    admm_interval=interval)
    state = jax.jit(tx.init)(params)
    update = jax.jit(tx.update)
    for t in range(steps):
      self.assertEqual(int(state.count), t)
      updates, new_state = update(self._grads(t), state, params)
      new_params = optax.apply_updates(params, updates)
      changed = any(not np.array_equal(new_state.z[k], state.z[k])
                    for k in ('w1', 'w2'))
      if t > 0 and t % interval == 0:
        self.assertTrue(changed, f'no ADMM step at count {t}')
        target = {k: new_params[k] + state.u[k] for k in ('w1', 'w2')}
        target['bias'] = new_params['bias']
        z = _PROJECT_ATMC(target, 15, 2)
        for k in ('w1', 'w2'):
          np.testing.assert_allclose(new_state.z[k], z[k], atol=1e-6)
          # The scaled dual accumulates theta - Z.
          np.testing.assert_allclose(
              new_state.u[k], state.u[k] + new_params[k] - new_state.z[k],
              atol=1e-6)
        self.assertGreater(
            sum(float(jnp.abs(new_state.u[k]).sum()) for k in ('w1', 'w2')),
            0.0)
      else:
        self.assertFalse(changed, f'unexpected ADMM step at count {t}')
        chex.assert_trees_all_equal(new_state.u, state.u)
      params, state = new_params, new_state

  def test_rho_and_inner_learning_rate_can_be_scheduled(self):
    params = self._params()
    rho_schedule = optax.linear_schedule(0.1, 1.0, transition_steps=4)
    lr_schedule = optax.exponential_decay(0.1, transition_steps=1,
                                          decay_rate=0.5)
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=lr_schedule)
    tx = optax.inject_hyperparams(optim.atmc, static_args=('bits', 'mask'))(
        inner=inner, budget=15, bits=2, rho=rho_schedule, admm_interval=1)
    state = jax.jit(tx.init)(params)
    update = jax.jit(tx.update)

    @jax.jit
    def plain_update(rho, grads, state, params):
      plain = optim.atmc(inner, budget=15, bits=2, rho=rho, admm_interval=1)
      return plain.update(grads, state, params)

    for t in range(3):
      grads = self._grads(t)
      updates, new_state = update(grads, state, params)
      # The hyper-parameters recorded are the ones this step used.
      self.assertAlmostEqual(float(new_state.hyperparams['rho']),
                             float(rho_schedule(t)), places=6)
      self.assertAlmostEqual(
          float(new_state.inner_state.inner_state.hyperparams[
              'learning_rate']), float(lr_schedule(t)), places=6)
      # Same as a plain atmc built with this step's rho and learning rate.
      expected, _ = plain_update(rho_schedule(t), grads, state.inner_state,
                                 params)
      chex.assert_trees_all_close(updates, expected, atol=1e-6)
      params = optax.apply_updates(params, updates)
      state = new_state

  def test_inject_without_static_bits_raises_helpful_error(self):
    tx = optax.inject_hyperparams(optim.atmc)(
        inner=optax.sgd(0.1), budget=4, bits=2)
    params = self._params()
    with self.assertRaisesRegex(ValueError, r"static_args=\('bits'"):
      state = jax.jit(tx.init)(params)
      jax.jit(tx.update)(self._grads(0), state, params)

  def test_traced_budget(self):
    params = self._params()
    tx = optax.inject_hyperparams(optim.atmc, static_args=('bits', 'mask'))(
        inner=optax.sgd(0.1), budget=7)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(self._grads(0), state, params)
    self.assertEqual(_nnz(optax.apply_updates(params, updates), ['w1', 'w2']),
                     7)
    state.hyperparams['budget'] = jnp.asarray(3, jnp.int32)
    updates, state = jax.jit(tx.update)(self._grads(1), state, params)
    self.assertEqual(_nnz(optax.apply_updates(params, updates), ['w1', 'w2']),
                     3)

  def test_custom_mask(self):
    params = self._params()
    mask = {'w1': True, 'w2': False, 'bias': False}
    tx = optim.atmc(optax.sgd(0.1), budget=5, bits=1, mask=mask)
    state = jax.jit(tx.init)(params)
    self.assertEqual(state.z['w2'].shape, ())
    updates, _ = jax.jit(tx.update)(self._grads(0), state, params)
    new = optax.apply_updates(params, updates)
    self.assertEqual(_nnz(new, ['w1']), 5)
    self.assertEqual(_nnz(new, ['w2']), params['w2'].size)

  @parameterized.named_parameters(
      ('negative_budget', dict(budget=-1), r'budget.*\[0, inf\).*-1'),
      ('float_budget', dict(budget=2.5), r'budget.*2\.5'),
      ('bits_zero', dict(budget=3, bits=0), r'bits.*\[1, 16\].*got 0'),
      ('bits_17', dict(budget=3, bits=17), r'bits.*\[1, 16\].*got 17'),
      ('bits_32', dict(budget=3, bits=32), r'None.*got 32'),
      ('interval_zero', dict(budget=3, admm_interval=0),
       r'admm_interval.*\[1, inf\).*got 0'),
      ('negative_rho', dict(budget=3, rho=-0.1),
       r'rho must be a finite number in \(0, inf\), got -0\.1'),
      ('zero_rho', dict(budget=3, bits=2, rho=0.0),
       r'rho must be a finite number in \(0, inf\), got 0\.0'),
      ('inf_rho', dict(budget=3, bits=2, rho=float('inf')),
       r'rho must be a finite number in \(0, inf\), got inf'),
      ('nan_rho', dict(budget=3, bits=2, rho=float('nan')),
       r'rho must be a finite number in \(0, inf\), got nan'),
      ('string_rho', dict(budget=3, bits=2, rho='0.1x'),
       r"rho must be a finite number in \(0, inf\), got '0\.1x'"),
      ('schedule_rho', dict(budget=3, rho=lambda t: 0.1),
       r'rho.*\(0, inf\).*inject_hyperparams'),
      ('quantizer', dict(budget=3, quantizer='kmeans'),
       r"quantizer.*'lloyd'.*'kmeans'"),
      ('quantizer_init', dict(budget=3, bits=2, quantizer_init='kmeans++'),
       r"quantizer_init.*'quantile'.*'forgy'.*'kmeans\+\+'"),
      ('forgy_optimal', dict(budget=3, bits=2, quantizer='optimal',
                             quantizer_init='forgy'),
       r"quantizer_init='forgy' needs quantizer='lloyd', got 'optimal'"),
  )
  def test_bad_hyperparameters_raise(self, kwargs, regex):
    with self.assertRaisesRegex(ValueError, regex):
      optim.atmc(optax.sgd(0.1), **kwargs)

  @parameterized.named_parameters(
      ('atmc8', lambda: optim.atmc(optax.sgd(0.1), budget=3, bits=8)),
      ('atmc32', lambda: optim.atmc(optax.sgd(0.1), budget=3)),
      ('projected', lambda: optim.projected(optax.sgd(0.1), lambda t: t)),
      ('fixed_support', lambda: optim.fixed_support(optax.sgd(0.1))),
  )
  def test_init_without_params_raises(self, make):
    tx = make()
    for params in (None, {}):
      with self.assertRaisesRegex(
          ValueError, r'init needs the params: a pytree with at least one '
          r'array leaf, got (None|\{\})'):
        tx.init(params)

  def test_forgy_init_is_forwarded_and_keyed_by_count(self):
    params = {'w': jnp.asarray(
        np.random.default_rng(0).standard_t(3, (40, 50)), jnp.float32)}
    budget, bits = 1500, 2

    def run(quantizer_init):
      tx = optim.atmc(optax.sgd(0.01), budget=budget, bits=bits,
                      admm_interval=1, quantizer_init=quantizer_init)
      state = tx.init(params)
      z0 = state.z
      p = params
      for _ in range(2):  # ADMM steps run at counts 1 (not 0).
        grads = {'w': jnp.full_like(p['w'], 0.1)}
        updates, state = jax.jit(tx.update)(grads, state, p)
        p = optax.apply_updates(p, updates)
      return z0, state, p

    z0, state, p = run('forgy')
    expected = projections.project_atmc(
        params, budget, bits, init='forgy', key=optim.quantizer_key(0))
    chex.assert_trees_all_close(z0, expected, atol=1e-5)
    quantile = projections.project_atmc(params, budget, bits)
    self.assertFalse(np.array_equal(z0['w'], quantile['w']))
    # Reproducible: a second run gives the same state, bit for bit.
    _, state2, _ = run('forgy')
    chex.assert_trees_all_equal(state.z, state2.z)
    self.assertLessEqual(_distinct_nonzero(state.z['w']), 2 ** bits)
    # The ADMM step at count 1 (u was 0) quantised p with quantizer_key(1).
    chex.assert_trees_all_close(
        state.z, projections.project_atmc(
            p, budget, bits, init='forgy', key=optim.quantizer_key(1)),
        atol=1e-5)
    deployed = optim.deployable_params(p, budget=budget, bits=bits,
                                       quantizer_init='forgy')
    chex.assert_trees_all_close(
        deployed, projections.project_atmc(
            p, budget, bits, init='forgy', key=optim.quantizer_key(0)),
        atol=1e-5)
    z0_quantile, _, _ = run('quantile')
    chex.assert_trees_all_close(z0_quantile, quantile, atol=1e-5)

  def test_bad_deployable_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, r'bits.*\[1, 16\]'):
      optim.deployable_params(self._params(), budget=3, bits=20)
    with self.assertRaisesRegex(ValueError, r'budget.*\[0, inf\)'):
      optim.deployable_params(self._params(), budget=-2)

  @parameterized.named_parameters(
      ('atmc32', lambda: optim.atmc(optax.sgd(0.1), budget=3)),
      ('atmc8', lambda: optim.atmc(optax.sgd(0.1), budget=3, bits=8)),
      ('projected', lambda: optim.projected(optax.sgd(0.1), lambda t: t)),
      ('fixed_support', lambda: optim.fixed_support(optax.sgd(0.1))),
  )
  def test_params_none_raises(self, make):
    tx = make()
    params = self._params()
    state = tx.init(params)
    with self.assertRaisesRegex(ValueError, 'requires the current value'):
      tx.update(self._grads(0), state)

  @parameterized.named_parameters(('atmc32', None), ('atmc2', 2))
  def test_deployable_params_feasible(self, bits):
    params = self._params()
    out = optim.deployable_params(params, budget=15, bits=bits)
    self.assertEqual(_nnz(out, ['w1', 'w2']), 15)
    np.testing.assert_array_equal(out['bias'], params['bias'])
    if bits is None:
      chex.assert_trees_all_equal(out, _PROJECT_L0(params, 15))
    else:
      for k in ('w1', 'w2'):
        self.assertLessEqual(_distinct_nonzero(out[k]), 2**bits)
      chex.assert_trees_all_equal(out, _PROJECT_ATMC(params, 15, bits))


class ProjectedTest(absltest.TestCase):

  def test_box_projection(self):
    params = {'w': jnp.array([[0.5, -0.9], [0.0, 2.0]])}
    project = functools.partial(jax.tree.map, lambda x: jnp.clip(x, -1, 1))
    tx = optim.projected(optax.sgd(1.0), project)
    state = tx.init(params)
    grads = {'w': jnp.array([[-1.0, 1.0], [0.2, 0.0]])}
    updates, _ = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new['w'], [[1.0, -1.0], [-0.2, 1.0]],
                               atol=1e-7)

  def test_bad_project_fn_raises(self):
    with self.assertRaisesRegex(ValueError, 'project_fn'):
      optim.projected(optax.sgd(0.1), 3)


class FixedSupportTest(absltest.TestCase):

  def _params(self):
    rng = np.random.default_rng(3)
    return {'w': jnp.asarray(rng.standard_normal((8, 6)), jnp.float32),
            'bias': jnp.asarray(rng.standard_normal(6), jnp.float32)}

  def test_magnitude_support(self):
    params = self._params()
    support = optim.magnitude_support(params, 10)
    self.assertEqual(int(support['w'].sum()), 10)
    self.assertTrue(bool(support['bias'].all()))
    self.assertEqual(support['bias'].shape, (6,))
    kept = jnp.abs(params['w'])[support['w']]
    dropped = jnp.abs(params['w'])[~support['w']]
    self.assertGreaterEqual(float(kept.min()), float(dropped.max()))

  def test_support_frozen_and_zeros_exact(self):
    params = self._params()
    support = optim.magnitude_support(params, 10)
    pruned = {'w': jnp.where(support['w'], params['w'], 0.0),
              'bias': params['bias']}
    inner = optax.chain(optax.add_decayed_weights(1e-3),
                        optax.sgd(0.1, momentum=0.9))
    for tx, start in ((optim.fixed_support(inner), pruned),
                      # Explicit support, starting from the dense params.
                      (optim.fixed_support(inner, support), params)):
      state = tx.init(start)
      p = start
      update = jax.jit(tx.update)
      for t in range(5):
        grads = jax.tree.map(
            lambda x, t=t: jax.random.normal(jax.random.key(t), x.shape), p)
        updates, state = update(grads, state, p)
        np.testing.assert_array_equal(
            np.asarray(updates['w'])[~np.asarray(support['w'])],
            -np.asarray(p['w'])[~np.asarray(support['w'])])
        p = optax.apply_updates(p, updates)
        np.testing.assert_array_equal(p['w'] != 0, support['w'])
      self.assertFalse(np.array_equal(p['bias'], params['bias']))

  def test_momentum_sees_no_gradient_outside_support(self):
    params = {'w': jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    tx = optim.fixed_support(optax.sgd(0.1, momentum=0.9))
    state = tx.init(params)
    _, state = tx.update({'w': jnp.ones((2, 2))}, state, params)
    trace = state.inner_state[0].trace['w']
    np.testing.assert_array_equal(trace, [[1.0, 0.0], [0.0, 1.0]])

  def test_bad_support_raises(self):
    params = self._params()
    with self.assertRaisesRegex(ValueError, 'support structure'):
      optim.fixed_support(optax.sgd(0.1), {'w': True}).init(params)
    bad = {'w': jnp.ones((3, 3), bool), 'bias': jnp.ones(6, bool)}
    with self.assertRaisesRegex(ValueError, r"support leaf 'w'.*\(3, 3\)"):
      optim.fixed_support(optax.sgd(0.1), bad).init(params)
    with self.assertRaisesRegex(ValueError, r'budget.*\[0, inf\)'):
      optim.magnitude_support(params, -1)


if __name__ == '__main__':
  absltest.main()
