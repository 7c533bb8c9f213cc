r"""Evaluates a reproduction run's models under the paper's other attacks.

For every finished stage of a ``python -m experiments.reproduce`` workdir,
rebuilds the deployable model from its checkpoint and measures test accuracy
under:

* **the paper's other attacks** (Gui et al., 2019, poster; spec §5.2),
  scaled to the dataset: PGD at ``eps_scales`` × the training epsilon (the
  paper's 2/255, 4/255, 8/255 around its training 4/255; for Fashion-MNIST
  trained at 0.1 that is 0.05, 0.1, 0.2) with the stage's evaluation PGD
  settings (steps, step size, random start), FGSM at the training epsilon and
  WRM with ``gamma = 1.3`` and 7 steps. ``paper_pgd`` is PGD at the training
  epsilon: the protocol behind the reported ATA;
* **a strong suite**: PGD-50 with 5 random restarts and APGD-CE with 100
  steps at the training epsilon; ``strong`` is the per-example worst case
  over both (``atmc_jax.attacks.robust_accuracy``).

A model whose strong-suite accuracy is more than ``--gap_threshold`` (default
5 points) below its paper-protocol PGD accuracy is flagged
(``masking_suspected``): the paper's attack overestimates its robustness, a
sign of gradient masking.

Outputs in ``--workdir``: ``attacks.csv`` and ``attacks.md``; each stage's
results are cached in ``<stage>/attacks.json`` (recomputed only when the
attack settings change).

Usage::

  python -m experiments.evaluate_attacks --workdir runs/quick \
      [--max_examples 1000] [--eps_scales 0.5,1,2]
"""

import functools
import json
import os
import time
from typing import Any, Mapping, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from experiments import _report
from experiments import reproduce

ATTACKS_FILE = 'attacks.json'


def attack_settings(config, *, eps_scales: Sequence[float] = (0.5, 1.0, 2.0),
                    wrm_gamma: float = 1.3, wrm_steps: int = 7,
                    strong_pgd_steps: int = 50, strong_pgd_restarts: int = 5,
                    apgd_steps: int = 100) -> dict[str, Any]:
  """The (JSON-able) attack settings for a stage's config.

  Args:
    config: the stage's training config (``train_attack``, ``eval.attack``).
    eps_scales: PGD radii as multiples of the training epsilon; must
      contain 1 (the paper-protocol PGD).
    wrm_gamma: WRM's loss weight.
    wrm_steps: WRM's steps.
    strong_pgd_steps: steps of the strong PGD.
    strong_pgd_restarts: random restarts of the strong PGD.
    apgd_steps: APGD-CE steps.

  Returns:
    A dict describing every attack (the cache key of ``attacks.json``).

  Raises:
    ValueError: ``eps_scales`` lacks 1 or holds a value <= 0.
  """
  scales = [float(s) for s in eps_scales]
  if 1.0 not in scales or any(s <= 0 for s in scales):
    raise ValueError(f'eps_scales={scales}; accepted: positive numbers '
                     'including 1 (the training epsilon).')
  ev = config.eval.attack
  return dict(
      epsilon=float(config.train_attack.epsilon),
      norm=str(ev.norm),
      eps_scales=scales,
      pgd_steps=int(ev.num_steps),
      pgd_step_size=(None if ev.get('step_size') is None
                     else float(ev.step_size)),
      pgd_random_start=bool(ev.get('random_start', True)),
      wrm_gamma=float(wrm_gamma), wrm_steps=int(wrm_steps),
      strong_pgd_steps=int(strong_pgd_steps),
      strong_pgd_restarts=int(strong_pgd_restarts),
      apgd_steps=int(apgd_steps))


def _eps_name(eps: float) -> str:
  return f'{eps:.4g}'


def paper_attack_names(settings: Mapping[str, Any]) -> list[str]:
  """The column names of the paper-protocol attacks, in order."""
  eps = settings['epsilon']
  names = [f'pgd_eps{_eps_name(eps * s)}' for s in settings['eps_scales']]
  names += [f'fgsm_eps{_eps_name(eps)}', f'wrm_gamma{settings["wrm_gamma"]:g}']
  return names


def strong_attack_names(settings: Mapping[str, Any]) -> list[str]:
  """The column names of the strong suite, in order."""
  return [f'pgd{settings["strong_pgd_steps"]}x'
          f'{settings["strong_pgd_restarts"]}', 'apgd_ce']


