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
  # A training config: each stage from its get_config(stage) (the paper's
  # per-stage recipe), at the paper's sparsity levels by default.
  python -m experiments.reproduce \
      --config experiments/configs/cifar10_resnet34.py --workdir runs/c10

See ``docs/reproduce.md``.
"""

import contextlib
import dataclasses
import importlib.util
import inspect
import json
import os
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from experiments import _cli
from experiments import _logs
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
                sparsities: str | Sequence[float],
                method_sparsities: Optional[Mapping[str, Any]] = None
                ) -> list[Stage]:
  """Every stage needed for ``methods`` × ``sparsities``, parents first.

  Args:
    methods: method keys (see :data:`PARENTS`), as a list or ``'a,b'``.
    sparsities: the sparsity levels p (ignored by the dense methods).
    method_sparsities: optional ``{method: levels}`` replacing
      ``sparsities`` for those methods (e.g. ALR, whose p is the fraction of
      singular values kept and lands at other compression ratios).

  Returns:
    The stages in an order where each stage comes after the one it starts
    from; dense stages appear once.

  Raises:
    ValueError: see :func:`parse_methods` and :func:`parse_sparsities`.
  """
  methods = parse_methods(methods)
  per_method = {parse_methods([m])[0]: parse_sparsities(v)
                for m, v in dict(method_sparsities or {}).items()}
  needs_p = any(m not in _report.DENSE_METHODS and m not in per_method
                for m in methods)
  ps = parse_sparsities(sparsities) if needs_p else []
  if needs_p and not ps:
    raise ValueError(f'sparsities={sparsities!r} is empty but methods '
                     f'{methods} are sparse; accepted: floats in (0, 1].')
  wanted = []
  for m in methods:
    if m in _report.DENSE_METHODS:
      wanted.append(Stage(m))
    else:
      wanted.extend(Stage(m, p) for p in per_method.get(m, ps))
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


def _merge(dst: ml_collections.ConfigDict, src: Mapping[str, Any]) -> None:
  """Recursively writes ``src`` into ``dst`` (new keys are allowed)."""
  for k, v in src.items():
    if isinstance(v, Mapping) and k in dst and isinstance(
        dst[k], (ml_collections.ConfigDict, dict)):
      _merge(dst[k], v)
    else:
      unlocked = (dst.unlocked() if isinstance(dst, ml_collections.ConfigDict)
                  else contextlib.nullcontext())
      with unlocked:
        dst[k] = v


# The sparsity levels of the paper's figure (spec §4.2), and a CPU-sized
# Fashion-MNIST grid; used when a training config is given without levels.
PAPER_SPARSITIES = {
    'mnist': (0.0015, 0.003, 0.006, 0.01, 0.025, 0.05, 0.1, 0.2),
    'cifar10': (0.001, 0.003, 0.005, 0.01, 0.05, 0.1),
    'cifar100': (0.001, 0.003, 0.005, 0.01, 0.05, 0.1),
    'svhn': (0.001, 0.003, 0.005, 0.01, 0.05, 0.1),
    'fashion_mnist': (0.003, 0.01, 0.03, 0.1),
}


def load_config_module(path: str):
  """Imports a config file (``experiments/configs/x.py``) as a module.

  Raises:
    ValueError: the file does not exist or has no ``get_config``.
  """
  path = path.split(':', 1)[0]
  if not os.path.exists(path):
    raise ValueError(f'config file {path!r} does not exist; accepted: a '
                     'path to a config file with get_config().')
  spec = importlib.util.spec_from_file_location(
      '_config_' + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{path!r} has no get_config(); accepted: a config '
                     'file.')
  return module


def _stage_base(grid: ml_collections.ConfigDict,
                stage: Stage) -> ml_collections.ConfigDict:
  """The training config a stage starts from (before overrides)."""
  if grid.get('base_config'):
    get_config = load_config_module(grid.base_config).get_config
    takes_stage = bool(inspect.signature(get_config).parameters)
    config = get_config(stage.method) if takes_stage else get_config()
    return ml_collections.ConfigDict(config.to_dict())
  return ml_collections.ConfigDict(grid.base.to_dict())


def stage_config(grid: ml_collections.ConfigDict, stage: Stage,
                 workdir: str) -> ml_collections.ConfigDict:
  """The ``train_and_evaluate`` config of one stage.

  Starts from ``grid.base`` (a training config), or, when
  ``grid.base_config`` names a config file, from its ``get_config(stage)``
  (the paper configs take the stage and apply its recipe); then applies
  ``grid.base_overrides`` (every stage) and ``grid.stage_overrides[<method>]``
  (per-stage epochs, learning rate, ...) and sets ``stage``, ``sparsity``
  (sparse stages), ``bits`` (``grid.atmc_bits`` for ATMC-8, None otherwise)
  and ``init_from``.

  Args:
    grid: the grid config (see ``experiments/configs/fmnist_grid.py``).
    stage: the stage.
    workdir: the grid's workdir (parent of the stage dirs).

  Returns:
    A new ``ConfigDict``.
  """
  config = _stage_base(grid, stage)
  _merge(config, ml_collections.ConfigDict(
      grid.get('base_overrides') or {}).to_dict())
  overrides = grid.get('stage_overrides') or {}
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
    config.init_from = (os.path.abspath(os.path.join(workdir, parent.name))
                        if parent is not None else '')
  return config


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, v in flat.items():
    node = out
    *parents, leaf = key.split('.')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def grid_from_training_config(path: str,
                              config: ml_collections.ConfigDict,
                              methods: Optional[str] = None,
                              sparsities: Optional[str] = None
                              ) -> ml_collections.ConfigDict:
  """A grid that runs every stage of a training config file.

  Each stage's config is ``get_config(stage)`` of the file (the paper
  configs apply the stage's recipe), plus whatever ``config`` (the file's
  config as loaded, with command-line overrides) changes with respect to the
  file's default config, except ``stage``.

  Args:
    path: the training config file.
    config: the loaded config (``--config.x=...`` overrides applied).
    methods: method keys; default: every method.
    sparsities: the levels p; default: :data:`PAPER_SPARSITIES` of the
      dataset.

  Returns:
    A grid config for :func:`reproduce`.
  """
  from atmc_jax.training import _workdir  # pylint: disable=g-import-not-at-top
  module = load_config_module(path)
  arg = path.split(':', 1)[1] if ':' in path else None
  default = (module.get_config(arg) if arg is not None
             else module.get_config())
  flat_default = _workdir.flatten(default.to_dict())
  changed = {k: v for k, v in _workdir.flatten(config.to_dict()).items()
             if k != 'stage' and (k not in flat_default
                                  or flat_default[k] != v)}
  grid = ml_collections.ConfigDict()
  grid.base = ml_collections.ConfigDict(config.to_dict())
  grid.base_config = path.split(':', 1)[0]
  grid.base_overrides = _unflatten(changed)
  grid.methods = methods or ','.join(METHODS)
  grid.sparsities = sparsities or ','.join(
      f'{p:g}' for p in PAPER_SPARSITIES.get(config.dataset, (0.01,)))
  grid.stage_overrides = {}
  grid.atmc_bits = int(config.get('bits') or 8)
  grid.title = f'{config.dataset}, {config.model}'
  return grid


def is_finished(stage_dir: str) -> bool:
  """Whether a stage's workdir holds a finished run (``summary.json``)."""
  return os.path.exists(os.path.join(stage_dir, SUMMARY_FILE))


