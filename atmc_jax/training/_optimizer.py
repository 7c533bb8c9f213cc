"""The optimizer of a stage: SGD + weight decay + the compression transform.

.. math::

  \\text{inner} = \\text{add\\_decayed\\_weights}(\\lambda, \\text{mask})
  \\circ \\text{sgd}(\\eta_t, \\text{momentum}=0.9)

is PyTorch's ``SGD(momentum=0.9, weight_decay=1e-4)`` exactly
(``buf = m * buf + g + lambda * w; w -= lr * buf``). The decay acts on the
compressed leaves (kernels, U/V/C factors: floating leaves with
``ndim >= 2``) by default; ``weight_decay_all=True`` decays every parameter,
BatchNorm and biases included, like the reference code. The learning rate
is multiplied by ``lr_decay_factor`` at the start of each epoch listed in
``lr_decay_epochs`` (the reference's ``MultiStepLR``).

The compression transform wraps ``inner`` as the outermost transformation:

* ``"none"``: ``inner`` alone (dense stages);
* ``"fixed_support"``: :func:`atmc_jax.optim.fixed_support` on the support of
  a one-shot global magnitude pruning to the budget (NAP / AP);
* ``"l0"``: :func:`atmc_jax.optim.atmc` with ``bits=None`` (AL0 on a dense
  model, ATMC-32 on a factorized one);
* ``"atmc"``: :func:`atmc_jax.optim.atmc` with ``bits`` (ATMC-8);
* ``"low_rank"``: ``inner`` alone, on fixed-rank factor params ``B``, ``A``
  per layer (ALR: the ranks are fixed by the factors' shapes, so no
  projection is needed; the model is wrapped by
  :class:`atmc_jax.models.LowRankModel`).

The budget is ``k = floor(p * dense weight count)`` in every case.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from atmc_jax import models
from atmc_jax import optim
from atmc_jax import projections
from atmc_jax._src import base
from atmc_jax._src import tree_utils


def lr_schedule(learning_rate: float, steps_per_epoch: int,
                decay_epochs, decay_factor: float = 0.1) -> optax.Schedule:
  """Step decay by epoch: ``lr * factor ** #{e in decay_epochs: epoch >= e}``.

  The schedule is evaluated at the optimizer's update count ``t`` (0 for the
  first step), whose epoch is ``t // steps_per_epoch``. An epoch listed
  twice decays twice (PyTorch's ``MultiStepLR`` counts repeated
  milestones). ``optax.piecewise_constant_schedule`` is not used: its
  ``{boundary: scale}`` dict keeps one scale per epoch, and its running
  product rounds differently from ``factor ** drops`` once several drops
  accumulate, so the learning rates would change.
  """
  if not list(decay_epochs):
    return optax.constant_schedule(learning_rate)
  boundaries = jnp.asarray(
      sorted(int(e) * steps_per_epoch for e in decay_epochs), jnp.int32)

  def schedule(count):
    drops = jnp.sum(count >= boundaries)
    return learning_rate * decay_factor ** drops

  return schedule


def budget_for(params: base.Params, sparsity: float) -> int:
  """``floor(p * dense_weight_count(params))``."""
  return int(math.floor(sparsity * optim.dense_weight_count(params)))


@dataclasses.dataclass
class Compression:
  """What the compression of one stage needs besides the optimizer.

  Attributes:
    kind: the ``config.compression`` value.
    budget: ``k`` (number of non-zeros allowed), or None for dense stages.
    bits: the codebook bits (``"atmc"`` only), or None.
    ranks: the fixed per-leaf ranks (``"low_rank"`` only), a pytree with
      the dense params' structure: a Python int per selected leaf, None
      elsewhere.
    quantizer: the k-means method for ``"atmc"``.
    dense_like: the dense params' shapes (``"low_rank"`` only), which the
      factor model needs to form conv kernels.
    quantizer_init: Lloyd's initialisation for ``"atmc"`` (``"quantile"``
      or ``"forgy"``).
  """

  kind: str
  budget: Optional[int] = None
  bits: Optional[int] = None
  ranks: Any = None
  quantizer: str = 'lloyd'
  dense_like: Any = None
  quantizer_init: str = 'quantile'

  def deployable(self, params: base.Params) -> base.Params:
    """The exactly feasible model the stage deploys."""
    if self.kind in ('none', 'low_rank'):
      return params
    return optim.deployable_params(params, budget=self.budget,
                                   bits=self.bits if self.kind == 'atmc'
                                   else None,
                                   quantizer=self.quantizer,
                                   quantizer_init=self.quantizer_init)

  def wrap_model(self, model):
    """The model that runs this stage's params (ALR: on ``B``, ``A``)."""
    if self.kind == 'low_rank':
      return models.LowRankModel(model, self.dense_like)
    return model

  def low_rank_bits(self, params: base.Params) -> Optional[int]:
    """ALR's real size ``32 * sum_l r_l (m_l + n_l)`` (None for others)."""
    if self.kind != 'low_rank':
      return None
    return models.low_rank_bits(params)


