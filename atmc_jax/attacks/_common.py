"""Shared pieces of the attacks: input checks, jit dispatch, ball geometry.

Jit dispatch. Every attack runs through :func:`run_jitted`, which compiles the
attack's core once per (core, ``logits_fn``, static config, input shapes).
``logits_fn`` is a *static* argument (hashed by identity), unless it is a
:class:`jax.tree_util.Partial`, whose bound arguments (e.g. the model
variables) are then traced like any other array. So either build the closure
once and reuse it, or pass ``jax.tree_util.Partial(apply_fn, variables)`` to
attack new parameters without recompiling.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

NORMS = ('linf', 'l2')


def concrete_or_none(value: Any) -> Optional[np.ndarray]:
  """Returns ``value`` as a NumPy array, or None while it is being traced."""
  if isinstance(value, jax.core.Tracer):
    return None
  return np.asarray(value)


def check_choice(name: str, value: Any, accepted: Sequence[Any]) -> None:
  if value not in accepted:
    raise ValueError(f'{name}={value!r}; accepted: {list(accepted)}.')


def check_int(name: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name}={value!r} must be a Python int >= {minimum}.')
  if value < minimum:
    raise ValueError(f'{name}={value}; accepted range: >= {minimum}.')


def check_nonnegative(name: str, value: Any) -> None:
  """Raises if a concrete scalar ``value`` is negative or not finite."""
  v = concrete_or_none(value)
  if v is None:
    return
  if v.ndim != 0:
    raise ValueError(f'{name} must be a scalar, got shape {v.shape}.')
  if not np.isfinite(v) or v < 0:
    raise ValueError(f'{name}={float(v)}; accepted range: [0, inf).')


def check_positive(name: str, value: Any) -> None:
  """Raises if a concrete scalar ``value`` is not > 0 and finite."""
  check_nonnegative(name, value)
  v = concrete_or_none(value)
  if v is not None and v == 0:
    raise ValueError(f'{name}={float(v)}; accepted range: (0, inf).')


def check_loss(loss: str, targeted: bool,
               accepted: Sequence[str] = ('ce', 'margin', 'dlr')) -> None:
  """Checks a loss name; the DLR loss is untargeted only."""
  check_choice('loss', loss, accepted)
  if targeted and loss == 'dlr':
    raise ValueError('loss="dlr" is untargeted only; accepted with '
                     'targeted=True: ["ce", "margin"].')


def check_key(key: Any, needed: bool) -> Any:
  """Returns ``key``, or a fixed key when it is None and not ``needed``."""
  if key is None:
    if needed:
      raise ValueError('key=None; accepted: a PRNG key (needed for the '
                       'random start).')
    return jax.random.PRNGKey(0)
  return key


def check_bounds(bounds: Any) -> tuple[float, float]:
  """Returns ``bounds`` as a hashable ``(lo, hi)`` pair of floats."""
  try:
    lo, hi = (float(b) for b in bounds)
  except (TypeError, ValueError):
    raise ValueError(f'bounds={bounds!r} must be a pair (lo, hi) of '
                     'Python floats with lo < hi.') from None
  if not lo < hi:
    raise ValueError(f'bounds={bounds!r}; accepted: lo < hi.')
  return lo, hi


def check_batch(x: Any, y: Any, bounds: tuple[float, float]) -> None:
  """Checks shapes and dtypes of ``(x, y)`` and, when concrete, x's range."""
  x_shape, y_shape = np.shape(x), np.shape(y)
  if len(x_shape) < 1:
    raise ValueError(f'x has shape {x_shape}; accepted: a leading batch axis '
                     '(ndim >= 1).')
  if len(y_shape) != 1 or y_shape[0] != x_shape[0]:
    raise ValueError(f'y has shape {y_shape} but x has shape {x_shape}; '
                     f'accepted: y of shape ({x_shape[0]},).')
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f'x has dtype {jnp.result_type(x)}; accepted: a floating '
                     f'dtype with values in {list(bounds)} (scale integer '
                     'images first).')
  if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
    raise ValueError(f'y has dtype {jnp.result_type(y)}; accepted: integer '
                     'class labels.')
  if x_shape[0] == 0:
    raise ValueError(f'x has shape {x_shape}, an empty batch; accepted: a '
                     'batch of at least 1 example.')
  if isinstance(x, jax.core.Tracer):
    return
  lo, hi = bounds
  if isinstance(x, np.ndarray):
    x_min, x_max = float(np.min(x)), float(np.max(x))
  else:
    try:
      x_min, x_max = (float(v) for v in jax.device_get(_min_max(x)))
    except jax.errors.ConcretizationTypeError:
      return  # A concrete x closed over inside a jitted caller.
  if not (x_min >= lo and x_max <= hi):
    raise ValueError(f'x has values in [{x_min}, {x_max}]; accepted range: '
                     f'bounds={list(bounds)} (normalisation belongs inside '
                     'logits_fn).')


