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

``--suite autoattack`` instead measures, at the training epsilon, PGD-20
(random start, step ``2.5 eps / 20``) and the standard AutoAttack (Croce &
Hein, 2020: APGD-CE, APGD-T, FAB-T, Square; ``atmc_jax.attacks.autoattack``),
and flags a model whose AutoAttack accuracy is more than ``--gap_threshold``
below its PGD-20 accuracy.

Outputs in ``--workdir``: ``attacks.csv`` and ``attacks.md`` (or
``autoattack.csv`` and ``autoattack.md``); each stage's results are cached
in ``<stage>/attacks.json`` (``<stage>/autoattack.json``), recomputed only
when the settings change. The reports state the number of test examples and
the wall time of every stage's evaluation. ``--workdir`` may also be a
packed model file (``experiments.export``): then its one model is attacked
and the outputs are ``<file stem>.attacks.{csv,md,json}`` (or
``.autoattack.*``) next to it.

Usage::

  python -m experiments.evaluate_attacks --workdir runs/quick \
      [--max_examples 1000|all] [--eps_scales 0.5,1,2] [--suite autoattack]
  python -m experiments.evaluate_attacks --workdir model.atmc
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
AUTOATTACK_FILE = 'autoattack.json'
SUITES = ('paper', 'autoattack')


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
  if config.get('packed'):  # A packed model: the dataset's test split.
    from atmc_jax import data  # pylint: disable=g-import-not-at-top
    images, labels = data.load_split(config.dataset, 'test')
  else:
    from atmc_jax import training  # pylint: disable=g-import-not-at-top
    images, labels = training.load_data(config)['test']
  check_max_examples(max_examples)
  if max_examples is not None:
    images, labels = images[:max_examples], labels[:max_examples]
  return images, labels


def _stage_config(stage_dir: str):
  """The config of a stage workdir or of a packed model file."""
  if reproduce.is_packed_file(stage_dir):
    return reproduce.load_packed(stage_dir).config
  return reproduce.read_stage_config(stage_dir)


def _load_model(stage_dir: str):
  """The deployable model of a stage workdir or of a packed model file."""
  if reproduce.is_packed_file(stage_dir):
    return reproduce.load_packed(stage_dir)
  return reproduce.load_deployable(stage_dir)


def _outputs(workdir: str, name: str) -> str:
  """Where ``name`` (``attacks.json``, ``autoattack.md``, ...) goes."""
  if reproduce.is_packed_file(workdir):
    return os.path.splitext(workdir)[0] + '.' + name
  return os.path.join(workdir, name)


def _stages(workdir: str) -> list[tuple[reproduce.Stage, str]]:
  """The finished stages of a workdir, or the one model of a packed file."""
  if reproduce.is_packed_file(workdir):
    config = _stage_config(workdir)
    p = None if config.get('sparsity') is None else float(config.sparsity)
    return [(reproduce.Stage(config.stage, p), workdir)]
  return finished_stages(workdir)


def _read_cache(path: str, key_info: Mapping[str, Any],
                gap_threshold: float) -> Optional[dict[str, Any]]:
  """A stage's cached results if they were made with ``key_info``, or None.

  The masking flag is recomputed for the current ``gap_threshold``.
  """
  if not os.path.exists(path):
    return None
  with open(path) as f:
    cached = json.load(f)
  if not all(cached.get(k) == v for k, v in key_info.items()):
    return None
  from atmc_jax import attacks  # pylint: disable=g-import-not-at-top
  cached['masking_suspected'] = attacks.masking_suspected(cached['gap'],
                                                          gap_threshold)
  return cached


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

  config = _stage_config(stage_dir)
  settings = attack_settings(config, **settings_kw)
  key_info = dict(settings=settings, max_examples=max_examples, seed=seed)
  cache = _outputs(stage_dir, ATTACKS_FILE)
  cached = _read_cache(cache, key_info, gap_threshold)
  if cached is not None:
    return cached
  start = time.time()
  dep = _load_model(stage_dir)
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
  out['masking_suspected'] = attacks.masking_suspected(out['gap'],
                                                       gap_threshold)
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
    config = _stage_config(stage_dir)
    p = (None if config.stage in _report.DENSE_METHODS
         else float(config.sparsity))
    found.append((reproduce.Stage(config.stage, p), stage_dir))
  order = list(_report.METHOD_LABELS)
  found.sort(key=lambda s: (order.index(s[0].method),
                            -1.0 if s[0].p is None else s[0].p))
  return found


def check_max_examples(max_examples: Optional[int]) -> None:
  """``None`` (the whole test split) or an integer >= 1."""
  if max_examples is not None and (
      isinstance(max_examples, bool)
      or not isinstance(max_examples, (int, np.integer))
      or max_examples < 1):
    raise ValueError(f'max_examples={max_examples!r} is invalid; accepted: '
                     'an integer >= 1, or None (the whole test split).')