def prepare_compression(config, params: base.Params
                        ) -> tuple[base.Params, Compression]:
  """One-shot start of a compression stage on the warm-start params.

  ``"fixed_support"`` prunes to the budget by global magnitude;
  ``"low_rank"`` truncates the singular values globally, keeping the
  fraction ``config.sparsity`` of them, and replaces every kernel by its
  factors ``B = U_r sqrt(S_r)``, ``A = sqrt(S_r) V_r^T`` (spec §4.3);
  ``"l0"``/``"atmc"`` project onto the budget (the first step would anyway).

  Args:
    config: the stage-applied config.
    params: the warm-start params (for a factorized model: U, V, C).

  Returns:
    ``(params, compression)``; for ``"low_rank"`` the params are the factor
    params that :meth:`Compression.wrap_model` runs.
  """
  kind = config.compression
  if kind == 'none':
    return params, Compression(kind)
  budget = budget_for(params, config.sparsity)
  if kind == 'low_rank':
    ranks = jax.tree.map(int, projections.low_rank_ranks(
        params, config.sparsity))
    b, a = jax.jit(functools.partial(projections.low_rank_factors,
                                     rank=ranks))(params)
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x),
                                                       np.asarray(x).dtype),
                        params)
    return models.to_low_rank(params, b, a), Compression(
        kind, budget=budget, ranks=ranks, dense_like=like)
  params = jax.jit(functools.partial(projections.project_l0, k=budget))(
      params)
  bits = config.bits if kind == 'atmc' else None
  return params, Compression(
      kind, budget=budget, bits=bits, quantizer=config.quantizer,
      quantizer_init=config.get('quantizer_init', 'quantile'))


def make_optimizer(config, params: base.Params, compression: Compression,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """The full optimizer of a stage (see the module docstring).

  Args:
    config: the stage-applied config.
    params: the initial params (after :func:`prepare_compression`).
    compression: from :func:`prepare_compression`.
    steps_per_epoch: optimizer steps per epoch (for the schedule).

  Returns:
    An optax transformation whose ``update`` needs ``params``.
  """
  schedule = lr_schedule(config.learning_rate, steps_per_epoch,
                         config.lr_decay_epochs, config.lr_decay_factor)
  decay_mask = None if config.weight_decay_all else tree_utils.default_mask
  parts = []
  if config.weight_decay:
    parts.append(optax.add_decayed_weights(config.weight_decay, decay_mask))
  parts.append(optax.sgd(schedule, momentum=config.momentum or None,
                         nesterov=False))
  inner = optax.chain(*parts)
  kind = compression.kind
  if kind in ('none', 'low_rank'):
    return inner
  if kind == 'fixed_support':
    support = jax.jit(functools.partial(
        optim.magnitude_support, budget=compression.budget))(params)
    return optim.fixed_support(inner, support)
  return optim.atmc(inner, budget=compression.budget, bits=compression.bits,
                    rho=config.rho, admm_interval=config.admm_interval,
                    quantizer=config.quantizer,
                    quantizer_init=config.get('quantizer_init', 'quantile'))


def current_lr(config, steps_per_epoch: int) -> Callable[[int], float]:
  schedule = lr_schedule(config.learning_rate, steps_per_epoch,
                         config.lr_decay_epochs, config.lr_decay_factor)
  return lambda step: float(schedule(step))