def _default_train_fn() -> TrainFn:
  from atmc_jax import training  # pylint: disable=g-import-not-at-top
  return training.train_and_evaluate


def _same_stage_config(saved: dict[str, Any], current: dict[str, Any]) -> bool:
  """Equal configs, ``init_from`` compared by the parent stage's name only.

  A grid copied to another directory or machine (committed stages are)
  names its parents by other absolute paths.
  """
  def parent(c):
    return os.path.basename(os.path.normpath(c['init_from'])) if c.get(
        'init_from') else ''
  return (parent(saved) == parent(current) and
          {k: v for k, v in saved.items() if k != 'init_from'} ==
          {k: v for k, v in current.items() if k != 'init_from'})


def run_stage(config: ml_collections.ConfigDict, stage_dir: str,
              train_fn: TrainFn) -> tuple[dict[str, Any], bool]:
  """Runs (or resumes, or skips) one stage.

  Returns:
    ``(summary, ran)``: the stage's summary and whether training was called.
    A run that stopped early (``config.max_steps``, SIGTERM) returns a
    summary whose ``status`` is not ``"finished"``; its stage stays
    unfinished and the next call resumes it.
  """
  if is_finished(stage_dir):
    with open(os.path.join(stage_dir, SUMMARY_FILE)) as f:
      summary = json.load(f)
    saved = os.path.join(stage_dir, STAGE_CONFIG_FILE)
    if os.path.exists(saved):
      with open(saved) as f:
        if not _same_stage_config(json.load(f),
                                  json.loads(config.to_json_best_effort())):
          logging.warning('%s is finished but its config differs from the '
                          'current one; keeping the finished run (delete '
                          'the directory to recompute).', stage_dir)
    return summary, False
  # A stage started with another config is refused before anything in its
  # directory is rewritten (the trainer's own check, done first).
  from atmc_jax import training  # pylint: disable=g-import-not-at-top
  from atmc_jax.training import _workdir  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(stage_dir, _workdir.CONFIG_FILE)):
    _workdir.config_changes(stage_dir, training.apply_stage(config))
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
  finished = summary.get('status', 'finished') == 'finished'
  if finished and not is_finished(stage_dir):  # The trainer normally writes it.
    from atmc_jax._src import base  # pylint: disable=g-import-not-at-top
    with open(os.path.join(stage_dir, SUMMARY_FILE), 'w') as f:
      json.dump(summary, f, indent=2, default=base.json_default)
  return summary, True


