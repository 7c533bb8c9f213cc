"""Convolution and matmul FLOP counts of the benchmarked steps, from layer shapes.

Only the multiply-adds of convolutions and dense layers are counted (2 FLOP
per multiply-add); activations, pooling, BatchNorm, losses, optimizer
updates, projections and k-means are not: they are memory-bound and small
next to the matmuls, and "fraction of the matmul peak" is the question asked.

For one layer with forward cost ``F`` (per example) the three passes of
backpropagation cost the same::

  forward              y  = conv(x, W)        F
  input gradient       gx = conv^T(gy, W)     F
  weight gradient      gW = corr(x, gy)       F

so, summed over layers ``l = 0..L-1`` (layer 0 sees the images):

.. math::

  \\text{fwd} = \\sum_l F_l, \\qquad
  \\text{train pass} = 3\\sum_l F_l - F_0, \\qquad
  \\text{attack pass} = 2\\sum_l F_l

(a training pass needs no gradient for the images; an attack pass needs the
image gradient but no weight gradient). A PGD-K adversarial training step
with the 0.5 clean + 0.5 adversarial loss is ``K`` attack passes plus two
training passes. A factorized (``W = U V + C``) model additionally forms
each ``W`` once per step and back-propagates into ``U`` and ``V``
(``3 * 2 * out * r * fan_in`` per layer and step, independent of the batch).

``xla_flops`` reads XLA's own count from ``compiled.cost_analysis()`` for a
cross-check. XLA counts a ``while`` loop body once, not once per iteration,
so it under-counts ``lax.fori_loop`` attacks unless they are unrolled.
"""

import dataclasses
from typing import Any, Optional, Sequence

import jax


@dataclasses.dataclass(frozen=True)
class Layer:
  """A convolution or dense layer, by shape.

  Attributes:
    name: a label.
    fan_in: inputs per output (``kh * kw * in`` for a conv, ``in`` for dense).
    out: output channels / features.
    positions: output spatial positions per example (``H_out * W_out``; 1 for
      a dense layer).
  """
  name: str
  fan_in: int
  out: int
  positions: int = 1

  @property
  def weights(self) -> int:
    return self.fan_in * self.out

  @property
  def forward_flops(self) -> int:
    """FLOPs of one forward pass for one example."""
    return 2 * self.positions * self.fan_in * self.out

  @property
  def materialize_flops(self) -> int:
    """FLOPs of forming ``W = U V + C`` once, ``r = min(out, fan_in)``."""
    return 2 * self.out * min(self.out, self.fan_in) * self.fan_in


def conv(name: str, kernel: int, cin: int, cout: int,
         out_hw: int) -> Layer:
  """A square ``kernel x kernel`` conv producing ``out_hw x out_hw`` maps."""
  return Layer(name, kernel * kernel * cin, cout, out_hw * out_hw)


def dense(name: str, fin: int, fout: int) -> Layer:
  return Layer(name, fin, fout, 1)


def lenet_layers() -> list[Layer]:
  """CaffeLeNet on 28x28x1 (VALID 5x5 convs, 2x2 max-pools)."""
  return [
      conv('conv1', 5, 1, 20, 24),
      conv('conv2', 5, 20, 50, 8),
      dense('fc1', 800, 500),
      dense('fc2', 500, 10),
  ]


def resnet34_layers(num_classes: int = 10, image_size: int = 32
                    ) -> list[Layer]:
  """ResNet-34, CIFAR variant: 3x3 stem, stages [3, 4, 6, 3], no max-pool."""
  layers = [conv('stem', 3, 3, 64, image_size)]
  hw, cin = image_size, 64
  for stage, (blocks, width, stride) in enumerate(
      [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)]):
    for block in range(blocks):
      s = stride if block == 0 else 1
      out_hw = hw // s
      prefix = f'stage{stage + 1}/block{block}'
      layers.append(conv(f'{prefix}/conv1', 3, cin, width, out_hw))
      layers.append(conv(f'{prefix}/conv2', 3, width, width, out_hw))
      if s != 1 or cin != width:
        layers.append(conv(f'{prefix}/shortcut', 1, cin, width, out_hw))
      hw, cin = out_hw, width
  layers.append(dense('fc', 512, num_classes))
  return layers


