r"""Reproduces the paper's comparison (Gui et al., 2019, Fig. 2) on one dataset.

Runs every method of the paper for a list of sparsity levels p, each stage in
its own sub-workdir, warm-starting each stage from the one the paper's
pipeline starts it from:

====================  ==========================================  ===========
stage dir             what it trains                              init from
====================  ==========================================  ===========
``natural``           NAT: natural dense training                 random
``da``                DA: dense PGD adversarial training          random
``nap_p<p>``          NAP: one-shot magnitude pruning + natural   ``natural``
                      fine-tuning with the mask fixed
``ap_p<p>``           AP: the same from DA, adversarial fine-     ``da``
                      tuning
``al0_p<p>``          AL0: adversarial training, L0 projection    ``da``
                      every step
``alr_p<p>``          ALR: global singular-value truncation,      ``da``
                      adversarial fine-tuning of the factors
``atmc32_p<p>``       ATMC-32: U·V + C from AL0, L0-projected AT  ``al0_p<p>``
``atmc8_p<p>``        ATMC-8: ADMM quantisation to 8 bits         ``atmc32_p<p>``
====================  ==========================================  ===========

A stage whose ``summary.json`` exists is never recomputed; an interrupted
stage is resumed from its own workdir by ``train_and_evaluate``. Asking for a
method also runs the stages it starts from (ATMC-8 needs ATMC-32, AL0, DA).

Outputs in ``--workdir``: ``results.csv`` (dataset, method, p, compression
ratio by the paper's accounting measured on the deployable model, TA, ATA,
nnz, bits, wall time), ``results.md`` (methods × p table) and
``results.png``/``results.pdf`` (TA and ATA against the compression ratio).

Usage::

  python -m experiments.reproduce \
      --config experiments/configs/fmnist_quick.py --workdir runs/quick
  python -m experiments.reproduce \
      --config experiments/configs/fmnist_grid.py --workdir runs/grid \
      --config.methods=da,al0 --config.sparsities=0.01,0.1
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from experiments import _report

# Method key -> the method whose finished model it starts from (None: random).
PARENTS = {
    'natural': None,
    'da': None,
    'nap': 'natural',
    'ap': 'da',
    'al0': 'da',
    'alr': 'da',
    'atmc32': 'al0',
    'atmc8': 'atmc32',
}
METHODS = tuple(PARENTS)
SUMMARY_FILE = 'summary.json'
STAGE_CONFIG_FILE = 'stage_config.json'
STAGE_TIME_FILE = 'reproduce_time.json'

TrainFn = Callable[[ml_collections.ConfigDict, str], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run of the grid.

  Attributes:
    method: a key of :data:`PARENTS`.
    p: the L0 budget as a fraction of the dense weight count; None for the
      dense methods.
  """
  method: str
  p: Optional[float] = None

  @property
  def name(self) -> str:
    """The sub-workdir name: ``da``, ``al0_p0.01``."""
    return self.method if self.p is None else f'{self.method}_p{self.p:g}'

  @property
  def parent(self) -> Optional['Stage']:
    """The stage this one warm-starts from, or None."""
    parent = PARENTS[self.method]
    if parent is None:
      return None
    return Stage(parent, None if parent in _report.DENSE_METHODS else self.p)


def parse_methods(methods: str | Sequence[str]) -> list[str]:
  """Parses ``'da,al0'`` (or a sequence) into validated method keys.

  Raises:
    ValueError: an unknown method, or an empty list.
  """
  if isinstance(methods, str):
    methods = [m.strip() for m in methods.split(',') if m.strip()]
  methods = [str(m).lower().replace('-', '') for m in methods]
  aliases = {'nat': 'natural', 'atmc_32': 'atmc32', 'atmc_8': 'atmc8'}
  methods = [aliases.get(m, m) for m in methods]
  bad = [m for m in methods if m not in PARENTS]
  if bad:
    raise ValueError(f'methods={bad}; accepted: {list(METHODS)}.')
  if not methods:
    raise ValueError(f'methods is empty; accepted: {list(METHODS)}.')
  return methods


def parse_sparsities(sparsities: str | float | Sequence[float]) -> list[float]:
  """Parses ``'0.01,0.1'`` (or a number, or a sequence) into floats in (0, 1].

  Raises:
    ValueError: a value outside (0, 1] or not a number.
  """
  if isinstance(sparsities, str):
    items = [s.strip() for s in sparsities.strip('()[] ').split(',')
             if s.strip()]
  elif isinstance(sparsities, (int, float)):
    items = [sparsities]
  else:
    items = list(sparsities)
  out = []
  for s in items:
    try:
      p = float(s)
    except (TypeError, ValueError) as e:
      raise ValueError(f'sparsity {s!r} is not a number; accepted: floats '
                       'in (0, 1].') from e
    if not 0.0 < p <= 1.0:
      raise ValueError(f'sparsity p={p}; accepted: 0 < p <= 1.')
    if p not in out:
      out.append(p)
  return sorted(out)