@jax.jit
def _min_max(x):
  return jnp.min(x), jnp.max(x)


def num_classes_of(logits_fn: Callable[..., Any], x: Any) -> int:
  """The logits' width ``K``, from one abstract evaluation of ``logits_fn``."""
  spec = jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))
  # Through jit's trace cache: repeated calls do not trace logits_fn again.
  out = _dispatch(logits_fn, _jit_static_apply, _jit_pytree_apply).eval_shape(
      logits_fn, spec)
  if len(out.shape) != 2 or out.shape[0] != np.shape(x)[0]:
    raise ValueError(f'logits_fn returns shape {out.shape} for x of shape '
                     f'{np.shape(x)}; accepted: ({np.shape(x)[0]}, K).')
  return int(out.shape[-1])


def check_labels(logits_fn: Callable[..., Any], x: Any, y: Any) -> None:
  """Raises if concrete labels ``y`` fall outside ``[0, K)``.

  ``K`` comes from :func:`num_classes_of`. Skipped while ``y`` is traced
  (e.g. inside a jitted caller), where its values are unknown.
  """
  labels = concrete_or_none(y)
  if labels is None or labels.size == 0:
    return
  k = num_classes_of(logits_fn, x)
  bad = (labels < 0) | (labels >= k)
  if np.any(bad):
    i = int(np.argmax(bad))
    raise ValueError(f'y[{i}]={int(labels[i])} is not a class of logits_fn; '
                     f'accepted range: [0, {k}) (logits_fn returns {k} '
                     'logits).')


def check_attack_args(x, y, *, bounds, epsilon=None, num_steps=None,
                      norm=None, logits_fn=None) -> tuple[float, float]:
  """Validates the arguments most attacks share; returns the bounds.

  With ``logits_fn`` given, concrete labels are also checked against the
  number of classes (:func:`check_labels`).
  """
  bounds = check_bounds(bounds)
  if epsilon is not None:
    check_nonnegative('epsilon', epsilon)
  if num_steps is not None:
    check_int('num_steps', num_steps, 1)
  if norm is not None:
    check_choice('norm', norm, NORMS)
  check_batch(x, y, bounds)
  if logits_fn is not None:
    check_labels(logits_fn, x, y)
  return bounds


# --------------------------------------------------------------------------
# Combining several runs (restarts, targets, attacks) per example.
# --------------------------------------------------------------------------


def fooled(logits: jax.Array, y: jax.Array, targeted: bool) -> jax.Array:
  """``(B,)`` bool: the attack succeeded on each example.

  Untargeted: the prediction differs from ``y``; targeted: it equals ``y``
  (the target labels).
  """
  pred = jnp.argmax(logits, axis=-1)
  return (pred == y) if targeted else (pred != y)


