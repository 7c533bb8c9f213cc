"""The deployed (compressed) model, read off the optimizer state.

Following ``optax.contrib.schedule_free_eval_params(state, params)``, the
model to deploy is derived from the transformation's state, which holds
every hyper-parameter it needs::

    tx = optim.atmc(inner, budget=k, bits=8)
    ...                                        # train
    deployed = optim.deployable_params(params, opt_state)

The state may be the transformation's own state or any optax state holding
exactly one of them (``optax.inject_hyperparams``, ``optax.chain``,
``optax.MultiSteps``, ...). What is deployed depends on the state found:

* :class:`~atmc_jax.optim.AtmcState`: ``project_atmc(theta)`` (``bits``
  set) or ``project_l0(theta)`` (``bits=None``) with the state's budget,
  bits, quantizer, quantizer initialisation (Forgy draws with
  ``quantizer_key(0)``, as the keyword form) and selected leaves; with ``use_copy=True`` the ADMM copy
  ``Z`` on the selected leaves instead (the reference code's choice; ``Z``
  is feasible for both constraints by construction).
* :class:`~atmc_jax.optim.FixedSupportState`: ``params`` masked with the
  frozen support.
* :class:`~atmc_jax.optim.ProjectedState`: ``params`` unchanged; every
  update of :func:`~atmc_jax.optim.projected` leaves them on the constraint
  set (the projection itself is a callable, which a state cannot hold).

Without a state, the keyword form repeats the hyper-parameters of
:func:`~atmc_jax.optim.atmc`.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from atmc_jax._src import base
from atmc_jax.optim import _atmc
from atmc_jax.optim import _fixed_support

_STATES = (_atmc.AtmcState, _fixed_support.FixedSupportState,
           _atmc.ProjectedState)


def find_state(state: Any):
  """The one compression state inside ``state`` (a ValueError otherwise)."""
  found = [node for node in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, _STATES))
           if isinstance(node, _STATES)]
  names = ', '.join(s.__name__ for s in _STATES)
  if len(found) != 1:
    raise ValueError(
        f'state holds {len(found)} compression states; accepted: an optax '
        f'state holding exactly one of {names}.')
  return found[0]


def _concrete_int(name: str, x: Any) -> int:
  if isinstance(x, jax.core.Tracer):
    raise ValueError(
        f'state.constraint.{name} is traced; deployable_params(params, '
        'state) reads static hyper-parameters from the state, so call it '
        'outside jax.jit (it compiles its own projection).')
  return int(np.asarray(x))


def _from_atmc_state(params, state: _atmc.AtmcState, use_copy: bool):
  constraint = state.constraint
  bits = _concrete_int('bits', constraint.bits)
  sel = jax.tree.map(
      lambda m: bool(_concrete_int('selected', m)), constraint.selected)
  tree_def = jax.tree.structure(params)
  if jax.tree.structure(sel) != tree_def:
    raise ValueError(
        f'params structure {tree_def} does not match the state\'s '
        f'{jax.tree.structure(sel)}; accepted: the params the state was '
        'built for.')
  if use_copy:
    if not bits:
      raise ValueError(
          'use_copy=True needs the ADMM copy Z, which atmc keeps only when '
          'quantising; this state has bits=None. Accepted: use_copy=False, '
          'or a state of atmc(..., bits=b).')
    return jax.tree.map(
        lambda m, z, p: jnp.asarray(z).astype(jnp.result_type(p)) if m
        else p, sel, state.z, params)
  quantizer = _atmc.QUANTIZERS[_concrete_int('quantizer',
                                             constraint.quantizer)]
  quantizer_init = _atmc.QUANTIZER_INITS[_concrete_int(
      'quantizer_init', constraint.quantizer_init)]
  budget = constraint.budget
  if not isinstance(budget, jax.core.Tracer):
    budget = int(np.asarray(budget))
  return _atmc.deployable_params(params, budget=budget, bits=bits or None,
                                 mask=sel, quantizer=quantizer,
                                 quantizer_init=quantizer_init)


def deployable_params(
    params: base.Params,
    state: Optional[optax.OptState] = None,
    *,
    use_copy: bool = False,
    **keywords: Any,
) -> base.Params:
  """The compressed model to deploy, from the optimizer state.

  See the module docstring for what each state deploys. The result
  satisfies the constraints exactly: at most ``budget`` non-zeros over the
  selected leaves and, when quantising, at most ``2^bits`` distinct non-zero
  values per selected leaf. Unselected leaves (biases, BatchNorm) are
  returned unchanged.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from atmc_jax import optim
    >>> params = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    >>> tx = optim.atmc(optax.sgd(0.1), budget=2, bits=1)
    >>> state = tx.init(params)
    >>> optim.deployable_params(params, state)['w']
    Array([[ 0., -2.],
           [ 0.,  3.]], dtype=float32)
    >>> optim.deployable_params(params, budget=2, bits=1)['w']  # no state
    Array([[ 0., -2.],
           [ 0.,  3.]], dtype=float32)

  Args:
    params: the trained params (``theta``), unreplicated.
    state: the optimizer state: an :class:`AtmcState`,
      :class:`FixedSupportState` or :class:`ProjectedState`, or an optax
      state holding exactly one of them. ``None``: the keyword form.
    use_copy: deploy the ADMM copy ``Z`` (selected leaves) instead of
      re-projecting ``theta``; only for an :class:`AtmcState` with ``bits``.
    **keywords: the keyword form, without a state: ``budget`` (required),
      ``bits``, ``mask``, ``quantizer``, ``quantizer_init`` and ``key`` as
      in :func:`atmc`.

  Returns:
    A pytree with ``params``' structure, shapes and dtypes.

  Raises:
    ValueError: both or neither of ``state`` and the keywords are given;
      the state holds no (or several) compression states or was built for
      other params; ``use_copy`` without a copy; a hyper-parameter is out of
      range.
  """
  if state is None:
    if use_copy:
      raise ValueError('use_copy=True needs the optimizer state (the copy Z '
                       'lives there); accepted: deployable_params(params, '
                       'state, use_copy=True).')
    if 'budget' not in keywords:
      raise ValueError(
          'deployable_params needs the optimizer state or budget=...; '
          'accepted: deployable_params(params, state) or '
          'deployable_params(params, budget=k, bits=b).')
    return _atmc.deployable_params(params, **keywords)
  if keywords:
    raise ValueError(
        f'got both a state and {sorted(keywords)}; the state holds the '
        'hyper-parameters. Accepted: deployable_params(params, state) or '
        'deployable_params(params, budget=k, ...).')
  found = find_state(state)
  if isinstance(found, _atmc.AtmcState):
    return _from_atmc_state(params, found, use_copy)
  if use_copy:
    raise ValueError(
        f'use_copy=True needs an AtmcState with bits; got a '
        f'{type(found).__name__}. Accepted: use_copy=False.')
  if isinstance(found, _fixed_support.FixedSupportState):
    return jax.tree.map(
        lambda s, p: jnp.where(s, p, jnp.zeros_like(p)).astype(
            jnp.result_type(p)), found.support, params)
  return params
