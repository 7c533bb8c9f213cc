"""AutoAttack (Croce & Hein, 2020): a parameter-free ensemble of attacks.

The standard version runs, in order, APGD-CE, APGD-T, FAB-T and Square on
the points that are still classified correctly; an example counts as robust
only if no attack fools it within the ball (the per-example worst case).

Settings of the standard version (``AutoAttack(version='standard')`` of
fra31/auto-attack, L-inf):

=========  ==========================================================
APGD-CE    100 iterations, 1 restart, rho 0.75, momentum 0.75
APGD-T     targeted DLR loss, 9 target classes, 100 iterations and 1
           restart per target
FAB-T      9 target classes, 100 iterations, 1 restart, alpha_max 0.1,
           eta 1.05, beta 0.9
Square     5000 queries, p_init 0.8, margin loss, 1 restart
=========  ==========================================================
"""

import functools
import zlib
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax._src import base
from atmc_jax.attacks import _apgd
from atmc_jax.attacks import _common
from atmc_jax.attacks import _fab
from atmc_jax.attacks import _square

STANDARD_ATTACKS = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
ATTACK_NAMES = ('apgd-ce', 'apgd-dlr', 'apgd-t', 'fab-t', 'square')
VERSIONS = ('standard', 'custom', 'rand')
LINF_ONLY = ('fab-t', 'square')
# A model whose accuracy under a strong attack (AutoAttack, or the
# worst case of PGD with restarts and APGD-CE) is more than this many
# accuracy points below its accuracy under PGD is flagged as possibly
# masking gradients.
MASKING_GAP = 0.05


def masking_suspected(gap: float, threshold: float = MASKING_GAP) -> bool:
  """Whether PGD overestimates a model's robustness (gradient masking).

  Args:
    gap: accuracy under PGD minus accuracy under a stronger attack, as
      fractions (``0.06`` is 6 points).
    threshold: the largest gap that is not flagged (default 5 points).

  Returns:
    ``gap > threshold``, as a Python bool.
  """
  return bool(gap > threshold)


class AutoAttackResult(NamedTuple):
  """What :func:`autoattack` returns.

  Attributes:
    x_adv: the adversarial inputs, shape and dtype of ``x``; ``x`` itself for
      examples no attack fooled (and for those misclassified clean).
    robust: ``(B,)`` bool, classified correctly clean and under every
      attack.
    accuracy: ``{"clean": a, <attack>: a, ..., "autoattack": a}``: the
      accuracy clean, after each attack in order (cumulative: the points
      still robust after that attack and all before it) and in the end.
  """
  x_adv: jax.Array
  robust: np.ndarray
  accuracy: dict[str, float]


def standard_attacks(epsilon: float, norm: str = 'linf',
                     bounds: tuple[float, float] = (0.0, 1.0), *,
                     num_steps: int = 100, num_targets: int = 9,
                     num_queries: int = 5000) -> dict:
  """name -> ``(logits_fn, x, y, key) -> x_adv`` with the standard settings.

  Covers every name of ``ATTACK_NAMES``; ``apgd-dlr`` is APGD on the
  untargeted DLR loss (the ``plus`` version's). ``num_steps`` (APGD and
  FAB iterations, per target for the targeted ones), ``num_targets`` and
  ``num_queries`` (Square) default to the standard version's values.
  """
  apgd = functools.partial(_apgd.apgd, epsilon=epsilon, num_steps=num_steps,
                           norm=norm, bounds=bounds, num_restarts=1)
  return {
      'apgd-ce': functools.partial(apgd, loss='ce'),
      'apgd-dlr': functools.partial(apgd, loss='dlr'),
      'apgd-t': functools.partial(_apgd.apgd_targeted, epsilon=epsilon,
                                  num_steps=num_steps,
                                  num_targets=num_targets, norm=norm,
                                  bounds=bounds),
      'fab-t': functools.partial(_fab.fab, epsilon=epsilon,
                                 num_steps=num_steps, num_targets=num_targets,
                                 alpha_max=0.1, eta=1.05, beta=0.9,
                                 norm=norm, bounds=bounds),
      'square': functools.partial(_square.square, epsilon=epsilon,
                                  num_queries=num_queries, p_init=0.8,
                                  norm=norm, bounds=bounds),
  }


def _attack_names(version: str, attacks: Optional[Sequence[str]],
                  norm: str) -> tuple[str, ...]:
  _common.check_choice('version', version, VERSIONS)
  if version == 'rand':
    raise NotImplementedError(
        'version="rand" (APGD with expectation over transformation, for '
        'randomised defences) is not implemented; accepted: "standard" or '
        '"custom".')
  if version == 'standard':
    if attacks is not None:
      raise ValueError(f'attacks={list(attacks)!r} with version="standard"; '
                       'accepted: attacks=None, or version="custom".')
    names = STANDARD_ATTACKS
  else:
    if attacks is None or isinstance(attacks, str) or not list(attacks):
      raise ValueError(f'attacks={attacks!r} with version="custom"; '
                       f'accepted: a non-empty list of {list(ATTACK_NAMES)}.')
    names = tuple(attacks)
    for name in names:
      _common.check_choice('attack', name, ATTACK_NAMES)
    if len(set(names)) != len(names):
      raise ValueError(f'attacks={list(names)} repeats a name; accepted: '
                       'distinct names.')
  if norm != 'linf':
    bad = [n for n in names if n in LINF_ONLY]
    if bad:
      raise ValueError(
          f'norm={norm!r} with attacks {bad}; accepted: norm="linf" (FAB-T '
          'and Square are L-inf only here), or version="custom" with '
          'attacks from ["apgd-ce", "apgd-dlr", "apgd-t"].')
  return names


