"""Constraint projections: pure, jittable pytree -> pytree functions."""

from atmc_jax.projections._atmc import project_atmc
from atmc_jax.projections._l0 import project_l0
from atmc_jax.projections._low_rank import low_rank_factors
from atmc_jax.projections._low_rank import low_rank_ranks
from atmc_jax.projections._low_rank import project_low_rank
from atmc_jax.projections._low_rank import project_low_rank_global
from atmc_jax.projections._quantize import dequantize
from atmc_jax.projections._quantize import project_quantize
from atmc_jax.projections._quantize import quantize_codebook
from atmc_jax.projections._quantize import QUANTIZER_INITS
from atmc_jax.projections._quantize import QUANTIZERS
