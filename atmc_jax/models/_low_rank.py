"""Fixed-rank factor models: every layer's matrix held as ``W = B·A``.

The ALR baseline of the ATMC paper (spec §4.3) truncates the singular values
of a trained dense network globally and then fine-tunes the **factors** with
the ranks fixed: a layer whose matrix is ``W`` (``out x fan_in``; a conv
kernel ``(kh, kw, in, out)`` is read as ``kernel.reshape(-1, out).T``, as in
:mod:`atmc_jax.models._factorized`) stores

* ``B``: ``out x r`` (``U_r sqrt(S_r)`` at the start),
* ``A``: ``r x fan_in`` (``sqrt(S_r) V_r^T`` at the start),

in place of its ``kernel``; the size of the model is ``32 * sum_l r_l (m_l +
n_l)`` bits. :class:`LowRankModel` runs any dense Flax model on such params
by forming each kernel as ``(B·A).T`` before applying it.
"""

import dataclasses
from typing import Any, Mapping

import jax
from jax import lax
import jax.numpy as jnp

from atmc_jax._src import base

Array = jax.Array

LOW_RANK_NAMES = ('B', 'A')


def is_low_rank_layer(node: Any) -> bool:
  """Whether ``node`` is a layer dict holding ``B`` and ``A`` factors."""
  return isinstance(node, Mapping) and all(
      k in node and not isinstance(node[k], Mapping) for k in LOW_RANK_NAMES)


def compose_low_rank(b: Array, a: Array) -> Array:
  """``W = B·A`` (``out x fan_in``), with ``Precision.HIGHEST``.

  Raises:
    ValueError: the inner dimensions of ``B`` and ``A`` differ.
  """
  if b.ndim != 2 or a.ndim != 2 or b.shape[1] != a.shape[0]:
    raise ValueError(f'low-rank factors B{b.shape} and A{a.shape} do not '
                     'form a product; expected B (out x r), A (r x fan_in).')
  return jnp.matmul(b, a, precision=lax.Precision.HIGHEST)


def to_low_rank(params: base.Params, b_tree: base.PyTree,
                a_tree: base.PyTree) -> base.Params:
  """Replaces each ``kernel`` that has factors by its ``B`` and ``A``.

  Args:
    params: dense params (nested dicts).
    b_tree: a pytree with ``params``' structure holding ``B`` at the
      kernels to convert and ``None`` elsewhere (the first output of
      :func:`atmc_jax.projections.low_rank_factors`).
    a_tree: the same for ``A`` (its second output).

  Returns:
    The params with ``{'B': ..., 'A': ...}`` in place of those kernels;
    every other leaf unchanged.
  """
  def convert(node, b, a):
    if not isinstance(node, Mapping):
      return node
    out = {}
    for key, value in node.items():
      if key == 'kernel' and b.get(key) is not None:
        out['B'], out['A'] = b[key], a[key]
      else:
        out[key] = convert(value, b.get(key) if isinstance(b, Mapping)
                           else None, a.get(key) if isinstance(a, Mapping)
                           else None)
    return out

  return convert(params, b_tree, a_tree)


def low_rank_bits(params: base.Params) -> int:
  """``32 * sum_l r_l (m_l + n_l)``: the float32 size of all ``B``, ``A``."""
  total = 0

  def visit(node):
    nonlocal total
    if is_low_rank_layer(node):
      total += sum(int(node[k].size) for k in LOW_RANK_NAMES)
    if isinstance(node, Mapping):
      for value in node.values():
        visit(value)

  visit(params)
  return 32 * total


@dataclasses.dataclass(frozen=True, eq=False)
class LowRankModel:
  """A dense Flax model applied to fixed-rank factor params.

  ``apply(variables, ...)`` forms every kernel held as ``B``, ``A`` (see
  :func:`to_low_rank`) as ``(B·A).T`` reshaped to the dense kernel's shape,
  then calls ``model.apply``; gradients flow to the factors. All other
  arguments (``train``, ``mutable``, ``rngs``) pass through.

  Attributes:
    model: the dense Flax model.
    like: the dense params' shapes (e.g. ``jax.eval_shape`` of its
      ``init``, or the dense params themselves): conv kernels' shapes cannot
      be read off their factors.
  """

  model: Any
  like: Any

  def dense_params(self, params: base.Params) -> base.Params:
    """The dense params the factors compute (every ``B``, ``A`` formed)."""
    from atmc_jax.models import _factorized  # pylint: disable=g-import-not-at-top
    return _factorized.materialize(params, like=self.like)

  def apply(self, variables: Mapping[str, Any], *args, **kwargs):
    variables = dict(variables)
    variables['params'] = self.dense_params(variables['params'])
    return self.model.apply(variables, *args, **kwargs)
