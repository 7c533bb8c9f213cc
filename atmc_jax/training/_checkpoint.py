"""Orbax checkpoints: the last N states and the best one on validation.

Layout under ``workdir``::

  checkpoints/<step>/state   the TrainState (NumPy arrays, unreplicated)
  checkpoints/<step>/meta    JSON: epoch, batch index, extra run data
  best/<step>/...            the state with the best validation metric

Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never leaves a half-written checkpoint.
Saves are synchronous: the loop saves rarely, and a synchronous save is
finished when SIGTERM handling returns.

Integrity: once orbax has finished a step, the SHA-256 of every file in the
step directory is written to ``<step>/sha256.json`` (the digest covers the
files orbax wrote, whatever its layout; the digest file itself excluded).
Every restore first checks the files against it. A checkpoint whose files do
not match (a changed, truncated, missing or extra file) or that does not
load is reported in one warning line, renamed aside to
``<step>.corrupt-<n>`` (outside orbax's step names, so the manager ignores
it; nothing is deleted), and the next older checkpoint is tried. Only when
none is left does the restore raise :class:`CheckpointError`, naming them;
it raises the same while the set-aside checkpoints are all a series has, so
a rerun never silently starts over. A checkpoint written before digests
existed (no ``sha256.json``) is loaded with a one-line warning. A
checkpoint whose files verify but which does not fit the restore target is
not corrupt: that error propagates and nothing is renamed.
"""

import hashlib
import json
import re
from typing import Any, Callable, Sequence

from etils import epath
import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from absl import logging

from atmc_jax._src import base
from atmc_jax.training import _workdir

DIGEST_FILE = 'sha256.json'
_ASIDE = re.compile(r'^(\d+)\.corrupt-(\d+)$')


class CheckpointError(ValueError):
  """No checkpoint of a series verifies and loads."""


