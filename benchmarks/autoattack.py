"""Speed of AutoAttack and its components on Caffe LeNet, beside torchattacks.

Measures ``lenet/autoattack/<component>`` for ``apgd_ce``, ``apgd_t``,
``fab_t`` and ``square``: one call of the jitted attack
(``atmc_jax.attacks``) on a batch of 28x28x1 images (default 500) with the
standard AutoAttack settings (APGD 100 iterations; APGD-T and FAB-T 9
targets x 100 iterations; Square 5000 queries), reported as
``examples_per_s``. Epsilon is 0, so no point is ever fooled and no
component stops early: every record is the full cost of the component on a
batch of points that all survive (the worst case inside AutoAttack).

``lenet/autoattack/full`` times the whole ensemble
(``atmc_jax.attacks.autoattack``, standard version) on ``examples`` points
(default 1,000); at epsilon 0 every attack runs on every point.

**Side by side with PyTorch** (optional: needs ``torch`` and
``torchattacks``, the ``bench`` extra): the same CaffeLeNet in PyTorch
(``benchmarks.torch_lenet``) gets the JAX model's random weights
(``atmc_jax.export.to_torch_layout``), and torchattacks' ``APGD``,
``APGDT``, ``FAB`` (``multi_targeted``) and ``Square`` attack the same
images with the same settings: ``lenet/autoattack/<component>/torch`` and
``lenet/autoattack/full/torch`` (their ``MultiAttack`` of the four, which
is what ``torchattacks.AutoAttack(version='standard')`` builds, but with the
original's 100 iterations: torchattacks' ``AutoAttack`` leaves APGD, APGD-T
and FAB at its default of 10). Each JAX record then carries
``torch_median_s`` and ``ratio_to_torch`` (our median time / theirs: below
1 is faster). Without torch or torchattacks the PyTorch records are skipped
and ``_notes`` says why.

``--quick`` (and ``run(quick=True)``) uses batch 64, 64 examples and 10
iterations / 500 queries. Reduced settings (``--num-steps``,
``--num-queries``) are named in every ``note``; each record then also holds
``scale_to_standard`` (standard / measured settings) and
``standard_estimate_s`` (``median_s`` times that factor): at epsilon 0 the
work of every component is linear in its iterations (queries for Square), so
the estimate is a linear extrapolation, not a measurement.

Usage::

  python -m benchmarks.autoattack [--quick] [--batch 500] [--examples 1000] \
      [--num-steps 100] [--num-queries 5000] [--n 1] [--no-torch] \
      [--out results.json] [--markdown table.md]

``run(...)`` returns ``{name: {"median_s", "min_s", "max_s", "n", ...}}``
plus ``_notes``. The command line times the whole AutoAttack and
torchattacks too; ``run()`` (and ``benchmarks.run``, which merges
``run(quick)``) times only the JAX components unless ``full=True`` /
``with_torch=True``.
"""

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np

from atmc_jax import attacks
from atmc_jax import export
from atmc_jax import models
from benchmarks import _timing
from benchmarks import torch_lenet

try:
  import torch  # pylint: disable=g-import-not-at-top
  import torchattacks  # pylint: disable=g-import-not-at-top
except ImportError:  # The [bench] extra is optional.
  torch = torchattacks = None

BATCH = 500
EXAMPLES = 1000
COMPONENTS = ('apgd_ce', 'apgd_t', 'fab_t', 'square')
STANDARD = (100, 9, 5000)  # iterations, targets, Square queries.
_NOTE_MISSING = ('torch or torchattacks is not installed (pip install -e '
                 '.[bench]); the PyTorch AutoAttack records were skipped.')


def torch_available() -> bool:
  """Whether both PyTorch and torchattacks can be imported."""
  return torch is not None and torchattacks is not None


def component_fns(num_steps: int, num_targets: int,
                  num_queries: int) -> dict[str, Any]:
  """component -> ``(logits_fn, x, y, key) -> x_adv`` at epsilon 0."""
  suite = attacks.standard_attacks(0.0, num_steps=num_steps,
                                   num_targets=num_targets,
                                   num_queries=num_queries)
  return {name: suite[name.replace('_', '-')] for name in COMPONENTS}


