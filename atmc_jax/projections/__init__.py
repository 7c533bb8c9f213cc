"""atmc_jax.projections."""
