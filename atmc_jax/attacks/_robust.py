"""Robust accuracy under a suite of attacks, and the ATMC paper's suite.

An *attack* here is any callable ``(logits_fn, x, y, key) -> x_adv``; build
one from the library's attacks with :func:`functools.partial`, e.g.
``functools.partial(pgd, epsilon=8 / 255, num_steps=20)``.
"""

import functools
import zlib
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax._src import base
from atmc_jax.attacks import _common
from atmc_jax.attacks import _pgd
from atmc_jax.attacks import _simple

AttackFn = Callable[[base.LogitsFn, jax.Array, jax.Array, jax.Array],
                    jax.Array]

_RESERVED = ('clean', 'worst_case')


def _correct_core(logits_fn, x, y):
  return jnp.argmax(logits_fn(x), axis=-1) == y


def _correct(logits_fn, x, y) -> np.ndarray:
  return np.asarray(_common.run_jitted(_correct_core, logits_fn, (x, y), {}))


def _unpack(batch: Any) -> tuple[Any, Any]:
  if isinstance(batch, Mapping):
    try:
      return batch['image'], batch['label']
    except KeyError:
      raise ValueError(f'a batch dict has keys {sorted(batch)}; accepted: '
                       'dicts with "image" and "label".') from None
  try:
    x, y = batch
  except (TypeError, ValueError):
    raise ValueError(f'a batch of type {type(batch).__name__} is neither an '
                     '(x, y) pair nor a dict with "image"/"label".') from None
  return x, y


def attack_key(key: jax.Array, batch_index: int, name: str) -> jax.Array:
  """The key :func:`robust_accuracy` gives attack ``name`` on a batch.

  It depends on the attack's name, not on its position in the suite, so
  adding an attack does not change the others' results.
  """
  batch_key = jax.random.fold_in(key, batch_index)
  return jax.random.fold_in(batch_key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def robust_accuracy(
    logits_fn: base.LogitsFn,
    batches: Iterable[Any],
    attacks: Mapping[str, AttackFn],
    key: jax.Array,
) -> dict[str, float]:
  """Clean accuracy, accuracy under each attack, and the worst case.

  An example counts toward ``attacks[name]`` if ``logits_fn(x_adv)`` still
  predicts its label; it counts toward ``"worst_case"`` only if it is
  classified correctly clean *and* under every attack (the per-example
  minimum over the suite), so ``worst_case <= min`` of all other entries.

  Args:
    logits_fn: ``x -> logits``, the model in inference mode. Reuse one object
      (or a :class:`jax.tree_util.Partial`) so the attacks compile once.
    batches: iterable of ``(x, y)`` pairs or dicts with ``"image"`` and
      ``"label"``; ``x`` in the attacks' bounds.
    attacks: name -> ``(logits_fn, x, y, key) -> x_adv``; names ``"clean"``
      and ``"worst_case"`` are reserved.
    key: PRNG key; attack ``name`` on batch ``b`` gets
      :func:`attack_key` ``(key, b, name)``.

  Returns:
    ``{"clean": acc, name: acc, ..., "worst_case": acc}``, floats in
    ``[0, 1]``.

  Raises:
    ValueError: no examples, a reserved attack name, or a malformed batch.
  """
  for name in attacks:
    if name in _RESERVED:
      raise ValueError(f'attack name {name!r} is reserved; accepted: any '
                       f'name but {list(_RESERVED)}.')
  counts = dict.fromkeys(('clean', *attacks, 'worst_case'), 0)
  total = 0
  for b, batch in enumerate(batches):
    x, y = _unpack(batch)
    if np.shape(x)[:1] != np.shape(y)[:1]:
      raise ValueError(f'batch {b}: x has shape {np.shape(x)} and y '
                       f'{np.shape(y)}; accepted: equal batch sizes.')
    if np.shape(y)[0] == 0:
      continue
    robust = _correct(logits_fn, x, y)
    counts['clean'] += int(robust.sum())
    for name, attack in attacks.items():
      x_adv = attack(logits_fn, x, y, attack_key(key, b, name))
      correct = _correct(logits_fn, x_adv, y)
      counts[name] += int(correct.sum())
      robust = robust & correct
    counts['worst_case'] += int(robust.sum())
    total += int(np.shape(y)[0])
  if total == 0:
    raise ValueError('batches held no examples; accepted: at least one.')
  return {name: count / total for name, count in counts.items()}


def paper_attack_suite(
    dataset: str = 'cifar10',
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> dict[str, AttackFn]:
  """The attacks the ATMC paper reports, ready for :func:`robust_accuracy`.

  ``"cifar10"``: the training/evaluation attack (reference PGD, eps 4/255,
  7 steps of ``1.25 * eps / 7``, no random start), the poster's PGD at eps
  2/255 and 8/255 (same settings; the poster does not state their steps),
  FGSM at eps 4/255 and WRM with ``gamma=1.3`` and 7 steps.

  ``"mnist"``: the training/evaluation attack (reference PGD, eps 76/255, 16
  steps) and WRM with the reference code's MNIST default ``gamma=1.3``.

  Epsilons are in ``[0, 1]`` pixel units (the data must be unnormalised).

  Raises:
    ValueError: unknown ``dataset``.
  """
  _common.check_choice('dataset', dataset, ('cifar10', 'mnist'))

  def reference_pgd(rho, num_steps):
    epsilon = rho / 255
    return functools.partial(
        _pgd.pgd, epsilon=epsilon, num_steps=num_steps,
        step_size=_pgd.reference_step_size(epsilon, num_steps),
        random_start=False, bounds=bounds)

  wrm = functools.partial(_simple.wrm, gamma=1.3, num_steps=7, bounds=bounds)
  if dataset == 'mnist':
    return {'pgd_eps76': reference_pgd(76, 16), 'wrm_gamma1.3': wrm}
  return {
      'pgd_eps4': reference_pgd(4, 7),
      'pgd_eps2': reference_pgd(2, 7),
      'pgd_eps8': reference_pgd(8, 7),
      'fgsm_eps4': functools.partial(_simple.fgsm, epsilon=4 / 255,
                                     bounds=bounds),
      'wrm_gamma1.3': wrm,
  }