def torch_model(params):
  """The PyTorch CaffeLeNet (eval mode) holding the JAX ``params``."""
  if not torch_available():
    raise RuntimeError(_NOTE_MISSING)
  params = jax.device_get(params)
  weights = export.to_torch_layout(params,
                                   export.lenet_flatten_shapes(params))
  model = torch_lenet._make_lenet()  # pylint: disable=protected-access
  model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32))
                         for k, v in weights.items()})
  return model.eval()


def torch_attacks(model, *, epsilon: float, num_steps: int, num_targets: int,
                  num_queries: int, seed: int = 0) -> dict[str, Any]:
  """component -> torchattacks attack (``attack(x, y) -> x_adv``, NCHW).

  The settings are the standard AutoAttack's (``atmc_jax.attacks.
  standard_attacks``), with ``num_targets + 1`` classes for the targeted
  attacks (torchattacks targets every class but the top one).
  """
  if not torch_available():
    raise RuntimeError(_NOTE_MISSING)
  classes = num_targets + 1
  return {
      'apgd_ce': torchattacks.APGD(model, norm='Linf', eps=epsilon,
                                   steps=num_steps, n_restarts=1, loss='ce',
                                   rho=0.75, seed=seed),
      'apgd_t': torchattacks.APGDT(model, norm='Linf', eps=epsilon,
                                   steps=num_steps, n_restarts=1, rho=0.75,
                                   n_classes=classes, seed=seed),
      'fab_t': torchattacks.FAB(model, norm='Linf', eps=epsilon,
                                steps=num_steps, n_restarts=1, alpha_max=0.1,
                                eta=1.05, beta=0.9, multi_targeted=True,
                                n_classes=classes, seed=seed),
      'square': torchattacks.Square(model, norm='Linf', eps=epsilon,
                                    n_queries=num_queries, n_restarts=1,
                                    p_init=0.8, loss='margin', seed=seed),
  }


def _settings(num_steps, num_targets, num_queries) -> str:
  standard = (num_steps, num_targets, num_queries) == STANDARD
  return (f'{num_steps} iterations, {num_targets} targets, {num_queries} '
          'queries' + ('' if standard else ' (reduced; standard: 100, 9, '
                       '5000)'))


def _scale(name: str, num_steps: int, num_targets: int,
           num_queries: int) -> float:
  """Standard work / measured work of a component (or of the ensemble)."""
  steps, targets, queries = STANDARD
  if name == 'apgd_ce':
    return steps / num_steps
  if name in ('apgd_t', 'fab_t'):
    return steps * targets / (num_steps * num_targets)
  if name == 'square':
    return queries / num_queries
  raise ValueError(f'name={name!r}; accepted: one of {list(COMPONENTS)}.')


def _finish(record, examples, note, scale):
  record['examples_per_s'] = examples / record['median_s']
  record['batch'] = examples
  record['note'] = note
  if scale is not None and scale != 1.0:
    record['scale_to_standard'] = scale
    record['standard_estimate_s'] = record['median_s'] * scale
  return record


