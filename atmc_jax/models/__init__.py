"""atmc_jax.models."""
