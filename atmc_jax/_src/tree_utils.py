"""Pytree helpers shared by projections, optimizers and accounting.

"Which leaves are compressed" is a static bool pytree with ``optax.masked``
semantics. Every public function that takes a ``mask`` accepts:

* ``None``: the default selection, floating-point leaves with ``ndim >= 2``
  (conv/dense kernels and U, V, C factors; not biases or BatchNorm);
* a bool pytree with the same structure as the params;
* a callable ``params -> bool pytree``.
"""

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax._src import base


def flatten_like(tree: base.PyTree, other: base.PyTree, what: str) -> list:
  """The leaves of ``other`` flattened up to ``tree``'s structure.

  Raises:
    ValueError: ``other``'s structure does not match ``tree``'s; the message
      names ``what`` (e.g. ``'mask'``).
  """
  tree_def = jax.tree.structure(tree)
  try:
    return tree_def.flatten_up_to(other)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f'{what} structure does not match the params: expected '
        f'{tree_def}, got {jax.tree.structure(other)}.') from e


def default_mask(tree: base.PyTree) -> base.PyTree:
  """Selects floating-point leaves with ``ndim >= 2``."""
  return jax.tree.map(
      lambda x: bool(jnp.ndim(x) >= 2
                     and jnp.issubdtype(jnp.result_type(x), jnp.floating)),
      tree)


def resolve_mask(tree: base.PyTree, mask: base.MaskOrFn = None,
                 *, require_float: bool = True) -> base.PyTree:
  """Returns a bool pytree with ``tree``'s structure.

  Args:
    tree: the params (or anything with the params' structure).
    mask: ``None``, a bool pytree, or a ``params -> bool pytree`` callable.
    require_float: raise if a selected leaf is not floating point.

  Raises:
    ValueError: the mask's structure does not match ``tree``, a mask leaf is
      not a Python/NumPy bool, or (with ``require_float``) a selected leaf is
      not floating point.
  """
  if mask is None:
    return default_mask(tree)
  if callable(mask):
    mask = mask(tree)
  tree_def = jax.tree.structure(tree)
  mask_leaves = flatten_like(tree, mask, 'mask')
  out = []
  paths = [path_to_name(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(tree)[0]]
  for name, m, leaf in zip(paths, mask_leaves, tree_def.flatten_up_to(tree)):
    if not isinstance(m, (bool, np.bool_)):
      raise ValueError(
          f'mask leaf at {name!r} must be a Python bool (static), got '
          f'{type(m).__name__}.')
    if m and require_float and not jnp.issubdtype(
        jnp.result_type(leaf), jnp.floating):
      raise ValueError(
          f'leaf {name!r} is selected by the mask but has dtype '
          f'{jnp.result_type(leaf)}; only floating-point leaves can be '
          'compressed.')
    out.append(bool(m))
  return jax.tree.unflatten(tree_def, out)


def selected_leaves(tree: base.PyTree, mask: base.PyTree) -> list:
  """The leaves of ``tree`` whose (resolved) ``mask`` leaf is True."""
  return [x for x, m in zip(jax.tree.leaves(tree),
                            jax.tree.structure(tree).flatten_up_to(mask)) if m]


def map_selected(fn: Callable[[Any], Any], tree: base.PyTree,
                 mask: base.PyTree) -> base.PyTree:
  """Applies ``fn`` to the selected leaves; the others pass through."""
  return jax.tree.map(lambda m, x: fn(x) if m else x, mask, tree)


def path_to_name(path: Sequence[Any]) -> str:
  """A ``/``-joined name for a pytree key path (``'Conv_0/kernel'``)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  return '/'.join(parts)


def leaf_names(tree: base.PyTree) -> base.PyTree:
  """A pytree of ``/``-joined leaf names with ``tree``'s structure."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: path_to_name(p), tree)


def make_mask(tree: base.PyTree, rules: Sequence[tuple[str, bool]],
              default: bool | None = None) -> base.PyTree:
  """A bool mask from regex rules over ``/``-joined leaf names.

  Each rule is ``(regex, value)``; the first rule whose regex full-matches a
  leaf's name decides. Leaves matching no rule get ``default``, or the
  default selection (floating, ``ndim >= 2``) when ``default`` is None.
  """
  compiled = [(re.compile(r), v) for r, v in rules]
  fallback = default_mask(tree)

  def decide(path, leaf_default):
    name = path_to_name(path)
    for regex, value in compiled:
      if regex.fullmatch(name):
        return bool(value)
    return leaf_default if default is None else bool(default)

  return jax.tree_util.tree_map_with_path(
      lambda p, _, d: decide(p, d), tree, fallback)


def count_nonzero(tree: base.PyTree, mask: base.MaskOrFn = None) -> jax.Array:
  """Total number of non-zero entries over the selected leaves."""
  mask = resolve_mask(tree, mask, require_float=False)
  leaves = selected_leaves(tree, mask)
  if not leaves:
    return jnp.zeros((), jnp.int32)
  return sum(jnp.count_nonzero(x).astype(jnp.int32) for x in leaves)


def count_selected(tree: base.PyTree, mask: base.MaskOrFn = None) -> int:
  """Total number of entries (zero or not) over the selected leaves."""
  mask = resolve_mask(tree, mask, require_float=False)
  return int(sum(int(np.prod(np.shape(x))) for x in
                 selected_leaves(tree, mask)))
