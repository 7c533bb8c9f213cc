"""Projected gradient descent (Madry et al., 2018) in the L-inf and L2 balls.

One PGD run from a start ``x'_0`` (``x`` itself or a uniform sample of the
ball) repeats ``num_steps`` times::

  g  = grad_x' sum_i loss_i(logits_fn(x'), y)   # the sum: per-example steps
  x' = x' + step_size * d(g)      # d = sign (L-inf) or g / ||g||_2 (L2)
  x' = clip(P_ball(x'), bounds)

With ``num_restarts > 1`` each restart ``r`` starts from its own sample (key
``jax.random.fold_in(key, r)``) and every example keeps one restart, never an
average: a restart that fools the model (for a targeted attack: reaches the
target) if any does, and among those (or, when none does, among all) the one
with the highest final objective (:func:`_common.select_adversarial`).

The reference ATMC code (``pgd_gt``) is deterministic BIM: its random start is
a no-op and its step is ``1.25 * epsilon / num_steps``. Reproduce it with
``random_start=False, step_size=reference_step_size(epsilon, num_steps)``.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from atmc_jax._src import base
from atmc_jax.attacks import _common
from atmc_jax.attacks import _losses

def default_step_size(epsilon: Any, num_steps: int) -> Any:
  """The default PGD step, ``2.5 * epsilon / num_steps`` (Madry et al.)."""
  return 2.5 * epsilon / num_steps


def reference_step_size(epsilon: Any, num_steps: int) -> Any:
  """The reference ATMC code's PGD step, ``1.25 * epsilon / num_steps``."""
  return 1.25 * epsilon / num_steps


def objective_fn(logits_fn: base.LogitsFn, y: jax.Array, loss: str,
                 targeted: bool):
  """``x_adv -> (B,)`` per-example objective that the attack maximises."""
  loss_fn = _losses.LOSSES[loss]

  def objective(x_adv):
    value = loss_fn(logits_fn(x_adv), y)
    return -value if targeted else value

  return objective


def _pgd_core(logits_fn, x, y, key, epsilon, step_size, *, num_steps, norm,
              random_start, num_restarts, bounds, loss, targeted):
  """Jitted body of :func:`pgd`; see there."""
  epsilon = jnp.asarray(epsilon, x.dtype)
  step_size = jnp.asarray(step_size, x.dtype)
  objective = objective_fn(logits_fn, y, loss, targeted)
  grad_fn = jax.grad(lambda x_adv: jnp.sum(objective(x_adv)))

  def step(_, x_adv):
    direction = _common.ascent_direction(grad_fn(x_adv), norm)
    return _common.project(x_adv + step_size * direction, x, epsilon, norm,
                           bounds)

  def single_run(run_key):
    if random_start:
      x_adv = _common.random_start(run_key, x, epsilon, norm, bounds)
    else:
      x_adv = x
    return jax.lax.fori_loop(0, num_steps, step, x_adv)

  if num_restarts == 1:
    return single_run(jax.random.fold_in(key, 0))
  loss_fn = _losses.LOSSES[loss]

  def restart(r, best):
    x_adv = single_run(jax.random.fold_in(key, r))
    logits = logits_fn(x_adv)
    value = loss_fn(logits, y)
    score = -value if targeted else value
    return _common.select_adversarial(
        best, (x_adv, _common.fooled(logits, y, targeted), score))

  init = (x, jnp.zeros(x.shape[:1], bool),
          jnp.full(x.shape[:1], -jnp.inf, jnp.float32))
  return jax.lax.fori_loop(0, num_restarts, restart, init)[0]


