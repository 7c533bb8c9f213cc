"""Speed of the constraint projections on ATMC-sized factor trees.

The trees hold random normal U, V, C factors with the exact shapes of the
U·V + C layout (``r = min(out, fan_in)``; ``U: out x r``, ``V: r x fan_in``,
``C: out x fan_in``) for Caffe LeNet-5 (1,114,000 entries) and the CIFAR
ResNet-34 (about 45M entries). Quantisation is timed on a realistic sparse
tree (``project_l0`` to 1% of the entries) and on the dense tree.

Usage: ``python -m benchmarks.projections [--quick]``.
"""

import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax import projections

LENET_LAYERS = ((20, 25), (50, 500), (500, 800), (10, 500))


def resnet34_layers() -> list[tuple[int, int]]:
  """``(out, fan_in)`` of every conv/linear layer of the CIFAR ResNet-34."""
  layers = [(64, 27)]
  in_ch = 64
  for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
    for b in range(blocks):
      layers.append((width, 9 * in_ch))
      layers.append((width, 9 * width))
      if b == 0 and in_ch != width:
        layers.append((width, in_ch))
      in_ch = width
  layers.append((10, 512))
  return layers


def factor_tree(layers, seed: int = 0) -> dict:
  """Random normal U, V, C factors for each ``(out, fan_in)`` layer."""
  key = jax.random.key(seed)
  tree = {}
  for i, (out, fan_in) in enumerate(layers):
    r = min(out, fan_in)
    key, ku, kv, kc = jax.random.split(key, 4)
    tree[f'layer{i}'] = {
        'U': jax.random.normal(ku, (out, r)),
        'V': jax.random.normal(kv, (r, fan_in)),
        'C': jax.random.normal(kc, (out, fan_in)),
    }
  return tree


def _size(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def time_fn(fn: Callable, *args, n: int = 10, warmup: int = 1) -> dict:
  """Median/min/max wall time of ``fn(*args)`` after ``warmup`` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(n):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return {'median_s': float(np.median(times)), 'min_s': float(np.min(times)),
          'max_s': float(np.max(times)), 'n': n}


class _Results(dict):
  """A dict that reports each entry as it is added."""

  def __init__(self, log):
    super().__init__()
    self._log = log

  def __setitem__(self, name, value):
    super().__setitem__(name, value)
    if self._log is not None:
      self._log(_row(name, value))


def _row(name: str, r: dict) -> str:
  return (f'{name:48s} {1e3 * r["median_s"]:10.2f} {1e3 * r["min_s"]:10.2f}'
          f' {1e3 * r["max_s"]:10.2f} {r["n"]:3d}')


_HEADER = (f'{"name":48s} {"median ms":>10s} {"min ms":>10s} {"max ms":>10s}'
           f' {"n":>3s}')


def run(quick: bool = False, log: Callable[[str], None] | None = None
        ) -> dict:
  """Runs the benchmarks; returns ``{name: {median_s, min_s, max_s, n}}``.

  Args:
    quick: fewer repetitions, and ResNet-34 only for ``project_l0`` and the
      sparse quantisation.
    log: if given, called with a formatted row as each result comes in.
  """
  results = _Results(log)
  reps = 5 if quick else 20
  bits = 8

  l0 = jax.jit(projections.project_l0, static_argnums=1)
  quant = jax.jit(lambda t: projections.project_quantize(t, bits))
  quant_opt = jax.jit(lambda t: projections.project_quantize(
      t, bits, method='optimal'))

  lenet = factor_tree(LENET_LAYERS)
  k = _size(lenet) // 100
  sparse = l0(lenet, k)
  results['lenet/project_l0'] = time_fn(l0, lenet, k, n=reps)
  results['lenet/project_quantize'] = time_fn(quant, sparse, n=reps)
  results['lenet/project_quantize_dense'] = time_fn(quant, lenet, n=reps)
  results['lenet/project_atmc'] = time_fn(
      jax.jit(lambda t: projections.project_atmc(t, k, bits)), lenet,
      n=reps)
  # The exact solver is timed on single tensors (compiling it for every
  # leaf of the tree takes minutes): the largest LeNet factor (fc1's C,
  # 500 x 800) after the global 1% projection, and conv2's dense C (50 x 500).
  big = {'C': sparse['layer2']['C']}
  results['lenet_fc1_C_sparse/project_quantize_optimal'] = time_fn(
      quant_opt, big, n=2 if quick else 3)
  results['lenet_fc1_C_sparse/project_quantize'] = time_fn(quant, big,
                                                           n=reps)
  mid = {'C': lenet['layer1']['C']}
  results['lenet_conv2_C_dense/project_quantize_optimal'] = time_fn(
      quant_opt, mid, n=2 if quick else 3)
  results['lenet_conv2_C_dense/project_quantize'] = time_fn(quant, mid,
                                                            n=reps)

  resnet = factor_tree(resnet34_layers())
  k = _size(resnet) // 100
  r_reps = 3 if quick else 10
  results['resnet34/project_l0'] = time_fn(l0, resnet, k, n=r_reps)
  sparse = l0(resnet, k)
  results['resnet34/project_quantize'] = time_fn(quant, sparse, n=r_reps)
  if not quick:
    results['resnet34/project_quantize_dense'] = time_fn(quant, resnet,
                                                         n=r_reps)
  return dict(results)


def main(argv) -> None:
  quick = '--quick' in argv[1:]
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, '
        f'devices {jax.device_count()}')
  print(f'lenet entries {_size(factor_tree(LENET_LAYERS)):,}, resnet34 '
        f'entries {sum(o * min(o, f) + min(o, f) * f + o * f for o, f in resnet34_layers()):,}')
  print(_HEADER, flush=True)
  results = run(quick, log=lambda row: print(row, flush=True))
  print('\nsummary\n' + _HEADER)
  for name, r in results.items():
    print(_row(name, r))


if __name__ == '__main__':
  main(sys.argv)
