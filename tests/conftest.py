"""Test configuration: 8 fake CPU devices, set before JAX initialises.

The CPU collectives of the 8 fake devices rendezvous in threads; on a busy
2-core machine a thread can be starved for longer than XLA's default timeout
(tens of seconds), which aborts the process. The timeouts are raised so the
data-parallel tests wait instead.
"""

import os

os.environ['XLA_FLAGS'] = ' '.join([
    os.environ.get('XLA_FLAGS', ''),
    '--xla_force_host_platform_device_count=8',
    '--xla_cpu_collective_timeout_seconds=1800',
    '--xla_cpu_collective_call_terminate_timeout_seconds=1800',
    '--xla_cpu_collective_call_warn_stuck_timeout_seconds=300',
]).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 8)
