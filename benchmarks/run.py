r"""Runs the benchmark suite and writes one JSON file (and a markdown table).

::

  python -m benchmarks.run [--quick] [--only PATTERN] --out results.json \
      [--markdown docs/benchmarks_table.md]

The JSON object maps each measurement's name to a record
``{"median_s", "min_s", "max_s", "n", ...}`` (extra keys: ``flops``,
``achieved_gflops``, ``fraction_of_peak``, ``xla_flops``, ``examples_per_s``,
``first_call_s``, ``traces``, ``note``), plus the top-level keys
``matmul_peak_gflops`` (a same-run 2048^3 float32 ``jnp.dot``, median) and
``meta`` (date, versions, device, CPU count and model, load average, the
ratios against the targets, notes).

Names: ``lenet/{plain_step, pgd7_step, atmc32_step, atmc8_step_amortised,
eval_pgd20, eval_pgd20_factorized}``, ``lenet/{plain_step,
pgd7_step}/torch``, ``lenet/autoattack/{apgd_ce, apgd_t, fab_t, square}``
(``autoattack.py``), ``resnet34/{plain_step, pgd7_step, atmc32_step,
atmc8_step_amortised, eval_pgd20, eval_pgd20_factorized}``,
``parallel/{single_step, pmap8_step}``, and whatever
``benchmarks/projections.py`` and ``benchmarks/models.py`` report
(``lenet/project_l0``, ``lenet/project_quantize``, ...).

``--quick`` runs LeNet only with fewer repetitions (a few minutes on two
CPU cores). ``--only`` is a regular expression searched in each name.
The PyTorch baseline runs in a subprocess right after the JAX LeNet steps;
the 8-device data-parallel comparison runs in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Optional

import jax

from benchmarks import _timing
from benchmarks import steps

# Targets on the reference CPU (see docs/benchmarks.md).
REFERENCE_ATMC8_STEP_S = 1.7   # The authors' PyTorch ATMC-8 LeNet step.
TARGET_PGD_VS_TORCH = 0.55
TARGET_ATMC8_VS_REFERENCE = 0.3
TARGET_FRACTION_OF_PEAK = 0.6

EXTERNAL_MODULES = ('benchmarks.projections', 'benchmarks.models',
                    'benchmarks.autoattack')


class Suite:
  """Collects records, writes the JSON after every measurement."""

  def __init__(self, out: Optional[str], only: Optional[str]):
    self.out = out
    self.only = re.compile(only) if only else None
    self.results: dict[str, Any] = {}
    self.notes: list[str] = []
    self.local_peak_size = 0
    self.interleaved_ratio: Optional[dict[str, Any]] = None

  def wanted(self, name: str) -> bool:
    return self.only is None or bool(self.only.search(name))

  def any_wanted(self, names) -> bool:
    return any(self.wanted(n) for n in names)

  def add(self, name: str, record: dict[str, Any]) -> None:
    if record.get('achieved_gflops') and self.local_peak_size:
      # The machine load can change during a run: a matmul peak measured
      # right after this step gives a second, local reference.
      local = _timing.matmul_peak_gflops(self.local_peak_size, n=5)['gflops']
      record['local_peak_gflops'] = local
      record['fraction_of_local_peak'] = record['achieved_gflops'] / local
    self.results[name] = record
    print(f'{name:34s} median {record["median_s"]:9.4f} s  '
          f'min {record["min_s"]:9.4f} s  n={record["n"]}'
          + (f'  {record["fraction_of_peak"]:.0%} of peak'
             if 'fraction_of_peak' in record else ''), flush=True)
    self.write()

  def measure(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
    if not self.wanted(name):
      return
    try:
      self.add(name, fn())
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      self.notes.append(f'{name} failed: {type(e).__name__}: {e}')
      self.write()

  def write(self) -> None:
    meta = self.results.get('meta')
    if isinstance(meta, dict):
      meta['targets'] = target_ratios(self.results)
      if self.interleaved_ratio:
        meta['targets']['lenet_pgd7_vs_torch_interleaved'] = (
            self.interleaved_ratio)
      meta['notes'] = self.notes
    if not self.out:
      return
    tmp = self.out + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(self.results, f, indent=1, sort_keys=True)
      f.write('\n')
    os.replace(tmp, self.out)


def _child_json(module: str, args: list[str], env: Optional[dict] = None,
                timeout: float = 3600) -> dict[str, Any]:
  """Runs ``python -m module args`` and parses the last stdout line as JSON."""
  proc = subprocess.run(
      [sys.executable, '-m', module] + args, capture_output=True, text=True,
      env=env, timeout=timeout, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if proc.returncode != 0:
    raise RuntimeError(
        f'{module} exited with {proc.returncode}: {proc.stderr[-2000:]}')
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  return json.loads(lines[-1])


def run_torch(suite: Suite, quick: bool, batch: int) -> None:
  names = ['lenet/plain_step/torch', 'lenet/pgd7_step/torch']
  if not suite.any_wanted(names):
    return
  from benchmarks import torch_lenet  # pylint: disable=g-import-not-at-top
  if not torch_lenet.available():
    suite.notes.append(
        'torch is not installed (pip install -e .[bench]): PyTorch entries '
        'skipped.')
    return
  try:
    out = _child_json('benchmarks.torch_lenet',
                      (['--quick'] if quick else []) + ['--batch', str(batch)])
  except Exception as e:  # pylint: disable=broad-except
    suite.notes.append(f'PyTorch baseline failed: {e}')
    return
  suite.notes.extend(out.pop('_notes', []))
  for name in names:
    if name in out and suite.wanted(name):
      suite.add(name, out[name])


def run_interleaved(suite: Suite, quick: bool, batch: int) -> None:
  """JAX and PyTorch PGD-7 LeNet steps alternating in one process.

  Each pair (one JAX step, one PyTorch step) runs back to back, so both see
  the same machine load; ``meta.targets.lenet_pgd7_vs_torch_interleaved``
  is the median of the per-pair ratios. PyTorch's OpenMP threads slow down
  far more than XLA's when other processes load the cores, so this ratio is
  the one to trust on a shared machine.
  """
  names = ['lenet/pgd7_step/interleaved_jax',
           'lenet/pgd7_step/interleaved_torch']
  if not suite.any_wanted(names):
    return
  from benchmarks import torch_lenet  # pylint: disable=g-import-not-at-top
  if not torch_lenet.available():
    return
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(
      os, 'sched_getaffinity') else (os.cpu_count() or 1))
  _, torch_step = torch_lenet.make_steps(batch)
  config = steps.make_config('lenet', 'da', batch_size=batch)
  bench = steps.build_train_step(config)
  for _ in range(2):
    jax.block_until_ready(bench.step())
    torch_step()
  n = 5 if quick else 10
  times = {'jax': [], 'torch': []}
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(bench.step())
    t1 = time.perf_counter()
    torch_step()
    t2 = time.perf_counter()
    times['jax'].append(t1 - t0)
    times['torch'].append(t2 - t1)
  ratios = sorted(j / t for j, t in zip(times['jax'], times['torch']))
  for key, name in zip(('jax', 'torch'), names):
    record = _timing.summarize(times[key])
    record['note'] = (f'{key} PGD-7 LeNet step, batch {batch}, alternating '
                      'with the other framework in one process')
    if key == 'jax':
      record['traces'] = bench.traces()
    suite.add(name, record)
  suite.interleaved_ratio = {
      'ratio_median': ratios[len(ratios) // 2], 'ratio_min': ratios[0],
      'ratio_max': ratios[-1], 'target': TARGET_PGD_VS_TORCH,
      'met': ratios[len(ratios) // 2] <= TARGET_PGD_VS_TORCH}
  suite.write()


def run_parallel(suite: Suite, quick: bool, batch: int) -> None:
  names = ['parallel/single_step', 'parallel/pmap8_step']
  if not suite.any_wanted(names):
    return
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      ' --xla_force_host_platform_device_count=8').strip()
  env.setdefault('JAX_PLATFORMS', 'cpu')
  try:
    out = _child_json('benchmarks.steps',
                      ['--parallel', '--batch', str(batch)]
                      + (['--quick'] if quick else []), env=env)
  except Exception as e:  # pylint: disable=broad-except
    suite.notes.append(f'parallel benchmark failed: {e}')
    return
  for name in names:
    if name in out and suite.wanted(name):
      suite.add(name, out[name])


def run_external(suite: Suite, quick: bool) -> None:
  """Merges ``run(quick)`` of the projection / model benchmark modules."""
  for module_name in EXTERNAL_MODULES:
    short = module_name.split('.')[-1]
    try:
      module = importlib.import_module(module_name)
    except ImportError:
      suite.notes.append(f'{module_name} is not present: skipped.')
      continue
    if suite.only is not None and not suite.only.search(short) and not any(
        suite.only.search(p) for p in ('lenet/', 'resnet34/')):
      continue
    try:
      start = time.perf_counter()
      out = module.run(quick)
      print(f'{module_name}: {time.perf_counter() - start:.1f} s', flush=True)
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      suite.notes.append(f'{module_name}.run failed: {type(e).__name__}: {e}')
      continue
    for name, record in sorted(out.items()):
      if isinstance(record, dict) and 'median_s' in record:
        if suite.wanted(name):
          suite.add(name, record)
      elif name.startswith('_') or name in ('notes', 'note'):
        suite.notes.extend(record if isinstance(record, list) else [record])


def run_model(suite: Suite, model: str, quick: bool, batch: int,
              peak: Optional[float], on_cpu: bool,
              after_pgd: Optional[Callable[[], None]] = None,
              atmc8_blocks: Optional[int] = None) -> None:
  """The training/eval step records of one model.

  ``after_pgd`` runs right after the PGD-7 step (the PyTorch baseline, so
  that both see the same machine load).
  """
  slow = model == 'resnet34' and on_cpu
  base_n = 5 if quick else 10
  reps = {
      'plain_step': 2 if slow else 2 * base_n,
      'pgd7_step': 1 if slow else base_n,
      'atmc32_step': 1 if slow else base_n,
      'atmc8_step_amortised': atmc8_blocks or (3 if quick else 10),
      'eval_pgd20': 1 if slow else base_n,
  }
  slow_note = ('ResNet-34 on a CPU: fewer repetitions than the >= 10 used '
               'elsewhere') if slow else ''
  for name in ('plain_step', 'pgd7_step', 'atmc32_step'):
    suite.measure(f'{model}/{name}', lambda name=name: steps.time_train_step(
        model, name, batch_size=batch, n=reps[name],
        warmup=1 if slow else 2, peak_gflops=peak, note=slow_note))
    if name == 'pgd7_step' and after_pgd is not None:
      after_pgd()
  if slow:
    suite.measure(f'{model}/atmc8_step_amortised',
                  lambda: steps.time_atmc8_components(
                      model, batch_size=batch, peak_gflops=peak))
  else:
    suite.measure(f'{model}/atmc8_step_amortised',
                  lambda: steps.time_train_step(
                      model, 'atmc8_step_amortised', batch_size=batch,
                      n=reps['atmc8_step_amortised'], warmup=1, block=10,
                      peak_gflops=peak, cost_analysis=False))
  for name, factorized in (('eval_pgd20', False),
                           ('eval_pgd20_factorized', True)):
    suite.measure(f'{model}/{name}', lambda f=factorized: steps.time_eval_step(
        model, batch_size=batch, n=reps['eval_pgd20'], peak_gflops=peak,
        cost_analysis=not slow, factorized=f))


def target_ratios(results: dict[str, Any]) -> dict[str, Any]:
  """The ratios the targets are stated in (None where an input is missing)."""

  def med(name):
    rec = results.get(name)
    return rec['median_s'] if isinstance(rec, dict) and 'median_s' in rec \
        else None

  def low(name):
    rec = results.get(name)
    return rec['min_s'] if isinstance(rec, dict) and 'min_s' in rec else None

  out = {}
  jax_pgd, torch_pgd = med('lenet/pgd7_step'), med('lenet/pgd7_step/torch')
  if jax_pgd and torch_pgd:
    ratio = jax_pgd / torch_pgd
    out['lenet_pgd7_vs_torch'] = {
        'ratio_median': ratio,
        'ratio_min': low('lenet/pgd7_step') / low('lenet/pgd7_step/torch'),
        'target': TARGET_PGD_VS_TORCH, 'met': ratio <= TARGET_PGD_VS_TORCH}
  jax_plain, torch_plain = (med('lenet/plain_step'),
                            med('lenet/plain_step/torch'))
  if jax_plain and torch_plain:
    out['lenet_plain_vs_torch'] = {
        'ratio_median': jax_plain / torch_plain,
        'ratio_min': low('lenet/plain_step') / low('lenet/plain_step/torch')}
  atmc8 = med('lenet/atmc8_step_amortised')
  if atmc8:
    ratio = atmc8 / REFERENCE_ATMC8_STEP_S
    out['lenet_atmc8_vs_reference'] = {
        'ratio_median': ratio,
        'ratio_min': low('lenet/atmc8_step_amortised') /
                     REFERENCE_ATMC8_STEP_S,
        'reference_s': REFERENCE_ATMC8_STEP_S,
        'target': TARGET_ATMC8_VS_REFERENCE,
        'met': ratio <= TARGET_ATMC8_VS_REFERENCE}
  rec = results.get('lenet/pgd7_step')
  if isinstance(rec, dict) and 'fraction_of_peak' in rec:
    out['lenet_pgd7_fraction_of_peak'] = {
        'fraction_median': rec['fraction_of_peak'],
        'fraction_best': rec.get('fraction_of_peak_best'),
        'target': TARGET_FRACTION_OF_PEAK,
        'met': rec['fraction_of_peak'] >= TARGET_FRACTION_OF_PEAK}
  single, multi = med('parallel/single_step'), med('parallel/pmap8_step')
  if single and multi:
    out['pmap8_overhead'] = {'ratio_median': multi / single,
                             'ratio_min': low('parallel/pmap8_step') /
                                          low('parallel/single_step')}
  return out


def _fmt_s(x: Optional[float]) -> str:
  if x is None:
    return ''
  if x < 1e-3:
    return f'{x * 1e6:.0f} µs'
  if x < 1:
    return f'{x * 1e3:.1f} ms'
  return f'{x:.2f} s'


def render_markdown(doc: dict[str, Any]) -> str:
  """A markdown table of every record, then the target ratios."""
  meta = doc.get('meta', {})
  lines = [
      f"Measured {meta.get('date', '?')} on {meta.get('device', '?')} "
      f"({meta.get('cpu_model', '?')}, {meta.get('cpu_count', '?')} CPUs), "
      f"jax {meta.get('jax_version', '?')}; load average at start "
      f"{meta.get('load_average_start')}, at end "
      f"{meta.get('load_average_end')}. Matmul peak (2048³ float32): "
      f"{doc.get('matmul_peak_gflops', 0):.1f} GFLOP/s.",
      '',
      '| name | median | min | max | n | GFLOP/step | GFLOP/s | of peak |'
      ' of local peak | notes |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|',
  ]
  for name in sorted(k for k, v in doc.items()
                     if isinstance(v, dict) and 'median_s' in v):
    r = doc[name]
    gf = f"{r['flops'] / 1e9:.2f}" if r.get('flops') else ''
    rate = f"{r['achieved_gflops']:.1f}" if r.get('achieved_gflops') else ''
    frac = (f"{r['fraction_of_peak']:.0%}" if r.get('fraction_of_peak')
            is not None else '')
    local = (f"{r['fraction_of_local_peak']:.0%}"
             if r.get('fraction_of_local_peak') is not None else '')
    extra = []
    if r.get('examples_per_s'):
      extra.append(f"{r['examples_per_s']:.0f} examples/s")
    if r.get('traces') is not None:
      extra.append(f"traces={r['traces']}")
    if r.get('estimated'):
      extra.append('estimated')
    lines.append(
        f"| `{name}` | {_fmt_s(r['median_s'])} | {_fmt_s(r['min_s'])} | "
        f"{_fmt_s(r['max_s'])} | {r['n']} | {gf} | {rate} | {frac} | "
        f"{local} | {', '.join(extra)} |")
  ratios = meta.get('targets', {})
  if ratios:
    lines += ['', '| ratio | median | min | target | met |',
              '|---|---:|---:|---:|---|']
    for key, v in ratios.items():
      med = v.get('ratio_median', v.get('fraction_median'))
      best = v.get('ratio_min', v.get('fraction_best'))
      target = v.get('target')
      fmt = lambda x: '' if x is None else f'{x:.3f}'
      lines.append(
          f"| {key} | {fmt(med)} | {fmt(best)} | "
          f"{'' if target is None else target} | "
          f"{'' if 'met' not in v else ('yes' if v['met'] else 'no')} |")
  notes = meta.get('notes', [])
  if notes:
    lines += [''] + [f'* {n}' for n in notes]
  return '\n'.join(lines) + '\n'


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m benchmarks.run', description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='LeNet only, fewer repetitions.')
  parser.add_argument('--only', default=None,
                      help='regular expression searched in each name.')
  parser.add_argument('--out', default='benchmarks/results.json')
  parser.add_argument('--markdown', default=None,
                      help='also write the markdown table here '
                      '("-" prints it).')
  parser.add_argument('--render', default=None, metavar='RESULTS_JSON',
                      help='only render the markdown table of a results file.')
  parser.add_argument('--lenet-batch', type=int, default=256)
  parser.add_argument('--resnet-batch', type=int, default=128)
  parser.add_argument('--peak-size', type=int, default=2048,
                      help='side of the float32 matmul timed as the peak.')
  parser.add_argument('--atmc8-blocks', type=int, default=None,
                      help='repetitions (blocks of 10 steps) of the amortised '
                      'ATMC-8 step (default 3 with --quick, else 10).')
  parser.add_argument('--no-torch', action='store_true')
  parser.add_argument('--no-parallel', action='store_true')
  parser.add_argument('--no-external', action='store_true',
                      help='skip benchmarks/projections.py, models.py and '
                      'autoattack.py.')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.render:
    with open(args.render, encoding='utf-8') as f:
      table = render_markdown(json.load(f))
    if args.markdown and args.markdown != '-':
      with open(args.markdown, 'w', encoding='utf-8') as f:
        f.write(table)
    else:
      print(table)
    return 0
  if args.lenet_batch < 1 or args.resnet_batch < 1:
    raise ValueError(
        f'batches must be >= 1, got --lenet-batch={args.lenet_batch}, '
        f'--resnet-batch={args.resnet_batch}.')
  start = time.perf_counter()
  suite = Suite(args.out, args.only)
  suite.local_peak_size = args.peak_size
  meta = _timing.meta()
  meta['command'] = 'python -m benchmarks.run ' + ' '.join(
      sys.argv[1:] if argv is None else argv)
  peak = _timing.matmul_peak_gflops(args.peak_size,
                                    n=10 if args.quick else 20)
  suite.results['matmul_peak_gflops'] = peak['gflops']
  meta['matmul_peak'] = peak
  suite.results['meta'] = meta
  print(f"matmul peak {peak['gflops']:.1f} GFLOP/s (best "
        f"{peak['gflops_best']:.1f})", flush=True)
  on_cpu = jax.default_backend() == 'cpu'

  torch_hook = (None if args.no_torch else
                lambda: run_torch(suite, args.quick, args.lenet_batch))
  run_model(suite, 'lenet', args.quick, args.lenet_batch, peak['gflops'],
            on_cpu, after_pgd=torch_hook, atmc8_blocks=args.atmc8_blocks)
  if not args.no_torch:
    run_interleaved(suite, args.quick, args.lenet_batch)
  if not args.no_parallel and on_cpu:
    run_parallel(suite, args.quick, args.lenet_batch)
  if not args.no_external:
    run_external(suite, args.quick)
  if not args.quick:
    if on_cpu and args.resnet_batch != 128:
      suite.notes.append(
          f'ResNet-34 steps on this CPU use batch {args.resnet_batch} '
          '(--resnet-batch), not 128, to fit the time available; each '
          "record's flops and fraction_of_peak are for that batch.")
    run_model(suite, 'resnet34', args.quick, args.resnet_batch,
              peak['gflops'], on_cpu)

  # A second peak measurement shows whether the machine load changed.
  peak_end = _timing.matmul_peak_gflops(args.peak_size, n=10)
  meta['matmul_peak_end_gflops'] = peak_end['gflops']
  meta['load_average_end'] = _timing.load_average()
  meta['wall_s'] = time.perf_counter() - start
  suite.write()
  table = render_markdown(suite.results)
  if args.markdown == '-':
    print(table)
  elif args.markdown:
    with open(args.markdown, 'w', encoding='utf-8') as f:
      f.write(table)
  print(json.dumps(meta['targets'], indent=1))
  print(f'wrote {args.out} in {meta["wall_s"]:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
