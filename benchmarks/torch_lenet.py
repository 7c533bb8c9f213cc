"""PyTorch CaffeLeNet training steps, the side-by-side baseline for the JAX steps.

The same math as ``benchmarks.steps`` (and the reference code, spec §2.2-2.3):

* CaffeLeNet: conv 5x5 1->20, max-pool 2, conv 5x5 20->50, max-pool 2,
  FC 800->500, ReLU, FC 500->10 (no ReLU after the convolutions);
* PGD-K: ``K`` times ``x' <- clip(x' + alpha * sign(grad_x sum CE), x +- eps)``
  then clip to ``[0, 1]``, ``alpha = 1.25 eps / K``, starting at ``x``;
* loss ``0.5 CE(f(x), y) + 0.5 CE(f(x_adv), y)`` (batch means);
* SGD, momentum 0.9, weight decay 1e-4 on every parameter.

The attack's gradients are taken with ``torch.autograd.grad`` with respect to
the images only, so no weight gradients are computed while attacking (the
cheapest correct PyTorch formulation). ``torch.set_num_threads`` is set to
the number of CPUs this process may use (2 on the reference machine).

Run on its own to print JSON::

  python -m benchmarks.torch_lenet [--quick] [--batch 256]

``benchmarks.run`` runs it in a subprocess right next to the JAX LeNet
measurements, so both see the same machine load.
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Optional

try:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
except ImportError:  # The [bench] extra is optional.
  torch = None

_NOTE_MISSING = ('torch is not installed (pip install -e .[bench]); the '
                 'PyTorch entries were skipped.')


def available() -> bool:
  """Whether PyTorch can be imported."""
  return torch is not None


def _make_lenet():
  class CaffeLeNet(nn.Module):
    """CaffeLeNet (NCHW), as in the reference code."""

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(1, 20, 5)
      self.conv2 = nn.Conv2d(20, 50, 5)
      self.fc1 = nn.Linear(800, 500)
      self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
      x = F.max_pool2d(self.conv1(x), 2)
      x = F.max_pool2d(self.conv2(x), 2)
      x = torch.flatten(x, 1)
      return self.fc2(F.relu(self.fc1(x)))

  return CaffeLeNet()


def pgd(model, x, y, *, epsilon: float, num_steps: int):
  """Signed-gradient PGD with summed CE, step ``1.25 eps / K``, no random start."""
  alpha = 1.25 * epsilon / num_steps
  x_adv = x.clone()
  for _ in range(num_steps):
    x_adv.requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y, reduction='sum')
    (grad,) = torch.autograd.grad(loss, [x_adv])
    with torch.no_grad():
      x_adv = x_adv + alpha * grad.sign()
      x_adv = torch.min(torch.max(x_adv, x - epsilon), x + epsilon)
      x_adv = x_adv.clamp(0.0, 1.0)
  return x_adv.detach()


def make_steps(batch: int = 256, *, epsilon: float = 0.1, num_steps: int = 7,
               lr: float = 0.01, seed: int = 0):
  """Builds ``(plain_step, pgd_step)`` closures over a model and a fixed batch.

  Args:
    batch: examples per step (``>= 1``).
    epsilon: L-inf radius in pixel units.
    num_steps: PGD iterations.
    lr: SGD learning rate.
    seed: seeds the weights and the synthetic batch.

  Returns:
    Two zero-argument callables, each running one training step and returning
    the loss as a Python float.

  Raises:
    ValueError: ``batch < 1``.
    RuntimeError: torch is not installed.
  """
  if torch is None:
    raise RuntimeError(_NOTE_MISSING)
  if batch < 1:
    raise ValueError(f'batch must be >= 1, got {batch}.')
  torch.manual_seed(seed)
  model = _make_lenet()
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9,
                        weight_decay=1e-4)
  x = torch.rand(batch, 1, 28, 28)
  y = torch.randint(0, 10, (batch,))

  def plain_step():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach().item()

  def pgd_step():
    x_adv = pgd(model, x, y, epsilon=epsilon, num_steps=num_steps)
    opt.zero_grad(set_to_none=True)
    loss = (0.5 * F.cross_entropy(model(x), y)
            + 0.5 * F.cross_entropy(model(x_adv), y))
    loss.backward()
    opt.step()
    return loss.detach().item()

  return plain_step, pgd_step


def _time(fn, n: int, warmup: int) -> dict[str, Any]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(n):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  times.sort()
  mid = len(times) // 2
  median = (times[mid] if len(times) % 2 else
            0.5 * (times[mid - 1] + times[mid]))
  return {'median_s': median, 'min_s': times[0], 'max_s': times[-1],
          'n': len(times)}


def run(quick: bool = False, *, batch: int = 256,
        threads: Optional[int] = None) -> dict[str, Any]:
  """Times the PyTorch plain and PGD-7 LeNet steps.

  Args:
    quick: fewer repetitions.
    batch: examples per step.
    threads: ``torch.set_num_threads`` value (default: CPUs available).

  Returns:
    ``{"lenet/plain_step/torch": record, "lenet/pgd7_step/torch": record}``,
    or ``{}`` with a note under ``"_notes"`` when torch is missing.
  """
  if torch is None:
    return {'_notes': [_NOTE_MISSING]}
  if threads is None:
    threads = len(os.sched_getaffinity(0)) if hasattr(
        os, 'sched_getaffinity') else (os.cpu_count() or 1)
  torch.set_num_threads(threads)
  plain_step, pgd_step = make_steps(batch)
  n = 5 if quick else 15
  note = (f'torch {torch.__version__}, {threads} threads, batch {batch}, '
          'attack gradients w.r.t. images only')
  out = {
      'lenet/plain_step/torch': _time(plain_step, n=2 * n, warmup=3),
      'lenet/pgd7_step/torch': _time(pgd_step, n=n, warmup=2),
  }
  for v in out.values():
    v['note'] = note
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--threads', type=int, default=None)
  args = parser.parse_args(argv)
  json.dump(run(args.quick, batch=args.batch, threads=args.threads),
            sys.stdout)
  sys.stdout.write('\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