def select_adversarial(
    best: tuple[jax.Array, jax.Array, jax.Array],
    candidate: tuple[jax.Array, jax.Array, jax.Array],
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Keeps, per example, the better of two attack outcomes.

  An outcome is ``(x_adv, fooled, score)`` with ``fooled`` a ``(B,)`` bool
  (the attack succeeded) and ``score`` a ``(B,)`` float that the attack
  maximises. An outcome that fools the model beats one that does not; among
  outcomes that agree on ``fooled``, the higher ``score`` wins (ties keep
  ``best``). Ranking by the score alone would be wrong: a point can have a
  higher loss than another yet still be classified correctly, and keeping it
  would over-report robustness.

  Args:
    best: the outcome kept so far (``score`` may be ``-inf`` initially).
    candidate: a new outcome of the same shapes.

  Returns:
    The per-example better outcome, ``(x_adv, fooled, score)``.
  """
  x_best, f_best, s_best = best
  x_new, f_new, s_new = candidate
  take = (f_new & ~f_best) | ((f_new == f_best) & (s_new > s_best))
  return (jnp.where(expand(take, x_best), x_new, x_best),
          f_best | f_new,
          jnp.where(take, s_new, s_best))


# --------------------------------------------------------------------------
# Jit dispatch.
# --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=('core', 'logits_fn', 'config'))
def _jit_static_fn(core, logits_fn, arrays, config):
  return core(logits_fn, *arrays, **dict(config))


@functools.partial(jax.jit, static_argnames=('core', 'config'))
def _jit_pytree_fn(core, logits_fn, arrays, config):
  return core(logits_fn, *arrays, **dict(config))


@functools.partial(jax.jit, static_argnames=('logits_fn',))
def _jit_static_apply(logits_fn, x):
  return logits_fn(x)


@jax.jit
def _jit_pytree_apply(logits_fn, x):
  return logits_fn(x)


def _dispatch(logits_fn, static_fn, pytree_fn):
  """``pytree_fn`` for a :class:`jax.tree_util.Partial`, else ``static_fn``.

  Raises:
    ValueError: ``logits_fn`` is not a hashable callable.
  """
  if isinstance(logits_fn, jax.tree_util.Partial):
    return pytree_fn
  if not callable(logits_fn):
    raise ValueError(f'logits_fn={logits_fn!r}; accepted: a callable '
                     'x -> logits.')
  try:
    hash(logits_fn)
  except TypeError:
    raise ValueError(
        f'logits_fn of type {type(logits_fn).__name__} is not hashable; '
        'accepted: a hashable callable (e.g. a closure or function) or a '
        'jax.tree_util.Partial(apply_fn, variables).') from None
  return static_fn


def run_jitted(core: Callable[..., Any], logits_fn: Callable[..., Any],
               arrays: tuple[Any, ...], config: dict[str, Any]) -> Any:
  """Calls ``core(logits_fn, *arrays, **config)`` under ``jax.jit``.

  ``config`` values are static (hashable); ``arrays`` are traced. See the
  module docstring for how ``logits_fn`` is treated.
  """
  config = tuple(sorted(config.items()))
  return _dispatch(logits_fn, _jit_static_fn, _jit_pytree_fn)(
      core, logits_fn, arrays, config)


# --------------------------------------------------------------------------
# Geometry. ``v`` has a leading batch axis; per-example scalars have shape B.
# --------------------------------------------------------------------------


def expand(s: jax.Array, like: jax.Array) -> jax.Array:
  """Reshapes a ``(B,)`` vector to broadcast against ``like``."""
  return jnp.reshape(s, s.shape + (1,) * (like.ndim - 1))


def l2_norm(v: jax.Array) -> jax.Array:
  """Per-example L2 norm over all non-batch axes, shape ``(B,)``."""
  v = v.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim))))


def ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
  """sign(g) for L-inf; g / ||g||_2 per example for L2 (0 where g = 0)."""
  if norm == 'linf':
    return jnp.sign(grad)
  n = l2_norm(grad)
  n = jnp.where(n > 0, n, 1.0)
  return (grad / expand(n, grad)).astype(grad.dtype)


def project(x_adv: jax.Array, x: jax.Array, epsilon: jax.Array, norm: str,
            bounds: tuple[float, float]) -> jax.Array:
  """Projects onto the epsilon-ball around ``x``, then clips to ``bounds``.

  Clipping to a box that contains ``x`` never moves a point away from ``x``
  coordinate-wise, so the result lies in both sets (for L-inf it is the exact
  projection onto their intersection).
  """
  delta = x_adv - x
  if norm == 'linf':
    x_adv = jnp.clip(x_adv, x - epsilon, x + epsilon)
  else:
    n = l2_norm(delta)
    scale = jnp.where(n > epsilon, epsilon / jnp.where(n > 0, n, 1.0), 1.0)
    x_adv = x + delta * expand(scale, delta).astype(delta.dtype)
  return jnp.clip(x_adv, bounds[0], bounds[1])


def random_start(key: jax.Array, x: jax.Array, epsilon: jax.Array, norm: str,
                 bounds: tuple[float, float]) -> jax.Array:
  """A uniform sample of the epsilon-ball around ``x``, clipped to bounds.

  L-inf: each coordinate uniform in ``[-eps, eps]``. L2: a Gaussian direction
  normalised to the unit sphere, times radius ``eps * U**(1/d)`` with ``d`` the
  number of coordinates per example (uniform in the ball's volume).
  """
  if norm == 'linf':
    delta = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * epsilon
  else:
    k_dir, k_rad = jax.random.split(key)
    d = int(np.prod(x.shape[1:]))
    direction = jax.random.normal(k_dir, x.shape, jnp.float32)
    direction = direction / expand(jnp.maximum(l2_norm(direction), 1e-12),
                                   direction)
    radius = epsilon * jax.random.uniform(k_rad, x.shape[:1]) ** (1.0 / d)
    delta = (direction * expand(radius, direction)).astype(x.dtype)
  # The projection only absorbs rounding (and clips to the box).
  return project(x + delta, x, epsilon, norm, bounds)
