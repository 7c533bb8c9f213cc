"""Data parallelism: the only module that calls ``jax.pmap``.

Every other module writes per-device code with collectives over the axis
``"batch"`` (:data:`AXIS_NAME`). This module

* maps those per-device steps over the local devices
  (:func:`pmap_train_step`, :func:`pmap_eval_step`);
* replicates a pytree onto the local devices (:func:`replicate`) and takes
  one copy back (:func:`unreplicate`);
* reshapes a host batch to ``(local_devices, per_device, ...)``
  (:func:`shard_batch`) and prefetches batches to the devices
  (:func:`prefetch_to_device`);
* joins a multi-host run (:func:`initialize_distributed`) and agrees on a
  host-side flag across processes (:func:`any_process`).

Each host feeds only its own slice of the global batch (see
``atmc_jax.data.iterate_batches(process_index=..., process_count=...)``);
``lax.pmean``/``lax.psum`` then reduce over all devices of all hosts: with
several processes the mapped steps span every device of every process
(``devices`` names this process's devices and must be all of them).

Since JAX 0.8 ``jax.pmap`` is implemented with ``jit`` + ``shard_map``; the
per-device steps do not depend on ``pmap``, so moving to
``jit`` + ``NamedSharding(mesh, P("batch"))`` only changes this module.
"""

import collections
import itertools
import os
from typing import Any, Callable, Iterable, Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np

from atmc_jax._src import base

AXIS_NAME = 'batch'


def initialize_distributed() -> None:
  """Joins a multi-process run; a no-op on a single host.

  With ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0) set, calls
  ``jax.distributed.initialize`` with it and, where set, the integers
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; JAX detects what is not set
  on Cloud TPU, SLURM and Open MPI. Without it, initializes only where
  ``TPU_WORKER_HOSTNAMES`` lists several hosts (a TPU pod on GKE). Call it
  before anything else touches ``jax`` devices.

  Raises:
    ValueError: ``JAX_NUM_PROCESSES`` or ``JAX_PROCESS_ID`` is not a
      non-negative integer.
  """
  address = os.environ.get('JAX_COORDINATOR_ADDRESS')
  if address:
    kwargs = {}
    for arg, name in (('num_processes', 'JAX_NUM_PROCESSES'),
                      ('process_id', 'JAX_PROCESS_ID')):
      value = os.environ.get(name)
      if value:
        if not value.isdigit():
          raise ValueError(f'{name}={value!r}; accepted: a non-negative '
                           'integer.')
        kwargs[arg] = int(value)
    jax.distributed.initialize(address, **kwargs)
  elif _on_tpu_pod():
    jax.distributed.initialize()


def _on_tpu_pod() -> bool:
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return len([h for h in hosts.split(',') if h]) > 1


def local_device_count() -> int:
  return jax.local_device_count()


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is True on any process; the same answer on all.

  One cross-process all-gather (every process must call it, equally often);
  on a single process it returns ``flag`` without touching the devices.
  """
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def _pmap_devices(devices):
  """``jax.pmap``'s ``devices`` for this process's ``devices``.

  With several processes ``pmap`` must span the devices of all of them, and
  each maps over its local ones: ``None``. A subset of the local devices is
  a single-host option.
  """
  if devices is None or jax.process_count() == 1:
    return devices
  if set(devices) != set(jax.local_devices()):
    raise ValueError(
        f'devices={list(devices)}; accepted with {jax.process_count()} '
        f'processes: None or all local devices {jax.local_devices()}.')
  return None


def _sharding(devices=None):
  devices = jax.local_devices() if devices is None else devices
  mesh = jax.sharding.Mesh(np.array(devices), (AXIS_NAME,))
  return jax.NamedSharding(mesh, jax.P(AXIS_NAME)), len(devices)


def replicate(tree: base.PyTree, devices=None) -> base.PyTree:
  """Copies every leaf onto each local device (leading axis = device)."""
  sharding, n = _sharding(devices)

  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.device_put(np.broadcast_to(x, (n,) + x.shape), sharding)

  return jax.tree.map(put, tree)


def unreplicate(tree: base.PyTree) -> base.PyTree:
  """The first device's copy of a replicated pytree, as NumPy arrays."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x[0])), tree)


def shard_batch(batch: base.PyTree, num_devices: int | None = None
                ) -> base.PyTree:
  """Reshapes host arrays ``(B, ...)`` to ``(devices, B // devices, ...)``.

  Raises:
    ValueError: ``B`` is not a multiple of the device count.
  """
  n = jax.local_device_count() if num_devices is None else num_devices

  def reshape(x):
    x = np.asarray(x)
    if x.shape[0] % n:
      raise ValueError(
          f'batch dimension {x.shape[0]} is not divisible by the local '
          f'device count {n}; use a per-host batch that is a multiple of {n}.')
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])

  return jax.tree.map(reshape, batch)


def prefetch_to_device(batches: Iterable[base.PyTree], size: int = 2,
                       devices=None) -> Iterator[base.PyTree]:
  """Shards host batches and keeps ``size`` of them in flight on device."""
  sharding, n = _sharding(devices)
  queue = collections.deque()
  iterator = iter(batches)

  def put(batch):
    return jax.tree.map(lambda x: jax.device_put(x, sharding),
                        shard_batch(batch, n))

  def enqueue(k):
    for batch in itertools.islice(iterator, k):
      queue.append(put(batch))

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)


def pmap_train_step(train_step: Callable[..., Any], *,
                    donate: bool = True, devices=None) -> Callable[..., Any]:
  """Maps ``train_step(state, batch, key)`` over the local devices.

  With several processes the map spans all devices of all processes (each
  process passes its local shards); ``devices`` then must be None or all
  local devices. The state and the batch carry a leading device axis; the key is broadcast.
  With ``donate`` the input state's buffers are reused for the output.
  """
  return jax.pmap(train_step, axis_name=AXIS_NAME, in_axes=(0, 0, None),
                  donate_argnums=(0,) if donate else (),
                  devices=_pmap_devices(devices))


def pmap_eval_step(eval_step: Callable[..., Any], *,
                   devices=None) -> Callable[..., Any]:
  """Maps ``eval_step(params, batch_stats, batch, key)`` over local devices.

  ``params``/``batch_stats`` and the batch carry a leading device axis; the
  key is broadcast. The psum-reduced outputs are identical on every device.
  """
  return jax.pmap(eval_step, axis_name=AXIS_NAME, in_axes=(0, 0, 0, None),
                  devices=_pmap_devices(devices))
