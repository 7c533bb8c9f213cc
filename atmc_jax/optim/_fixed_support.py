"""Fine-tuning with a frozen sparsity pattern (the AP and NAP baselines).

The pruning baselines prune once by global magnitude and then fine-tune only
the surviving weights::

    support = magnitude_support(params, budget)         # |theta| top-k
    params  = where(support, params, 0)
    tx      = fixed_support(inner)                       # support = params != 0
    # every step: g = where(support, g, 0); d = inner(g);
    #             params + updates = where(support, params + d, 0)

The support is stored in the optimizer state (a bool array per selected
leaf), so it checkpoints and replicates with the rest of the state.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from atmc_jax import projections
from atmc_jax._src import base
from atmc_jax._src import tree_utils
from atmc_jax.optim import _atmc


class FixedSupportState(NamedTuple):
  """State of :func:`fixed_support`.

  Attributes:
    support: bool pytree with the params' structure: the frozen pattern on
      selected leaves (full shape), a scalar ``True`` on unselected leaves.
    inner_state: the state of the wrapped transformation.
  """

  support: base.PyTree
  inner_state: optax.OptState


def magnitude_support(
    params: base.Params,
    budget: int,
    mask: base.MaskOrFn = None,
) -> base.PyTree:
  """One-shot global magnitude pruning: the top-``budget`` |entries|.

  Returns ``project_l0(params, budget, mask) != 0`` on the selected leaves
  and all-``True`` arrays on the others, so it has at most ``budget`` True
  entries over the selected leaves (fewer where ``params`` has fewer
  non-zeros).

  Args:
    params: the (usually dense, trained) params.
    budget: number of entries to keep over all selected leaves, ``>= 0``.
    mask: which leaves are pruned (``None``: floating leaves, ``ndim >= 2``).

  Returns:
    A pytree of bool arrays with ``params``' structure and shapes.

  Raises:
    ValueError: ``budget < 0`` or a bad mask.
  """
  budget = _atmc.static_int('budget', budget)
  if budget < 0:
    raise ValueError(f'budget must be in [0, inf), got {budget}.')
  sel = tree_utils.resolve_mask(params, mask)

  @jax.jit
  def support(params):
    pruned = projections.project_l0(params, budget, sel)
    return jax.tree.map(
        lambda m, q, p: (q != 0) if m else jnp.ones(jnp.shape(p), bool),
        sel, pruned, params)

  return support(params)


def fixed_support(
    inner: optax.GradientTransformation,
    support: Optional[base.PyTree] = None,
    *,
    mask: base.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  """Steps of ``inner`` restricted to a frozen support.

  .. math::

    \\theta_{t+1} = S \\odot (\\theta_t + \\Delta_t), \\qquad
    \\Delta_t = \\text{inner}(S \\odot g_t)

  The gradients are zeroed outside the support before ``inner`` (so its
  momentum and weight decay never act there) and the params outside the
  support are kept exactly zero: ``updates = -params`` there.

  .. warning::
    This must be the outermost transformation, and ``update`` must be given
    ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from atmc_jax import optim
    >>> params = {'w': jnp.array([[1.0, 0.0], [0.0, 3.0]])}
    >>> tx = optim.fixed_support(optax.sgd(0.1))   # support: params != 0
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.ones((2, 2))}, state, params)
    >>> optax.apply_updates(params, updates)['w']
    Array([[0.9, 0. ],
           [0. , 2.9]], dtype=float32)

  Args:
    inner: the transformation producing the unconstrained step.
    support: bool pytree with the params' structure (leaves broadcastable to
      the params' leaves), e.g. from :func:`magnitude_support`; ``None``
      takes ``params != 0`` of the params given to ``init``. Only the
      leaves selected by ``mask`` are used.
    mask: which leaves have a frozen support (``None``: floating leaves with
      ``ndim >= 2``); the other leaves get the inner updates unchanged.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`FixedSupportState`.

  Raises:
    ValueError: ``support`` does not match the params' structure or shapes,
      ``init`` is given no params (``None`` or an empty tree), or ``update``
      is called without ``params``.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    base.check_init_params(params, 'fixed_support')
    sel = tree_utils.resolve_mask(params, mask)
    if support is None:
      sup = jax.tree.map(
          lambda m, p: (p != 0) if m else jnp.ones((), bool), sel, params)
    else:
      tree_def = jax.tree.structure(params)
      sup_leaves = tree_utils.flatten_like(params, support, 'support')
      names = jax.tree.leaves(tree_utils.leaf_names(params))
      out = []
      for name, m, s, p in zip(names, jax.tree.leaves(sel), sup_leaves,
                               jax.tree.leaves(params)):
        if not m:
          out.append(jnp.ones((), bool))
          continue
        s = jnp.asarray(s, bool)
        try:
          s = jnp.broadcast_to(s, jnp.shape(p))
        except ValueError as e:
          raise ValueError(
              f'support leaf {name!r} has shape {s.shape}, which does not '
              f'broadcast to the param shape {jnp.shape(p)}.') from e
        out.append(s)
      sup = jax.tree.unflatten(tree_def, out)
    return FixedSupportState(support=sup, inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(base.NO_PARAMS_MSG)
    sel = tree_utils.resolve_mask(params, mask)
    updates = jax.tree.map(
        lambda m, s, g: jnp.where(s, g, jnp.zeros_like(g)) if m else g,
        sel, state.support, updates)
    inner_updates, inner_state = inner.update(
        updates, state.inner_state, params, **extra_args)
    new_updates = jax.tree.map(
        lambda m, s, d, p: jnp.where(s, d, -p.astype(d.dtype)) if m else d,
        sel, state.support, inner_updates, params)
    return new_updates, FixedSupportState(support=state.support,
                                          inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