def parse_max_examples(value: str) -> Optional[int]:
  """The ``--max_examples`` flag: ``all`` or an integer >= 1."""
  if value.strip().lower() == 'all':
    return None
  try:
    n = int(value)
  except ValueError:
    n = None
  if n is None or n < 1:
    raise ValueError(f'--max_examples={value} is invalid; accepted: an '
                     "integer >= 1, or 'all' (the whole test split).")
  return n


def _selected_stages(workdir, methods, gap_threshold, batch_size,
                     max_examples):
  """The finished stages to attack; checks the shared arguments.

  Raises:
    ValueError: a bad ``gap_threshold``, ``batch_size`` or
      ``max_examples``, or no finished stage (of ``methods``) under
      ``workdir``.
  """
  check_max_examples(max_examples)
  if not 0.0 <= gap_threshold <= 1.0:
    raise ValueError(f'gap_threshold={gap_threshold}; accepted: [0, 1].')
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size}; accepted: >= 1.')
  stages = _stages(workdir)
  if methods:
    methods = reproduce.parse_methods(methods)
    stages = [s for s in stages if s[0].method in methods]
  if not stages:
    raise ValueError(f'{workdir!r} holds no finished stage'
                     + (f' of methods {list(methods)}' if methods else '')
                     + '; accepted: a workdir of experiments.reproduce.')
  return stages


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
  stages = _selected_stages(workdir, methods, gap_threshold, batch_size,
                            max_examples)
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
    config = _stage_config(stage_dir)
    row = dict(dataset=config.dataset, method=stage.method, p=stage.p,
               compression_ratio=res['compression_ratio'], ta=res['clean'])
    row.update({n: res[n] for n in names})
    row.update({k: res[k] for k in _report.ATTACK_TAIL_FIELDS})
    row['wall_time_s'] = res['wall_time_s']
    logging.info('%s: clean %.3f, paper PGD %.3f, strong %.3f%s',
                 stage.name, res['clean'], res['paper_pgd'], res['strong'],
                 ' (masking suspected)' if res['masking_suspected'] else '')
    rows.append(row)
  _report.write_csv(rows, _outputs(workdir, 'attacks.csv'),
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
      'wall time of each evaluation: ' + ', '.join(
          f'{_stage_label(r)} {r["wall_time_s"]:.1f} s' for r in rows) + '.',
  ]
  with open(_outputs(workdir, 'attacks.md'), 'w') as f:
    f.write(_report.attacks_markdown(rows, names, gap_threshold, notes))
  return rows


def _stage_label(row: Mapping[str, Any]) -> str:
  p = row.get('p')
  return _report.method_label(row['method']) + (
      '' if p is None else f' (p = {p:g})')


# ---------------------------------------------------------------------------
# --suite autoattack: PGD-20 beside the standard AutoAttack.
# ---------------------------------------------------------------------------


def autoattack_settings(config, *, pgd_steps: int = 20, num_steps: int = 100,
                        num_targets: int = 9,
                        num_queries: int = 5000) -> dict[str, Any]:
  """The (JSON-able) settings of the AutoAttack suite for a stage's config.

  Args:
    config: the stage's training config (``train_attack``, ``eval.attack``).
    pgd_steps: steps of the PGD baseline (random start, default step).
    num_steps: APGD / FAB iterations of AutoAttack (standard: 100).
    num_targets: APGD-T / FAB-T target classes (standard: 9).
    num_queries: Square queries (standard: 5000).

  Returns:
    A dict (the cache key of ``autoattack.json``); ``version`` is
    ``"standard"`` only with the standard iterations, else ``"reduced"``.
  """
  standard = (num_steps, num_targets, num_queries) == (100, 9, 5000)
  return dict(epsilon=float(config.train_attack.epsilon),
              norm=str(config.eval.attack.norm), pgd_steps=int(pgd_steps),
              num_steps=int(num_steps), num_targets=int(num_targets),
              num_queries=int(num_queries),
              version='standard' if standard else 'reduced')


def autoattack_names(settings: Mapping[str, Any]) -> list[str]:
  """The columns of the AutoAttack report, in order."""
  from atmc_jax import attacks  # pylint: disable=g-import-not-at-top
  return ([f'pgd{settings["pgd_steps"]}'] +
          [_after(n) for n in attacks.STANDARD_ATTACKS] + ['autoattack'])


def _after(attack: str) -> str:
  return 'after_' + attack.replace('-', '_')


