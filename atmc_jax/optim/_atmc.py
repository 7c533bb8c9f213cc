"""ATMC: L0-projected training with ADMM towards per-tensor codebooks.

ATMC (Gui et al., NeurIPS 2019, https://arxiv.org/abs/1902.03538) solves

.. math::

  \\min_\\theta f(\\theta) \\quad \\text{s.t.} \\quad
  \\|\\theta\\|_0 \\le k, \\qquad
  \\theta \\in Q_b = \\{\\theta : |\\theta_t|_0 \\le 2^b
  \\ \\forall \\text{tensors } t\\},

where :math:`\\|\\cdot\\|_0` counts non-zeros over *all* selected tensors
(one global budget ``k``) and :math:`|\\cdot|_0` counts the distinct non-zero
values of one tensor (zero is a free extra level). The sparsity constraint
stays on :math:`\\theta` (projected gradient steps); the quantisation
constraint moves to a copy :math:`Z` tied to :math:`\\theta` by ADMM with a
scaled dual :math:`U`. One call of ``update`` (``t`` = ``state.count``
before the call) does::

    # primal step on f + (rho / 2) * ||theta - Z + U||^2   (bits is not None)
    g     = grads + rho * (theta - Z + U)        # selected leaves only
    d     = inner.update(g)                      # e.g. SGD with momentum
    theta = project_l0(theta + d, k)             # updates = new - old theta
    # ADMM step, every admm_interval updates, skipping t = 0
    if t > 0 and t % admm_interval == 0:
      Z = project_atmc(theta + U, k, bits)       # L0, then k-means per tensor
      U = U + theta - Z                          # scaled dual, step size 1

    # initial state: Z = project_atmc(theta_0, k, bits), U = 0

With ``bits=None`` (ATMC-32) there is no copy, no dual and no penalty: the
update is plain L0-projected training (on a dense model that is the AL0
baseline).

How this maps onto the paper and onto the authors' reference code:

* **Order.** The reference code runs primal step, ``Z`` update, ``U`` update,
  which is the standard scaled-form ADMM order (x, z, u). The paper lists the
  dual update first (``u <- u + theta - Z``, then primal, then
  ``Z <- Q(theta + u)``); unrolled over iterations that is the same cycle
  ``... primal, Z, U, primal, Z, U ...`` with the iteration boundary drawn
  elsewhere, so both produce the same sequence of iterates.
* **Frequency.** The paper updates ``Z`` and ``U`` every iteration; the
  reference every ``quant_interval`` minibatches, skipping minibatch 0 of
  each epoch. Here the ADMM step runs after the primal step of update ``t``
  when ``t > 0`` and ``t % admm_interval == 0`` (``t`` counts updates since
  ``init``, not since the start of an epoch), so ``admm_interval=1`` is the
  paper's schedule apart from the first step, where ``Z`` is already
  ``project_atmc(theta_0)``.
* **rho and the dual step.** ``rho`` (default 0.1, as hard-coded in the
  reference) weights the penalty; the dual step size is 1 (the scaled form),
  as in the reference. ``rho`` is a factory argument, so it can be scheduled
  with ``optax.inject_hyperparams``.
* **The copy is feasible for both constraints.** The reference quantises
  ``theta + U`` on the support of ``theta`` without re-projecting, so its
  ``Z`` can exceed the budget, and it deploys ``Z``. Here ``Z`` is
  ``project_atmc`` (L0 then quantise), and the deployed model is
  :func:`deployable_params`, which satisfies both constraints exactly.
* **Initial copy.** The reference starts from ``Z = theta_0``; here
  ``Z = project_atmc(theta_0)``, a feasible point, so the first penalty
  gradients already pull towards the codebook.

The penalty gradient is added to the incoming gradients *before* the inner
transformation, as if the penalty were part of the loss (reference code), so
momentum and weight decay see it. Momentum buffers are not masked after the
projection (reference code).
"""

import functools
import operator
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from atmc_jax import projections
from atmc_jax._src import base
from atmc_jax._src import tree_utils
from atmc_jax.projections import QUANTIZER_INITS
from atmc_jax.projections import QUANTIZERS
MIN_BITS = 1
MAX_BITS = 16

_STATIC_HINT = (
    'When wrapping with optax.inject_hyperparams, pass '
    "static_args=('bits', 'mask').")


