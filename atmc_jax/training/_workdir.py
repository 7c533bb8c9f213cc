"""What a workdir holds across runs: one config, exact metrics, a finish.

A workdir belongs to one config. On a rerun, :func:`config_changes`
compares the new (stage-applied) config with the saved ``config.json``
before anything is written:

* the run-control keys (:data:`RUN_CONTROL_KEYS`: when to stop, progress
  bars, prefetch depth) never change what is computed and may differ freely;
* the keys of :data:`OVERRIDABLE_KEYS` (more epochs, logging and checkpoint
  cadence, checkpoints kept) may differ when the caller names them
  (``allow_config_change``);
* a key the saved config lacks because it was added to the config later
  (:data:`NEUTRAL_NEW_KEYS`) is no difference while it holds the value that
  leaves the computation as it was;
* any other difference is refused, with one message listing every differing
  key as ``old -> new``.

:func:`record_config` writes ``config.json`` for a new run or an accepted
change; the replaced file is kept as ``config.<n>.json``.

``metrics.jsonl`` is kept exact across interruptions: on resume,
:func:`cut_metrics` drops the records of steps after the restored one (and
any test record of an unfinished run), so a record written before a kill and
after the last checkpoint is not duplicated when its epoch is trained again.
"""

import json
import os
from typing import Any, Mapping, Sequence

from absl import logging
from etils import epath
import ml_collections

CONFIG_FILE = 'config.json'
SUMMARY_FILE = 'summary.json'
METRICS_FILE = 'metrics.jsonl'

# Keys that only say how a run is driven, never what it computes.
RUN_CONTROL_KEYS = ('max_steps', 'progress', 'prefetch')
# Keys a resumed run may change when asked to: a longer run (more epochs,
# the learning-rate schedule does not depend on it) and the cadence of
# logging (and the NaN check) and checkpoints.
OVERRIDABLE_KEYS = ('num_epochs', 'log_every_steps', 'checkpoint_every_steps',
                    'keep_checkpoints')
# Config keys added after runs were first recorded, each with the value that
# computes what a run recorded without it computed: a saved config lacking
# the key still matches a config holding that value.
NEUTRAL_NEW_KEYS: dict[str, Any] = {
    'eval.autoattack_examples': None,
    'eval.autoattack.num_steps': 100,
    'eval.autoattack.num_targets': 9,
    'eval.autoattack.num_queries': 5000,
    'eval.autoattack.pgd_steps': 20,
}
_ABSENT = '<absent>'


def flatten(d: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """Nested mappings -> ``{'a.b.c': leaf}``."""
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def check_allowed(allow_config_change: Sequence[str]) -> tuple[str, ...]:
  """Validates the keys a caller allows to change; returns them."""
  allow = tuple(k.strip() for k in allow_config_change if k.strip())
  bad = [k for k in allow if k not in OVERRIDABLE_KEYS]
  if bad:
    raise ValueError(
        f'allow_config_change={",".join(bad)} is invalid; accepted: any of '
        f'{", ".join(OVERRIDABLE_KEYS)} (other keys change what the run '
        'computes: use a new workdir).')
  return allow


def config_changes(workdir: epath.PathLike, config: ml_collections.ConfigDict,
                   allow_config_change: Sequence[str] = ()
                   ) -> dict[str, tuple[Any, Any]] | None:
  """The differences of ``config`` from the workdir's saved config.

  Args:
    workdir: the run directory.
    config: the stage-applied config of this run.
    allow_config_change: keys of :data:`OVERRIDABLE_KEYS` allowed to differ.

  Returns:
    ``None`` for a new run (no ``config.json``), else ``{key: (old, new)}``
    of the keys that differ (run-control and allowed keys only).

  Raises:
    ValueError: a disallowed key differs, or ``allow_config_change`` names
      a key outside :data:`OVERRIDABLE_KEYS`.
  """
  allow = check_allowed(allow_config_change)
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  old = flatten(json.loads(path.read_text()))
  new = flatten(_as_json(config))
  for k, neutral in NEUTRAL_NEW_KEYS.items():
    if k not in old and k in new and new[k] == neutral:
      old[k] = neutral
  changes = {k: (old.get(k, _ABSENT), new.get(k, _ABSENT))
             for k in sorted(set(old) | set(new))
             if old.get(k, _ABSENT) != new.get(k, _ABSENT)}
  refused = {k: v for k, v in changes.items()
             if k not in RUN_CONTROL_KEYS and k not in allow}
  if refused:
    listed = '; '.join(f'{k}: {o!r} -> {n!r}' for k, (o, n) in
                       refused.items())
    raise ValueError(
        f'{workdir!r} holds a run of another config ({listed}). A workdir '
        'belongs to one config: use a new workdir, or, for '
        f'{", ".join(OVERRIDABLE_KEYS)} only, allow the change explicitly '
        '(--allow_config_change=KEY,...).')
  return changes


def record_config(workdir: epath.PathLike, config: ml_collections.ConfigDict,
                  changes: Mapping[str, tuple[Any, Any]] | None) -> None:
  """Writes ``config.json`` for a new run or a changed one (keeps history)."""
  path = epath.Path(workdir) / CONFIG_FILE
  if changes is not None:
    if not changes:
      return
    aside = next_free(workdir, 'config')
    path.replace(aside)
    logging.warning('%s: config changed (%s); the previous config is kept as '
                    '%s.', workdir, '; '.join(
                        f'{k}: {o!r} -> {v!r}' for k, (o, v) in
                        changes.items()), aside.name)
  write_text_atomically(path, config.to_json_best_effort(indent=2))


def write_text_atomically(path: epath.PathLike, text: str) -> None:
  """Writes ``path`` through ``<path>.tmp`` and a rename.

  A local rename is atomic; object stores (``gs://``) copy and delete.
  """
  path = epath.Path(path)
  tmp = path.parent / (path.name + '.tmp')
  tmp.write_text(text)
  tmp.replace(path)


def append_line(path: epath.PathLike, line: str) -> None:
  """Appends ``line`` (and a newline) to ``path``.

  Local files are opened for appending; object stores (``gs://``), which
  cannot append to an object, get the file rewritten with the line added.
  """
  path = epath.Path(path)
  if not _is_remote(path):
    with path.open('a') as f:
      f.write(line + '\n')
    return
  old = path.read_text() if path.exists() else ''
  write_text_atomically(path, old + line + '\n')


def _is_remote(path: epath.PathLike) -> bool:
  return '://' in os.fspath(path)


def absolute(path: epath.PathLike) -> epath.Path:
  """A local ``path`` made absolute (``os.path.abspath``); a URI as is."""
  if _is_remote(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.fspath(path)))


