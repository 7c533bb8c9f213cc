"""Flax Linen models of the ATMC experiments and U·V+C factorized layers.

Every model takes NHWC images in ``[0, 1]`` (normalisation happens inside,
from the ``mean``/``std`` attributes) and has a dense and a factorized
variant (``factorized=True``) with the same module names, so
:func:`factorize` and :func:`materialize` convert params between them;
:func:`dense_twin` gives the dense model and params computing what a
factorized model computes. :class:`LowRankModel` runs a dense model on
fixed-rank factors ``B·A`` (the ALR baseline).
"""

from atmc_jax.models._conv_pool import conv2d_max_pool
from atmc_jax.models._dense_twin import dense_twin
from atmc_jax.models._factorized import compose
from atmc_jax.models._factorized import FACTOR_NAMES
from atmc_jax.models._factorized import factor_shapes
from atmc_jax.models._factorized import factorize
from atmc_jax.models._factorized import FactorizedConv
from atmc_jax.models._factorized import FactorizedDense
from atmc_jax.models._factorized import is_factorized_layer
from atmc_jax.models._factorized import materialize
from atmc_jax.models._layers import Conv
from atmc_jax.models._layers import Dense
from atmc_jax.models._ops import conv2d
from atmc_jax.models._ops import max_pool_2x2
from atmc_jax.models._lenet import CaffeLeNet
from atmc_jax.models._low_rank import compose_low_rank
from atmc_jax.models._low_rank import low_rank_bits
from atmc_jax.models._low_rank import LowRankModel
from atmc_jax.models._low_rank import to_low_rank
from atmc_jax.models._registry import create_model
from atmc_jax.models._registry import model_names
from atmc_jax.models._registry import MODELS
from atmc_jax.models._resnet import BasicBlock
from atmc_jax.models._resnet import ResNet
from atmc_jax.models._resnet import ResNet18
from atmc_jax.models._resnet import ResNet34
from atmc_jax.models._wrn import WideBasicBlock
from atmc_jax.models._wrn import WideResNet
from atmc_jax.models._wrn import WRN16_8
