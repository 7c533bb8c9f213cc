"""Orbax checkpoints: the last N states and the best one on validation.

Layout under ``workdir``::

  checkpoints/<step>/state   the TrainState (NumPy arrays, unreplicated)
  checkpoints/<step>/meta    JSON: epoch, batch index, extra run data
  best/<step>/...            the state with the best validation metric

Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never leaves a half-written checkpoint.
Saves are synchronous: the loop saves rarely, and a synchronous save is
finished when SIGTERM handling returns.
"""

import os
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from atmc_jax._src import base


def _to_numpy(tree: base.PyTree) -> base.PyTree:
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _to_state_dict(tree: base.PyTree) -> base.PyTree:
  """Nested dicts of NumPy arrays (dataclasses and NamedTuples unrolled)."""
  return flax.serialization.to_state_dict(_to_numpy(tree))


class Checkpoints:
  """The two checkpoint series of one run.

  Args:
    workdir: the run directory.
    keep: how many of the latest checkpoints to keep.
    best_metric: the key of the ``metrics`` dict (passed to
      :meth:`save_best`) whose maximum selects the best checkpoint.
  """

  def __init__(self, workdir: str, *, keep: int = 3,
               best_metric: str = 'val_deployable_adv_accuracy'):
    self.best_metric = best_metric
    self._latest = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False,
            cleanup_tmp_directories=True),
        item_names=('state', 'meta'))
    self._best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'best'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: float(m[best_metric]),
            best_mode='max', enable_async_checkpointing=False,
            cleanup_tmp_directories=True),
        item_names=('state', 'meta'))

  @staticmethod
  def _args(state, meta):
    return ocp.args.Composite(state=ocp.args.StandardSave(_to_state_dict(state)),
                              meta=ocp.args.JsonSave(dict(meta)))

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return self._best.best_step()

  def save(self, step: int, state: base.PyTree, meta: dict[str, Any]) -> None:
    """Saves ``state`` (unreplicated) at ``step``, replacing a same-step one."""
    if step in self._latest.all_steps():
      return
    self._latest.save(step, args=self._args(state, meta), force=True)
    self._latest.wait_until_finished()

  def save_best(self, step: int, state: base.PyTree, meta: dict[str, Any],
                metrics: dict[str, float]) -> None:
    """Offers ``state`` to the best series; kept if its metric is the best."""
    if step in self._best.all_steps():
      return
    self._best.save(step, args=self._args(state, meta),
                    metrics={k: float(v) for k, v in metrics.items()},
                    force=True)
    self._best.wait_until_finished()

  def _restore(self, manager, step, target):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            _to_state_dict(target))
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state = flax.serialization.from_state_dict(target, out.state)
    return _to_numpy(state), dict(out.meta)

  def restore(self, target: base.PyTree, step: int | None = None):
    """Restores ``(state, meta)`` of ``step`` (default: the latest).

    Args:
      target: a pytree with the state's structure, shapes and dtypes.
      step: the step to restore.

    Returns:
      ``(state, meta)``, or ``(None, None)`` when there is no checkpoint.
    """
    step = self._latest.latest_step() if step is None else step
    if step is None:
      return None, None
    return self._restore(self._latest, step, target)

  def restore_best(self, target: base.PyTree):
    """Restores ``(state, meta)`` of the best checkpoint (or Nones)."""
    step = self._best.best_step()
    if step is None:
      return None, None
    return self._restore(self._best, step, target)

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def restore_state_dict(directory: str, *, best: bool = False
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads another run's checkpoint without knowing its structure.

  Used to warm-start a stage from an earlier stage's workdir.

  Args:
    directory: the earlier run's workdir.
    best: read its best-on-validation checkpoint instead of the latest.

  Returns:
    ``(state, meta)``, the state as nested dicts of NumPy arrays (keys
    ``step``, ``params``, ``batch_stats``, ``opt_state``).

  Raises:
    ValueError: the directory holds no checkpoint.
  """
  sub = 'best' if best else 'checkpoints'
  path = os.path.join(os.path.abspath(directory), sub)
  if not os.path.isdir(path):
    raise ValueError(f'config.init_from={directory!r} holds no {sub}/ '
                     'checkpoint directory; accepted: the workdir of a '
                     'finished run.')
  manager = ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(read_only=True),
      item_names=('state', 'meta'))
  step = manager.latest_step()
  if best:
    steps = manager.all_steps()
    step = steps[-1] if steps else None
  if step is None:
    raise ValueError(f'config.init_from={directory!r}: {sub}/ is empty; '
                     'accepted: the workdir of a finished run.')
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  manager.close()
  return out.state, dict(out.meta)
