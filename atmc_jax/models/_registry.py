"""Models by name, for configs: ``create_model('resnet34', num_classes=10)``."""

from typing import Any, Callable

import flax.linen as nn

from atmc_jax.models import _lenet
from atmc_jax.models import _resnet
from atmc_jax.models import _wrn

MODELS: dict[str, Callable[..., nn.Module]] = {
    'lenet': _lenet.CaffeLeNet,
    'resnet18': _resnet.ResNet18,
    'resnet34': _resnet.ResNet34,
    'resnet_tiny': _resnet.ResNetTiny,
    'wrn16_8': _wrn.WRN16_8,
}


def model_names() -> list[str]:
  """The names accepted by :func:`create_model`, sorted."""
  return sorted(MODELS)


def create_model(name: str, *, num_classes: int, factorized: bool = False,
                 **kwargs: Any) -> nn.Module:
  """Builds a registered model.

  Args:
    name: one of :func:`model_names` (``'lenet'``, ``'resnet34'``,
      ``'wrn16_8'``, ``'resnet18'``, ``'resnet_tiny'``: a two-stage
      8/16-channel ResNet with BatchNorm for fast smoke tests).
    num_classes: number of outputs (>= 1).
    factorized: the U·V+C variant (params ``U, V, C`` per layer).
    **kwargs: further model attributes (``mean``, ``std``, ``bn_axis_name``,
      ``conv_impl``, ``dtype``, ``dropout_rate``, ...).

  Returns:
    An unbound Flax module; call ``init`` / ``apply`` on it.

  Raises:
    ValueError: unknown ``name`` or ``num_classes < 1``.
  """
  if name not in MODELS:
    raise ValueError(
        f'unknown model {name!r}; expected one of {model_names()}.')
  if int(num_classes) < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
  return MODELS[name](num_classes=int(num_classes), factorized=factorized,
                      **kwargs)