class AtmcConstraint(NamedTuple):
  """The constraint set of :func:`atmc`, as arrays (for deployment).

  ``optim.deployable_params(params, state)`` projects onto it without the
  caller repeating the hyper-parameters.

  Attributes:
    budget: the budget ``k`` of the last update (int32 scalar; it follows a
      budget scheduled with ``optax.inject_hyperparams``).
    bits: the codebook bits, ``0`` for ``bits=None`` (int32 scalar).
    quantizer: the index of the quantizer in :data:`QUANTIZERS` (int32
      scalar).
    quantizer_init: the index of the k-means initialisation in
      :data:`QUANTIZER_INITS` (int32 scalar).
    selected: a bool scalar per params leaf: whether it is constrained.
  """

  budget: jax.Array
  bits: jax.Array
  quantizer: jax.Array
  quantizer_init: jax.Array
  selected: base.PyTree


class AtmcState(NamedTuple):
  """State of :func:`atmc`.

  Attributes:
    count: number of updates done so far (int32 scalar).
    z: the quantised copy, with the params' structure. Selected leaves hold a
      full array when quantising; unselected leaves (and every leaf with
      ``bits=None``) hold a zero scalar of the leaf's dtype.
    u: the scaled dual variable, laid out as ``z``.
    inner_state: the state of the wrapped transformation.
    constraint: the :class:`AtmcConstraint` (budget, bits, quantizer,
      selected leaves).
  """

  count: jax.Array
  z: base.Params
  u: base.Params
  inner_state: optax.OptState
  constraint: AtmcConstraint


class ProjectedState(NamedTuple):
  """State of :func:`projected`: only the wrapped transformation's state."""

  inner_state: optax.OptState


def _is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def static_int(name: str, value: Any) -> int:
  """``value`` as a Python int, or a ValueError naming it."""
  if _is_traced(value):
    raise ValueError(
        f'{name} must be a static Python int, got a traced value {value}. '
        + _STATIC_HINT)
  if isinstance(value, bool):
    raise ValueError(f'{name} must be an int, got the bool {value!r}.')
  try:
    return operator.index(value)
  except TypeError:
    if np.ndim(value) == 0 and float(value) == int(value):
      return int(value)
    raise ValueError(f'{name} must be an int, got {value!r}.') from None


def _validate(*, budget, bits, rho, admm_interval, quantizer,
              quantizer_init):
  """Checks the hyper-parameters of :func:`atmc`; returns static ints."""
  if not _is_traced(budget):  # A traced budget (a scheduled one) is allowed.
    budget = static_int('budget', budget)
    if budget < 0:
      raise ValueError(f'budget must be in [0, inf) (a number of non-zeros), '
                       f'got {budget}.')
  if bits is not None:
    bits = static_int('bits', bits)
    if not MIN_BITS <= bits <= MAX_BITS:
      raise ValueError(
          f'bits must be in [{MIN_BITS}, {MAX_BITS}] or None (no '
          f'quantisation, ATMC-32), got {bits}.')
  if not _is_traced(admm_interval):
    interval = static_int('admm_interval', admm_interval)
    if interval < 1:
      raise ValueError(
          f'admm_interval must be in [1, inf), got {interval}.')
  if callable(rho):
    raise ValueError(
        'rho must be a finite number in (0, inf); to schedule it, wrap atmc '
        'with optax.inject_hyperparams.')
  # ADMM needs a penalty rho > 0 (rho = 0 decouples theta from its
  # quantised copy, so the codebook constraint is never enforced); an
  # infinite rho turns the penalty gradient into inf/nan.
  if rho is not None and not _is_traced(rho):
    try:
      value = np.asarray(rho, np.float64)
    except (TypeError, ValueError):
      value = None
    if value is None or value.ndim or not (
        np.isfinite(value) and value > 0):
      raise ValueError(
          f'rho must be a finite number in (0, inf), got {rho!r}.')
  if quantizer not in QUANTIZERS:
    raise ValueError(
        f'quantizer must be one of {QUANTIZERS}, got {quantizer!r}.')
  if quantizer_init not in QUANTIZER_INITS:
    raise ValueError(
        f'quantizer_init must be one of {QUANTIZER_INITS}, got '
        f'{quantizer_init!r}.')
  if quantizer_init == 'forgy' and quantizer != 'lloyd':
    raise ValueError(
        "quantizer_init='forgy' needs quantizer='lloyd', got "
        f'{quantizer!r}.')
  return budget, bits


