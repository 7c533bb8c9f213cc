"""FGSM and WRM exactly as the ATMC paper evaluates them (its ``util.py``).

* FGSM (Goodfellow et al., 2015): one signed gradient step of size
  ``epsilon`` on the summed cross-entropy, then clipping to the valid range.
* WRM (Sinha et al., 2018): gradient ascent on the Lagrangian of a
  Wasserstein ball, ``gamma * sum_i CE_i - 1/2 sum_i ||x'_i - x_i||_2^2``,
  with the raw (unsigned, unnormalised) gradient scaled by ``1/sqrt(t+1)`` at
  step ``t = 0, 1, ...``, no epsilon-ball, and clipping to the valid range
  after every step; it starts at ``x``.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from atmc_jax._src import base
from atmc_jax.attacks import _common
from atmc_jax.attacks import _pgd


def _fgsm_core(logits_fn, x, y, epsilon, *, bounds, loss, targeted):
  epsilon = jnp.asarray(epsilon, x.dtype)
  objective = _pgd.objective_fn(logits_fn, y, loss, targeted)
  grad = jax.grad(lambda x_adv: jnp.sum(objective(x_adv)))(x)
  return _common.project(x + epsilon * jnp.sign(grad), x, epsilon, 'linf',
                         bounds)


def fgsm(
    logits_fn: base.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: Optional[jax.Array] = None,
    *,
    epsilon: float,
    bounds: tuple[float, float] = (0.0, 1.0),
    loss: str = 'ce',
    targeted: bool = False,
) -> jax.Array:
  r"""Fast gradient sign method: one signed step of size ``epsilon``.

  .. math::
    x' = \mathrm{clip}_{[lo, hi]}\big(x + \epsilon\,
         \mathrm{sign}(\nabla_x \textstyle\sum_i \ell_i(x, y))\big)

  Args:
    logits_fn: ``x -> logits`` of shape ``(B, K)``; see :func:`pgd`.
    x: clean inputs with a leading batch axis, values in ``bounds``.
    y: ``(B,)`` integer labels (target labels when ``targeted``).
    key: unused; accepted so that ``fgsm`` has the ``(logits_fn, x, y,
      key)`` signature of :func:`robust_accuracy`'s attacks.
    epsilon: step size and L-inf radius, ``>= 0``.
    bounds: valid input range ``(lo, hi)``.
    loss: ``'ce'`` (the paper's), ``'margin'`` or ``'dlr'``.
    targeted: step down the loss toward the labels ``y``.

  Returns:
    ``x_adv`` with the shape and dtype of ``x``.

  Raises:
    ValueError: negative ``epsilon``, unknown ``loss``, ``x`` outside
      ``bounds`` or a label outside ``[0, K)`` (when concrete), an empty
      batch or mismatched batch sizes.
  """
  del key
  bounds = _common.check_attack_args(x, y, bounds=bounds, epsilon=epsilon,
                                     logits_fn=logits_fn)
  _common.check_loss(loss, targeted)
  return _common.run_jitted(
      _fgsm_core, logits_fn, (x, y, epsilon),
      dict(bounds=bounds, loss=loss, targeted=bool(targeted)))


def _wrm_core(logits_fn, x, y, gamma, *, num_steps, bounds):
  gamma = jnp.asarray(gamma, jnp.float32)
  objective = _pgd.objective_fn(logits_fn, y, 'ce', False)

  def lagrangian(x_adv):
    transport = 0.5 * jnp.sum(
        jnp.square((x_adv - x).astype(jnp.float32)))
    return gamma * jnp.sum(objective(x_adv)) - transport

  grad_fn = jax.grad(lagrangian)

  def step(t, x_adv):
    scale = jax.lax.rsqrt(jnp.asarray(t + 1, jnp.float32)).astype(x.dtype)
    return jnp.clip(x_adv + scale * grad_fn(x_adv), bounds[0], bounds[1])

  return jax.lax.fori_loop(0, num_steps, step, x)


def wrm(
    logits_fn: base.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: Optional[jax.Array] = None,
    *,
    gamma: float,
    num_steps: int,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
  r"""Wasserstein robust method as the ATMC reference implements it.

  Ascends, from :math:`x'_0 = x`,

  .. math::
    L(x') = \gamma \sum_i \mathrm{CE}(\mathrm{logits\_fn}(x')_i, y_i)
            - \tfrac12 \sum_i \|x'_i - x_i\|_2^2,
    \qquad
    x'_{t+1} = \mathrm{clip}_{[lo, hi]}\Big(x'_t
               + \tfrac{1}{\sqrt{t + 1}} \nabla L(x'_t)\Big)

  for ``t = 0 .. num_steps - 1``. There is no epsilon-ball: the quadratic
  transport cost is the only limit on the perturbation. The poster's setting
  is ``gamma=1.3, num_steps=7``.

  Args:
    logits_fn: ``x -> logits`` of shape ``(B, K)``; see :func:`pgd`.
    x: clean inputs with a leading batch axis, values in ``bounds``.
    y: ``(B,)`` integer labels.
    key: unused; accepted for the ``(logits_fn, x, y, key)`` signature.
    gamma: weight of the loss against the transport cost, ``>= 0``.
    num_steps: number of ascent steps, ``>= 1``.
    bounds: valid input range ``(lo, hi)``.

  Returns:
    ``x_adv`` with the shape and dtype of ``x``.

  Raises:
    ValueError: negative ``gamma``, ``num_steps < 1``, ``x`` outside
      ``bounds`` or a label outside ``[0, K)`` (when concrete), an empty
      batch or mismatched batch sizes.

  References:
    Sinha, Namkoong, Duchi, Certifying Some Distributional Robustness with
    Principled Adversarial Training, ICLR 2018.
    https://arxiv.org/abs/1710.10571
  """
  del key
  bounds = _common.check_attack_args(x, y, bounds=bounds,
                                     num_steps=num_steps, logits_fn=logits_fn)
  _common.check_nonnegative('gamma', gamma)
  return _common.run_jitted(_wrm_core, logits_fn, (x, y, gamma),
                            dict(num_steps=num_steps, bounds=bounds))