def prune_latest_checkpoints(stage_dir: str,
                             config: ml_collections.ConfigDict) -> list[str]:
  """Removes a finished stage's resume checkpoints; keeps the selected one.

  A finished stage is never trained again, and everything after it (the next
  stages' warm start with ``init_from_best``, the reports,
  ``load_deployable``, ``evaluate_attacks``, ``export``) reads its ``best/``
  checkpoint. The ``checkpoints/`` series (the last ``keep_checkpoints``
  states, for resuming) is then dead weight: about three quarters of a
  stage's bytes. Only orbax step directories are removed (a checkpoint set
  aside as corrupt stays). Nothing is removed when the next stages start
  from the latest state (``init_from_best=False``).

  Returns:
    The removed directories.
  """
  if not bool(config.get('init_from_best', True)):
    return []
  root = os.path.join(stage_dir, 'checkpoints')
  if not os.path.isdir(os.path.join(stage_dir, 'best')) or not os.listdir(
      os.path.join(stage_dir, 'best')) or not os.path.isdir(root):
    return []
  removed = [os.path.join(root, d) for d in sorted(os.listdir(root))
             if d.isdigit()]
  for d in removed:
    shutil.rmtree(d)
  if not os.listdir(root):
    os.rmdir(root)
  if removed:
    logging.info('%s finished: removed its %d resume checkpoint(s); the '
                 'selected one is in best/ (grid.keep_latest_checkpoints=True '
                 'keeps them).', stage_dir, len(removed))
  return removed


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


_TA_KEYS = ('ta', 'test_deployable_accuracy', 'test_accuracy')
_ATA_KEYS = ('ata', 'test_deployable_adv_accuracy', 'test_adv_accuracy')


def _summary_value(summary: Mapping[str, Any], keys: Sequence[str]) -> Any:
  for k in keys:
    if summary.get(k) is not None:
      return summary[k]
  return None