def plan_stages(methods: str | Sequence[str],
                sparsities: str | Sequence[float]) -> list[Stage]:
  """Every stage needed for ``methods`` × ``sparsities``, parents first.

  Args:
    methods: method keys (see :data:`PARENTS`), as a list or ``'a,b'``.
    sparsities: the sparsity levels p (ignored by the dense methods).

  Returns:
    The stages in an order where each stage comes after the one it starts
    from; dense stages appear once.

  Raises:
    ValueError: see :func:`parse_methods` and :func:`parse_sparsities`.
  """
  methods = parse_methods(methods)
  needs_p = any(m not in _report.DENSE_METHODS for m in methods)
  ps = parse_sparsities(sparsities) if needs_p else []
  if needs_p and not ps:
    raise ValueError(f'sparsities={sparsities!r} is empty but methods '
                     f'{methods} are sparse; accepted: floats in (0, 1].')
  wanted = []
  for m in methods:
    if m in _report.DENSE_METHODS:
      wanted.append(Stage(m))
    else:
      wanted.extend(Stage(m, p) for p in ps)
  ordered: list[Stage] = []

  def visit(stage):
    if stage in ordered:
      return
    if stage.parent is not None:
      visit(stage.parent)
    ordered.append(stage)

  for s in wanted:
    visit(s)
  return ordered


def _merge(dst: ml_collections.ConfigDict, src: Mapping[str, Any],
           where: str = 'config') -> None:
  """Recursively writes ``src`` into ``dst`` (new keys are allowed)."""
  for k, v in src.items():
    if isinstance(v, Mapping) and k in dst and isinstance(
        dst[k], (ml_collections.ConfigDict, dict)):
      _merge(dst[k], v, f'{where}.{k}')
    else:
      with dst.unlocked() if hasattr(dst, 'unlocked') else _null():
        dst[k] = v


class _null:  # pylint: disable=invalid-name
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def stage_config(grid: ml_collections.ConfigDict, stage: Stage,
                 workdir: str) -> ml_collections.ConfigDict:
  """The ``train_and_evaluate`` config of one stage.

  Starts from ``grid.base`` (a training config), applies
  ``grid.stage_overrides[<method>]`` (per-stage epochs, learning rate, ...)
  and sets ``stage``, ``sparsity`` (sparse stages), ``bits``
  (``grid.atmc_bits`` for ATMC-8, None otherwise) and ``init_from``.

  Args:
    grid: the grid config (see ``experiments/configs/fmnist_grid.py``).
    stage: the stage.
    workdir: the grid's workdir (parent of the stage dirs).

  Returns:
    A new ``ConfigDict``.
  """
  config = ml_collections.ConfigDict(grid.base.to_dict())
  overrides = grid.get('stage_overrides', {}) or {}
  if stage.method in overrides:
    _merge(config, ml_collections.ConfigDict(overrides[stage.method]).to_dict())
  with config.unlocked():
    config.stage = stage.method
    if stage.p is not None:
      config.sparsity = float(stage.p)
    # ``bits=None`` means no quantisation constraint (the 32-bit methods).
    config.bits = (int(grid.get('atmc_bits', 8)) if stage.method == 'atmc8'
                   else None)
    parent = stage.parent
    config.init_from = (os.path.join(workdir, parent.name)
                        if parent is not None else '')
  return config


def is_finished(stage_dir: str) -> bool:
  """Whether a stage's workdir holds a finished run (``summary.json``)."""
  return os.path.exists(os.path.join(stage_dir, SUMMARY_FILE))


def _default_train_fn() -> TrainFn:
  from atmc_jax import training  # pylint: disable=g-import-not-at-top
  return training.train_and_evaluate


def _json_default(x):
  try:
    return x.item()
  except AttributeError:
    return str(x)


def run_stage(config: ml_collections.ConfigDict, stage_dir: str,
              train_fn: TrainFn) -> tuple[dict[str, Any], bool]:
  """Runs (or resumes, or skips) one stage.

  Returns:
    ``(summary, ran)``: the stage's summary and whether training was called.
  """
  if is_finished(stage_dir):
    with open(os.path.join(stage_dir, SUMMARY_FILE)) as f:
      summary = json.load(f)
    saved = os.path.join(stage_dir, STAGE_CONFIG_FILE)
    if os.path.exists(saved):
      with open(saved) as f:
        if json.load(f) != json.loads(config.to_json_best_effort()):
          logging.warning('%s is finished but its config differs from the '
                          'current one; keeping the finished run (delete '
                          'the directory to recompute).', stage_dir)
    return summary, False
  os.makedirs(stage_dir, exist_ok=True)
  with open(os.path.join(stage_dir, STAGE_CONFIG_FILE), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  # Wall time accumulates over interrupted and resumed invocations.
  time_path = os.path.join(stage_dir, STAGE_TIME_FILE)
  spent = 0.0
  if os.path.exists(time_path):
    with open(time_path) as f:
      spent = float(json.load(f).get('wall_time_s', 0.0))
  start = time.time()
  try:
    summary = dict(train_fn(config, stage_dir))
  finally:
    with open(time_path, 'w') as f:
      json.dump({'wall_time_s': spent + time.time() - start}, f)
  if not is_finished(stage_dir):  # The trainer is expected to write it.
    with open(os.path.join(stage_dir, SUMMARY_FILE), 'w') as f:
      json.dump(summary, f, indent=2, default=_json_default)
  return summary, True


def stage_wall_time(stage_dir: str, summary: Mapping[str, Any]) -> float:
  """The stage's training wall time in seconds (over all resumptions)."""
  path = os.path.join(stage_dir, STAGE_TIME_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return float(json.load(f)['wall_time_s'])
  for k in ('wall_time_s', 'train_time_s', 'wall_time'):
    if k in summary:
      return float(summary[k])
  return float('nan')