def _bucket(n: int, total: int) -> int:
  """The padded size of a subset of ``n`` points: a power of two <= total."""
  size = 1
  while size < n:
    size *= 2
  return min(size, total)


def _correct_core(logits_fn, x, y):
  return jnp.argmax(logits_fn(x), axis=-1) == y


def _correct(logits_fn, x, y) -> np.ndarray:
  return np.asarray(_common.run_jitted(_correct_core, logits_fn, (x, y), {}))


def autoattack(
    logits_fn: base.LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    epsilon: float,
    norm: str = 'linf',
    version: str = 'standard',
    attacks: Optional[Sequence[str]] = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    num_steps: int = 100,
    num_targets: int = 9,
    num_queries: int = 5000,
) -> AutoAttackResult:
  """Runs AutoAttack's attacks in order on the points still robust.

  Every attack sees only the examples that are classified correctly clean
  and that no earlier attack fooled (gathered into a smaller batch, padded
  to a power of two so that few shapes compile); it stops as soon as none
  is left. Attack ``name`` gets the key ``fold_in(key, crc32(name))``. The
  attacks themselves are jitted; this driver runs eagerly on concrete
  arrays.

  Args:
    logits_fn: ``x -> logits`` of shape ``(B, K)`` (``K >= 4`` for APGD-T);
      see :func:`pgd`.
    x: clean inputs, values in ``bounds``; images ``(B, H, W, C)`` for
      Square.
    y: ``(B,)`` integer labels.
    key: PRNG key.
    epsilon: ball radius, ``>= 0``.
    norm: ``'linf'``, or ``'l2'`` with APGD attacks only.
    version: ``'standard'`` (APGD-CE, APGD-T, FAB-T, Square with the
      settings of the module docstring) or ``'custom'`` (the ``attacks``
      given, same settings). ``'rand'`` is not implemented.
    attacks: with ``version='custom'``, names from ``ATTACK_NAMES``
      (``'apgd-ce'``, ``'apgd-dlr'``, ``'apgd-t'``, ``'fab-t'``,
      ``'square'``), run in the given order.
    bounds: valid input range ``(lo, hi)``.
    num_steps: APGD and FAB iterations (per target for APGD-T and FAB-T);
      100 in the standard version.
    num_targets: target classes of APGD-T and FAB-T; 9 in the standard
      version.
    num_queries: Square's queries; 5000 in the standard version. Lower
      these three only for quick checks: the result is then not the
      standard AutoAttack.

  Returns:
    An :class:`AutoAttackResult`.

  Raises:
    ValueError: unknown ``version`` or attack name, FAB-T or Square with a
      norm other than ``'linf'``, or the input errors of :func:`pgd`.
    NotImplementedError: ``version='rand'``.

  References:
    Croce & Hein, Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks, ICML 2020.
    https://arxiv.org/abs/2003.01690
  """
  _common.check_choice('norm', norm, _common.NORMS)
  names = _attack_names(version, attacks, norm)
  bounds = _common.check_attack_args(x, y, bounds=bounds, epsilon=epsilon,
                                     logits_fn=logits_fn)
  if isinstance(x, jax.core.Tracer) or isinstance(y, jax.core.Tracer):
    raise ValueError('autoattack got traced x or y; accepted: concrete '
                     'arrays (it selects the robust points eagerly; call '
                     'the jitted attacks directly inside jit).')
  key = _common.check_key(key, True)
  for name, value in (('num_steps', num_steps), ('num_targets', num_targets),
                      ('num_queries', num_queries)):
    _common.check_int(name, value, 1)
  suite = standard_attacks(epsilon, norm, bounds, num_steps=num_steps,
                           num_targets=num_targets, num_queries=num_queries)
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  total = int(y.shape[0])
  robust = np.array(_correct(logits_fn, x, y))
  accuracy = {'clean': float(robust.mean())}
  x_adv = x
  for name in names:
    idx = np.flatnonzero(robust)
    if idx.size:
      size = _bucket(idx.size, total)
      padded = np.concatenate([idx, np.full(size - idx.size, idx[0])])
      xs, ys = x[padded], y[padded]
      name_key = jax.random.fold_in(key, zlib.crc32(name.encode()) &
                                    0x7FFFFFFF)
      adv = suite[name](logits_fn, xs, ys, name_key)
      fooled = ~_correct(logits_fn, adv, ys)[:idx.size]
      broken = idx[fooled]
      robust[broken] = False
      x_adv = x_adv.at[broken].set(adv[:idx.size][fooled])
    accuracy[name] = float(robust.mean())
  accuracy['autoattack'] = float(robust.mean())
  return AutoAttackResult(x_adv=x_adv, robust=robust, accuracy=accuracy)
