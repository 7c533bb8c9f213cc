"""Auto-PGD (Croce & Hein, 2020, Algorithm 1) in the L-inf and L2 balls.

A step-size-free PGD with momentum. With ``P`` the projection onto the ball
intersected with the box, ``d`` the signed (L-inf) or L2-normalised gradient
of the summed per-example loss ``f`` and ``x^(0)`` the start::

  eta = 2 * epsilon                                   # per example
  x^(1) = P(x^(0) + eta * d(x^(0)))
  f_max, x_max = the better of x^(0), x^(1)           # ties keep x^(0)
  for k = 1 .. N - 1:
    z^(k+1) = P(x^(k) + eta * d(x^(k)))
    x^(k+1) = P(x^(k) + a (z^(k+1) - x^(k)) + (1 - a)(x^(k) - x^(k-1)))
    if f(x^(k+1)) > f_max: x_max, f_max = x^(k+1), f(x^(k+1))
    if k is a checkpoint w_j and (condition 1 or condition 2):
      eta = eta / 2;  x^(k+1) = x_max

with momentum ``a = 0.75`` and checkpoints ``w_j = ceil(p_j N)``,
``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.

* Condition 1: fewer than ``rho * (w_j - w_{j-1})`` of the steps
  ``i = w_{j-1} .. w_j - 1`` increased the loss, ``f(x^(i+1)) > f(x^(i))``.
* Condition 2: the step size was not halved at ``w_{j-1}`` and ``f_max`` has
  not improved since ``w_{j-1}``. (``w_0 = 0``: at the first checkpoint the
  step is unchanged, so condition 2 reduces to "no improvement since the
  first step". The authors' released code instead skips condition 2 at the
  first checkpoint.)

Everything (``eta``, ``x_max``, the conditions) is per example. Each of the
``N`` iterations costs one forward and one backward pass, plus one for the
start.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax._src import base
from atmc_jax.attacks import _common
from atmc_jax.attacks import _losses


def apgd_checkpoints(num_steps: int) -> tuple[int, ...]:
  """The iterations ``w_1 < w_2 < ...`` at which APGD may halve its step.

  ``w_j = ceil(p_j * num_steps)`` for the ``p_j <= 1`` of Croce & Hein's
  sequence, keeping distinct values in ``[1, num_steps - 1]`` (the loop's
  range). For ``num_steps=100``: ``(22, 41, 57, 70, 80, 87, 93, 99)``.

  Raises:
    ValueError: ``num_steps < 1``.
  """
  _common.check_int('num_steps', num_steps, 1)
  # p_j in hundredths, so the sequence is exact.
  p = [0, 22]
  while True:
    nxt = p[-1] + max(p[-1] - p[-2] - 3, 6)
    if nxt > 100:
      break
    p.append(nxt)
  w = sorted({-(-pj * num_steps // 100) for pj in p[1:]})
  return tuple(wj for wj in w if 1 <= wj <= num_steps - 1)


def _interval_lengths(num_steps: int) -> np.ndarray:
  """``lengths[k] = w_j - w_{j-1}`` if ``k == w_j``, else 0."""
  lengths = np.zeros(max(num_steps, 1), np.int32)
  prev = 0
  for w in apgd_checkpoints(num_steps):
    lengths[w] = w - prev
    prev = w
  return lengths


def _apgd_run(logits_fn, x, key, epsilon, objective, success, *, num_steps,
              norm, bounds, rho, momentum, random_start):
  """One APGD run (Algorithm 1) on a per-example ``objective(logits)``.

  Returns:
    ``(x_max, f_max, s_max, x_found, f_found, found)``: the highest-objective
    iterate, its objective and success flag, and the last iterate that
    succeeded (``success(logits)``), its objective and whether there is one.
  """
  def evaluate(x_adv):
    """Per-example objective, its gradient and whether the attack succeeded."""
    def total(x_adv):
      logits = logits_fn(x_adv)
      value = objective(logits)
      return jnp.sum(value), (value, logits)

    (_, (value, logits)), grad = jax.value_and_grad(total, has_aux=True)(x_adv)
    return value, grad, success(logits)

  def ex(s):
    return _common.expand(s, x)

  def gradient_step(x_k, grad, eta):
    step = ex(eta).astype(x.dtype) * _common.ascent_direction(grad, norm)
    return _common.project(x_k + step, x, epsilon, norm, bounds)

  if random_start:
    x0 = _common.random_start(key, x, epsilon, norm, bounds)
  else:
    x0 = x
  f0, g0, s0 = evaluate(x0)
  eta = jnp.full(x.shape[:1], 2.0, jnp.float32) * epsilon.astype(jnp.float32)
  x1 = gradient_step(x0, g0, eta)
  f1, g1, s1 = evaluate(x1)
  first_better = f1 > f0
  x_max = jnp.where(ex(first_better), x1, x0)
  g_max = jnp.where(ex(first_better), g1, g0)
  f_max = jnp.maximum(f0, f1)
  s_max = jnp.where(first_better, s1, s0)
  x_found = jnp.where(ex(s1), x1, x0)
  f_found = jnp.where(s1, f1, f0)
  found = s0 | s1

  lengths = jnp.asarray(_interval_lengths(num_steps))

  def body(k, carry):
    (x_k, x_prev, g_k, f_k, x_max, g_max, f_max, s_max, eta, count,
     reduced_last, f_max_last, x_found, f_found, found) = carry
    z = gradient_step(x_k, g_k, eta)
    x_new = _common.project(
        x_k + momentum * (z - x_k) + (1.0 - momentum) * (x_k - x_prev), x,
        epsilon, norm, bounds)
    f_new, g_new, s_new = evaluate(x_new)
    x_found = jnp.where(ex(s_new), x_new, x_found)
    f_found = jnp.where(s_new, f_new, f_found)
    found = found | s_new
    better = f_new > f_max
    x_max = jnp.where(ex(better), x_new, x_max)
    g_max = jnp.where(ex(better), g_new, g_max)
    f_max = jnp.where(better, f_new, f_max)
    s_max = jnp.where(better, s_new, s_max)
    # Checkpoint w_j: the interval length is > 0 exactly there.
    length = lengths[k]
    at_checkpoint = length > 0
    condition1 = count < rho * length.astype(jnp.float32)
    condition2 = jnp.logical_not(reduced_last) & (f_max <= f_max_last)
    reduce = at_checkpoint & (condition1 | condition2)
    eta = jnp.where(reduce, 0.5 * eta, eta)
    x_new = jnp.where(ex(reduce), x_max, x_new)
    g_new = jnp.where(ex(reduce), g_max, g_new)
    f_new = jnp.where(reduce, f_max, f_new)
    count = jnp.where(at_checkpoint, 0, count) + (f_new > f_k)
    reduced_last = jnp.where(at_checkpoint, reduce, reduced_last)
    f_max_last = jnp.where(at_checkpoint, f_max, f_max_last)
    return (x_new, x_k, g_new, f_new, x_max, g_max, f_max, s_max, eta, count,
            reduced_last, f_max_last, x_found, f_found, found)

  carry = (x1, x0, g1, f1, x_max, g_max, f_max, s_max, eta,
           first_better.astype(jnp.int32), jnp.zeros(x.shape[:1], bool),
           f_max, x_found, f_found, found)
  carry = jax.lax.fori_loop(1, num_steps, body, carry)
  x_max, f_max, s_max = carry[4], carry[6], carry[7]
  x_found, f_found, found = carry[12], carry[13], carry[14]
  return x_max, f_max, s_max, x_found, f_found, found


def _outcome(run, prefer_misclassified):
  """``(x_adv, fooled, score)`` of one run for :func:`select_adversarial`."""
  x_max, f_max, s_max, x_found, f_found, found = run
  if not prefer_misclassified:
    return x_max, s_max, f_max
  return (jnp.where(_common.expand(found, x_max), x_found, x_max), found,
          jnp.where(found, f_found, f_max))


def _restart_key(key, r):
  # Restart 0 uses ``key`` itself, so one restart is the plain run.
  if isinstance(r, int) and r == 0:
    return key
  return jax.random.fold_in(key, r)


def _apgd_core(logits_fn, x, y, key, epsilon, *, num_steps, norm, loss,
               bounds, rho, momentum, targeted, random_start,
               prefer_misclassified, num_restarts):
  """Jitted body of :func:`apgd`; see there."""
  epsilon = jnp.asarray(epsilon, x.dtype)
  loss_fn = _losses.LOSSES[loss]

  def objective(logits):
    value = loss_fn(logits, y)
    return -value if targeted else value

  def success(logits):
    return _common.fooled(logits, y, targeted)

  def run(r):
    return _outcome(
        _apgd_run(logits_fn, x, _restart_key(key, r), epsilon, objective,
                  success, num_steps=num_steps, norm=norm, bounds=bounds,
                  rho=rho, momentum=momentum, random_start=random_start),
        prefer_misclassified)

  best = run(0)
  if num_restarts > 1:
    best = jax.lax.fori_loop(
        1, num_restarts,
        lambda r, best: _common.select_adversarial(best, run(r)), best)
  return best[0]


def _apgd_targeted_core(logits_fn, x, y, key, epsilon, *, num_steps, norm,
                        bounds, rho, momentum, random_start, num_targets):
  """Jitted body of :func:`apgd_targeted`; see there."""
  epsilon = jnp.asarray(epsilon, x.dtype)
  clean = logits_fn(x).astype(jnp.float32)
  onehot = jax.nn.one_hot(y, clean.shape[-1], dtype=bool)
  # The true class ranks last; the rest by decreasing clean logit.
  targets = jax.lax.top_k(jnp.where(onehot, -jnp.inf, clean), num_targets)[1]

  def success(logits):
    return _common.fooled(logits, y, False)

  def attack_target(i, best):
    target = targets[:, i]

    def objective(logits):
      return _losses.dlr_targeted_loss(logits, y, target)

    def run(_):
      run_ = _apgd_run(logits_fn, x, jax.random.fold_in(key, i), epsilon,
                       objective, success, num_steps=num_steps, norm=norm,
                       bounds=bounds, rho=rho, momentum=momentum,
                       random_start=random_start)
      x_adv = _outcome(run_, True)[0]
      logits = logits_fn(x_adv)
      # The untargeted margin ranks runs toward different targets.
      return _common.select_adversarial(
          best, (x_adv, success(logits), _losses.margin_loss(logits, y)))

    # Skip the run once every example is fooled.
    return jax.lax.cond(jnp.all(best[1]), lambda _: best, run, None)

  best = (x, success(clean), _losses.margin_loss(clean, y))
  return jax.lax.fori_loop(0, num_targets, attack_target, best)[0]


def apgd(
    logits_fn: base.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: Optional[jax.Array],
    *,
    epsilon: float,
    num_steps: int = 100,
    norm: str = 'linf',
    loss: str = 'ce',
    bounds: tuple[float, float] = (0.0, 1.0),
    rho: float = 0.75,
    momentum: float = 0.75,
    targeted: bool = False,
    random_start: bool = True,
    prefer_misclassified: bool = True,
    num_restarts: int = 1,
) -> jax.Array:
  r"""Auto-PGD (APGD) of Croce & Hein (2020), Algorithm 1.

  Maximises the per-example loss over the epsilon-ball intersected with
  ``bounds`` with momentum ``0.75``, initial step ``2 * epsilon`` and the
  per-example step-halving schedule described in this module's docstring
  (checkpoints: :func:`apgd_checkpoints`).

  Jitted with everything but ``epsilon`` (and the arrays) static; see
  :func:`pgd` for how ``logits_fn`` is treated.

  Args:
    logits_fn: ``x -> logits`` of shape ``(B, K)``; see :func:`pgd`.
    x: clean inputs with a leading batch axis, values in ``bounds``.
    y: ``(B,)`` integer labels (target labels when ``targeted``).
    key: PRNG key for the random start (None allowed when
      ``random_start=False``).
    epsilon: ball radius, ``>= 0``.
    num_steps: iterations ``N``, ``>= 1``.
    norm: ``'linf'`` or ``'l2'``.
    loss: ``'ce'``, ``'margin'`` (CW) or ``'dlr'`` (difference of logits
      ratio, untargeted, ``K >= 3``).
    bounds: valid input range ``(lo, hi)``.
    rho: condition-1 threshold, in ``[0, 1]``.
    momentum: weight ``a`` of the new gradient step, in ``[0, 1]``.
    targeted: minimise the loss toward the labels ``y``.
    random_start: start from a uniform sample of the ball, as in the
      reference implementation; ``False`` starts from ``x``.
    prefer_misclassified: when some iterate fooled the model (argmax differs
      from ``y``; equals ``y`` when ``targeted``), return the last such
      iterate, as the authors' code does; otherwise, and always when False,
      return the highest-loss point ``x_max``.
    num_restarts: independent runs, ``>= 1`` (restart ``r >= 1`` starts from
      key ``jax.random.fold_in(key, r)``; restart 0 from ``key``). Each
      example keeps a run that fooled the model (reached the target when
      ``targeted``) if any did, and among those the highest objective; the
      reference implementation's standard AutoAttack uses 1.

  Returns:
    ``x_adv`` with the shape and dtype of ``x``.

  Raises:
    ValueError: negative ``epsilon``, ``num_steps < 1``, ``num_restarts <
      1``, unknown ``norm`` or ``loss``, ``rho`` or ``momentum`` outside
      ``[0, 1]``, ``x`` outside ``bounds`` or a label outside ``[0, K)``
      (when concrete), an empty batch, mismatched batch sizes or a missing
      ``key``.

  References:
    Croce & Hein, Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks, ICML 2020.
    https://arxiv.org/abs/2003.01690
  """
  bounds = _common.check_attack_args(x, y, bounds=bounds, epsilon=epsilon,
                                     num_steps=num_steps, norm=norm,
                                     logits_fn=logits_fn)
  _common.check_loss(loss, targeted)
  _common.check_int('num_restarts', num_restarts, 1)
  _check_unit('rho', rho)
  _check_unit('momentum', momentum)
  key = _common.check_key(key, random_start)
  return _common.run_jitted(
      _apgd_core, logits_fn, (x, y, key, epsilon),
      dict(num_steps=num_steps, norm=norm, loss=loss, bounds=bounds,
           rho=float(rho), momentum=float(momentum), targeted=bool(targeted),
           random_start=bool(random_start),
           prefer_misclassified=bool(prefer_misclassified),
           num_restarts=num_restarts))


def _check_unit(name, value):
  if isinstance(value, bool) or not (
      isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
    raise ValueError(f'{name}={value!r}; accepted range: [0, 1].')


def apgd_targeted(
    logits_fn: base.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: Optional[jax.Array],
    *,
    epsilon: float,
    num_steps: int = 100,
    num_targets: int = 9,
    norm: str = 'linf',
    bounds: tuple[float, float] = (0.0, 1.0),
    rho: float = 0.75,
    momentum: float = 0.75,
    random_start: bool = True,
) -> jax.Array:
  r"""APGD-T: Auto-PGD on the targeted DLR loss, one run per target class.

  The targets of an example are the ``min(num_targets, K - 1)`` classes other
  than ``y`` with the highest *clean* logits, in decreasing order. For each
  target ``t`` an APGD run (this module's Algorithm 1, ``num_steps``
  iterations, its own random start from ``jax.random.fold_in(key, i)``)
  maximises the targeted DLR loss (:func:`dlr_targeted_loss`)

  .. math::
    -\frac{z_y - z_t}{z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2 + 10^{-12}},

  and succeeds when the prediction leaves ``y`` (any wrong class). Each
  example keeps a run that fooled the model if any did (the last fooling
  iterate of that run), otherwise the run with the highest untargeted margin
  :func:`margin_loss`. Once every example is fooled the remaining targets
  are skipped. The standard AutoAttack uses 9 targets, 100 iterations and 1
  restart per target (``APGDAttack_targeted``, ``n_target_classes=9``).

  Args:
    logits_fn: ``x -> logits`` of shape ``(B, K)``, ``K >= 4``; see
      :func:`pgd`.
    x: clean inputs with a leading batch axis, values in ``bounds``.
    y: ``(B,)`` integer true labels.
    key: PRNG key for the random starts (None allowed when
      ``random_start=False``).
    epsilon: ball radius, ``>= 0``.
    num_steps: APGD iterations per target, ``>= 1``.
    num_targets: target classes per example, ``>= 1`` (capped at ``K - 1``).
    norm: ``'linf'`` or ``'l2'``.
    bounds: valid input range ``(lo, hi)``.
    rho: APGD's condition-1 threshold, in ``[0, 1]``.
    momentum: APGD's momentum, in ``[0, 1]``.
    random_start: start every run from a uniform sample of the ball.

  Returns:
    ``x_adv`` with the shape and dtype of ``x``.

  Raises:
    ValueError: as :func:`apgd`, plus ``num_targets < 1`` or fewer than 4
      classes.

  References:
    Croce & Hein, Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks, ICML 2020.
    https://arxiv.org/abs/2003.01690
  """
  bounds = _common.check_attack_args(x, y, bounds=bounds, epsilon=epsilon,
                                     num_steps=num_steps, norm=norm,
                                     logits_fn=logits_fn)
  _common.check_int('num_targets', num_targets, 1)
  _check_unit('rho', rho)
  _check_unit('momentum', momentum)
  num_classes = _common.num_classes_of(logits_fn, x)
  if num_classes < 4:
    raise ValueError(f'APGD-T needs at least 4 classes (targeted DLR loss), '
                     f'logits_fn returns {num_classes}; accepted: >= 4.')
  key = _common.check_key(key, random_start)
  return _common.run_jitted(
      _apgd_targeted_core, logits_fn, (x, y, key, epsilon),
      dict(num_steps=num_steps, norm=norm, bounds=bounds, rho=float(rho),
           momentum=float(momentum), random_start=bool(random_start),
           num_targets=min(num_targets, num_classes - 1)))