def build_suites(settings: Mapping[str, Any]) -> tuple[dict, dict]:
  """``(paper_suite, strong_suite)``: name -> attack, for robust_accuracy."""
  from atmc_jax import attacks  # pylint: disable=g-import-not-at-top
  eps, norm = settings['epsilon'], settings['norm']
  paper = {}
  for s, name in zip(settings['eps_scales'], paper_attack_names(settings)):
    step = settings['pgd_step_size']
    paper[name] = functools.partial(
        attacks.pgd, epsilon=eps * s, num_steps=settings['pgd_steps'],
        step_size=None if step is None else step * s, norm=norm,
        random_start=settings['pgd_random_start'])
  fgsm_name, wrm_name = paper_attack_names(settings)[-2:]
  paper[fgsm_name] = functools.partial(attacks.fgsm, epsilon=eps)
  paper[wrm_name] = functools.partial(attacks.wrm,
                                      gamma=settings['wrm_gamma'],
                                      num_steps=settings['wrm_steps'])
  pgd_name, apgd_name = strong_attack_names(settings)
  strong = {
      pgd_name: functools.partial(
          attacks.pgd, epsilon=eps, num_steps=settings['strong_pgd_steps'],
          num_restarts=settings['strong_pgd_restarts'], random_start=True,
          norm=norm),
      apgd_name: functools.partial(attacks.apgd, epsilon=eps,
                                   num_steps=settings['apgd_steps'],
                                   norm=norm),
  }
  return paper, strong


def _batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
  for i in range(0, len(labels), batch_size):
    x = np.asarray(images[i:i + batch_size], np.float32)
    if images.dtype == np.uint8:
      x = x / np.float32(255)
    yield x, np.asarray(labels[i:i + batch_size], np.int32)


def test_split(config, max_examples: Optional[int]):
  """The stage's test split (as ``train_and_evaluate`` loads it), cut."""
  from atmc_jax import training  # pylint: disable=g-import-not-at-top
  images, labels = training.load_data(config)['test']
  if max_examples:
    images, labels = images[:max_examples], labels[:max_examples]
  return images, labels