def pgd(
    logits_fn: base.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: Optional[jax.Array],
    *,
    epsilon: float,
    num_steps: int,
    step_size: Optional[float] = None,
    norm: str = 'linf',
    random_start: bool = True,
    num_restarts: int = 1,
    bounds: tuple[float, float] = (0.0, 1.0),
    loss: str = 'ce',
    targeted: bool = False,
) -> jax.Array:
  r"""Projected gradient ascent on a per-example loss inside an epsilon-ball.

  Approximately solves, for every example independently,

  .. math::
    \max_{\|x' - x\|_p \le \epsilon,\; lo \le x' \le hi}
        \ell(\mathrm{logits\_fn}(x'), y)

  (``min`` toward the labels ``y`` when ``targeted``). Steps are signed
  (L-inf) or L2-normalised gradients of the *sum* of per-example losses, so an
  example's trajectory does not depend on the rest of the batch; after every
  step the iterate is projected onto the ball and clipped to ``bounds``.

  Jitted with ``num_steps``, ``norm``, ``random_start``, ``num_restarts``,
  ``bounds``, ``loss`` and ``targeted`` static; ``epsilon`` and
  ``step_size`` are traced (changing them does not recompile). ``logits_fn``
  is static (keep the same object to avoid recompiling) unless it is a
  :class:`jax.tree_util.Partial`, whose arguments are traced. Safe to call
  inside a jitted function.

  Args:
    logits_fn: ``x -> logits`` of shape ``(B, K)``, the model closed over its
      variables (BatchNorm in inference mode, normalisation inside).
    x: clean inputs, any shape with a leading batch axis ``B``, values in
      ``bounds``.
    y: ``(B,)`` integer labels (target labels when ``targeted``).
    key: PRNG key for the random starts; may be None when
      ``random_start=False``.
    epsilon: ball radius in input units, ``>= 0``.
    num_steps: number of gradient steps, ``>= 1``.
    step_size: step length; default ``2.5 * epsilon / num_steps``. The
      reference ATMC code uses ``reference_step_size(epsilon, num_steps)`` (=
      ``1.25 * epsilon / num_steps``) with ``random_start=False``.
    norm: ``'linf'`` or ``'l2'``.
    random_start: start from a uniform sample of the ball (L-inf: uniform per
      coordinate; L2: uniform in volume) instead of ``x``.
    num_restarts: independent runs, ``>= 1``; each example keeps a run that
      fools the model (reaches the target when ``targeted``) if any does,
      and among those the highest objective (loss; minus the loss toward the
      target when ``targeted``).
    bounds: valid input range ``(lo, hi)``.
    loss: ``'ce'`` (cross-entropy), ``'margin'`` (Carlini-Wagner logit margin
      ``max_{j != y} z_j - z_y``) or ``'dlr'`` (untargeted only).
    targeted: minimise the loss toward the labels ``y`` instead of maximising
      it away from them.

  Returns:
    ``x_adv`` with the shape and dtype of ``x``.

  Raises:
    ValueError: negative ``epsilon`` or ``step_size``, ``num_steps < 1``,
      ``num_restarts < 1``, unknown ``norm`` or ``loss``, ``x`` outside
      ``bounds`` or a label outside ``[0, K)`` (both checked when concrete),
      an empty batch, mismatched batch sizes, or a missing ``key`` when one
      is needed.

  References:
    Madry et al., Towards Deep Learning Models Resistant to Adversarial
    Attacks, ICLR 2018. https://arxiv.org/abs/1706.06083
  """
  bounds = _common.check_attack_args(x, y, bounds=bounds, epsilon=epsilon,
                                     num_steps=num_steps, norm=norm,
                                     logits_fn=logits_fn)
  _common.check_int('num_restarts', num_restarts, 1)
  _common.check_loss(loss, targeted)
  if step_size is None:
    step_size = default_step_size(epsilon, num_steps)
  else:
    _common.check_nonnegative('step_size', step_size)
  key = _common.check_key(key, random_start)
  return _common.run_jitted(
      _pgd_core, logits_fn, (x, y, key, epsilon, step_size),
      dict(num_steps=num_steps, norm=norm, random_start=bool(random_start),
           num_restarts=num_restarts, bounds=bounds, loss=loss,
           targeted=bool(targeted)))

