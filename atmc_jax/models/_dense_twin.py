"""The dense twin of a factorized model: same function, weights formed once.

A factorized model (``factorized=True``) forms every layer's matrix
``W = U·V + C`` inside ``apply``. Code that evaluates the model many times
with fixed parameters and needs no gradient with respect to them (an attack's
iterations, an evaluation) can form the matrices once instead:
:func:`dense_twin` returns the same architecture with ``factorized=False``
and the dense params ``materialize(params)`` (see
:func:`~atmc_jax.models.materialize`). Biases and BatchNorm parameters pass
through unchanged and the module names are shared, so the model's
``batch_stats`` serve the twin as they are.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from atmc_jax._src import base
from atmc_jax.models import _factorized
from atmc_jax.models import _low_rank


def _dense_param_shapes(model: nn.Module,
                        image_shape: Sequence[int]) -> base.PyTree:
  """The params' shapes of ``model``'s dense twin, without computing them.

  Args:
    model: a model with a ``factorized`` attribute.
    image_shape: one input image's shape ``(H, W, C)``.

  Returns:
    The dense model's params as ``jax.ShapeDtypeStruct`` leaves (what
    :func:`~atmc_jax.models.materialize` takes as ``like``).

  Raises:
    ValueError: ``image_shape`` does not have three positive entries.
  """
  image_shape = tuple(int(d) for d in image_shape)
  if len(image_shape) != 3 or min(image_shape) < 1:
    raise ValueError(
        f'image_shape={image_shape}; expected (H, W, C) with positive '
        'entries.')
  dense = model.clone(factorized=False)
  dummy = jax.ShapeDtypeStruct((1,) + image_shape, jnp.float32)
  variables = jax.eval_shape(
      lambda x: dense.init(jax.random.PRNGKey(0), x, train=False), dummy)
  return variables['params']


def dense_twin(model: nn.Module, params: base.Params,
               image_shape: Sequence[int]) -> tuple[nn.Module, base.Params]:
  """The dense model computing what ``model`` computes with ``params``.

  For a factorized model, every ``W = U·V + C`` is formed once (by
  :func:`~atmc_jax.models.compose`, exactly as the factorized layer forms
  it) and laid out as the dense layer's ``kernel``; the twin is
  ``model.clone(factorized=False)``. A dense model is returned as it is,
  with the same ``params`` object. Pure and jittable (also under ``pmap``):
  only ``image_shape`` must be static.

  Args:
    model: a model of this package (dense or factorized).
    params: its params (``variables['params']``).
    image_shape: one input image's shape ``(H, W, C)``; it fixes the conv
      kernels' ``(kh, kw, in, out)`` layout.

  A :class:`~atmc_jax.models.LowRankModel` (fixed-rank factors ``B·A``)
  returns its dense model and the kernels formed from its factors.

  Returns:
    ``(dense_model, dense_params)``.

  Raises:
    ValueError: ``image_shape`` is not ``(H, W, C)``, or ``params`` does not
      fit the dense twin's layers.
  """
  if isinstance(model, _low_rank.LowRankModel):
    return model.model, model.dense_params(params)
  if not getattr(model, 'factorized', False):
    return model, params
  like = _dense_param_shapes(model, image_shape)
  return model.clone(factorized=False), _factorized.materialize(
      params, like=like)
