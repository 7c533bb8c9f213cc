"""atmc_jax.optim."""
