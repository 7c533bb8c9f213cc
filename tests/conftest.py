"""Test configuration: 8 fake CPU devices, set before JAX initialises."""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') +
    ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 8)
