"""Pieces shared by the model definitions: layer choice and normalisation."""

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax.models import _factorized
from atmc_jax.models import _layers


def conv_cls(factorized: bool, *, conv_impl: str, dtype: Any,
             kernel_init: Any = _layers.torch_default_kernel_init):
  """The conv class (dense or factorized) with the shared settings bound."""
  cls = _factorized.FactorizedConv if factorized else _layers.Conv
  return functools.partial(cls, conv_impl=conv_impl, dtype=dtype,
                           kernel_init=kernel_init)


def dense_cls(factorized: bool, *, dtype: Any,
              kernel_init: Any = _layers.torch_default_kernel_init,
              bias_init: Any = None):
  """The dense-layer class (dense or factorized) with shared settings."""
  cls = _factorized.FactorizedDense if factorized else _layers.Dense
  return functools.partial(cls, dtype=dtype, kernel_init=kernel_init,
                           bias_init=bias_init)


def normalize(x: jax.Array, mean: Sequence[float] | None,
              std: Sequence[float] | None, dtype: Any) -> jax.Array:
  """``(x - mean) / std`` per channel; ``None`` means 0 / 1.

  Raises:
    ValueError: a ``std`` entry is not positive, or ``mean``/``std`` have a
      length other than 1 or the number of channels.
  """
  x = jnp.asarray(x, dtype)
  channels = x.shape[-1]
  for name, value in (('mean', mean), ('std', std)):
    if value is not None and len(value) not in (1, channels):
      raise ValueError(
          f'{name} has {len(value)} entries; expected 1 or {channels} '
          '(the number of input channels).')
  if std is not None and not all(float(s) > 0 for s in std):
    raise ValueError(f'std entries must be > 0, got {tuple(std)}.')
  if mean is not None:
    x = x - jnp.asarray(np.asarray(mean, np.float32), dtype)
  if std is not None:
    x = x / jnp.asarray(np.asarray(std, np.float32), dtype)
  return x
