"""Where the time of a trainer step goes: per-attack-iteration cost and ops.

Usage::

  python -m benchmarks.profile_step [--stage da] [--model lenet]
      [--attack-steps 7 14] [--batch 256] [--reps 12] [--top 30]

Builds the trainer's step (``benchmarks.steps``) once per entry of
``--attack-steps`` and times them in alternation, so the difference of two
entries divided by the difference of their step counts is the cost of one
PGD iteration (forward + input gradient) and the rest is the training
passes and the update. Then it traces 5 steps of the first entry with
``jax.profiler`` and prints the XLA ops with the largest total time per
step, each with its output shape and the JAX source op it comes from (from
an HLO dump, ``--xla_dump_to``). Ops of one step can run concurrently on
the CPU's threads, so the per-op times add up to more than the step time.
"""

import argparse
import collections
import glob
import os
import re
import tempfile
import time


def _parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--stage', default='da')
  parser.add_argument('--model', default='lenet')
  parser.add_argument('--attack-steps', type=int, nargs='+', default=[7, 14])
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--reps', type=int, default=12)
  parser.add_argument('--top', type=int, default=30)
  args = parser.parse_args(argv)
  if any(k < 1 for k in args.attack_steps) or args.reps < 1 or args.top < 1:
    parser.error('--attack-steps, --reps and --top must be >= 1, got '
                 f'{args.attack_steps}, {args.reps}, {args.top}.')
  return args


def _op_table(trace_dir: str, dump_dir: str, steps: int, top: int):
  """Rows ``(ms per step, calls per step, name, description)``."""
  import jax  # pylint: disable=g-import-not-at-top
  path = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'),
                   recursive=True)[0]
  total, calls = collections.Counter(), collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      if line.name == 'python':
        continue
      for event in line.events:
        if 'Execute' in event.name:  # Whole-program events, not ops.
          continue
        total[event.name] += event.duration_ns
        calls[event.name] += 1
  rows = total.most_common(top)
  # The step's optimized HLO: the dumped module defining most of these ops.
  texts = [open(f).read() for f in
           glob.glob(os.path.join(dump_dir, '*after_optimizations.txt'))]
  hlo = max(texts, default='', key=lambda t: sum(
      f'%{name} = ' in t for name, _ in rows))

  def describe(name):
    found = re.search(r'\n\s*(?:ROOT )?%?' + re.escape(name) + r' = ([^\n]*)',
                      hlo)
    if not found:
      return ''
    op = re.search(r'op_name="([^"]*)"', found.group(1))
    return (found.group(1).split(' ')[0][:40] + '  '
            + (op.group(1)[-70:] if op else ''))

  return [(ns / steps / 1e6, calls[name] / steps, name, describe(name))
          for name, ns in rows]


def main(argv=None) -> None:
  args = _parse(argv)
  dump_dir = tempfile.mkdtemp(prefix='atmc_jax_hlo_')
  trace_dir = tempfile.mkdtemp(prefix='atmc_jax_trace_')
  # XLA reads its flags when the backend starts: set them before jax runs.
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_dump_to={dump_dir}'
                             ' --xla_dump_hlo_as_text').strip()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import steps  # pylint: disable=g-import-not-at-top

  benches = {}
  for k in args.attack_steps:
    config = steps.make_config(args.model, args.stage, batch_size=args.batch,
                               attack_steps=k)
    bench = steps.build_train_step(config)
    for _ in range(2):
      jax.block_until_ready(bench.step())
    benches[k] = bench
  times = {k: [] for k in benches}
  for _ in range(args.reps):
    for k, bench in benches.items():
      start = time.perf_counter()
      jax.block_until_ready(bench.step())
      times[k].append(time.perf_counter() - start)
  med = {k: float(np.median(t)) for k, t in times.items()}
  print(f'{args.model} stage {args.stage}, batch {args.batch}, '
        f'{args.reps} alternating repetitions:')
  for k in benches:
    print(f'  PGD-{k} step: median {med[k] * 1e3:.1f} ms, '
          f'min {min(times[k]) * 1e3:.1f} ms')
  ks = sorted(benches)
  if len(ks) >= 2:
    per_iter = (med[ks[-1]] - med[ks[0]]) / (ks[-1] - ks[0])
    print(f'  one attack iteration: {per_iter * 1e3:.1f} ms; the rest of a '
          f'PGD-{ks[0]} step: {(med[ks[0]] - ks[0] * per_iter) * 1e3:.1f} ms')

  first = benches[args.attack_steps[0]]
  traced = 5
  jax.profiler.start_trace(trace_dir)
  for _ in range(traced):
    jax.block_until_ready(first.step())
  jax.profiler.stop_trace()
  print(f'\nops of the PGD-{args.attack_steps[0]} step '
        '(ms per step, calls per step, op, output shape, JAX source):')
  for ms, n, name, what in _op_table(trace_dir, dump_dir, traced, args.top):
    print(f'{ms:8.2f} ms  x{n:<4.0f} {name[:28]:28s} {what}')


if __name__ == '__main__':
  main()
