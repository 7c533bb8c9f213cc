"""Speed of the LeNet forward/backward and PGD-7 step per conv implementation.

Measures, on Caffe LeNet at batch 256 (28x28x1, 10 classes):

* ``lenet/fwd_bwd_b256/<variant>``: one jitted cross-entropy loss and its
  weight gradient;
* ``lenet/pgd7_b256/<variant>``: a PGD-7-like adversarial step, i.e. 7 input
  gradients with signed steps and projection inside ``lax.fori_loop``
  (epsilon 0.3, step 0.1), then the weight gradient on the adversarial batch.

Variants: ``im2col`` and ``lax`` (``CaffeLeNet(conv_impl=...)``: with
``im2col`` each conv and its max pooling run as the fused space-to-depth op
:func:`atmc_jax.models.conv2d_max_pool`, with ``lax`` as XLA's convolution
and ``lax.reduce_window``), ``unfused_im2col`` (the im2col convolution
followed by the reshape-based :func:`atmc_jax.models.max_pool_2x2`, i.e.
the library before the fused op), ``flax_defaults`` (``nn.Conv`` +
``nn.max_pool`` + ``nn.Dense`` on the same params: what a straightforward
Flax LeNet does), and ``factorized_im2col`` / ``factorized_lax`` (the U·V+C
model on the factorized params).

Usage: ``python -m benchmarks.models [--quick]``; ``run(quick)`` returns
``{name: {"median_s", "min_s", "max_s", "n", ...}}``.
"""

import sys
import time

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import optax

from atmc_jax import models

BATCH = 256
EPSILON = 0.3
STEP_SIZE = 0.1
PGD_STEPS = 7


class _FlaxDefaultsLeNet(nn.Module):
  """Caffe LeNet written with stock Flax layers (same param tree)."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.Conv(20, (5, 5), padding='VALID', name='conv1')(x)
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Conv(50, (5, 5), padding='VALID', name='conv2')(x)
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(500, name='fc1')(x))
    return nn.Dense(10, name='fc2')(x)


def _steps(model):
  """Jitted (loss + weight grad) and (PGD-7 + weight grad) for ``model``."""

  def loss_fn(params, x, y):
    logits = model.apply({'params': params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def fwd_bwd(params, x, y):
    return jax.value_and_grad(loss_fn)(params, x, y)

  @jax.jit
  def pgd_step(params, x, y):
    input_grad = jax.grad(loss_fn, argnums=1)

    def body(_, x_adv):
      g = input_grad(params, x_adv, y)
      x_adv = x_adv + STEP_SIZE * jnp.sign(g)
      x_adv = jnp.clip(x_adv, x - EPSILON, x + EPSILON)
      return jnp.clip(x_adv, 0.0, 1.0)

    x_adv = lax.fori_loop(0, PGD_STEPS, body, x)
    return jax.value_and_grad(loss_fn)(params, x_adv, y)

  return fwd_bwd, pgd_step


def _time(fn, *args, n):
  jax.block_until_ready(fn(*args))  # Compile + warm up.
  times = []
  for _ in range(n):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  times.sort()
  return {'median_s': times[len(times) // 2], 'min_s': times[0],
          'max_s': times[-1], 'n': n}


class _UnfusedLeNet(nn.Module):
  """Caffe LeNet with im2col convs and a separate reshape max-pool."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    conv = lambda f, name: models.Conv(f, 5, padding='VALID',
                                       conv_impl='im2col', name=name)
    x = models.max_pool_2x2(conv(20, 'conv1')(x))
    x = models.max_pool_2x2(conv(50, 'conv2')(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(models.Dense(500, name='fc1')(x))
    return models.Dense(10, name='fc2')(x)


def run(quick: bool = False) -> dict:
  """Times every variant; see the module docstring for the names."""
  n = 3 if quick else 10
  key_x, key_y, key_p = jax.random.split(jax.random.key(0), 3)
  x = jax.random.uniform(key_x, (BATCH, 28, 28, 1))
  y = jax.random.randint(key_y, (BATCH,), 0, 10)
  dense_params = jax.jit(models.CaffeLeNet().init)(key_p, x[:1])['params']
  fact_params = models.factorize(dense_params)
  variants = {
      'im2col': (models.CaffeLeNet(conv_impl='im2col'), dense_params),
      'lax': (models.CaffeLeNet(conv_impl='lax'), dense_params),
      'unfused_im2col': (_UnfusedLeNet(), dense_params),
      'flax_defaults': (_FlaxDefaultsLeNet(), dense_params),
      'factorized_im2col': (
          models.CaffeLeNet(factorized=True, conv_impl='im2col'), fact_params),
      'factorized_lax': (
          models.CaffeLeNet(factorized=True, conv_impl='lax'), fact_params),
  }
  if quick:
    variants = {k: v for k, v in variants.items()
                if k in ('im2col', 'unfused_im2col', 'flax_defaults')}
  results = {}
  for name, (model, params) in variants.items():
    fwd_bwd, pgd_step = _steps(model)
    results[f'lenet/fwd_bwd_b{BATCH}/{name}'] = _time(fwd_bwd, params, x, y,
                                                      n=n)
    results[f'lenet/pgd7_b{BATCH}/{name}'] = _time(pgd_step, params, x, y,
                                                   n=n)
  results['_notes'] = [
      f'benchmarks.models: backend {jax.default_backend()}, '
      f'{jax.device_count()} device(s).']
  return results


def main(argv):
  quick = '--quick' in argv[1:]
  for name, record in run(quick).items():
    if isinstance(record, dict):
      print(f'{name:40s} median {record["median_s"]:8.4f} s  '
            f'min {record["min_s"]:8.4f} s  max {record["max_s"]:8.4f} s  '
            f'n={record["n"]}')
    else:
      print(name, record)


if __name__ == '__main__':
  main(sys.argv)