def model_layers(model: str, num_classes: int = 10) -> list[Layer]:
  """The layer list of ``"lenet"`` or ``"resnet34"``.

  Raises:
    ValueError: unknown model name.
  """
  if model == 'lenet':
    return lenet_layers()
  if model == 'resnet34':
    return resnet34_layers(num_classes)
  raise ValueError(
      f"model must be one of 'lenet', 'resnet34', got {model!r}.")


def forward_flops(layers: Sequence[Layer]) -> int:
  """Forward FLOPs per example."""
  return sum(l.forward_flops for l in layers)


def train_pass_flops(layers: Sequence[Layer]) -> int:
  """Forward + weight gradient + input gradient (except layer 0), per example."""
  f = forward_flops(layers)
  return 3 * f - layers[0].forward_flops


def attack_pass_flops(layers: Sequence[Layer]) -> int:
  """Forward + input gradient through every layer, per example."""
  return 2 * forward_flops(layers)


def materialize_step_flops(layers: Sequence[Layer]) -> int:
  """Forming every ``W = U V + C`` once and back-propagating into U, V."""
  return 3 * sum(l.materialize_flops for l in layers)


def step_flops(model: str, kind: str, batch: int, *,
               attack_steps: int = 7, factorized: bool = False,
               num_classes: int = 10) -> int:
  """Conv + matmul FLOPs of one benchmarked call.

  Args:
    model: ``"lenet"`` or ``"resnet34"``.
    kind: ``"forward"``; ``"plain"`` (one training step on clean data);
      ``"adversarial"`` (PGD-``attack_steps`` then a training step on the
      0.5 clean + 0.5 adversarial loss); ``"eval_pgd"`` (PGD-``attack_steps``
      then one forward pass on the adversarial batch).
    batch: examples per call (``>= 1``).
    attack_steps: PGD iterations (``>= 0``).
    factorized: add the per-step cost of forming ``U V + C`` (training
      kinds) or of forming it once (``forward``/``eval_pgd``).
    num_classes: classifier width.

  Returns:
    The FLOP count.

  Raises:
    ValueError: an argument is outside its range.
  """
  if batch < 1:
    raise ValueError(f'batch must be >= 1, got {batch}.')
  if attack_steps < 0:
    raise ValueError(f'attack_steps must be >= 0, got {attack_steps}.')
  layers = model_layers(model, num_classes)
  if kind == 'forward':
    per_example = forward_flops(layers)
  elif kind == 'plain':
    per_example = train_pass_flops(layers)
  elif kind == 'adversarial':
    per_example = (attack_steps * attack_pass_flops(layers)
                   + 2 * train_pass_flops(layers))
  elif kind == 'eval_pgd':
    per_example = (attack_steps * attack_pass_flops(layers)
                   + forward_flops(layers))
  else:
    raise ValueError(
        "kind must be one of 'forward', 'plain', 'adversarial', 'eval_pgd', "
        f'got {kind!r}.')
  total = batch * per_example
  if factorized:
    once = sum(l.materialize_flops for l in layers)
    total += once if kind in ('forward', 'eval_pgd') else 3 * once
  return total


def xla_flops(compiled: Any) -> Optional[float]:
  """XLA's FLOP estimate for a ``jax.stages.Compiled`` (None if unavailable).

  Args:
    compiled: ``jax.jit(f).lower(*args).compile()``.

  Returns:
    ``cost_analysis()['flops']``; while-loop bodies are counted once.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def xla_flops_of(fn: Any, *args: Any) -> Optional[float]:
  """``xla_flops`` of a jitted ``fn`` lowered for ``args``."""
  try:
    compiled = fn.lower(*args).compile()
  except Exception:  # pylint: disable=broad-except
    return None
  return xla_flops(compiled)


def summary() -> dict[str, Any]:
  """Per-model counts used in the docs (FLOPs per example and per step)."""
  out = {}
  for model, batch in (('lenet', 256), ('resnet34', 128)):
    layers = model_layers(model)
    out[model] = {
        'weights': sum(l.weights for l in layers),
        'forward_flops_per_example': forward_flops(layers),
        'batch': batch,
        'plain_step_flops': step_flops(model, 'plain', batch),
        'pgd7_step_flops': step_flops(model, 'adversarial', batch),
        'atmc_step_flops': step_flops(model, 'adversarial', batch,
                                      factorized=True),
        'eval_pgd20_flops': step_flops(model, 'eval_pgd', batch,
                                       attack_steps=20),
    }
  return out


if __name__ == '__main__':
  import json  # pylint: disable=g-import-not-at-top
  print(json.dumps(summary(), indent=2))