def evaluate_stage(stage_dir: str, settings_kw: Mapping[str, Any], *,
                   max_examples: Optional[int], batch_size: int, seed: int,
                   gap_threshold: float) -> dict[str, Any]:
  """Attacks one finished stage's deployable model (cached in the stage).

  Returns:
    A dict with ``clean``, one entry per attack, ``paper_pgd``, ``strong``
    (worst case of the strong suite), ``gap`` (``paper_pgd - strong``),
    ``masking_suspected``, ``num_examples``, ``settings`` and the stage's
    ``compression_ratio``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from atmc_jax import attacks  # pylint: disable=g-import-not-at-top

  config = reproduce.read_stage_config(stage_dir)
  settings = attack_settings(config, **settings_kw)
  key_info = dict(settings=settings, max_examples=max_examples, seed=seed)
  cache = os.path.join(stage_dir, ATTACKS_FILE)
  if os.path.exists(cache):
    with open(cache) as f:
      cached = json.load(f)
    if all(cached.get(k) == v for k, v in key_info.items()):
      cached['masking_suspected'] = bool(cached['gap'] > gap_threshold)
      return cached
  start = time.time()
  dep = reproduce.load_deployable(stage_dir)
  logits_fn = dep.logits_fn()
  images, labels = test_split(config, max_examples)
  paper, strong = build_suites(settings)
  key = jax.random.PRNGKey(seed)
  res_paper = attacks.robust_accuracy(
      logits_fn, _batches(images, labels, batch_size), paper, key)
  res_strong = attacks.robust_accuracy(
      logits_fn, _batches(images, labels, batch_size), strong, key)
  paper_pgd = res_paper[paper_attack_names(settings)[
      settings['eps_scales'].index(1.0)]]
  out = dict(key_info)
  out.update({k: v for k, v in res_paper.items() if k != 'worst_case'})
  out.update({k: v for k, v in res_strong.items()
              if k not in ('clean', 'worst_case')})
  out.update(paper_pgd=paper_pgd, strong=res_strong['worst_case'],
             gap=paper_pgd - res_strong['worst_case'],
             num_examples=int(len(labels)),
             compression_ratio=dep.size['compression_ratio'],
             wall_time_s=time.time() - start)
  out['masking_suspected'] = bool(out['gap'] > gap_threshold)
  with open(cache, 'w') as f:
    json.dump(out, f, indent=2)
  return out


def finished_stages(workdir: str) -> list[tuple[reproduce.Stage, str]]:
  """``(stage, stage_dir)`` of every finished stage under ``workdir``.

  Stages are ordered as in ``results.csv`` (method in the paper's order,
  then p).
  """
  found = []
  for name in sorted(os.listdir(workdir)):
    stage_dir = os.path.join(workdir, name)
    if not (os.path.isdir(stage_dir) and reproduce.is_finished(stage_dir)
            and os.path.exists(os.path.join(stage_dir, 'config.json'))):
      continue
    config = reproduce.read_stage_config(stage_dir)
    p = (None if config.stage in _report.DENSE_METHODS
         else float(config.sparsity))
    found.append((reproduce.Stage(config.stage, p), stage_dir))
  order = list(_report.METHOD_LABELS)
  found.sort(key=lambda s: (order.index(s[0].method),
                            -1.0 if s[0].p is None else s[0].p))
  return found


def evaluate_attacks(workdir: str, *, methods: Optional[Sequence[str]] = None,
                     max_examples: Optional[int] = 1000,
                     batch_size: int = 250, seed: int = 0,
                     gap_threshold: float = 0.05,
                     **settings_kw) -> list[dict[str, Any]]:
  """Attacks every finished stage of a reproduction and writes the tables.

  Args:
    workdir: a ``experiments.reproduce`` workdir.
    methods: only these method keys (default: all finished stages).
    max_examples: the first this many test examples (None: all).
    batch_size: attack batch size.
    seed: PRNG seed of the random starts.
    gap_threshold: flag models with ``paper_pgd - strong`` above this.
    **settings_kw: forwarded to :func:`attack_settings`.

  Returns:
    The rows of ``attacks.csv``.

  Raises:
    ValueError: no finished stage under ``workdir``, or bad settings.
  """
  if not 0.0 <= gap_threshold <= 1.0:
    raise ValueError(f'gap_threshold={gap_threshold}; accepted: [0, 1].')
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size}; accepted: >= 1.')
  stages = finished_stages(workdir)
  if methods:
    methods = reproduce.parse_methods(methods)
    stages = [s for s in stages if s[0].method in methods]
  if not stages:
    raise ValueError(f'{workdir!r} holds no finished stage'
                     + (f' of methods {list(methods)}' if methods else '')
                     + '; accepted: a workdir of experiments.reproduce.')
  rows, names = [], None
  for stage, stage_dir in stages:
    res = evaluate_stage(stage_dir, settings_kw, max_examples=max_examples,
                         batch_size=batch_size, seed=seed,
                         gap_threshold=gap_threshold)
    stage_names = (paper_attack_names(res['settings']) +
                   strong_attack_names(res['settings']))
    if names is None:
      names = stage_names
    elif stage_names != names:
      raise ValueError(f'{stage_dir!r} was trained with another epsilon '
                       f'(attacks {stage_names} vs {names}); accepted: '
                       'stages of one reproduction.')
    config = reproduce.read_stage_config(stage_dir)
    row = dict(dataset=config.dataset, method=stage.method, p=stage.p,
               compression_ratio=res['compression_ratio'], ta=res['clean'])
    row.update({n: res[n] for n in names})
    row.update({k: res[k] for k in _report.ATTACK_TAIL_FIELDS})
    logging.info('%s: clean %.3f, paper PGD %.3f, strong %.3f%s',
                 stage.name, res['clean'], res['paper_pgd'], res['strong'],
                 ' (masking suspected)' if res['masking_suspected'] else '')
    rows.append(row)
  _report.write_csv(rows, os.path.join(workdir, 'attacks.csv'),
                    _report.attack_fields(names))
  settings = res['settings']
  notes = [
      f'{res["num_examples"]} test examples; training epsilon '
      f'{settings["epsilon"]:g} ({settings["norm"]}).',
      f'pgd_eps*: {settings["pgd_steps"]}-step PGD (the evaluation attack '
      'of the training config), radius scaled; paper PGD = pgd at the '
      'training epsilon.',
      f'strong suite: per-example worst case of {names[-2]} (random '
      f'restarts) and APGD-CE ({settings["apgd_steps"]} steps).',
  ]
  with open(os.path.join(workdir, 'attacks.md'), 'w') as f:
    f.write(_report.attacks_markdown(rows, names, gap_threshold, notes))
  return rows


_WORKDIR = flags.DEFINE_string('workdir', None,
                               'A workdir of experiments.reproduce.')
_METHODS = flags.DEFINE_list('methods', None,
                             'Only these methods (default: all finished).')
_MAX_EXAMPLES = flags.DEFINE_integer(
    'max_examples', 1000, 'First N test examples (0: the whole test split).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 250, 'Attack batch size.')
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed of the random starts.')
_EPS_SCALES = flags.DEFINE_list(
    'eps_scales', ['0.5', '1', '2'],
    'PGD radii as multiples of the training epsilon (must include 1).')
_GAP = flags.DEFINE_float(
    'gap_threshold', 0.05,
    'Flag a model whose strong-suite accuracy is this much below its '
    'paper-protocol PGD accuracy.')
_STRONG_PGD_STEPS = flags.DEFINE_integer('strong_pgd_steps', 50,
                                         'Strong PGD steps.')
_STRONG_PGD_RESTARTS = flags.DEFINE_integer('strong_pgd_restarts', 5,
                                            'Strong PGD restarts.')
_APGD_STEPS = flags.DEFINE_integer('apgd_steps', 100, 'APGD-CE steps.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  evaluate_attacks(
      _WORKDIR.value, methods=_METHODS.value,
      max_examples=_MAX_EXAMPLES.value or None,
      batch_size=_BATCH_SIZE.value, seed=_SEED.value,
      gap_threshold=_GAP.value,
      eps_scales=[float(s) for s in _EPS_SCALES.value],
      strong_pgd_steps=_STRONG_PGD_STEPS.value,
      strong_pgd_restarts=_STRONG_PGD_RESTARTS.value,
      apgd_steps=_APGD_STEPS.value)
  with open(os.path.join(_WORKDIR.value, 'attacks.md')) as f:
    print(f.read())


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
