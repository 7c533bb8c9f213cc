"""Per-example attack losses on logits: cross-entropy, CW margin and DLR.

Every loss maps ``(logits, labels)`` of shapes ``(B, K)`` and ``(B,)`` to a
``(B,)`` vector of per-example losses that an *untargeted* attack maximises.
A targeted attack minimises the same loss with ``labels`` set to the target
classes (for the margin loss this drives the target logit above all others).
"""

from typing import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  r"""Per-example softmax cross-entropy with integer labels.

  .. math::
    \ell(z, y) = -z_y + \log \sum_j e^{z_j}

  Args:
    logits: ``(B, K)`` logits.
    labels: ``(B,)`` integer labels in ``[0, K)``.

  Returns:
    ``(B,)`` float32 losses.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def margin_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  r"""Carlini-Wagner logit margin: positive iff the example is misclassified.

  .. math::
    \ell(z, y) = \max_{j \neq y} z_j - z_y

  Args:
    logits: ``(B, K)`` logits, ``K >= 2``.
    labels: ``(B,)`` integer labels in ``[0, K)``.

  Returns:
    ``(B,)`` float32 margins.
  """
  z = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=bool)
  z_y = jnp.sum(jnp.where(onehot, z, 0.0), axis=-1)
  z_other = jnp.max(jnp.where(onehot, -jnp.inf, z), axis=-1)
  return z_other - z_y


def dlr_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  r"""Difference of Logits Ratio (Croce & Hein, 2020), untargeted.

  Shift- and scale-invariant in the logits; :math:`\pi` sorts them in
  decreasing order.

  .. math::
    \mathrm{DLR}(z, y) = -\frac{z_y - \max_{j \neq y} z_j}
                              {z_{\pi_1} - z_{\pi_3} + 10^{-12}}

  Args:
    logits: ``(B, K)`` logits, ``K >= 3``.
    labels: ``(B,)`` integer labels in ``[0, K)``.

  Returns:
    ``(B,)`` float32 losses.

  Raises:
    ValueError: fewer than 3 classes.
  """
  num_classes = logits.shape[-1]
  if num_classes < 3:
    raise ValueError(f'loss="dlr" needs at least 3 classes, got '
                     f'{num_classes}; accepted: >= 3 (use "margin" or "ce").')
  z = logits.astype(jnp.float32)
  top = jax.lax.top_k(z, 3)[0]
  return margin_loss(z, labels) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: jax.Array, labels: jax.Array,
                      targets: jax.Array) -> jax.Array:
  r"""Targeted Difference of Logits Ratio (Croce & Hein, 2020), maximised.

  Positive iff the target logit exceeds the true one; shift- and
  scale-invariant in the logits (:math:`\pi` sorts them decreasingly).

  .. math::
    \mathrm{DLR}_T(z, y, t) = -\frac{z_y - z_t}
        {z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2 + 10^{-12}}

  Args:
    logits: ``(B, K)`` logits, ``K >= 4``.
    labels: ``(B,)`` true labels in ``[0, K)``.
    targets: ``(B,)`` target labels in ``[0, K)``.

  Returns:
    ``(B,)`` float32 losses.

  Raises:
    ValueError: fewer than 4 classes.
  """
  num_classes = logits.shape[-1]
  if num_classes < 4:
    raise ValueError(f'the targeted DLR loss needs at least 4 classes, got '
                     f'{num_classes}; accepted: >= 4.')
  z = logits.astype(jnp.float32)
  top = jax.lax.top_k(z, 4)[0]
  z_y = jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0]
  z_t = jnp.take_along_axis(z, targets[:, None], axis=-1)[:, 0]
  return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


LOSSES = {
    'ce': cross_entropy,
    'margin': margin_loss,
    'dlr': dlr_loss,
}


def get_loss(name: str, accepted=('ce', 'margin')) -> LossFn:
  """Returns the loss called ``name``.

  Raises:
    ValueError: ``name`` is not one of ``accepted``.
  """
  if name not in accepted:
    raise ValueError(f'loss={name!r}; accepted: {list(accepted)}.')
  return LOSSES[name]
