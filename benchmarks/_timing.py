"""Timing helpers shared by every benchmark in ``benchmarks/``.

Every measurement is reported as the same record::

  {"median_s": ..., "min_s": ..., "max_s": ..., "n": ...}

``n`` counts timed repetitions only; warm-up calls (compilation, first-touch
allocation) are never timed. A JAX call is timed until
``jax.block_until_ready`` returns on everything it produced, so asynchronous
dispatch cannot hide work. Extra keys (FLOP counts, achieved GFLOP/s, notes)
are added by the callers.
"""

import datetime
import os
import platform
import statistics
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np


def summarize(times_s: list[float]) -> dict[str, Any]:
  """The record for a list of per-repetition times in seconds.

  Args:
    times_s: one wall-clock time per timed repetition.

  Returns:
    ``{"median_s", "min_s", "max_s", "n"}`` with Python floats and an int.

  Raises:
    ValueError: ``times_s`` is empty.
  """
  if not times_s:
    raise ValueError('times_s must hold at least 1 time, got 0.')
  return {
      'median_s': float(statistics.median(times_s)),
      'min_s': float(min(times_s)),
      'max_s': float(max(times_s)),
      'n': len(times_s),
  }


def time_calls(fn: Callable[[], Any], *, n: int, warmup: int = 1,
               sync: Optional[Callable[[Any], Any]] = jax.block_until_ready,
               ) -> tuple[dict[str, Any], list[float]]:
  """Times ``n`` calls of ``fn()`` after ``warmup`` untimed calls.

  ``fn`` takes no arguments: a step that threads state keeps it in a closure
  (see ``benchmarks.steps``), so consecutive calls time consecutive steps.

  Args:
    fn: the work to time; returns what must be finished before the clock
      stops.
    n: timed repetitions (``>= 1``).
    warmup: untimed calls first (``>= 0``); the first one compiles.
    sync: applied to ``fn``'s result inside the timed region
      (``jax.block_until_ready``; ``None`` for synchronous code).

  Returns:
    ``(record, times_s)``: the ``summarize`` record and the raw times.

  Raises:
    ValueError: ``n < 1`` or ``warmup < 0``.
  """
  if n < 1:
    raise ValueError(f'n must be >= 1, got {n}.')
  if warmup < 0:
    raise ValueError(f'warmup must be >= 0, got {warmup}.')
  for _ in range(warmup):
    out = fn()
    if sync is not None:
      sync(out)
  times = []
  for _ in range(n):
    start = time.perf_counter()
    out = fn()
    if sync is not None:
      sync(out)
    times.append(time.perf_counter() - start)
  return summarize(times), times


def matmul_peak_gflops(size: int = 2048, n: int = 10) -> dict[str, Any]:
  """The float32 matmul rate of this device, the "hardware limit" we compare to.

  Times a jitted ``jnp.dot`` of two ``size x size`` float32 matrices, which
  performs

  .. math::  2 \\cdot \\text{size}^3 \\ \\text{FLOP}.

  Args:
    size: matrix side (``>= 1``).
    n: timed repetitions.

  Returns:
    The timing record plus ``gflops`` (from the median) and ``gflops_best``
    (from the minimum).

  Raises:
    ValueError: ``size < 1``.
  """
  if size < 1:
    raise ValueError(f'size must be >= 1, got {size}.')
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (size, size), jnp.float32)
  b = jax.random.normal(keys[1], (size, size), jnp.float32)
  dot = jax.jit(jnp.dot)
  record, _ = time_calls(lambda: dot(a, b), n=n, warmup=2)
  flop = 2.0 * size ** 3
  record['gflops'] = flop / record['median_s'] / 1e9
  record['gflops_best'] = flop / record['min_s'] / 1e9
  record['flops'] = flop
  return record


def add_rate(record: dict[str, Any], flops: Optional[float],
             peak_gflops: Optional[float]) -> dict[str, Any]:
  """Adds ``flops``, ``achieved_gflops`` and ``fraction_of_peak`` in place.

  Rates use the median time; ``*_best`` variants use the minimum.

  Args:
    record: a timing record.
    flops: FLOPs of one timed repetition, or None (nothing is added).
    peak_gflops: the same-run matmul peak, or None.

  Returns:
    ``record``.
  """
  if not flops:
    return record
  record['flops'] = float(flops)
  record['achieved_gflops'] = flops / record['median_s'] / 1e9
  record['achieved_gflops_best'] = flops / record['min_s'] / 1e9
  if peak_gflops:
    record['fraction_of_peak'] = record['achieved_gflops'] / peak_gflops
    record['fraction_of_peak_best'] = (
        record['achieved_gflops_best'] / peak_gflops)
  return record


def cpu_model() -> str:
  """The CPU model name from ``/proc/cpuinfo`` (or ``platform``)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def load_average() -> Optional[list[float]]:
  """The 1/5/15-minute load average, or None where unavailable."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def meta() -> dict[str, Any]:
  """Machine and software description stored with every results file."""
  device = jax.devices()[0]
  out = {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'jax_version': jax.__version__,
      'jaxlib_version': getattr(jax.lib, '__version__', None) or _jaxlib(),
      'numpy_version': np.__version__,
      'python_version': platform.python_version(),
      'backend': jax.default_backend(),
      'device': getattr(device, 'device_kind', str(device)),
      'device_count': jax.device_count(),
      'cpu_count': os.cpu_count(),
      'cpu_model': cpu_model(),
      'load_average_start': load_average(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  return out


def _jaxlib() -> Optional[str]:
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return None
