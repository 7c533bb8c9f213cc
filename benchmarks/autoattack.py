"""Speed of AutoAttack's components on Caffe LeNet.

Measures ``lenet/autoattack/<component>`` for ``apgd_ce``, ``apgd_t``,
``fab_t`` and ``square``: one call of the jitted attack
(``atmc_jax.attacks``) on a batch of 28x28x1 images (default 500) with the
standard AutoAttack settings (APGD 100 iterations; APGD-T and FAB-T 9
targets x 100 iterations; Square 5000 queries), reported as
``examples_per_s``. Epsilon is 0, so no point is ever fooled and no
component stops early: every record is the full cost of the component on a
batch of points that all survive (the worst case inside AutoAttack).

``--quick`` (and ``run(quick=True)``) uses batch 64 and 10 iterations / 500
queries; the records then hold the scaled settings in ``note``.

Usage: ``python -m benchmarks.autoattack [--quick]``; ``run(quick)``
returns ``{name: {"median_s", "min_s", "max_s", "n", ...}}``.
"""

import sys
import time
from typing import Any, Optional

import jax

from atmc_jax import attacks
from atmc_jax import models
from benchmarks import _timing

BATCH = 500
COMPONENTS = ('apgd_ce', 'apgd_t', 'fab_t', 'square')


def component_fns(num_steps: int, num_targets: int,
                  num_queries: int) -> dict[str, Any]:
  """component -> ``(logits_fn, x, y, key) -> x_adv`` at epsilon 0."""
  suite = attacks.standard_attacks(0.0, num_steps=num_steps,
                                   num_targets=num_targets,
                                   num_queries=num_queries)
  return {name: suite[name.replace('_', '-')] for name in COMPONENTS}


def run(quick: bool = False, *, batch: Optional[int] = None,
        num_steps: Optional[int] = None, num_targets: int = 9,
        num_queries: Optional[int] = None, n: int = 1,
        components: tuple[str, ...] = COMPONENTS) -> dict[str, Any]:
  """Times each component; see the module docstring for the names."""
  batch = batch or (64 if quick else BATCH)
  num_steps = num_steps or (10 if quick else 100)
  num_queries = num_queries or (500 if quick else 5000)
  key_x, key_p, key_a = jax.random.split(jax.random.key(0), 3)
  x = jax.random.uniform(key_x, (batch, 28, 28, 1))
  model = models.CaffeLeNet()
  params = jax.jit(model.init)(key_p, x[:1])
  logits_fn = jax.tree_util.Partial(model.apply, params)
  y = jax.numpy.argmax(logits_fn(x), axis=-1)
  fns = component_fns(num_steps, num_targets, num_queries)
  standard = (num_steps, num_targets, num_queries) == (100, 9, 5000)
  settings = (f'{num_steps} iterations, {num_targets} targets, '
              f'{num_queries} queries' +
              ('' if standard else ' (reduced; standard: 100, 9, 5000)'))
  results = {}
  for name in components:
    fn = fns[name]
    start = time.perf_counter()
    jax.block_until_ready(fn(logits_fn, x, y, key_a))
    first = time.perf_counter() - start
    record, _ = _timing.time_calls(lambda fn=fn: fn(logits_fn, x, y, key_a),
                                   n=n, warmup=0)
    record['examples_per_s'] = batch / record['median_s']
    record['first_call_s'] = first
    record['batch'] = batch
    record['note'] = (f'{name.replace("_", "-").upper()} at epsilon 0 (no '
                      f'early stop), batch {batch}, {settings}')
    results[f'lenet/autoattack/{name}'] = record
  results['_notes'] = [
      f'benchmarks.autoattack: backend {jax.default_backend()}, settings '
      f'{settings}.']
  return results


def main(argv):
  quick = '--quick' in argv[1:]
  for name, record in run(quick).items():
    if isinstance(record, dict):
      print(f'{name:32s} median {record["median_s"]:9.3f} s  '
            f'{record["examples_per_s"]:9.2f} examples/s  '
            f'(first call {record["first_call_s"]:.1f} s)')
    else:
      print(record)


if __name__ == '__main__':
  main(sys.argv)
