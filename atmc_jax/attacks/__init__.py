"""atmc_jax.attacks."""