def run(quick: bool = False, *, batch: Optional[int] = None,
        examples: Optional[int] = None, num_steps: Optional[int] = None,
        num_targets: int = 9, num_queries: Optional[int] = None, n: int = 1,
        components: Sequence[str] = COMPONENTS, full: bool = False,
        with_torch: bool = False,
        threads: Optional[int] = None) -> dict[str, Any]:
  """Times each component and the whole AutoAttack, ours and torchattacks'.

  Args:
    quick: batch 64, 64 examples, 10 iterations, 500 queries by default.
    batch: examples per component call (default 500).
    examples: examples of the whole AutoAttack (default 1,000).
    num_steps: APGD / FAB iterations per target (default 100).
    num_targets: APGD-T / FAB-T targets (default 9).
    num_queries: Square queries (default 5000).
    n: timed repetitions of each record (the median is reported).
    components: which components to time.
    full: also time the whole AutoAttack (the command line does).
    with_torch: also time torchattacks, skipped with a note if missing (the
      command line does).
    threads: ``torch.set_num_threads`` (default: the CPUs available).

  Returns:
    ``{name: record}`` and ``_notes``; see the module docstring.

  Raises:
    ValueError: ``batch``, ``examples`` or ``n`` below 1, or an unknown
      component.
  """
  batch = batch or (64 if quick else BATCH)
  examples = examples or (64 if quick else EXAMPLES)
  num_steps = num_steps or (10 if quick else 100)
  num_queries = num_queries or (500 if quick else 5000)
  for name, value in (('batch', batch), ('examples', examples), ('n', n)):
    if value < 1:
      raise ValueError(f'{name} must be >= 1, got {value}.')
  for name in components:
    if name not in COMPONENTS:
      raise ValueError(f'component {name!r}; accepted: {list(COMPONENTS)}.')
  key_x, key_p, key_a = jax.random.split(jax.random.key(0), 3)
  size = max(batch, examples)
  x_all = jax.random.uniform(key_x, (size, 28, 28, 1))
  model = models.CaffeLeNet()
  params = jax.jit(model.init)(key_p, x_all[:1])
  logits_fn = jax.tree_util.Partial(model.apply, params)
  y_all = jax.numpy.argmax(logits_fn(x_all), axis=-1)
  x, y = x_all[:batch], y_all[:batch]
  fns = component_fns(num_steps, num_targets, num_queries)
  settings = _settings(num_steps, num_targets, num_queries)
  notes = [f'benchmarks.autoattack: backend {jax.default_backend()}, '
           f'settings {settings}, epsilon 0 (no early stop).']
  use_torch = with_torch and torch_available()
  if with_torch and not use_torch:
    notes.append(_NOTE_MISSING)
  if use_torch:
    if threads is None:
      threads = len(os.sched_getaffinity(0)) if hasattr(
          os, 'sched_getaffinity') else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    t_model = torch_model(params['params'])
    t_x_all = torch.from_numpy(
        np.array(np.asarray(x_all).transpose(0, 3, 1, 2), order='C'))
    t_y_all = torch.from_numpy(np.array(y_all, np.int64))
    with torch.no_grad():
      t_logits = t_model(t_x_all).numpy()
    diff = float(np.max(np.abs(t_logits - np.asarray(logits_fn(x_all)))))
    if not np.array_equal(t_logits.argmax(-1), np.asarray(y_all)):
      raise RuntimeError('the PyTorch LeNet predicts other classes than the '
                         f'JAX one (max logit difference {diff:.3g}).')
    t_suite = torch_attacks(t_model, epsilon=0.0, num_steps=num_steps,
                            num_targets=num_targets, num_queries=num_queries)
    notes.append(
        f'torch {torch.__version__}, torchattacks {torchattacks.__version__}'
        f', {threads} threads; same weights as the JAX LeNet (max logit '
        f'difference {diff:.2g}, same predictions), same images.')

  results = {}

  def add(name, record, examples, what, scale, torch_record=None):
    note = (f'{what} at epsilon 0 (no early stop), {examples} examples, '
            f'{settings}')
    results[name] = _finish(record, examples, note, scale)
    if torch_record is not None:
      results[name + '/torch'] = _finish(
          torch_record, examples, note + ', torchattacks', scale)
      results[name]['torch_median_s'] = torch_record['median_s']
      results[name]['ratio_to_torch'] = (record['median_s'] /
                                         torch_record['median_s'])

  for name in components:
    fn = fns[name]
    start = time.perf_counter()
    jax.block_until_ready(fn(logits_fn, x, y, key_a))
    first = time.perf_counter() - start
    record, _ = _timing.time_calls(lambda fn=fn: fn(logits_fn, x, y, key_a),
                                   n=n, warmup=0)
    record['first_call_s'] = first
    t_record = None
    if use_torch:
      attack = t_suite[name]
      t_x, t_y = t_x_all[:batch], t_y_all[:batch]
      t_record, _ = _timing.time_calls(lambda a=attack: a(t_x, t_y), n=n,
                                       warmup=0, sync=None)
    add(f'lenet/autoattack/{name}', record, batch,
        name.replace('_', '-').upper(),
        _scale(name, num_steps, num_targets, num_queries), t_record)

  if full:
    fx, fy = x_all[:examples], y_all[:examples]
    kw = dict(epsilon=0.0, num_steps=num_steps, num_targets=num_targets,
              num_queries=num_queries)
    start = time.perf_counter()
    res = attacks.autoattack(logits_fn, fx, fy, key_a, **kw)
    first = time.perf_counter() - start
    if res.accuracy['autoattack'] != 1.0:
      raise RuntimeError('AutoAttack fooled a point at epsilon 0: '
                         f'{res.accuracy}.')
    record, _ = _timing.time_calls(
        lambda: attacks.autoattack(logits_fn, fx, fy, key_a, **kw).robust,
        n=n, warmup=0, sync=None)
    record['first_call_s'] = first
    t_record = None
    if use_torch:
      multi = torchattacks.MultiAttack(
          [t_suite[c] for c in COMPONENTS])
      t_x, t_y = t_x_all[:examples], t_y_all[:examples]
      t_record, _ = _timing.time_calls(lambda: multi(t_x, t_y), n=n,
                                       warmup=0, sync=None)
    # At epsilon 0 every component runs on every point, so the ensemble's
    # work is the four components' work on ``examples`` points.
    # The ensemble's estimate needs one factor for all four components.
    scales = {_scale(c, num_steps, num_targets, num_queries)
              for c in COMPONENTS}
    add('lenet/autoattack/full', record, examples,
        'AutoAttack (APGD-CE, APGD-T, FAB-T, Square)',
        scales.pop() if len(scales) == 1 else None, t_record)
  results['_notes'] = notes
  return results