def evaluate_autoattack_stage(stage_dir: str, settings_kw: Mapping[str, Any],
                              *, max_examples: Optional[int],
                              batch_size: int, seed: int,
                              gap_threshold: float) -> dict[str, Any]:
  """PGD-20 and AutoAttack on one stage's deployable model (cached).

  Returns:
    A dict with ``clean``, the PGD column, ``after_<attack>`` (accuracy
    after AutoAttack's attacks up to that one), ``autoattack``, ``gap``
    (PGD minus AutoAttack accuracy), ``masking_suspected``,
    ``num_examples``, the wall times ``pgd_wall_time_s``,
    ``autoattack_wall_time_s`` and ``wall_time_s`` (the whole stage),
    ``settings`` and ``compression_ratio``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from atmc_jax import attacks  # pylint: disable=g-import-not-at-top

  config = _stage_config(stage_dir)
  settings = autoattack_settings(config, **settings_kw)
  key_info = dict(settings=settings, max_examples=max_examples, seed=seed)
  cache = _outputs(stage_dir, AUTOATTACK_FILE)
  cached = _read_cache(cache, key_info, gap_threshold)
  if cached is not None:
    return cached
  start = time.time()
  dep = _load_model(stage_dir)
  logits_fn = dep.logits_fn()
  images, labels = test_split(config, max_examples)
  eps, norm = settings['epsilon'], settings['norm']
  names = autoattack_names(settings)
  pgd_name = names[0]
  key = jax.random.PRNGKey(seed)
  t0 = time.time()
  pgd = functools.partial(attacks.pgd, epsilon=eps,
                          num_steps=settings['pgd_steps'], norm=norm)
  res_pgd = attacks.robust_accuracy(
      logits_fn, _batches(images, labels, batch_size), {pgd_name: pgd}, key)
  pgd_time = time.time() - t0
  t0 = time.time()
  counts = dict.fromkeys(names[1:], 0)
  for b, (x, y) in enumerate(_batches(images, labels, batch_size)):
    res = attacks.autoattack(
        logits_fn, x, y, jax.random.fold_in(key, b), epsilon=eps, norm=norm,
        num_steps=settings['num_steps'],
        num_targets=settings['num_targets'],
        num_queries=settings['num_queries'])
    for attack in attacks.STANDARD_ATTACKS:
      counts[_after(attack)] += res.accuracy[attack] * len(y)
    counts['autoattack'] += int(res.robust.sum())
  aa_time = time.time() - t0
  n = int(len(labels))
  out = dict(key_info)
  out.update({name: c / n for name, c in counts.items()})
  out.update(clean=res_pgd['clean'], num_examples=n,
             compression_ratio=dep.size['compression_ratio'],
             pgd_wall_time_s=pgd_time, autoattack_wall_time_s=aa_time,
             wall_time_s=time.time() - start)
  out[pgd_name] = res_pgd[pgd_name]
  out['gap'] = out[pgd_name] - out['autoattack']
  out['masking_suspected'] = attacks.masking_suspected(out['gap'],
                                                       gap_threshold)
  with open(cache, 'w') as f:
    json.dump(out, f, indent=2)
  return out


AUTOATTACK_TAIL_FIELDS = ('gap', 'masking_suspected', 'num_examples',
                          'pgd_wall_time_s', 'autoattack_wall_time_s')


def autoattack_markdown(rows: Sequence[Mapping[str, Any]],
                        names: Sequence[str], settings: Mapping[str, Any],
                        gap_threshold: float) -> str:
  """The AutoAttack report: accuracies, gap, flag, examples, wall times."""
  pgd_name = names[0]
  header = (['method', 'p', 'CR', 'clean'] + list(names) +
            ['gap', 'masking?', 'examples', f'{pgd_name} time (s)',
             'AutoAttack time (s)'])
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join(['---'] * len(header)) + '|']
  flagged = []
  for r in _report.sort_rows(rows):
    if r['masking_suspected']:
      flagged.append(_stage_label(r))
    p = '' if r.get('p') is None else f'{r["p"]:g}'
    lines.append('| ' + ' | '.join(
        [_report.method_label(r['method']), p,
         f'{r["compression_ratio"]:.3g}', f'{r["ta"]:.3f}'] +
        [f'{r[n]:.3f}' for n in names] +
        [f'{100 * r["gap"]:+.1f}',
         '**yes**' if r['masking_suspected'] else 'no',
         str(r['num_examples']), f'{r["pgd_wall_time_s"]:.1f}',
         f'{r["autoattack_wall_time_s"]:.1f}']) + ' |')
  lines += [
      '',
      f'gap = {pgd_name} accuracy − AutoAttack accuracy, in points; above '
      f'{100 * gap_threshold:g} points the model is flagged as possibly '
      'masking gradients (PGD overestimates its robustness).',
  ]
  if flagged:
    lines += ['', 'Flagged: ' + ', '.join(flagged) + '.']
  lines += [
      '',
      f'- {rows[0]["num_examples"]} test examples per model; epsilon '
      f'{settings["epsilon"]:g} ({settings["norm"]}), the training epsilon.',
      f'- {pgd_name}: {settings["pgd_steps"]}-step PGD, random start, step '
      f'2.5 eps / {settings["pgd_steps"]}.',
      f'- AutoAttack ({settings["version"]}): APGD-CE, APGD-T '
      f'({settings["num_targets"]} targets), FAB-T ({settings["num_targets"]}'
      f' targets), {settings["num_steps"]} iterations each (per target), '
      f'Square ({settings["num_queries"]} queries); after_<attack> is the '
      'accuracy after the attacks up to that one, run on the points still '
      'robust.',
  ]
  return '\n'.join(lines) + '\n'


def evaluate_autoattack(workdir: str, *,
                        methods: Optional[Sequence[str]] = None,
                        max_examples: Optional[int] = 1000,
                        batch_size: int = 250, seed: int = 0,
                        gap_threshold: float = 0.05,
                        **settings_kw) -> list[dict[str, Any]]:
  """PGD-20 and AutoAttack on every finished stage; writes the tables.

  Args:
    workdir: a ``experiments.reproduce`` workdir.
    methods: only these method keys (default: all finished stages).
    max_examples: the first this many test examples (None: all).
    batch_size: attack batch size.
    seed: PRNG seed.
    gap_threshold: flag models with ``pgd20 - autoattack`` above this.
    **settings_kw: forwarded to :func:`autoattack_settings`.

  Returns:
    The rows of ``autoattack.csv``.

  Raises:
    ValueError: no finished stage under ``workdir``, or bad settings.
  """
  stages = _selected_stages(workdir, methods, gap_threshold, batch_size,
                            max_examples)
  rows = []
  for stage, stage_dir in stages:
    res = evaluate_autoattack_stage(
        stage_dir, settings_kw, max_examples=max_examples,
        batch_size=batch_size, seed=seed, gap_threshold=gap_threshold)
    names = autoattack_names(res['settings'])
    config = _stage_config(stage_dir)
    row = dict(dataset=config.dataset, method=stage.method, p=stage.p,
               compression_ratio=res['compression_ratio'], ta=res['clean'])
    row.update({n: res[n] for n in names})
    row.update({k: res[k] for k in AUTOATTACK_TAIL_FIELDS})
    logging.info('%s: clean %.3f, %s %.3f, AutoAttack %.3f (%d examples, '
                 '%.1f s + %.1f s)%s', stage.name, res['clean'], names[0],
                 res[names[0]], res['autoattack'], res['num_examples'],
                 res['pgd_wall_time_s'], res['autoattack_wall_time_s'],
                 ' (masking suspected)' if res['masking_suspected'] else '')
    rows.append(row)
  fields = (_report.ATTACK_BASE_FIELDS + tuple(names) +
            AUTOATTACK_TAIL_FIELDS)
  _report.write_csv(rows, _outputs(workdir, 'autoattack.csv'), fields)
  with open(_outputs(workdir, 'autoattack.md'), 'w') as f:
    f.write(autoattack_markdown(rows, names, res['settings'], gap_threshold))
  return rows


_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'A workdir of experiments.reproduce, or a packed model '
    'file of experiments.export.')
_METHODS = flags.DEFINE_list('methods', None,
                             'Only these methods (default: all finished).')
_MAX_EXAMPLES = flags.DEFINE_string(
    'max_examples', '1000', "First N test examples (N >= 1), or 'all' (the "
    'whole test split).')
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
_SUITE = flags.DEFINE_enum(
    'suite', 'paper', SUITES,
    'paper: the paper\'s attacks and the strong suite (attacks.md); '
    'autoattack: PGD-20 beside the standard AutoAttack (autoattack.md).')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    max_examples = parse_max_examples(_MAX_EXAMPLES.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if _SUITE.value == 'autoattack':
    evaluate_autoattack(
        _WORKDIR.value, methods=_METHODS.value,
        max_examples=max_examples,
        batch_size=_BATCH_SIZE.value, seed=_SEED.value,
        gap_threshold=_GAP.value)
    with open(_outputs(_WORKDIR.value, 'autoattack.md')) as f:
      print(f.read())
    return
  evaluate_attacks(
      _WORKDIR.value, methods=_METHODS.value,
      max_examples=max_examples,
      batch_size=_BATCH_SIZE.value, seed=_SEED.value,
      gap_threshold=_GAP.value,
      eps_scales=[float(s) for s in _EPS_SCALES.value],
      strong_pgd_steps=_STRONG_PGD_STEPS.value,
      strong_pgd_restarts=_STRONG_PGD_RESTARTS.value,
      apgd_steps=_APGD_STEPS.value)
  with open(_outputs(_WORKDIR.value, 'attacks.md')) as f:
    print(f.read())


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
