"""Tests for APGD-T, FAB-T, Square and AutoAttack (``atmc_jax.attacks``)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atmc_jax import attacks
from atmc_jax.attacks import _fab

TOL = 1e-6
EPS = 0.1


def _apply(params, x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params['w1'] * 3.0)
  return h @ params['w2']


def _problem(batch=8, num_classes=6):
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
  params = {'w1': jax.random.normal(k1, (36, 12)) / 6.0,
            'w2': jax.random.normal(k2, (12, num_classes))}
  x = jax.random.uniform(k3, (batch, 6, 6, 1))
  x = x.at[:, 0].set(0.0).at[:, 1].set(1.0)
  fn = jax.tree_util.Partial(_apply, params)
  y = jnp.argmax(fn(x), -1)  # all correct clean
  y = y.at[0].set((y[0] + 1) % num_classes)  # one misclassified clean
  return fn, x, y


FN, X, Y = _problem()

# Few iterations: the properties below do not need the standard settings.
SMALL = {
    'apgd_targeted': lambda fn, x, y, key, eps=EPS: attacks.apgd_targeted(
        fn, x, y, key, epsilon=eps, num_steps=5, num_targets=3),
    # This model's closest adversarial points lie at L-inf 0.13 to 0.4.
    'fab': lambda fn, x, y, key, eps=0.2: attacks.fab(
        fn, x, y, key, epsilon=eps, num_steps=10, num_targets=3),
    'square': lambda fn, x, y, key, eps=EPS: attacks.square(
        fn, x, y, key, epsilon=eps, num_queries=30),
}


def _linf(x_adv, x):
  return np.max(np.abs(np.asarray(x_adv, np.float64) -
                       np.asarray(x, np.float64)).reshape(len(x), -1), axis=1)


def _acc(fn, x, y):
  return float(jnp.mean(jnp.argmax(fn(x), -1) == y))


# ---------------------------------------------------------------------------
# Feasibility, determinism, jit.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(SMALL))
def test_stays_in_ball_and_bounds_and_is_deterministic(name):
  key = jax.random.PRNGKey(1)
  a = SMALL[name](FN, X, Y, key)
  eps = 0.2 if name == 'fab' else EPS
  chex.assert_equal_shape([a, X])
  assert a.dtype == X.dtype
  assert np.min(a) >= 0.0 and np.max(a) <= 1.0
  assert np.all(_linf(a, X) <= eps * (1 + TOL) + TOL)
  chex.assert_trees_all_equal(a, SMALL[name](FN, X, Y, key))
  # The attack does something: the margin of the true class drops.
  before = np.asarray(attacks.margin_loss(FN(X), Y))
  after = np.asarray(attacks.margin_loss(FN(a), Y))
  assert np.mean(after) > np.mean(before)
  # An example misclassified clean stays misclassified.
  assert int(jnp.argmax(FN(a[:1]), -1)[0]) != int(Y[0])


@pytest.mark.parametrize('name', sorted(SMALL))
def test_jit_matches_eager(name):
  key = jax.random.PRNGKey(2)
  x, y = X[:3], Y[:3]
  a = SMALL[name](FN, x, y, key)
  with jax.disable_jit():
    eager = SMALL[name](FN, x, y, key)
  chex.assert_trees_all_close(a, eager, atol=1e-5)
  jitted = jax.jit(lambda x, y, k: SMALL[name](FN, x, y, k))(x, y, key)
  chex.assert_trees_all_close(a, jitted, atol=1e-5)


def test_randomised_attacks_depend_on_the_key():
  for name in ('apgd_targeted', 'square'):
    a = SMALL[name](FN, X, Y, jax.random.PRNGKey(0))
    b = SMALL[name](FN, X, Y, jax.random.PRNGKey(1))
    assert not np.allclose(a, b), name


# ---------------------------------------------------------------------------
# Targeted DLR loss and APGD-T.
# ---------------------------------------------------------------------------


def test_dlr_targeted_by_hand_and_invariance():
  z = jnp.array([[4.0, 3.0, 1.0, 0.0, -2.0]])
  # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = -(4 - 1) / (4 - 0.5).
  np.testing.assert_allclose(
      attacks.dlr_targeted_loss(z, jnp.array([0]), jnp.array([2])),
      [-3.0 / 3.5], rtol=1e-6)
  zz = jax.random.normal(jax.random.PRNGKey(0), (8, 10))
  y, t = jnp.arange(8), (jnp.arange(8) + 3) % 10
  np.testing.assert_allclose(attacks.dlr_targeted_loss(2 * zz - 5, y, t),
                             attacks.dlr_targeted_loss(zz, y, t), rtol=1e-4,
                             atol=1e-5)
  with pytest.raises(ValueError, match='at least 4 classes'):
    attacks.dlr_targeted_loss(z[:, :3], jnp.array([0]), jnp.array([1]))


def _two_target_logits(x):
  """Class 0 wins clean; only class 3, the *lowest* clean rival, is
  reachable: ``z = [1, 0.5, 0.4, 0.3 + 20 (x - 0.5)]`` per example."""
  v = x.reshape(x.shape[0], -1)[:, 0]
  zeros = jnp.zeros_like(v)
  return jnp.stack([zeros + 1.0, zeros + 0.5, zeros + 0.4,
                    0.3 + 20.0 * (v - 0.5)], axis=-1)


def test_apgd_t_runs_the_top_targets_in_order():
  x = jnp.full((4, 1), 0.5)
  y = jnp.zeros((4,), jnp.int32)
  key = jax.random.PRNGKey(0)
  # Targets by clean logit: 1, 2, 3. Two targets miss class 3.
  # No random start: a random point of the ball may already be adversarial.
  two = attacks.apgd_targeted(_two_target_logits, x, y, key, epsilon=0.1,
                              num_steps=5, num_targets=2, random_start=False)
  assert _acc(_two_target_logits, two, y) == 1.0
  # Three (and 9, capped at K - 1 = 3) reach it.
  for n in (3, 9):
    adv = attacks.apgd_targeted(_two_target_logits, x, y, key, epsilon=0.1,
                                num_steps=5, num_targets=n,
                                random_start=False)
    assert _acc(_two_target_logits, adv, y) == 0.0


# ---------------------------------------------------------------------------
# FAB-T.
# ---------------------------------------------------------------------------


def test_projection_onto_hyperplane_and_box_is_minimal():
  rng = np.random.default_rng(0)
  n, d = 64, 12
  t = rng.uniform(0, 1, (n, d)).astype(np.float32)
  w = rng.normal(0, 1, (n, d)).astype(np.float32)
  w[:, 0] = 0.0  # a coordinate the hyperplane ignores
  b = (np.sum(w * t, 1) + rng.normal(0, 1.5, n)).astype(np.float32)
  step = np.asarray(_fab.project_linf_hyperplane_box(
      jnp.asarray(t), jnp.asarray(w), jnp.asarray(b), (0.0, 1.0)))
  v = t + step
  assert np.all(v >= -1e-6) and np.all(v <= 1 + 1e-6)
  assert np.all(step[:, 0] == 0)
  # Reachable rows land on the hyperplane; the others at the box corner.
  gap = b - np.sum(w * t, 1)
  room = np.where(w * np.sign(gap)[:, None] > 0, 1 - t, t)
  reach = np.sum(np.abs(w) * room, 1) >= np.abs(gap)
  assert 0 < reach.sum() < n
  np.testing.assert_allclose(np.sum(w * v, 1)[reach], b[reach], atol=1e-4)
  # Minimal: at 0.999 of the step's L-inf norm the box-clipped best move
  # falls short of the hyperplane.
  lam = np.abs(step).max(1) * 0.999
  best = np.sum(np.abs(w) * np.minimum(lam[:, None], room), 1)
  assert np.all(best[reach] < np.abs(gap[reach]))


def _linear_two_class():
  kw, kx = jax.random.split(jax.random.PRNGKey(3))
  w = jax.random.normal(kw, (36, 2))
  bias = jnp.array([0.3, -0.3])
  fn = jax.tree_util.Partial(
      lambda w, x: x.reshape(x.shape[0], -1) @ w + bias, w)
  # Interior points, so the box does not bind at the minimum.
  x = jax.random.uniform(kx, (6, 6, 6, 1), minval=0.4, maxval=0.6)
  y = jnp.argmax(fn(x), -1)
  return fn, x, y, np.asarray(w), np.asarray(bias)


def test_fab_finds_the_minimal_linf_perturbation_of_a_linear_model():
  fn, x, y, w, bias = _linear_two_class()
  v = np.asarray(x).reshape(len(x), -1)
  f = v @ (w[:, 1] - w[:, 0]) + bias[1] - bias[0]
  d_min = np.abs(f) / np.abs(w[:, 1] - w[:, 0]).sum()
  assert np.all(d_min < 0.35)  # the box never binds
  x_fab = attacks.fab(fn, x, y, epsilon=1.0, num_steps=20)
  dist = _linf(x_fab, x)
  assert _acc(fn, x_fab, y) == 0.0
  assert np.all(dist >= d_min * (1 - 1e-4))
  np.testing.assert_allclose(dist, d_min, rtol=0.02)
  # PGD at a radius that surely suffices uses (nearly) all of it.
  x_pgd = attacks.pgd(fn, x, y, jax.random.PRNGKey(0), epsilon=0.35,
                      num_steps=10, loss='margin')
  assert _acc(fn, x_pgd, y) == 0.0
  assert np.all(dist < _linf(x_pgd, x))
  # Below the minimum FAB returns the clean points.
  x_small = attacks.fab(fn, x, y, epsilon=float(d_min.min()) * 0.9,
                        num_steps=20)
  chex.assert_trees_all_equal(x_small, x)


# ---------------------------------------------------------------------------
# Square: score-based, no gradients.
# ---------------------------------------------------------------------------


@jax.custom_vjp
def _no_gradient(x):
  return x


def _no_gradient_fwd(x):
  return x, None


def _no_gradient_bwd(_, g):
  raise AssertionError('a gradient of logits_fn was requested')


_no_gradient.defvjp(_no_gradient_fwd, _no_gradient_bwd)


def _count_logits(x):
  """Class 1 wins iff more than 60% of the pixels are >= 0.75.

  A step function: its gradient is zero everywhere (and differentiating the
  ``_no_gradient`` variant raises). From ``x = 0.5`` with ``eps = 0.3`` the
  adversarial points are the images with most pixels near ``x + eps``: a
  uniform sample of the ball has about 8% of its pixels there.
  """
  frac = jnp.mean((x >= 0.75).astype(jnp.float32), axis=(1, 2, 3))
  return jnp.stack([jnp.zeros_like(frac), frac - 0.6], axis=-1)


def _count_logits_no_grad(x):
  # The zero term puts _no_gradient on a differentiable path.
  probe = 0.0 * jnp.mean(_no_gradient(x), axis=(1, 2, 3))[:, None]
  return _count_logits(x) + probe


def test_square_finds_what_gradient_attacks_cannot():
  x = jnp.full((6, 8, 8, 1), 0.5)
  y = jnp.zeros((6,), jnp.int32)
  eps, key = 0.3, jax.random.PRNGKey(0)
  adv = attacks.square(_count_logits_no_grad, x, y, key, epsilon=eps,
                       num_queries=300)
  assert np.all(_linf(adv, x) <= eps + TOL)
  assert _acc(_count_logits, adv, y) == 0.0
  for attack in (attacks.pgd, attacks.apgd):
    x_adv = attack(_count_logits, x, y, key, epsilon=eps, num_steps=10)
    assert _acc(_count_logits, x_adv, y) == 1.0
  with pytest.raises(AssertionError, match='gradient'):
    attacks.pgd(_count_logits_no_grad, x, y, key, epsilon=eps, num_steps=1)


def test_square_schedule():
  p = [float(attacks._square.square_p(i, 0.8))
       for i in (0, 10, 11, 50, 51, 200, 201, 8000, 8001)]
  np.testing.assert_allclose(p, [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1,
                                 0.8 / 256, 0.8 / 512])


# ---------------------------------------------------------------------------
# AutoAttack.
# ---------------------------------------------------------------------------


def test_autoattack_custom_runs_in_order_on_robust_points():
  names = ['apgd-ce', 'fab-t']
  res = attacks.autoattack(FN, X, Y, jax.random.PRNGKey(0), epsilon=EPS,
                           version='custom', attacks=names)
  assert list(res.accuracy) == ['clean', *names, 'autoattack']
  acc = [res.accuracy[k] for k in res.accuracy]
  assert all(a >= b for a, b in zip(acc, acc[1:]))  # cumulative
  assert res.accuracy['clean'] == pytest.approx(7 / 8)
  assert np.all(_linf(res.x_adv, X) <= EPS * (1 + TOL) + TOL)
  assert np.min(res.x_adv) >= 0.0 and np.max(res.x_adv) <= 1.0
  correct = np.asarray(jnp.argmax(FN(res.x_adv), -1) == Y)
  np.testing.assert_array_equal(correct, res.robust)
  assert res.accuracy['autoattack'] == pytest.approx(correct.mean())
  # Robust points are returned unchanged.
  np.testing.assert_array_equal(np.asarray(res.x_adv)[res.robust],
                                np.asarray(X)[res.robust])


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(version='rand'), NotImplementedError, 'rand'),
    (dict(version='plus'), ValueError, r"version='plus'"),
    (dict(version='custom'), ValueError, r'attacks=None'),
    (dict(version='custom', attacks=['cw']), ValueError, r"attack='cw'"),
    (dict(attacks=['square']), ValueError, r'version="standard"'),
    (dict(norm='l2'), ValueError, r"norm='l2'.*fab-t"),
    (dict(norm='l1'), ValueError, r"norm='l1'"),
    (dict(epsilon=-0.1), ValueError, r'epsilon=-0\.1'),
    (dict(y=Y.at[2].set(6)), ValueError, r'y\[2\]=6.*\[0, 6\)'),
    (dict(x=X[:0], y=Y[:0]), ValueError, 'empty batch'),
])
def test_autoattack_rejects_bad_input(kwargs, error, match):
  args = dict(logits_fn=FN, x=X, y=Y, key=jax.random.PRNGKey(0), epsilon=EPS)
  args.update(kwargs)
  with pytest.raises(error, match=match):
    attacks.autoattack(**args)


def test_new_attacks_reject_bad_input():
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match=r"norm='l2'.*linf"):
    attacks.fab(FN, X, Y, epsilon=EPS, norm='l2')
  with pytest.raises(ValueError, match=r"norm='l2'.*linf"):
    attacks.square(FN, X, Y, key, epsilon=EPS, norm='l2')
  with pytest.raises(ValueError, match=r'p_init=1\.5.*\(0, 1\]'):
    attacks.square(FN, X, Y, key, epsilon=EPS, p_init=1.5)
  with pytest.raises(ValueError, match=r'images \(B, H, W, C\)'):
    attacks.square(FN, X.reshape(8, 36), Y, key, epsilon=EPS)
  with pytest.raises(ValueError, match=r'beta=0\.0.*\(0\.0, 1\.0\]'):
    attacks.fab(FN, X, Y, epsilon=EPS, beta=0.0)
  with pytest.raises(ValueError, match=r'num_targets=0'):
    attacks.apgd_targeted(FN, X, Y, key, epsilon=EPS, num_targets=0)
  with pytest.raises(ValueError, match='at least 4 classes'):
    fn3 = jax.tree_util.Partial(lambda x: _apply(
        {'w1': jnp.ones((36, 2)), 'w2': jnp.ones((2, 3))}, x))
    attacks.apgd_targeted(fn3, X, Y % 3, key, epsilon=EPS)
  for name in sorted(SMALL):
    with pytest.raises(ValueError, match=r'y\[1\]=-1'):
      SMALL[name](FN, X, Y.at[1].set(-1), key)
    with pytest.raises(ValueError, match='empty batch'):
      SMALL[name](FN, X[:0], Y[:0], key)