def result_row(dataset: str, stage: Stage, stage_dir: str,
               summary: Mapping[str, Any]) -> dict[str, Any]:
  """The ``results.csv`` row of one finished stage.

  TA, ATA (evaluation attack), ATA-paper (the paper's protocol), nnz, bits
  and the compression ratio are those ``train_and_evaluate`` measured on the
  stage's *deployable* model at the checkpoint selected on validation (the
  compressed model the stage ships: exactly feasible for the L0 budget and,
  for ATMC-8, the per-tensor codebooks; for ALR, the rank-truncated model
  sized as ``32 * sum_l r_l (m_l + n_l)``); :func:`load_deployable` rebuilds
  the same model from the stage's checkpoint. A stage run with
  ``config.eval.autoattack_examples`` adds ``autoattack``,
  ``autoattack_examples`` and ``autoattack_masking_suspected``
  (``_report.AUTOATTACK_RESULT_FIELDS``).
  """
  row = dict(
      dataset=dataset,
      method=stage.method,
      p=stage.p,
      compression_ratio=summary.get('compression_ratio', 1.0),
      ta=_summary_value(summary, _TA_KEYS),
      ata=_summary_value(summary, _ATA_KEYS),
      ata_paper=summary.get('ata_paper'),
      nnz=summary.get('nnz'),
      bits=summary.get('model_bits', summary.get('bits')),
      selected_step=summary.get('selected_step'),
      last_ta=summary.get('last_ta'),
      last_ata=summary.get('last_ata'),
      test_examples=summary.get('test_count'),
      wall_time_s=stage_wall_time(stage_dir, summary),
  )
  if summary.get('autoattack_accuracy') is not None:
    row.update(autoattack=summary['autoattack_accuracy'],
               autoattack_examples=summary.get('autoattack_examples'),
               autoattack_masking_suspected=summary.get(
                   'autoattack_masking_suspected'))
  return row


@dataclasses.dataclass
class Deployed:
  """A finished stage's deployable model, rebuilt from its workdir.

  Attributes:
    config: the stage's (stage-applied) training config.
    model: the Flax model.
    params: the deployable params (compressed exactly as the stage ships).
    batch_stats: BatchNorm statistics (``{}`` without BatchNorm).
    dense_weight_count: weights of the dense network.
    size: ``nnz``, ``model_bits`` and ``compression_ratio`` by the paper's
      accounting (ALR: ``32 * sum_l r_l (m_l + n_l)``).
  """
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  batch_stats: Any
  dense_weight_count: int
  size: dict[str, Any]

  def logits_fn(self) -> Callable[[Any], Any]:
    """``x -> logits`` in inference mode, for the attacks.

    A factorized model runs as its dense twin, its matrices formed once.
    """
    from atmc_jax import data  # pylint: disable=g-import-not-at-top
    from atmc_jax import training  # pylint: disable=g-import-not-at-top
    spec = data.DATASETS[self.config.dataset]
    return training.logits_partial(self.model, self.params,
                                   self.batch_stats,
                                   image_shape=spec.image_shape)


