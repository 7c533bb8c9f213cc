"""Attack tests on a small MLP trained once on Fashion-MNIST.

Without the Debian Fashion-MNIST files the model trains on synthetic
class-prototype images instead.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from atmc_jax import attacks
from atmc_jax import data

TOL = 1e-6


def _assert_in_box(x_adv, bounds=(0.0, 1.0)):
  assert np.min(x_adv) >= bounds[0] and np.max(x_adv) <= bounds[1]


def _assert_in_linf_ball(x_adv, x, eps):
  dist = np.max(np.abs(np.asarray(x_adv) - np.asarray(x)).reshape(
      len(x), -1), axis=1)
  assert np.all(dist <= eps * (1 + TOL) + TOL), dist.max()


# ---------------------------------------------------------------------------
# A small model trained once on Fashion-MNIST (synthetic data without it).
# ---------------------------------------------------------------------------


def _load_data(num_train=2048, num_test=256):
  data_dir = data.find_idx_dir()
  if data_dir is not None:
    x, y = data.load_idx_split(data_dir, 'train')
    xt, yt = data.load_idx_split(data_dir, 'test')
    return (x[:num_train].astype(np.float32) / 255, y[:num_train],
            xt[:num_test].astype(np.float32) / 255, yt[:num_test])
  rng = np.random.default_rng(0)
  protos = rng.uniform(0, 1, (10, 28, 28, 1)).astype(np.float32)

  def sample(n):
    y = rng.integers(0, 10, n).astype(np.int32)
    x = np.clip(protos[y] + rng.normal(0, 0.6, (n, 28, 28, 1)), 0, 1)
    return x.astype(np.float32), y

  return (*sample(num_train), *sample(num_test))


def _mlp_apply(params, x):
  h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2']


@pytest.fixture(scope='module')
def trained():
  x, y, xt, yt = _load_data()
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {'w1': jax.random.normal(k1, (784, 64)) * np.sqrt(2 / 784),
            'b1': jnp.zeros(64),
            'w2': jax.random.normal(k2, (64, 10)) / 8.0,
            'b2': jnp.zeros(10)}
  tx = optax.adam(2e-3)

  @jax.jit
  def train(params, x, y):
    def step(carry, key):
      params, opt_state = carry
      idx = jax.random.randint(key, (128,), 0, x.shape[0])
      grads = jax.grad(lambda p: jnp.mean(
          attacks.cross_entropy(_mlp_apply(p, x[idx]), y[idx])))(params)
      updates, opt_state = tx.update(grads, opt_state)
      return (optax.apply_updates(params, updates), opt_state), None

    keys = jax.random.split(jax.random.PRNGKey(1), 300)
    return jax.lax.scan(step, (params, tx.init(params)), keys)[0][0]

  params = train(params, x, y)
  fn = jax.tree_util.Partial(_mlp_apply, params)
  xt, yt = jnp.asarray(xt), jnp.asarray(yt)
  accuracy = float(jnp.mean(jnp.argmax(fn(xt), -1) == yt))
  assert accuracy > 0.7
  return fn, xt, yt


def _acc(fn, x, y):
  return float(jnp.mean(jnp.argmax(fn(x), -1) == y))


def _loss(fn, x, y):
  return attacks.cross_entropy(fn(x), y)


TRAINED_EPS = 0.05


def test_trained_attack_strength_ordering(trained):
  fn, x, y = trained
  key = jax.random.PRNGKey(0)
  x_fgsm = attacks.fgsm(fn, x, y, epsilon=TRAINED_EPS)
  x_pgd5 = attacks.pgd(fn, x, y, key, epsilon=TRAINED_EPS, num_steps=5)
  x_pgd20 = attacks.pgd(fn, x, y, key, epsilon=TRAINED_EPS, num_steps=20)
  x_apgd = attacks.apgd(fn, x, y, key, epsilon=TRAINED_EPS, num_steps=100)
  for x_adv in (x_fgsm, x_pgd5, x_pgd20, x_apgd):
    _assert_in_box(x_adv)
    _assert_in_linf_ball(x_adv, x, TRAINED_EPS)
  clean = float(jnp.mean(_loss(fn, x, y)))
  fgsm = float(jnp.mean(_loss(fn, x_fgsm, y)))
  pgd20 = float(jnp.mean(_loss(fn, x_pgd20, y)))
  assert pgd20 >= fgsm >= clean
  assert fgsm > clean + 0.5
  acc = {name: _acc(fn, v, y) for name, v in
         (('clean', x), ('pgd5', x_pgd5), ('pgd20', x_pgd20),
          ('apgd100', x_apgd))}
  assert acc['pgd20'] <= acc['pgd5'] < acc['clean']
  assert acc['apgd100'] <= acc['pgd20']


def test_trained_restarts_keep_the_worst_case(trained):
  fn, x, y = trained
  key = jax.random.PRNGKey(4)
  kw = dict(epsilon=TRAINED_EPS, num_steps=5, loss='margin')
  one = attacks.pgd(fn, x, y, key, **kw)
  four = attacks.pgd(fn, x, y, key, num_restarts=4, **kw)
  _assert_in_linf_ball(four, x, TRAINED_EPS)
  loss_one = np.asarray(attacks.margin_loss(fn(one), y))
  loss_four = np.asarray(attacks.margin_loss(fn(four), y))
  assert np.all(loss_four >= loss_one - 1e-5)
  assert np.mean(loss_four > loss_one + 1e-5) > 0.1


def test_trained_targeted_raises_target_probability(trained):
  fn, x, y = trained
  target = (y + 1) % 10
  before = jax.nn.softmax(fn(x))[jnp.arange(len(y)), target]
  x_adv = attacks.pgd(fn, x, target, jax.random.PRNGKey(0),
                      epsilon=TRAINED_EPS, num_steps=10, targeted=True)
  _assert_in_linf_ball(x_adv, x, TRAINED_EPS)
  after = jax.nn.softmax(fn(x_adv))[jnp.arange(len(y)), target]
  assert float(jnp.mean(after)) > 5 * float(jnp.mean(before))
  assert float(jnp.mean(after > before)) > 0.95
  # The targeted attack makes the target the prediction more often.
  assert _acc(fn, x_adv, target) > _acc(fn, x, target)


def test_trained_robust_accuracy_worst_case(trained):
  fn, x, y = trained
  suite = {
      'fgsm': functools.partial(attacks.fgsm, epsilon=TRAINED_EPS),
      'pgd': functools.partial(attacks.pgd, epsilon=TRAINED_EPS,
                               num_steps=5),
      'wrm': functools.partial(attacks.wrm, gamma=1.3, num_steps=7),
  }
  batches = [(x, y)]
  result = attacks.robust_accuracy(fn, batches, suite, jax.random.PRNGKey(0))
  others = [v for k, v in result.items() if k != 'worst_case']
  assert result['worst_case'] <= min(others)
  assert result['clean'] == pytest.approx(_acc(fn, x, y))
  assert result['fgsm'] == pytest.approx(
      _acc(fn, attacks.fgsm(fn, x, y, epsilon=TRAINED_EPS), y))
  assert 0.0 < result['pgd'] < result['clean']


def test_trained_autoattack_is_the_strongest(trained):
  """Standard AutoAttack <= min(PGD-20, APGD-CE); APGD-T <= APGD-CE."""
  fn, x, y = trained
  x, y = x[:64], y[:64]
  key = jax.random.PRNGKey(0)
  res = attacks.autoattack(fn, x, y, key, epsilon=TRAINED_EPS)
  _assert_in_box(res.x_adv)
  _assert_in_linf_ball(res.x_adv, x, TRAINED_EPS)
  assert res.accuracy['autoattack'] == pytest.approx(_acc(fn, res.x_adv, y))
  x_pgd20 = attacks.pgd(fn, x, y, key, epsilon=TRAINED_EPS, num_steps=20)
  x_ce = attacks.apgd(fn, x, y, key, epsilon=TRAINED_EPS, num_steps=100)
  x_t = attacks.apgd_targeted(fn, x, y, key, epsilon=TRAINED_EPS)
  _assert_in_linf_ball(x_t, x, TRAINED_EPS)
  acc_pgd20, acc_ce = _acc(fn, x_pgd20, y), _acc(fn, x_ce, y)
  assert res.accuracy['autoattack'] <= min(acc_pgd20, acc_ce)
  assert res.accuracy['autoattack'] < res.accuracy['clean']
  assert _acc(fn, x_t, y) <= acc_ce
