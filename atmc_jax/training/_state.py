"""The training state: everything a resumed run needs besides the config."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from atmc_jax._src import base


class TrainState(flax.struct.PyTreeNode):
  """Parameters, BatchNorm statistics and optimizer state at one step.

  All randomness is derived from ``jax.random.fold_in(key, step)`` and the
  data order from ``(seed, epoch)``, so ``step`` is the only counter a resumed
  run needs: the epoch is ``step // steps_per_epoch`` and the position inside
  it ``step % steps_per_epoch``. Compression state (masks, ADMM copies and
  duals, codebooks) lives inside ``opt_state``.

  Attributes:
    step: int32 scalar, the number of optimizer steps taken.
    params: the model parameters.
    batch_stats: BatchNorm running statistics (an empty dict without BN).
    opt_state: the optax state of the (compression-wrapped) optimizer.
  """

  step: jax.Array
  params: base.Params
  batch_stats: Any
  opt_state: optax.OptState

  @classmethod
  def create(cls, params: base.Params, batch_stats: Any,
             tx: optax.GradientTransformation) -> 'TrainState':
    """A state at step 0 with ``tx.init(params)`` (jitted)."""
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats=batch_stats if batch_stats is not None else {},
               opt_state=jax.jit(tx.init)(params))