def is_finished(workdir: epath.PathLike) -> bool:
  """Whether ``workdir`` holds a finished run (``summary.json``)."""
  return (epath.Path(workdir) / SUMMARY_FILE).exists()


def read_summary(workdir: epath.PathLike) -> dict[str, Any]:
  return json.loads((epath.Path(workdir) / SUMMARY_FILE).read_text())


def next_free(workdir: epath.PathLike, stem: str,
              ext: str = '.json') -> epath.Path:
  """``<stem>.<n><ext>`` in ``workdir`` for the first unused ``n >= 1``."""
  n = 1
  while (epath.Path(workdir) / f'{stem}.{n}{ext}').exists():
    n += 1
  return epath.Path(workdir) / f'{stem}.{n}{ext}'


def reopen_finished(workdir: epath.PathLike) -> epath.Path:
  """Moves ``summary.json`` aside (a finished run extended); its new name."""
  aside = next_free(workdir, 'summary')
  (epath.Path(workdir) / SUMMARY_FILE).replace(aside)
  logging.warning('%s: extending a finished run; its summary is kept as %s.',
                  workdir, aside.name)
  return aside


def require_finished(init_from: epath.PathLike) -> None:
  """Raises unless ``init_from`` is the workdir of a finished run."""
  if not epath.Path(init_from).is_dir():
    raise ValueError(f'config.init_from={init_from!r} is not a directory; '
                     'accepted: the workdir of a finished run.')
  if not is_finished(init_from):
    raise ValueError(
        f'config.init_from={init_from!r} is not a finished run (it has no '
        f'{SUMMARY_FILE}); accepted: the workdir of a finished run. Rerun '
        'that stage to its end first.')


def cut_metrics(workdir: epath.PathLike, step: int) -> int:
  """Keeps the records of ``metrics.jsonl`` up to ``step`` (atomically).

  Test records are dropped too: they belong to a finished run, and a run
  being resumed is not finished.

  Returns:
    How many records were dropped.
  """
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return 0
  with path.open() as f:
    lines = [line for line in f if line.strip()]
  keep = []
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:  # A line cut short by a kill.
      continue
    if record.get('split') != 'test' and record.get('step', 0) <= step:
      keep.append(line if line.endswith('\n') else line + '\n')
  dropped = len(lines) - len(keep)
  if dropped:
    write_text_atomically(path, ''.join(keep))
    logging.warning('%s: dropped %d record(s) after the restored step %d '
                    '(written before an interruption; they are recomputed).',
                    path, dropped, step)
  return dropped
