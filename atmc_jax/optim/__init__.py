"""atmc_jax.optim: ATMC optax transformations and model-size accounting."""

from atmc_jax.optim._accounting import compression_ratio
from atmc_jax.optim._accounting import compression_stats
from atmc_jax.optim._accounting import dense_weight_count
from atmc_jax.optim._accounting import model_size_bits
from atmc_jax.optim._accounting import tensor_size_bits
from atmc_jax.optim._atmc import atmc
from atmc_jax.optim._atmc import AtmcConstraint
from atmc_jax.optim._atmc import AtmcState
from atmc_jax.optim._atmc import projected
from atmc_jax.optim._atmc import ProjectedState
from atmc_jax.optim._atmc import quantizer_key
from atmc_jax.optim._deployable import deployable_params
from atmc_jax.optim._fixed_support import fixed_support
from atmc_jax.optim._fixed_support import FixedSupportState
from atmc_jax.optim._fixed_support import magnitude_support
