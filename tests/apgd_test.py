"""Tests for Auto-PGD (``atmc_jax.attacks.apgd``) and the attack losses."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atmc_jax import attacks

TOL = 1e-6


def _apply(params, x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params['w1'] * 3.0)
  return h @ params['w2']


def _problem(batch=6, num_classes=4):
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
  params = {'w1': jax.random.normal(k1, (36, 12)) / 6.0,
            'w2': jax.random.normal(k2, (12, num_classes))}
  x = jax.random.uniform(k3, (batch, 6, 6, 1))
  x = x.at[:, 0].set(0.0).at[:, 1].set(1.0)
  y = jax.random.randint(k4, (batch,), 0, num_classes)
  return jax.tree_util.Partial(_apply, params), x, y


FN, X, Y = _problem()
EPS = {'linf': 0.1, 'l2': 0.5}


def _dist(x_adv, x, norm):
  d = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(
      len(x), -1)
  return np.abs(d).max(1) if norm == 'linf' else np.linalg.norm(d, axis=1)


# ---------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------


def test_checkpoints_follow_croce_hein():
  # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (next would be 1.05).
  assert attacks.apgd_checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
  assert attacks.apgd_checkpoints(1000) == (220, 410, 570, 700, 800, 870,
                                            930, 990)
  # ceil(p * N), duplicates merged, only iterations 1 .. N - 1.
  assert attacks.apgd_checkpoints(20) == (5, 9, 12, 14, 16, 18, 19)
  assert attacks.apgd_checkpoints(5) == (2, 3, 4)
  assert attacks.apgd_checkpoints(1) == ()
  for n in range(1, 300, 7):
    w = attacks.apgd_checkpoints(n)
    assert list(w) == sorted(set(w))
    assert all(1 <= v <= n - 1 for v in w)
  with pytest.raises(ValueError, match='num_steps=0'):
    attacks.apgd_checkpoints(0)


# ---------------------------------------------------------------------------
# A literal transcription of Algorithm 1, one example at a time.
# ---------------------------------------------------------------------------


def _reference_apgd(fn, x, y, eps, num_steps, rho=0.75, alpha=0.75):
  """Returns (x_max per example, whether any step size was halved)."""
  w = (0,) + attacks.apgd_checkpoints(num_steps)
  f = jax.jit(lambda v, t: attacks.cross_entropy(fn(v[None]), t[None])[0])
  grad = jax.jit(jax.grad(f))

  def proj(v, x0):
    return jnp.clip(jnp.clip(v, x0 - eps, x0 + eps), 0.0, 1.0)

  out, halved = [], False
  for x0, t in zip(x, y):
    eta = 2 * eps
    xs = [x0, proj(x0 + eta * jnp.sign(grad(x0, t)), x0)]
    fs = [float(f(xs[0], t)), float(f(xs[1], t))]
    f_max = max(fs)
    x_max = xs[0] if f_max == fs[0] else xs[1]
    f_max_at = {0: f_max}
    eta_at = {0: eta}
    for k in range(1, num_steps):
      z = proj(xs[k] + eta * jnp.sign(grad(xs[k], t)), x0)
      new = proj(xs[k] + alpha * (z - xs[k]) + (1 - alpha) *
                 (xs[k] - xs[k - 1]), x0)
      f_new = float(f(new, t))
      if f_new > f_max:
        x_max, f_max = new, f_new
      f_max_at[k] = f_max
      eta_at[k] = eta
      if k in w:
        j = w.index(k)
        increases = sum(fs[i + 1] > fs[i] for i in range(w[j - 1], k))
        condition1 = increases < rho * (k - w[j - 1])
        condition2 = (eta_at[w[j - 1]] == eta_at[k] and
                      f_max_at[w[j - 1]] == f_max)
        if condition1 or condition2:
          eta, new, f_new = eta / 2, x_max, f_max
          halved = True
      xs.append(new)
      fs.append(f_new)
    out.append(x_max)
  return jnp.stack(out), halved


def test_matches_a_literal_transcription_of_algorithm_1():
  num_steps = 20
  got = attacks.apgd(FN, X, Y, None, epsilon=0.1, num_steps=num_steps,
                     random_start=False, prefer_misclassified=False)
  want, halved = _reference_apgd(FN, X, Y, 0.1, num_steps)
  assert halved  # the schedule was exercised
  np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('norm, loss', [('linf', 'ce'), ('l2', 'dlr')])
def test_stays_in_ball_and_bounds_and_beats_the_start(norm, loss):
  eps = EPS[norm]
  x_adv = attacks.apgd(FN, X, Y, jax.random.PRNGKey(1), epsilon=eps,
                       num_steps=10, norm=norm, loss=loss,
                       prefer_misclassified=False)
  chex.assert_equal_shape([x_adv, X])
  assert np.min(x_adv) >= 0.0 and np.max(x_adv) <= 1.0
  assert np.all(_dist(x_adv, X, norm) <= eps * (1 + TOL) + TOL)
  loss_fn = {'ce': attacks.cross_entropy, 'dlr': attacks.dlr_loss}[loss]
  # The best iterate beats the clean point on every example here.
  assert np.all(np.asarray(loss_fn(FN(x_adv), Y)) >=
                np.asarray(loss_fn(FN(X), Y)) - 1e-6)


def test_best_point_never_worse_than_the_start():
  x_adv = attacks.apgd(FN, X, Y, None, epsilon=0.1, num_steps=10,
                       random_start=False, prefer_misclassified=False)
  start = np.asarray(attacks.cross_entropy(FN(X), Y))
  final = np.asarray(attacks.cross_entropy(FN(x_adv), Y))
  assert np.all(final >= start)
  assert np.mean(final > start + 1e-3) > 0.5


def test_prefer_misclassified_never_helps_the_model():
  kw = dict(epsilon=0.05, num_steps=10)
  key = jax.random.PRNGKey(2)
  best = attacks.apgd(FN, X, Y, key, prefer_misclassified=False, **kw)
  fooled = attacks.apgd(FN, X, Y, key, prefer_misclassified=True, **kw)
  assert np.all(np.asarray(_dist(fooled, X, 'linf')) <= 0.05 + TOL)
  correct_best = np.asarray(jnp.argmax(FN(best), -1) == Y)
  correct_fooled = np.asarray(jnp.argmax(FN(fooled), -1) == Y)
  assert np.all(correct_fooled <= correct_best)


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_reaches_the_analytic_worst_case_of_a_linear_model(norm):
  kw_, kx = jax.random.split(jax.random.PRNGKey(3))
  w = jax.random.normal(kw_, (36, 2))
  fn = jax.tree_util.Partial(lambda w, x: x.reshape(x.shape[0], -1) @ w, w)
  # Interior points: the box never binds for L2, so the optimum is analytic.
  x = jax.random.uniform(kx, (4, 6, 6, 1), minval=0.3, maxval=0.7)
  y = jnp.array([0, 1, 1, 0])
  eps = EPS[norm] if norm == 'linf' else 0.2
  d = np.stack([np.asarray(w[:, 1 - c] - w[:, c]) for c in np.asarray(y)])
  if norm == 'linf':
    delta = eps * np.sign(d)
  else:
    delta = eps * d / np.linalg.norm(d, axis=1, keepdims=True)
  want = attacks.margin_loss(fn(x + delta.reshape(x.shape)), y)
  # Signed L-inf steps reach the corner from any start; normalised L2 steps
  # reach the optimum exactly only along d, i.e. from x itself.
  for attack in (attacks.apgd, attacks.pgd):
    x_adv = attack(fn, x, y, jax.random.PRNGKey(0), epsilon=eps, num_steps=8,
                   norm=norm, loss='margin', random_start=norm == 'linf')
    np.testing.assert_allclose(attacks.margin_loss(fn(x_adv), y), want,
                               atol=1e-4)


def test_targeted_apgd_raises_the_target_logit_margin():
  target = (Y + 1) % 4
  x_adv = attacks.apgd(FN, X, target, jax.random.PRNGKey(0), epsilon=0.1,
                       num_steps=10, targeted=True, loss='margin')
  before = np.asarray(attacks.margin_loss(FN(X), target))
  after = np.asarray(attacks.margin_loss(FN(x_adv), target))
  assert np.all(after <= before)
  assert np.mean(after < before - 1e-3) > 0.5


def test_same_key_same_result():
  kw = dict(epsilon=0.1, num_steps=10)
  a = attacks.apgd(FN, X, Y, jax.random.PRNGKey(5), **kw)
  b = attacks.apgd(FN, X, Y, jax.random.PRNGKey(5), **kw)
  chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize('kwargs, match', [
    (dict(epsilon=-1.0), r'epsilon=-1\.0'),
    (dict(num_steps=0), r'num_steps=0'),
    (dict(norm='l0'), r"norm='l0'"),
    (dict(loss='kl'), r"loss='kl'"),
    (dict(loss='dlr', targeted=True), r'dlr'),
    (dict(rho=1.5), r'rho=1\.5.*\[0, 1\]'),
    (dict(momentum=-0.1), r'momentum=-0\.1.*\[0, 1\]'),
    (dict(key=None), r'key=None'),
    (dict(y=Y[:2]), r'y has shape'),
    (dict(x=X + 1.0), r'x has values'),
])
def test_rejects_bad_input(kwargs, match):
  args = dict(logits_fn=FN, x=X, y=Y, key=jax.random.PRNGKey(0), epsilon=0.1)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    attacks.apgd(**args)


# ---------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------


def test_losses_by_hand():
  z = jnp.array([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]])
  y = jnp.array([0, 1])
  np.testing.assert_allclose(attacks.margin_loss(z, y), [-2.0, 3.0])
  # DLR: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3).
  np.testing.assert_allclose(attacks.dlr_loss(z, y), [-2.0 / 3.0, 3.0 / 4.0],
                             rtol=1e-6)
  logp = jax.nn.log_softmax(z)
  np.testing.assert_allclose(attacks.cross_entropy(z, y),
                             [-logp[0, 0], -logp[1, 1]], rtol=1e-6)


def test_dlr_is_shift_and_scale_invariant():
  z = jax.random.normal(jax.random.PRNGKey(0), (16, 10))
  y = jnp.arange(16) % 10
  np.testing.assert_allclose(attacks.dlr_loss(3.0 * z + 7.0, y),
                             attacks.dlr_loss(z, y), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='at least 3 classes'):
    attacks.dlr_loss(z[:, :2], y % 2)