def quantizer_key(count: jax.Array) -> jax.Array:
  """The PRNG key of the Forgy initialisation at update count ``count``.

  ``fold_in(key(0), count)``: deterministic, and a different draw at every
  ADMM step (the initial copy uses ``count = 0``).
  """
  return jax.random.fold_in(jax.random.key(0), count)


def _quantize_options(quantizer, quantizer_init, count):
  """Keyword arguments of ``project_atmc`` for the k-means solver."""
  if quantizer_init == 'quantile':
    return {'method': quantizer}
  return {'method': quantizer, 'init': quantizer_init,
          'key': quantizer_key(count)}


def _placeholder(x: jax.Array) -> jax.Array:
  return jnp.zeros((), jnp.result_type(x))


def _select(sel, on_selected, on_other, *trees):
  """Maps ``on_selected``/``on_other`` over ``trees`` by mask leaf."""
  return jax.tree.map(
      lambda m, *xs: on_selected(*xs) if m else on_other(*xs), sel, *trees)


def _projected_params(params, inner_updates, project_fn):
  """``project_fn(params + inner_updates)``, computed in the params' dtype."""
  candidate = jax.tree.map(
      lambda p, u: (p + u).astype(jnp.result_type(p)), params, inner_updates)
  return project_fn(candidate)