def render_markdown(results: dict[str, Any]) -> str:
  """A table of ours vs torchattacks (median s, examples/s, ratio)."""
  header = ['name', 'examples', 'ours: median s', 'ours: examples/s',
            'torchattacks: median s', 'torchattacks: examples/s',
            'ratio (ours / theirs)']
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join(['---'] * len(header)) + '|']
  for name, r in results.items():
    if not isinstance(r, dict) or 'median_s' not in r or name.endswith(
        '/torch'):
      continue
    t = results.get(name + '/torch')
    lines.append('| ' + ' | '.join([
        f'`{name}`', str(r['batch']), f'{r["median_s"]:.2f}',
        f'{r["examples_per_s"]:.2f}',
        '' if t is None else f'{t["median_s"]:.2f}',
        '' if t is None else f'{t["examples_per_s"]:.2f}',
        '' if t is None else f'{r["ratio_to_torch"]:.3f}']) + ' |')
  estimates = [(name, r) for name, r in results.items()
               if isinstance(r, dict) and 'standard_estimate_s' in r]
  if estimates:
    lines += ['', 'Linear extrapolation to the standard settings (not '
              'measured): ' + '; '.join(
                  f'`{name}` {r["standard_estimate_s"]:.0f} s '
                  f'(x{r["scale_to_standard"]:g})' for name, r in estimates)
              + '.']
  notes = list(results.get('_notes', []))
  meta = results.get('meta')
  if meta:
    notes.append(f'{meta.get("date")}, {meta.get("cpu_count")} CPUs '
                 f'({meta.get("cpu_model")}), jax {meta.get("jax_version")}, '
                 f'load average {meta.get("load_average_start")} at the start'
                 f', {meta.get("load_average_end")} at the end, '
                 f'{meta.get("wall_s", float("nan")):.0f} s in all.')
  if notes:
    lines += [''] + [f'* {n}' for n in notes]
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.autoattack',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--batch', type=int, default=None)
  parser.add_argument('--examples', type=int, default=None)
  parser.add_argument('--num-steps', type=int, default=None)
  parser.add_argument('--num-queries', type=int, default=None)
  parser.add_argument('--n', type=int, default=1)
  parser.add_argument('--no-torch', action='store_true')
  parser.add_argument('--no-full', action='store_true')
  parser.add_argument('--components', default=','.join(COMPONENTS),
                      help='comma-separated components to time ("" for '
                      'none).')
  parser.add_argument('--threads', type=int, default=None)
  parser.add_argument('--out', default=None, help='write the JSON here.')
  parser.add_argument('--markdown', default=None,
                      help='write the markdown table here.')
  args = parser.parse_args(argv)
  start = time.perf_counter()
  meta = _timing.meta()
  meta['command'] = 'python -m benchmarks.autoattack ' + shlex.join(
      sys.argv[1:] if argv is None else argv)
  results = run(args.quick, batch=args.batch, examples=args.examples,
                num_steps=args.num_steps, num_queries=args.num_queries,
                n=args.n, full=not args.no_full,
                components=[c for c in args.components.split(',') if c],
                with_torch=not args.no_torch, threads=args.threads)
  meta['load_average_end'] = _timing.load_average()
  meta['wall_s'] = time.perf_counter() - start
  results['meta'] = meta
  table = render_markdown(results)
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=1)
  if args.markdown:
    with open(args.markdown, 'w', encoding='utf-8') as f:
      f.write(table)
  print(table)
  return 0


if __name__ == '__main__':
  sys.exit(main())