def read_stage_config(stage_dir: str) -> ml_collections.ConfigDict:
  """The stage-applied config ``train_and_evaluate`` saved in ``stage_dir``.

  Raises:
    ValueError: ``stage_dir`` holds no ``config.json``.
  """
  path = os.path.join(stage_dir, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'{stage_dir!r} holds no config.json; accepted: the '
                     'workdir of a train_and_evaluate run.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _resolve_init_from(stage_dir: str, init_from: str) -> str:
  """``init_from`` as saved, or the sibling of the same name if it moved."""
  if not init_from or os.path.isdir(init_from):
    return init_from
  sibling = os.path.join(os.path.dirname(os.path.abspath(stage_dir)),
                         os.path.basename(os.path.normpath(init_from)))
  return sibling if os.path.isdir(sibling) else init_from


def load_deployable(stage_dir: str) -> Deployed:
  """Rebuilds a finished stage's deployable model from its checkpoint.

  Restores the checkpoint of ``stage_dir`` selected on validation (the
  state the stage's test evaluation used), rebuilds the stage's compression exactly as
  ``train_and_evaluate`` did (budget ``floor(p * dense weight count)``,
  bits; ALR's ranks from the warm-start model) and applies it.

  Args:
    stage_dir: the workdir of a finished ``train_and_evaluate`` run.

  Returns:
    A :class:`Deployed`.

  Raises:
    ValueError: ``stage_dir`` holds no config or no checkpoint.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from atmc_jax import data  # pylint: disable=g-import-not-at-top
  from atmc_jax import optim  # pylint: disable=g-import-not-at-top
  from atmc_jax import training  # pylint: disable=g-import-not-at-top

  config = read_stage_config(stage_dir)
  spec = data.DATASETS[config.dataset]
  model = training.create_model(config, spec)
  state, _ = training.restore_state_dict(stage_dir, best=True)
  params = state['params']
  batch_stats = state.get('batch_stats') or {}
  warm = params
  init_from = _resolve_init_from(stage_dir, config.get('init_from') or '')
  if config.compression == 'low_rank' and init_from:
    # ALR's ranks are fixed from the warm-start (DA) model's spectrum; its
    # checkpoint holds the factors B, A the model forms its kernels from.
    warm = training.restore_state_dict(
        init_from, best=bool(config.get('init_from_best')))[0]['params']
  _, compression = training.prepare_compression(config, warm)
  model = compression.wrap_model(model)
  dense_count = int(optim.dense_weight_count(warm))
  deployable = jax.device_get(jax.jit(compression.deployable)(params))
  stats = optim.compression_stats(deployable, dense_count)
  size = {'nnz': int(stats['nnz']), 'model_bits': int(stats['bits']),
          'compression_ratio': float(stats['ratio'])}
  alr_bits = compression.low_rank_bits(deployable)
  if alr_bits is not None:
    size['model_bits'] = int(alr_bits)
    size['compression_ratio'] = alr_bits / (32.0 * dense_count)
  return Deployed(config=config, model=model, params=deployable,
                  batch_stats=batch_stats, dense_weight_count=dense_count,
                  size=size)


def is_packed_file(path: str) -> bool:
  """Whether ``path`` is a packed model file (``experiments.export``)."""
  return os.path.isfile(path)


def load_packed(path: str) -> Deployed:
  """A packed model file (``experiments.export``) as a :class:`Deployed`.

  The config holds what the metadata records: ``stage``, ``dataset``,
  ``model``, ``sparsity``, ``train_attack.epsilon`` and the evaluation
  attack ``eval.attack``, plus ``packed`` (the path). The model is the
  dense variant (factorized layers are materialised on loading).

  Raises:
    ValueError: ``path`` is not a packed model file.
  """
  from atmc_jax import export  # pylint: disable=g-import-not-at-top
  from atmc_jax import models  # pylint: disable=g-import-not-at-top
  loaded = export.load(path)
  meta = loaded.metadata
  model_config = dict(meta.get('model_config') or {})
  num_classes = model_config.pop('num_classes')
  model_config.pop('factorized', None)
  for k in ('mean', 'std'):
    if model_config.get(k) is not None:
      model_config[k] = tuple(model_config[k])
  model = models.create_model(meta['model'], num_classes=num_classes,
                              factorized=False, **model_config)
  threat = meta.get('threat_model') or {}
  config = ml_collections.ConfigDict({
      'packed': path, 'stage': meta.get('stage'),
      'dataset': meta.get('dataset'), 'model': meta['model'],
      'sparsity': meta.get('sparsity'),
      'train_attack': {'epsilon': threat.get('epsilon')},
      'eval': {'attack': {
          'norm': threat.get('norm'), 'epsilon': threat.get('eval_epsilon'),
          'num_steps': threat.get('num_steps'),
          'step_size': threat.get('step_size'),
          'random_start': threat.get('random_start', True)}},
  })
  sizes = export.size_report(path)
  report = sizes['total']
  nnz = sum(r['nnz'] or 0 for r in sizes['tensors'])
  return Deployed(
      config=config, model=model, params=loaded.variables['params'],
      batch_stats=loaded.variables.get('batch_stats') or {},
      dense_weight_count=int(report['dense_weight_count']),
      size={'nnz': nnz, 'model_bits': int(report['accounted_bits']),
            'compression_ratio': float(report['paper_ratio'])})


def write_reports(rows: Sequence[Mapping[str, Any]], workdir: str,
                  title: Optional[str] = None,
                  paper_dataset: Optional[str] = None) -> dict[str, str]:
  """Writes ``results.csv``, ``results.md``, ``results.png``/``.pdf``.

  With ``paper_dataset`` (a key of ``experiments.paper_readoffs.READOFFS``)
  the figure also draws the paper's read-offs as hollow markers and
  ``comparison.md`` puts our numbers beside the paper's.

  Returns:
    A dict ``{'csv': path, 'md': path, 'png': path, 'pdf': path}`` (and
    ``'comparison'`` with ``paper_dataset``).
  """
  from experiments import paper_readoffs  # pylint: disable=g-import-not-at-top
  rows = _report.sort_rows(rows)
  paths = {'csv': os.path.join(workdir, 'results.csv'),
           'md': os.path.join(workdir, 'results.md')}
  fields = _report.result_fields(rows)
  _report.write_csv([{**dict.fromkeys(fields), **r} for r in rows],
                    paths['csv'], fields)
  with open(paths['md'], 'w') as f:
    f.write(_report.results_markdown(rows, title=title))
  reference = None
  if paper_dataset:
    reference = paper_readoffs.paper_rows(paper_dataset)
    paths['comparison'] = os.path.join(workdir, 'comparison.md')
    with open(paths['comparison'], 'w') as f:
      f.write(_report.comparison_markdown(rows, reference,
                                          paper_readoffs.matching_row))
  png, pdf = _report.plot_results(rows, os.path.join(workdir, 'results'),
                                  title=title, reference=reference)
  paths.update(png=png, pdf=pdf)
  return paths


def reproduce(grid: ml_collections.ConfigDict, workdir: str, *,
              train_fn: Optional[TrainFn] = None) -> list[dict[str, Any]]:
  """Runs (or resumes) every stage of the grid and writes the reports.

  Args:
    grid: the grid config: ``base`` (a training config) or ``base_config``
      (a training config file), ``methods``, ``sparsities``,
      ``method_sparsities`` (optional ``{method: levels}`` overrides),
      ``base_overrides``, ``stage_overrides``, ``atmc_bits``, ``title``,
      ``keep_going`` (on a stage's error, go on with the stages that do not
      depend on it), ``keep_latest_checkpoints`` (default False: a finished
      stage keeps only its selected checkpoint, see
      :func:`prune_latest_checkpoints`).
    workdir: the output directory; each stage runs in ``workdir/<stage>``.
    train_fn: ``(config, workdir) -> summary``; default
      ``atmc_jax.training.train_and_evaluate``.

  Returns:
    The result rows, one per finished stage, in the order of
    ``results.csv``. When a stage stops early (``max_steps``, SIGTERM) the
    grid stops there; the reports cover the stages finished so far.

  Raises:
    ValueError: bad ``methods`` or ``sparsities``.
    RuntimeError: with ``grid.keep_going``, after the reports are written,
      when some stages failed (their error) or were skipped because a stage
      they start from failed. Without it, a stage's error propagates.
  """
  stages = plan_stages(grid.methods, grid.sparsities,
                       grid.get('method_sparsities'))
  train_fn = train_fn or _default_train_fn()
  os.makedirs(workdir, exist_ok=True)
  dataset = grid.base.dataset
  logging.info('reproduce: %d stages: %s', len(stages),
               ', '.join(s.name for s in stages))
  keep_going = bool(grid.get('keep_going', False))
  rows, failed = [], {}
  for i, stage in enumerate(stages):
    stage_dir = os.path.join(workdir, stage.name)
    if stage.parent is not None and stage.parent.name in failed:
      failed[stage.name] = f'skipped: it starts from {stage.parent.name}'
      logging.error('[%d/%d] %s %s.', i + 1, len(stages), stage.name,
                    failed[stage.name])
      continue
    config = stage_config(grid, stage, workdir)
    try:
      summary, ran = run_stage(config, stage_dir, train_fn)
    except Exception as e:  # pylint: disable=broad-exception-caught
      if not keep_going:
        raise
      failed[stage.name] = f'{type(e).__name__}: {e}'
      logging.exception('[%d/%d] %s failed; going on with the stages that '
                        'do not depend on it.', i + 1, len(stages),
                        stage.name)
      continue
    if not is_finished(stage_dir):
      logging.warning('[%d/%d] %s stopped before the end (%s); rerun the '
                      'same command to resume it. Reporting the %d finished '
                      'stages.', i + 1, len(stages), stage.name,
                      summary.get('status'), len(rows))
      break
    if ran and not grid.get('keep_latest_checkpoints', False):
      prune_latest_checkpoints(stage_dir, config)
    row = result_row(dataset, stage, stage_dir, summary)
    logging.info('[%d/%d] %s (%s): TA %s ATA %s CR %.4g', i + 1, len(stages),
                 stage.name, 'trained' if ran else 'cached', row['ta'],
                 row['ata'], row['compression_ratio'])
    rows.append(row)
  if rows:
    write_reports(rows, workdir, title=grid.get('title') or dataset,
                  paper_dataset=grid.get('paper_readoffs'))
  if failed:
    raise RuntimeError(
        f'{len(failed)} of {len(stages)} stages did not finish (the reports '
        'cover the others; rerun to retry them):\n' + '\n'.join(
            f'  {name}: {why}' for name, why in failed.items()))
  return _report.sort_rows(rows)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _logs.quiet_libraries(not flags.FLAGS.library_logs)
  config = flags.FLAGS.config
  methods, sparsities = flags.FLAGS.methods, flags.FLAGS.sparsities
  if 'methods' in config:  # A grid config.
    grid = config
    with grid.unlocked():
      if methods:
        grid.methods = methods
      if sparsities:
        grid.sparsities = sparsities
  else:  # A training config: run its stages (paper configs: their recipes).
    path = config_flags.get_config_filename(flags.FLAGS['config'])
    grid = grid_from_training_config(path, config, methods, sparsities)
  rows = reproduce(grid, flags.FLAGS.workdir)
  print(closing_summary(rows, flags.FLAGS.workdir,
                        grid.get('title') or grid.base.dataset))


def closing_summary(rows: Sequence[Mapping[str, Any]], workdir: str,
                    title: str) -> str:
  """The plain-language end of a run: what was trained, where, what next."""
  labels = ', '.join(dict.fromkeys(_report.method_label(r['method'])
                                   for r in _report.sort_rows(rows)))
  return '\n'.join([
      '',
      f'Trained and evaluated {len(rows)} models ({labels}): {title}.',
      'Each was selected on the validation split and tested on held-out '
      'test images.',
      '',
      _report.results_markdown(rows),
      f'Files: {workdir}/results.csv, results.md, results.png (the figure); '
      f'one folder per stage in {workdir}/ with summary.json, metrics.jsonl '
      'and its selected checkpoint. Rerunning the same command skips finished '
      'stages.',
      'Next:',
      f'  python -m experiments.evaluate_attacks --workdir {workdir}'
      '    # other attacks and the strong suite',
      '  python -m experiments.reproduce --config '
      'experiments/configs/fmnist_grid.py --workdir runs/grid'
      '    # every method at 4 sparsities',
      '  make mnist && python -m experiments.reproduce --config '
      'experiments/configs/mnist_paper.py --workdir runs/mnist'
      "    # the paper's MNIST panel",
      ''])


if __name__ == '__main__':
  # Flags are defined here, not at import, so that other entry points
  # (experiments.evaluate_attacks) can import this module.
  config_flags.DEFINE_config_file(
      'config', None, 'A grid config (experiments/configs/fmnist_quick.py, '
      'fmnist_grid.py) or a training config whose stages to run '
      '(experiments/configs/cifar10_resnet34.py: each stage from '
      'get_config(stage)).', lock_config=False)
  flags.DEFINE_string('workdir', None, 'Output directory.')
  flags.DEFINE_string('methods', None, 'Comma-separated methods (overrides '
                      'the config): natural,da,nap,ap,al0,alr,atmc32,atmc8.')
  flags.DEFINE_string('sparsities', None, 'Comma-separated sparsity levels p '
                      '(overrides the config).')
  flags.DEFINE_bool('library_logs', False, 'Also show the INFO/WARNING log '
                    'lines of the libraries (orbax, ...).')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=_cli.parse_flags)
