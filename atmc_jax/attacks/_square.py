"""Square Attack (Andriushchenko et al., 2020), L-inf, score-based.

A random search that queries only the logits, never a gradient. With
``m(x') = z_y - max_{j != y} z_j`` (the margin of the true class; the
example is fooled when ``m <= 0``), per example:

  x_best = clip(x + eps * v, bounds)      # v = +-1 per (column, channel)
  for i = 0 .. num_queries - 1, while some example has m(x_best) > 0:
    s = max(round(sqrt(p(i) * H * W)), 1), at most min(H, W)
    pick a random s x s window and a random sign per channel;
    x_new = x_best with the window set to x +- eps (clipped to bounds)
    keep x_new if m(x_new) < m(x_best)

``p(i)`` halves at the iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000
and 8000 from ``p_init`` (the reference implementation's ``p_selection``
without rescaling, as AutoAttack calls it). Examples already fooled stop
changing; points misclassified clean are returned unchanged.

Settings of the standard AutoAttack (``SquareAttack`` in ``autoattack.py``
of fra31/auto-attack): ``p_init=0.8``, ``n_queries=5000``, 1 restart, the
margin loss, ``resc_schedule=False``.

Differences from the reference implementation: the window position and the
signs are drawn per example (the reference draws one window per iteration
for the whole batch), so an example's result does not depend on the rest of
the batch.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from atmc_jax._src import base
from atmc_jax.attacks import _common
from atmc_jax.attacks import _losses

# Iterations after which the square's area fraction p halves.
P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p(iteration: jax.Array, p_init: float) -> jax.Array:
  """The area fraction ``p`` of the square at a (0-based) iteration."""
  halvings = jnp.sum(jnp.asarray(P_SCHEDULE) < iteration)
  return p_init / 2.0 ** halvings.astype(jnp.float32)


def _square_core(logits_fn, x, y, key, epsilon, *, num_queries, p_init,
                 bounds):
  """Jitted body of :func:`square`; see there."""
  lo, hi = bounds
  epsilon = jnp.asarray(epsilon, x.dtype)
  b, h, w, c = x.shape

  def margin(x_adv):
    # Positive while the example is classified correctly.
    return -_losses.margin_loss(logits_fn(x_adv), y)

  k_init, k_loop = jax.random.split(key)
  stripes = jax.random.rademacher(k_init, (b, 1, w, c), x.dtype)
  x_best = jnp.clip(x + epsilon * stripes, lo, hi)
  m_best = margin(x_best)
  # As the reference, points misclassified clean are left as they are.
  m_clean = margin(x)
  x_best = jnp.where(_common.expand(m_clean <= 0, x), x, x_best)
  m_best = jnp.where(m_clean <= 0, m_clean, m_best)
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]

  def cond(carry):
    i, _, m_best = carry
    return (i < num_queries) & jnp.any(m_best > 0)

  def body(carry):
    i, x_best, m_best = carry
    k_h, k_w, k_sign = jax.random.split(jax.random.fold_in(k_loop, i), 3)
    p = square_p(i, p_init)
    s = jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32)
    s = jnp.clip(s, 1, min(h, w))
    vh = jax.random.randint(k_h, (b, 1, 1, 1), 0, h - s + 1)
    vw = jax.random.randint(k_w, (b, 1, 1, 1), 0, w - s + 1)
    window = ((rows >= vh) & (rows < vh + s) & (cols >= vw) &
              (cols < vw + s))
    signs = jax.random.rademacher(k_sign, (b, 1, 1, c), x.dtype)
    # The window moves by 2 eps toward the chosen corner, then is projected
    # back: it ends at x +- eps (clipped to bounds).
    x_new = jnp.where(window, x_best + 2.0 * epsilon * signs, x_best)
    x_new = _common.project(x_new, x, epsilon, 'linf', bounds)
    m_new = margin(x_new)
    active = m_best > 0
    better = active & (m_new < m_best)
    x_best = jnp.where(_common.expand(better, x), x_new, x_best)
    m_best = jnp.where(better, m_new, m_best)
    return i + 1, x_best, m_best

  _, x_best, _ = jax.lax.while_loop(cond, body, (0, x_best, m_best))
  return x_best


def square(
    logits_fn: base.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    epsilon: float,
    num_queries: int = 5000,
    p_init: float = 0.8,
    norm: str = 'linf',
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
  r"""Square Attack: score-based random search in the L-inf ball.

  Minimises the margin :math:`z_y - \max_{j \neq y} z_j` per example with
  random square-shaped updates at the corners of the ball (module
  docstring); it uses only forward passes of ``logits_fn`` (one per query,
  plus one for the start), so it is unaffected by masked or obfuscated
  gradients. Stops early once every example is misclassified.

  Jitted; ``num_queries``, ``p_init`` and ``bounds`` are static. See
  :func:`pgd` for how ``logits_fn`` is treated.

  Args:
    logits_fn: ``x -> logits`` of shape ``(B, K)``; see :func:`pgd`.
    x: clean images ``(B, H, W, C)`` with values in ``bounds``.
    y: ``(B,)`` integer labels.
    key: PRNG key (the start and every query's window and signs).
    epsilon: L-inf radius, ``>= 0``.
    num_queries: iterations (queries after the start), ``>= 1``; 5000 in the
      standard AutoAttack.
    p_init: initial fraction of the image the square covers, in ``(0, 1]``;
      0.8 in the standard AutoAttack.
    norm: only ``'linf'``.
    bounds: valid input range ``(lo, hi)``.

  Returns:
    ``x_adv`` with the shape and dtype of ``x``, in the ball and ``bounds``.

  Raises:
    ValueError: ``norm`` other than ``'linf'``, ``x`` not of rank 4,
      negative ``epsilon``, ``num_queries < 1``, ``p_init`` outside
      ``(0, 1]``, a missing ``key``, or the input errors of :func:`pgd`.

  References:
    Andriushchenko, Croce, Flammarion & Hein, Square Attack: a
    query-efficient black-box adversarial attack via random search, ECCV
    2020. https://arxiv.org/abs/1912.00049
  """
  if norm != 'linf':
    raise ValueError(f'norm={norm!r}; accepted: ["linf"] (the L2 Square '
                     'Attack is not implemented).')
  bounds = _common.check_attack_args(x, y, bounds=bounds, epsilon=epsilon,
                                     logits_fn=logits_fn)
  if len(x.shape) != 4:
    raise ValueError(f'x has shape {x.shape}; accepted: images (B, H, W, C).')
  _common.check_int('num_queries', num_queries, 1)
  if isinstance(p_init, bool) or not (
      isinstance(p_init, (int, float)) and 0.0 < p_init <= 1.0):
    raise ValueError(f'p_init={p_init!r}; accepted range: (0, 1].')
  key = _common.check_key(key, True)
  return _common.run_jitted(
      _square_core, logits_fn, (x, y, key, epsilon),
      dict(num_queries=num_queries, p_init=float(p_init), bounds=bounds))
