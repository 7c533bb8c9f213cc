"""Tests for ``atmc_jax.attacks``: PGD, FGSM, WRM and robust accuracy."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atmc_jax import attacks

EPS = {'linf': 0.1, 'l2': 0.5}
TOL = 1e-6


# ---------------------------------------------------------------------------
# Small fixed models.
# ---------------------------------------------------------------------------


def _tiny_params(key, shape=(8, 8, 1), num_classes=5):
  k1, k2 = jax.random.split(key)
  d = int(np.prod(shape))
  return {'w1': jax.random.normal(k1, (d, 16)) / np.sqrt(d),
          'w2': jax.random.normal(k2, (16, num_classes))}


def _tiny_apply(params, x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params['w1'] * 4.0)
  return h @ params['w2']


def _tiny_batch(key, batch=8, shape=(8, 8, 1), num_classes=5):
  kx, ky = jax.random.split(key)
  x = jax.random.uniform(kx, (batch, *shape))
  # Pixels exactly at the bounds exercise the clipping.
  x = x.at[:, 0].set(0.0).at[:, 1].set(1.0)
  y = jax.random.randint(ky, (batch,), 0, num_classes)
  return x, y


TINY_FN = jax.tree_util.Partial(_tiny_apply,
                                _tiny_params(jax.random.PRNGKey(0)))
TINY_X, TINY_Y = _tiny_batch(jax.random.PRNGKey(1))


def _linf(x_adv, x):
  return np.max(np.abs(np.asarray(x_adv) - np.asarray(x)).reshape(
      len(x), -1), axis=1)


def _l2(x_adv, x):
  return np.linalg.norm(
      (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(
          len(x), -1), axis=1)


def _assert_in_box(x_adv, bounds=(0.0, 1.0)):
  assert np.min(x_adv) >= bounds[0] and np.max(x_adv) <= bounds[1]


def _assert_in_ball(x_adv, x, norm, eps):
  dist = _linf(x_adv, x) if norm == 'linf' else _l2(x_adv, x)
  assert np.all(dist <= eps * (1 + TOL) + TOL), dist.max()


# ---------------------------------------------------------------------------
# Feasibility: every output lies in the ball and in the bounds.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('norm', ['linf', 'l2'])
@pytest.mark.parametrize('random_start, num_restarts',
                         [(True, 1), (False, 1), (True, 3)])
def test_pgd_stays_in_ball_and_bounds(norm, random_start, num_restarts):
  eps = EPS[norm]
  x_adv = attacks.pgd(TINY_FN, TINY_X, TINY_Y, jax.random.PRNGKey(2),
                      epsilon=eps, num_steps=4, norm=norm,
                      random_start=random_start, num_restarts=num_restarts)
  chex.assert_equal_shape([x_adv, TINY_X])
  assert x_adv.dtype == TINY_X.dtype
  _assert_in_box(x_adv)
  _assert_in_ball(x_adv, TINY_X, norm, eps)
  # The attack moved and raised the loss.
  loss = attacks.cross_entropy(TINY_FN(x_adv), TINY_Y)
  clean = attacks.cross_entropy(TINY_FN(TINY_X), TINY_Y)
  assert float(jnp.mean(loss)) > float(jnp.mean(clean))
  if norm == 'linf':
    # Signed steps with step 2.5 eps / K reach the surface of the ball for
    # most coordinates that are not clipped.
    assert np.mean(_linf(x_adv, TINY_X) > 0.99 * eps) > 0.9


def test_pgd_nonunit_bounds():
  x = TINY_X * 2.0 - 1.0
  fn = jax.tree_util.Partial(lambda p, x: _tiny_apply(p, (x + 1) / 2),
                             TINY_FN.args[0])
  x_adv = attacks.pgd(fn, x, TINY_Y, jax.random.PRNGKey(0), epsilon=0.3,
                      num_steps=4, bounds=(-1.0, 1.0))
  _assert_in_box(x_adv, (-1.0, 1.0))
  _assert_in_ball(x_adv, x, 'linf', 0.3)
  assert np.min(x_adv) == -1.0 and np.max(x_adv) == 1.0


def test_fgsm_and_wrm_stay_in_bounds():
  eps = 0.1
  x_adv = attacks.fgsm(TINY_FN, TINY_X, TINY_Y, epsilon=eps)
  _assert_in_box(x_adv)
  _assert_in_ball(x_adv, TINY_X, 'linf', eps)
  # Every coordinate with a nonzero gradient moves by exactly eps unless
  # clipped: here all interior pixels.
  interior = (TINY_X > eps) & (TINY_X < 1 - eps)
  moved = np.abs(np.asarray(x_adv - TINY_X))[np.asarray(interior)]
  np.testing.assert_allclose(moved, eps, rtol=1e-5)
  # A large gamma makes WRM leave any small ball, yet it stays in bounds.
  x_wrm = attacks.wrm(TINY_FN, TINY_X, TINY_Y, gamma=50.0, num_steps=7)
  _assert_in_box(x_wrm)
  assert np.max(_linf(x_wrm, TINY_X)) > 0.1


def test_random_start_is_uniform_in_the_ball():
  # With step_size=0 PGD returns its random start.
  x = jnp.full((512, 4, 4, 1), 0.5)
  y = jnp.zeros((512,), jnp.int32)
  fn = lambda x: jnp.zeros((x.shape[0], 3)) + jnp.sum(x) * 0.0
  key = jax.random.PRNGKey(3)
  start = attacks.pgd(fn, x, y, key, epsilon=0.2, num_steps=1, step_size=0.0)
  delta = np.asarray(start - x).ravel()
  assert np.all(np.abs(delta) <= 0.2 + TOL)
  # Uniform on [-0.2, 0.2]: mean 0, variance 0.04 / 3.
  assert abs(delta.mean()) < 0.005
  np.testing.assert_allclose(delta.var(), 0.04 / 3, rtol=0.05)
  start = attacks.pgd(fn, x, y, key, epsilon=0.2, num_steps=1,
                      step_size=0.0, norm='l2')
  radius = _l2(start, x)
  d = 16
  assert np.all(radius <= 0.2 * (1 + TOL))
  # Uniform in volume: P(r <= t * eps) = t ** d, e.g. the median radius.
  np.testing.assert_allclose(np.median(radius), 0.2 * 0.5 ** (1 / d),
                             rtol=0.02)


# ---------------------------------------------------------------------------
# Known answer: a two-class linear classifier.
# ---------------------------------------------------------------------------


def _linear_problem(eps=0.1):
  key = jax.random.PRNGKey(7)
  kw, kx = jax.random.split(key)
  w = jax.random.normal(kw, (36, 2)) * 0.3
  fn = jax.tree_util.Partial(lambda w, x: x.reshape(x.shape[0], -1) @ w, w)
  x = jax.random.uniform(kx, (6, 6, 6, 1))
  x = x.at[:, :2].set(0.0).at[:, -1].set(1.0)
  y = jnp.array([0, 1, 0, 1, 0, 1])
  w_np = np.asarray(w)
  direction = np.stack([w_np[:, 1 - c] - w_np[:, c] for c in np.asarray(y)])
  x_star = np.clip(np.asarray(x) + eps * np.sign(direction).reshape(x.shape),
                   0.0, 1.0)
  return fn, x, y, x_star


def test_fgsm_matches_the_analytic_worst_case():
  fn, x, y, x_star = _linear_problem()
  x_adv = attacks.fgsm(fn, x, y, epsilon=0.1)
  chex.assert_trees_all_equal(np.asarray(x_adv), x_star)


@pytest.mark.parametrize('random_start', [True, False])
def test_pgd_margin_reaches_the_analytic_worst_case(random_start):
  fn, x, y, x_star = _linear_problem()
  x_adv = attacks.pgd(fn, x, y, jax.random.PRNGKey(0), epsilon=0.1,
                      num_steps=10, loss='margin', random_start=random_start)
  got = attacks.margin_loss(fn(x_adv), y)
  want = attacks.margin_loss(fn(jnp.asarray(x_star)), y)
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert np.all(np.asarray(want) > np.asarray(attacks.margin_loss(fn(x), y)))


def test_reference_pgd_is_deterministic_bim():
  """``pgd_gt``: no random start and step 1.25 eps / K, a plain BIM loop."""
  eps, k = 0.1, 4
  step = attacks.reference_step_size(eps, k)
  assert step == pytest.approx(1.25 * eps / k)
  assert attacks.default_step_size(eps, k) == pytest.approx(2.5 * eps / k)
  x_adv = attacks.pgd(TINY_FN, TINY_X, TINY_Y, None, epsilon=eps,
                      num_steps=k, step_size=step, random_start=False)
  want = TINY_X
  grad_fn = jax.grad(
      lambda v: jnp.sum(attacks.cross_entropy(TINY_FN(v), TINY_Y)))
  for _ in range(k):
    want = want + step * jnp.sign(grad_fn(want))
    want = jnp.clip(jnp.clip(want, TINY_X - eps, TINY_X + eps), 0.0, 1.0)
  np.testing.assert_allclose(x_adv, want, atol=1e-6)


def test_wrm_matches_the_reference_update():
  gamma, k = 1.3, 3

  def lagrangian(v):
    return (gamma * jnp.sum(attacks.cross_entropy(TINY_FN(v), TINY_Y)) -
            0.5 * jnp.sum((v - TINY_X) ** 2))

  want = TINY_X
  for t in range(k):
    want = jnp.clip(want + jax.grad(lagrangian)(want) / np.sqrt(t + 1), 0, 1)
  got = attacks.wrm(TINY_FN, TINY_X, TINY_Y, gamma=gamma, num_steps=k)
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert np.max(np.abs(got - TINY_X)) > 0.1


# ---------------------------------------------------------------------------
# Determinism, jit, recompilation, batch independence.
# ---------------------------------------------------------------------------

# Configurations shared with the tests above, so they compile once.
ATTACKS = {
    'pgd': functools.partial(attacks.pgd, epsilon=0.1, num_steps=4),
    'pgd_l2_restarts': functools.partial(attacks.pgd, epsilon=0.5,
                                         num_steps=4, norm='l2',
                                         num_restarts=3),
    'apgd': functools.partial(attacks.apgd, epsilon=0.1, num_steps=3),
    'fgsm': functools.partial(attacks.fgsm, epsilon=0.1),
    'wrm': functools.partial(attacks.wrm, gamma=1.3, num_steps=3),
}


@pytest.mark.parametrize('name', sorted(ATTACKS))
def test_same_key_same_result_and_jit_matches_eager(name):
  attack = ATTACKS[name]
  key = jax.random.PRNGKey(5)
  a = attack(TINY_FN, TINY_X, TINY_Y, key)
  b = attack(TINY_FN, TINY_X, TINY_Y, key)
  chex.assert_trees_all_equal(a, b)
  with jax.disable_jit():
    eager = attack(TINY_FN, TINY_X, TINY_Y, key)
  # WRM takes raw (unnormalised) gradient steps, which amplify rounding.
  chex.assert_trees_all_close(a, eager, atol=1e-4 if name == 'wrm' else 1e-5)


def test_attack_inside_a_jitted_caller():
  key = jax.random.PRNGKey(5)
  attack = ATTACKS['pgd']
  jitted = jax.jit(lambda x, y, k: attack(TINY_FN, x, y, k))
  chex.assert_trees_all_close(attack(TINY_FN, TINY_X, TINY_Y, key),
                              jitted(TINY_X, TINY_Y, key), atol=1e-5)


def test_random_start_depends_on_the_key():
  kw = dict(epsilon=0.1, num_steps=4)
  a = attacks.pgd(TINY_FN, TINY_X, TINY_Y, jax.random.PRNGKey(0), **kw)
  b = attacks.pgd(TINY_FN, TINY_X, TINY_Y, jax.random.PRNGKey(1), **kw)
  assert not np.allclose(a, b)
  # Without a random start the key is irrelevant.
  kw['random_start'] = False
  a = attacks.pgd(TINY_FN, TINY_X, TINY_Y, jax.random.PRNGKey(0), **kw)
  b = attacks.pgd(TINY_FN, TINY_X, TINY_Y, jax.random.PRNGKey(1), **kw)
  chex.assert_trees_all_equal(a, b)


def test_no_recompilation_across_calls():
  params = _tiny_params(jax.random.PRNGKey(11))
  traces = []

  def apply(params, x):
    traces.append(1)
    return _tiny_apply(params, x)

  static_fn = lambda x: apply(params, x)
  x2, y2 = _tiny_batch(jax.random.PRNGKey(12))
  cases = [(static_fn, attacks.pgd),
           (jax.tree_util.Partial(apply, params), attacks.pgd),
           (jax.tree_util.Partial(apply, params), attacks.apgd)]
  for fn, attack in cases:
    attack(fn, TINY_X, TINY_Y, jax.random.PRNGKey(0), epsilon=0.1,
           num_steps=3)
    n = len(traces)
    assert n > 0
    # New values, keys and epsilon; same shapes, same logits_fn object.
    attack(fn, x2, y2, jax.random.PRNGKey(1), epsilon=0.05, num_steps=3)
    attack(fn, x2, y2, jax.random.PRNGKey(2), epsilon=0.2, num_steps=3)
    assert len(traces) == n
  # A Partial over *new* parameters reuses the compiled attack as well.
  n = len(traces)
  new_params = jax.tree.map(lambda p: p * 2.0, params)
  attacks.pgd(jax.tree_util.Partial(apply, new_params), x2, y2,
              jax.random.PRNGKey(3), epsilon=0.1, num_steps=3)
  assert len(traces) == n
  # A changed static setting does compile anew.
  attacks.pgd(static_fn, x2, y2, jax.random.PRNGKey(3), epsilon=0.1,
              num_steps=4)
  assert len(traces) > n


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_steps_are_per_example(norm):
  """The gradient of the summed loss makes each example's path independent
  of the rest of the batch."""
  kw = dict(epsilon=EPS[norm], num_steps=4, norm=norm, random_start=False)
  full = attacks.pgd(TINY_FN, TINY_X, TINY_Y, None, **kw)
  half = attacks.pgd(TINY_FN, TINY_X[:3], TINY_Y[:3], None, **kw)
  np.testing.assert_allclose(full[:3], half, atol=1e-6)


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('kwargs, match', [
    (dict(epsilon=-0.1), r'epsilon=-0\.1.*\[0, inf\)'),
    (dict(num_steps=0), r'num_steps=0.*>= 1'),
    (dict(num_steps=2.0), r'num_steps=2\.0'),
    (dict(norm='l1'), r"norm='l1'.*linf"),
    (dict(loss='hinge'), r"loss='hinge'.*margin"),
    (dict(loss='dlr', targeted=True), r'dlr'),
    (dict(num_restarts=0), r'num_restarts=0.*>= 1'),
    (dict(step_size=-1.0), r'step_size=-1\.0'),
    (dict(bounds=(1.0, 0.0)), r'bounds'),
    (dict(key=None), r'key=None'),
    (dict(x=TINY_X + 0.5), r'x has values in .*accepted range'),
    (dict(x=TINY_X - 0.5), r'x has values in .*accepted range'),
    (dict(y=TINY_Y[:5]), r'y has shape \(5,\).*\(8,\)'),
    (dict(x=(TINY_X * 255).astype(jnp.uint8)), r'dtype uint8'),
])
def test_pgd_rejects_bad_input(kwargs, match):
  args = dict(logits_fn=TINY_FN, x=TINY_X, y=TINY_Y,
              key=jax.random.PRNGKey(0), epsilon=0.1, num_steps=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    attacks.pgd(**args)


class _UnhashableModel:
  __hash__ = None

  def __call__(self, x):
    return TINY_FN(x)


def test_other_attacks_reject_bad_input():
  with pytest.raises(ValueError, match='not hashable.*Partial'):
    attacks.fgsm(_UnhashableModel(), TINY_X, TINY_Y, epsilon=0.1)
  with pytest.raises(ValueError, match=r'epsilon=-1\.0'):
    attacks.fgsm(TINY_FN, TINY_X, TINY_Y, epsilon=-1.0)
  with pytest.raises(ValueError, match=r'x has values'):
    attacks.fgsm(TINY_FN, TINY_X * 2, TINY_Y, epsilon=0.1)
  with pytest.raises(ValueError, match=r'gamma=-1\.0'):
    attacks.wrm(TINY_FN, TINY_X, TINY_Y, gamma=-1.0, num_steps=2)
  with pytest.raises(ValueError, match=r'num_steps=0'):
    attacks.wrm(TINY_FN, TINY_X, TINY_Y, gamma=1.0, num_steps=0)
  with pytest.raises(ValueError, match=r'y has shape'):
    attacks.wrm(TINY_FN, TINY_X, TINY_Y[:2], gamma=1.0, num_steps=1)


def test_bounds_check_is_skipped_under_tracing():
  out = jax.jit(lambda x: attacks.fgsm(TINY_FN, x, TINY_Y, epsilon=0.1))(
      TINY_X + 0.5)
  _assert_in_box(out)


# ---------------------------------------------------------------------------
# robust_accuracy.
# ---------------------------------------------------------------------------


def test_robust_accuracy_hand_computed():
  # logits_fn is the identity: each row holds the class scores.
  x = jnp.array([[2.0, 0, 0], [0, 2, 0], [0, 0, 2], [2, 0, 0], [0.5, 0, 0.2]])
  y = jnp.array([0, 1, 2, 1, 0])
  seen_keys = []

  def push_to_class1(fn, x, y, key):
    del fn, y
    seen_keys.append(np.asarray(jax.random.key_data(key)))
    return x + jnp.array([0.0, 3, 0]) * (x[:, :1] > 1.5)

  def swap01(fn, x, y, key):
    del fn, y, key
    return x[:, jnp.array([1, 0, 2])]

  suite = {'push': push_to_class1, 'swap': swap01,
           'identity': lambda fn, x, y, key: x}
  batches = [(x[:2], y[:2]), {'image': x[2:], 'label': y[2:]}]
  key = jax.random.PRNGKey(0)
  result = attacks.robust_accuracy(lambda v: v, batches, suite, key)
  # clean  T T T F T;  push F T T T T;  swap F F T T F;  identity = clean.
  assert result == pytest.approx({'clean': 0.8, 'push': 0.8, 'swap': 0.4,
                                  'identity': 0.8, 'worst_case': 0.2})
  assert list(result) == ['clean', 'push', 'swap', 'identity', 'worst_case']
  np.testing.assert_array_equal(
      seen_keys[1],
      jax.random.key_data(attacks.attack_key(key, 1, 'push')))
  assert not np.array_equal(seen_keys[0], seen_keys[1])


def test_robust_accuracy_rejects_bad_input():
  batches = [(TINY_X, TINY_Y)]
  with pytest.raises(ValueError, match='clean'):
    attacks.robust_accuracy(TINY_FN, batches,
                            {'clean': ATTACKS['fgsm']}, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='no examples'):
    attacks.robust_accuracy(TINY_FN, [], {}, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='image'):
    attacks.robust_accuracy(TINY_FN, [{'x': TINY_X}], {},
                            jax.random.PRNGKey(0))


def test_paper_attack_suite_settings():
  suite = attacks.paper_attack_suite()
  assert sorted(suite) == ['fgsm_eps4', 'pgd_eps2', 'pgd_eps4', 'pgd_eps8',
                           'wrm_gamma1.3']
  train = suite['pgd_eps4'].keywords
  assert train['epsilon'] == pytest.approx(4 / 255)
  assert train['num_steps'] == 7 and not train['random_start']
  assert train['step_size'] == pytest.approx(1.25 * 4 / 255 / 7)
  assert suite['wrm_gamma1.3'].keywords['gamma'] == 1.3
  mnist = attacks.paper_attack_suite('mnist')
  assert mnist['pgd_eps76'].keywords['num_steps'] == 16
  with pytest.raises(ValueError, match='dataset'):
    attacks.paper_attack_suite('svhn2')


# ---------------------------------------------------------------------------
# Restarts keep a run that fools the model.
# ---------------------------------------------------------------------------


def _two_valley_logits(x):
  """A 1-D landscape whose highest-loss point is still classified correctly.

  With ``t = x - 0.5`` in ``[-0.5, 0.5]`` and ``s = 2 |t|``, the logits move
  from ``[2, 0, 0]`` (class 0, low loss) at ``t = 0`` to ``[0.2, 0, 0]``
  at ``t = -0.5`` (still class 0, cross-entropy 0.97) and to
  ``[0, 0.1, -10]`` at ``t = 0.5`` (class 1: fooled, cross-entropy 0.74).
  The cross-entropy grows with ``|t|`` on both sides, so PGD runs to the end
  its random start points to.
  """
  t = x[:, 0] - 0.5
  s = 2.0 * jnp.abs(t)
  left = jnp.stack([2.0 - 1.8 * s, 0.0 * s, 0.0 * s], axis=-1)
  right = jnp.stack([2.0 - 2.0 * s, 0.1 * s, -10.0 * s], axis=-1)
  return jnp.where((t < 0)[:, None], left, right)


def test_two_valley_landscape_is_as_described():
  ends = _two_valley_logits(jnp.array([[0.0], [1.0], [0.5]]))
  ce = np.asarray(attacks.cross_entropy(ends, jnp.zeros(3, jnp.int32)))
  assert ce[0] > ce[1] > ce[2]  # the left end has the highest loss ...
  np.testing.assert_array_equal(jnp.argmax(ends, -1), [0, 1, 0])  # ... yet
  # only the right end fools the model.


@pytest.mark.parametrize('attack', ['pgd', 'apgd'])
def test_restarts_keep_a_run_that_fools_the_model(attack):
  n, restarts = 32, 8
  x = jnp.full((n, 1), 0.5)
  y = jnp.zeros((n,), jnp.int32)
  kw = dict(epsilon=0.5, num_steps=10, num_restarts=restarts)
  if attack == 'apgd':
    kw['prefer_misclassified'] = False
  fn = getattr(attacks, attack)
  x_adv = np.asarray(fn(_two_valley_logits, x, y, jax.random.PRNGKey(0),
                        **kw))[:, 0]
  # Every run ends at one end of the segment: 1 fools the model, 0 not.
  assert np.all((np.abs(x_adv) < 1e-6) | (np.abs(x_adv - 1) < 1e-6))
  one = np.asarray(fn(_two_valley_logits, x, y, jax.random.PRNGKey(0),
                      **dict(kw, num_restarts=1)))[:, 0]
  assert 0.2 < np.mean(one > 0.5) < 0.8  # a single run goes either way
  # An example stays robust only if all 8 starts fell on the left
  # (probability 1/256 each); keeping the highest loss would keep almost
  # every example robust.
  assert np.mean(x_adv > 0.5) > 0.9


def test_select_adversarial_prefers_fooling_then_score():
  from atmc_jax.attacks import _common  # pylint: disable=g-import-not-at-top
  x_best = jnp.zeros((4, 2))
  x_new = jnp.ones((4, 2))
  best = (x_best, jnp.array([False, True, False, True]),
          jnp.array([5.0, 1.0, 1.0, 1.0]))
  new = (x_new, jnp.array([True, False, False, True]),
         jnp.array([0.0, 9.0, 2.0, 3.0]))
  x, fooled, score = _common.select_adversarial(best, new)
  np.testing.assert_array_equal(x[:, 0], [1, 0, 1, 1])
  np.testing.assert_array_equal(fooled, [True, True, False, True])
  np.testing.assert_array_equal(score, [0.0, 1.0, 2.0, 3.0])


@pytest.mark.parametrize('name', ['pgd', 'apgd', 'fgsm', 'wrm'])
def test_labels_outside_the_classes_are_rejected(name):
  kw = {'pgd': dict(epsilon=0.1, num_steps=2),
        'apgd': dict(epsilon=0.1, num_steps=2),
        'fgsm': dict(epsilon=0.1),
        'wrm': dict(gamma=1.0, num_steps=1)}[name]
  fn = getattr(attacks, name)
  key = jax.random.PRNGKey(0)
  for bad, value in ((5, 5), (-1, -1)):
    y = TINY_Y.at[3].set(bad)
    with pytest.raises(ValueError,
                       match=rf'y\[3\]={value} .*accepted range: \[0, 5\)'):
      fn(TINY_FN, TINY_X, y, key, **kw)
  # Under tracing the labels are unknown: no check, no error.
  jax.jit(lambda y: fn(TINY_FN, TINY_X, y, key, **kw))(TINY_Y.at[3].set(5))


@pytest.mark.parametrize('name', ['pgd', 'apgd', 'fgsm', 'wrm'])
def test_empty_batch_is_rejected(name):
  kw = {'pgd': dict(epsilon=0.1, num_steps=2),
        'apgd': dict(epsilon=0.1, num_steps=2),
        'fgsm': dict(epsilon=0.1),
        'wrm': dict(gamma=1.0, num_steps=1)}[name]
  with pytest.raises(ValueError, match=r'empty batch.*at least 1'):
    getattr(attacks, name)(TINY_FN, TINY_X[:0], TINY_Y[:0],
                           jax.random.PRNGKey(0), **kw)


def test_robust_accuracy_skips_empty_batches():
  suite = {'pgd': ATTACKS['pgd']}
  key = jax.random.PRNGKey(0)
  full = attacks.robust_accuracy(TINY_FN, [(TINY_X, TINY_Y)], suite, key)
  with_empty = attacks.robust_accuracy(
      TINY_FN, [(TINY_X, TINY_Y), (TINY_X[:0], TINY_Y[:0])], suite, key)
  assert with_empty == full