def _file_digests(step_dir: epath.PathLike) -> dict[str, str]:
  """``{relative path: SHA-256}`` of the files under ``step_dir``."""
  step_dir = epath.Path(step_dir)
  out = {}
  for root, _, files in step_dir.walk():
    for name in files:
      path = root / name
      rel = path.relative_to(step_dir).as_posix()
      if rel == DIGEST_FILE:
        continue
      sha = hashlib.sha256()
      with path.open('rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
          sha.update(chunk)
      out[rel] = sha.hexdigest()
  return dict(sorted(out.items()))


def write_digest(step_dir: epath.PathLike) -> None:
  """Writes ``sha256.json`` for a finished step directory (atomically)."""
  digests = _file_digests(step_dir)
  _workdir.write_text_atomically(
      epath.Path(step_dir) / DIGEST_FILE,
      json.dumps({'algorithm': 'sha256', 'files': digests}, indent=1))


def verify_digest(step_dir: epath.PathLike) -> str | None:
  """Why ``step_dir`` fails its digest (``None``: it verifies).

  Raises:
    FileNotFoundError: the step has no ``sha256.json`` (written before
      digests existed, or the process died between the save and it).
  """
  path = epath.Path(step_dir) / DIGEST_FILE
  if not path.exists():
    raise FileNotFoundError(str(path))
  try:
    recorded = json.loads(path.read_text())['files']
    if not isinstance(recorded, dict):
      raise TypeError(type(recorded).__name__)
  except (ValueError, KeyError, TypeError) as e:
    return f'{DIGEST_FILE}: unreadable ({type(e).__name__}: {e})'
  found = _file_digests(step_dir)
  for rel, digest in recorded.items():
    if rel not in found:
      return f'{rel}: missing'
    if found[rel] != digest:
      return (f'{rel}: SHA-256 mismatch (recorded {digest[:12]}..., '
              f'found {found[rel][:12]}...)')
  extra = sorted(set(found) - set(recorded))
  if extra:
    return f'{extra[0]}: not in the digest (unexpected file)'
  return None


def set_aside(step_dir: epath.PathLike) -> epath.Path:
  """Renames ``<step>`` to ``<step>.corrupt-<n>`` (first free n)."""
  step_dir = epath.Path(step_dir)
  n = 1
  while step_dir.with_name(f'{step_dir.name}.corrupt-{n}').exists():
    n += 1
  aside = step_dir.with_name(f'{step_dir.name}.corrupt-{n}')
  step_dir.rename(aside)
  return aside


def set_aside_steps(directory: epath.PathLike) -> list[str]:
  """The names of the checkpoints set aside in a series directory."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(p.name for p in directory.iterdir() if _ASIDE.match(p.name))


def _first_good(candidates: Sequence[tuple[Any, int]],
                load: Callable[[Any, int], Any], series: str):
  """``load(manager, step)`` of the first candidate that verifies and loads.

  Each candidate that fails is reported, set aside (by process 0) and
  skipped; the managers are reloaded after a rename.

  Args:
    candidates: ``(manager, step)`` pairs, in order of preference.
    load: reads one candidate.
    series: the series directory the candidates stand for; its set-aside
      checkpoints make an empty candidate list an error.

  Returns:
    What ``load`` returned, or ``None`` for no candidates and nothing set
    aside.

  Raises:
    CheckpointError: none verifies and loads, or ``series`` holds only
      set-aside checkpoints.
  """
  failures = []
  for manager, step in candidates:
    directory = str(manager.directory)
    step_dir = epath.Path(directory) / str(step)
    if not step_dir.is_dir():  # Set aside by an earlier candidate.
      continue
    try:
      why = verify_digest(step_dir)
      verified = why is None
    except FileNotFoundError:
      why, verified = None, False
      logging.warning('checkpoint %s has no %s (written before digests '
                      'existed, or the save was cut short): loading it '
                      'unverified.', step_dir, DIGEST_FILE)
    if why is None:
      try:
        return load(manager, step)
      except Exception as e:  # pylint: disable=broad-except
        if verified:  # Intact files: a mismatch of target, not corruption.
          raise
        why = f'does not load ({type(e).__name__}: {_first_line(e)})'
    aside = step_dir
    if jax.process_index() == 0:
      aside = set_aside(step_dir)
      manager.reload()
    logging.warning('checkpoint step %d in %s is corrupt: %s; set aside as '
                    '%s.', step, directory, why, aside.name)
    failures.append(f'step {step} in {directory} ({why}; now '
                    f'{aside.name})')
  earlier = set_aside_steps(series)
  if failures or earlier:
    raise CheckpointError(
        f'no checkpoint of {series} verifies: '
        + '; '.join(failures or [f'set aside earlier: {", ".join(earlier)}'])
        + '. The set-aside directories are kept for inspection; remove them '
        '(or the workdir) to start over.')
  return None


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else ''


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

  def __init__(self, workdir: epath.PathLike, *, keep: int = 3,
               best_metric: str = 'val_deployable_adv_accuracy'):
    self.best_metric = best_metric
    self._latest = ocp.CheckpointManager(
        _workdir.absolute(workdir) / 'checkpoints',
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False,
            cleanup_tmp_directories=True),
        item_names=('state', 'meta'))
    self._best = ocp.CheckpointManager(
        _workdir.absolute(workdir) / 'best',
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
    self._write_digest(self._latest, step)

  def save_best(self, step: int, state: base.PyTree, meta: dict[str, Any],
                metrics: dict[str, float]) -> None:
    """Offers ``state`` to the best series; kept if its metric is the best."""
    if step in self._best.all_steps():
      return
    self._best.save(step, args=self._args(state, meta),
                    metrics={k: float(v) for k, v in metrics.items()},
                    force=True)
    self._best.wait_until_finished()
    if step in self._best.all_steps():
      self._write_digest(self._best, step)

  @staticmethod
  def _write_digest(manager, step):
    if jax.process_index() == 0:
      write_digest(epath.Path(manager.directory) / str(step))

  def _restore(self, manager, step, target):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            _to_state_dict(target))
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state = flax.serialization.from_state_dict(target, out.state)
    return _to_numpy(state), dict(out.meta)

  def restore(self, target: base.PyTree, step: int | None = None):
    """Restores ``(state, meta)`` of the newest checkpoint that verifies.

    Args:
      target: a pytree with the state's structure, shapes and dtypes.
      step: restore this step only (no fallback to older ones).

    Returns:
      ``(state, meta)``, or ``(None, None)`` when there is no checkpoint.

    Raises:
      CheckpointError: checkpoints exist (or were set aside) but none
        verifies and loads.
    """
    steps = self._latest.all_steps() if step is None else [step]
    out = _first_good([(self._latest, s) for s in sorted(steps,
                                                         reverse=True)],
                      lambda m, s: self._restore(m, s, target),
                      str(self._latest.directory))
    return (None, None) if out is None else out

  def restore_best(self, target: base.PyTree):
    """Restores ``(state, meta)`` of the best checkpoint (or Nones).

    A best checkpoint that fails to verify falls back to the latest series'
    checkpoint of the same step, when that one is still kept.
    """
    out = _first_good(_best_candidates(self._best, self._latest),
                      lambda m, s: self._restore(m, s, target),
                      str(self._best.directory))
    return (None, None) if out is None else out

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def restore_state_dict(directory: epath.PathLike, *, best: bool = False
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
  root = _workdir.absolute(directory)
  sub = 'best' if best else 'checkpoints'
  path = root / sub
  if not path.is_dir():
    raise ValueError(f'config.init_from={directory!r} holds no {sub}/ '
                     'checkpoint directory; accepted: the workdir of a '
                     'finished run.')

  def manager_of(series):
    return ocp.CheckpointManager(
        root / series,
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=('state', 'meta'))

  def load(manager, step):
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    return out.state, dict(out.meta)

  managers = [manager_of(sub)]
  if best:
    if (root / 'checkpoints').is_dir():
      managers.append(manager_of('checkpoints'))
    candidates = _best_candidates(*managers)
  else:
    candidates = [(managers[0], s)
                  for s in sorted(managers[0].all_steps(), reverse=True)]
  try:
    out = _first_good(candidates, load, str(path))
  finally:
    for manager in managers:
      manager.close()
  if out is None:
    raise ValueError(f'config.init_from={directory!r}: {sub}/ is empty; '
                     'accepted: the workdir of a finished run.')
  return out


def _best_candidates(best, latest=None) -> list[tuple[Any, int]]:
  """The best series' steps (newest first), then the same steps of latest."""
  steps = sorted(best.all_steps(), reverse=True)
  if not steps:  # The best step's directory may have been set aside.
    steps = sorted({int(_ASIDE.match(n).group(1)) for n in
                    set_aside_steps(str(best.directory))}, reverse=True)
  out = [(best, s) for s in steps if s in best.all_steps()]
  if latest is not None:
    kept = set(latest.all_steps())
    out += [(latest, s) for s in steps if s in kept]
  return out
