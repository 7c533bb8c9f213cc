"""atmc_jax.training."""