def atmc(
    inner: optax.GradientTransformation,
    *,
    budget: int,
    bits: Optional[int] = None,
    rho: float = 0.1,
    admm_interval: int = 10,
    mask: base.MaskOrFn = None,
    quantizer: str = 'lloyd',
    quantizer_init: str = 'quantile',
) -> optax.GradientTransformationExtraArgs:
  """ATMC: L0-projected steps of ``inner`` plus ADMM towards a codebook.

  Solves, over the leaves selected by ``mask``,

  .. math::

    \\min_\\theta f(\\theta) \\ \\text{s.t.}\\ \\sum_t \\|\\theta_t\\|_0 \\le k,
    \\quad |\\theta_t|_0 \\le 2^b \\ \\forall t

  by projected steps for the sparsity constraint and ADMM (penalty
  :math:`\\tfrac{\\rho}{2}\\|\\theta - Z + U\\|^2`) for the quantisation
  constraint; see the module docstring for the exact schedule and how it
  relates to the paper and the reference code.

  Each ``update(grads, state, params)`` returns updates with
  ``params + updates == project_l0(params + inner_updates, budget)``, so the
  params satisfy ``nnz <= budget`` after every step.

  .. warning::
    This must be the outermost transformation (the projection has to see the
    final step), and ``update`` must be given ``params``. Wrap other
    transformations as ``inner`` instead of chaining them after it.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from atmc_jax import optim
    >>> params = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    >>> tx = optim.atmc(optax.sgd(0.1), budget=2)
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.ones((2, 2))}
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)['w']
    Array([[ 0. , -2.1],
           [ 0. ,  2.9]], dtype=float32)

    To schedule ``rho`` (``bits`` must stay static; ``budget`` and
    ``admm_interval`` may become traced int scalars)::

      tx = optax.inject_hyperparams(atmc, static_args=('bits', 'mask'))(
          inner=optax.sgd(lr_schedule, momentum=0.9),
          budget=k, bits=8, rho=rho_schedule)

  Args:
    inner: the transformation producing the unconstrained step (e.g.
      ``optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(lr, 0.9))``).
      It receives the gradients plus the ADMM penalty gradient.
    budget: ``k``, the number of non-zeros allowed over all selected leaves
      together (usually ``int(p * dense_weight_count(params))``); ``>= 0``.
      A Python int, or a traced int scalar (e.g. under
      ``optax.inject_hyperparams``).
    bits: codebook size ``2^bits`` of non-zero values per selected leaf, a
      static int in ``[1, 16]``; ``None`` disables quantisation (ATMC-32: no
      ADMM state is used and no penalty is added).
    rho: the ADMM penalty weight, a finite number ``> 0`` (0.1 in the
      reference code; the paper's rho is a predefined positive constant).
      A traced (scheduled) rho is not checked.
    admm_interval: the ADMM step runs after update ``t`` when ``t > 0`` and
      ``t % admm_interval == 0``; ``>= 1``.
    mask: which leaves are constrained (see ``tree_utils.resolve_mask``);
      ``None`` selects floating leaves with ``ndim >= 2``. Unselected leaves
      get the inner updates unchanged.
    quantizer: ``'lloyd'`` or ``'optimal'``, passed as ``method`` to
      ``projections.project_atmc``.
    quantizer_init: ``'quantile'`` (deterministic) or ``'forgy'`` (the
      reference code's random initialisation, ``quantizer='lloyd'`` only),
      passed as ``init`` to ``projections.project_atmc``. Forgy's key is
      :func:`quantizer_key` of the update count ``t`` of the ADMM step
      (``t = 0`` for the initial copy), so runs are reproducible.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`AtmcState`.

  Raises:
    ValueError: a hyper-parameter is out of range (budget < 0, bits outside
      ``[1, 16]``, admm_interval < 1, rho not a finite number > 0, unknown
      quantizer or quantizer_init), ``init`` is given no params (``None`` or
      an empty tree), or ``update`` is called without ``params``.
  """
  budget, bits = _validate(budget=budget, bits=bits, rho=rho,
                           admm_interval=admm_interval, quantizer=quantizer,
                           quantizer_init=quantizer_init)
  quantising = bits is not None
  inner = optax.with_extra_args_support(inner)

  def project_feasible(tree, sel, count):
    return projections.project_atmc(
        tree, budget, bits, sel,
        **_quantize_options(quantizer, quantizer_init, count))

  def constraint(sel):
    return AtmcConstraint(
        budget=jnp.asarray(budget, jnp.int32),
        bits=jnp.asarray(bits or 0, jnp.int32),
        quantizer=jnp.asarray(QUANTIZERS.index(quantizer), jnp.int32),
        quantizer_init=jnp.asarray(QUANTIZER_INITS.index(quantizer_init),
                                   jnp.int32),
        selected=jax.tree.map(lambda m: jnp.asarray(m, bool), sel))

  def init_fn(params):
    base.check_init_params(params, 'atmc')
    sel = tree_utils.resolve_mask(params, mask)
    if quantising:
      # One compiled call rather than eager op-by-op k-means.
      z0 = jax.jit(functools.partial(project_feasible, sel=sel))(
          params, count=jnp.zeros([], jnp.int32))
      z = _select(sel, lambda q, p: q.astype(jnp.result_type(p)),
                  lambda q, p: _placeholder(p), z0, params)
      u = _select(sel, jnp.zeros_like, _placeholder, params)
    else:
      z = jax.tree.map(_placeholder, params)
      u = jax.tree.map(_placeholder, params)
    return AtmcState(count=jnp.zeros([], jnp.int32), z=z, u=u,
                     inner_state=inner.init(params),
                     constraint=constraint(sel))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(base.NO_PARAMS_MSG)
    sel = tree_utils.resolve_mask(params, mask)

    if quantising:
      # Gradient of (rho / 2) * ||theta - Z + U||^2 on the selected leaves.
      updates = _select(
          sel,
          lambda g, p, z, u: g + (rho * (p - z + u)).astype(g.dtype),
          lambda g, p, z, u: g,
          updates, params, state.z, state.u)

    inner_updates, inner_state = inner.update(
        updates, state.inner_state, params, **extra_args)
    new_params = _projected_params(
        params, inner_updates,
        lambda t: projections.project_l0(t, budget, sel))
    new_updates = _select(
        sel, lambda q, p, d: (q - p).astype(d.dtype),
        lambda q, p, d: d, new_params, params, inner_updates)

    z, u = state.z, state.u
    if quantising:
      def admm_step(zu):
        _, u_old = zu
        target = _select(sel, lambda q, v: q + v.astype(q.dtype),
                         lambda q, v: q, new_params, u_old)
        z_full = project_feasible(target, sel, state.count)
        z_new = _select(sel, lambda q, p: q.astype(jnp.result_type(p)),
                        lambda q, p: _placeholder(p), z_full, params)
        u_new = _select(
            sel, lambda v, q, zz: (v + q - zz).astype(v.dtype),
            lambda v, q, zz: v, u_old, new_params, z_new)
        return z_new, u_new

      t = state.count
      do_admm = jnp.logical_and(t > 0, t % admm_interval == 0)
      z, u = jax.lax.cond(do_admm, admm_step, lambda zu: zu, (z, u))

    return new_updates, AtmcState(
        count=optax.safe_increment(state.count), z=z, u=u,
        inner_state=inner_state, constraint=constraint(sel))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def projected(
    inner: optax.GradientTransformation,
    project_fn: Callable[[base.Params], base.Params],
) -> optax.GradientTransformationExtraArgs:
  """Projected steps of ``inner``: ``params + updates = P(params + inner)``.

  .. math::

    \\theta_{t+1} = P(\\theta_t + \\Delta_t), \\qquad
    \\text{updates} = P(\\theta_t + \\Delta_t) - \\theta_t

  where :math:`\\Delta_t` is the update of ``inner``. With
  ``project_fn = functools.partial(projections.project_l0, k=budget)`` this
  is :func:`atmc` with ``bits=None`` (without its state layout); with
  ``functools.partial(projections.project_low_rank, rank=ranks)`` it keeps
  the ranks fixed (the ALR baseline).

  .. warning::
    This must be the outermost transformation, and ``update`` must be given
    ``params``.

  Args:
    inner: the transformation producing the unconstrained step.
    project_fn: a pure, jittable ``params -> params`` projection preserving
      structure, shapes and dtypes.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ProjectedState`.

  Raises:
    ValueError: ``project_fn`` is not callable, ``init`` is given no params
      (``None`` or an empty tree), or ``update`` is called without
      ``params``.
  """
  if not callable(project_fn):
    raise ValueError(
        f'project_fn must be a callable params -> params, got {project_fn!r}.')
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    base.check_init_params(params, 'projected')
    return ProjectedState(inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(base.NO_PARAMS_MSG)
    inner_updates, inner_state = inner.update(
        updates, state.inner_state, params, **extra_args)
    new_params = _projected_params(params, inner_updates, project_fn)
    new_updates = jax.tree.map(lambda q, p, d: (q - p).astype(d.dtype),
                               new_params, params, inner_updates)
    return new_updates, ProjectedState(inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def deployable_params(
    params: base.Params,
    *,
    budget: int,
    bits: Optional[int] = None,
    mask: base.MaskOrFn = None,
    quantizer: str = 'lloyd',
    quantizer_init: str = 'quantile',
    key: Any = None,
) -> base.Params:
  """The compressed model: ``params`` projected onto both constraints.

  Returns ``project_atmc(params, budget, bits)`` when quantising and
  ``project_l0(params, budget)`` otherwise, so the result has at most
  ``budget`` non-zeros over the selected leaves and at most ``2^bits``
  distinct non-zero values per selected leaf, exactly. (The reference code
  deploys the ADMM copy instead, whose non-zero count can exceed the
  budget.) Unselected leaves (biases, BatchNorm) are returned unchanged.

  Args:
    params: the trained params (``theta``, not the ADMM copy).
    budget: the number of non-zeros allowed, ``>= 0``.
    bits: codebook bits per selected leaf in ``[1, 16]``, or ``None``.
    mask: which leaves are constrained (as in :func:`atmc`).
    quantizer: ``'lloyd'`` or ``'optimal'``.
    quantizer_init: ``'quantile'`` or ``'forgy'`` (as in :func:`atmc`).
    key: the PRNG key of the Forgy initialisation; ``None`` uses
      ``quantizer_key(0)``. Ignored with ``quantizer_init='quantile'``.

  Returns:
    A pytree with ``params``' structure, shapes and dtypes.

  Raises:
    ValueError: a hyper-parameter is out of range.
  """
  budget, bits = _validate(budget=budget, bits=bits, rho=None,
                           admm_interval=1, quantizer=quantizer,
                           quantizer_init=quantizer_init)
  sel = tree_utils.resolve_mask(params, mask)
  options = _quantize_options(quantizer, quantizer_init, 0)
  if key is not None and quantizer_init == 'forgy':
    options['key'] = key

  @jax.jit
  def deploy(params):
    if bits is None:
      out = projections.project_l0(params, budget, sel)
    else:
      out = projections.project_atmc(params, budget, bits, sel, **options)
    return jax.tree.map(lambda q, p: q.astype(jnp.result_type(p)), out,
                        params)

  return deploy(params)

