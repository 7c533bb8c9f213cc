"""JAX training- and evaluation-step benchmarks, timed through the trainer's code.

Every step is built the way ``atmc_jax.training.train_and_evaluate`` builds
it: the stage config (``experiments/configs/default.py`` +
``training.apply_stage``), ``training.create_model``,
``training.prepare_compression`` / ``training.make_optimizer``,
``training.make_train_step`` / ``training.make_eval_step`` mapped with
``training.parallel.pmap_train_step`` / ``pmap_eval_step`` over one device
(or eight, for ``parallel/pmap8_step``), with the state replicated by
``training.parallel.replicate``. Nothing here re-implements the model, the
attack or the optimizer.

Benchmarked steps (names as in the results file, ``<model>/<name>``):

* ``plain_step``: stage ``natural``, one SGD step on clean data;
* ``pgd7_step``: stage ``da`` with the reference's loss
  ``0.5 CE(x) + 0.5 CE(x_adv)`` and attack (PGD-7, signed steps of
  ``1.25 eps / 7``, no random start);
* ``atmc32_step``: stage ``atmc32`` (factorized U V + C, global L0 projection
  every step), same loss and attack;
* ``atmc8_step_amortised``: stage ``atmc8`` (plus the ADMM penalty, and a
  k-means quantisation of every factor once every ``admm_interval = 10``
  steps): one repetition is 10 consecutive steps, reported divided by 10;
* ``eval_pgd20``: the evaluation step (clean accuracy + PGD-20 accuracy);
* ``eval_pgd20_factorized``: the same on the U·V+C model.

The synthetic batch is put on the device once; input loading is not timed.
"""

import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from atmc_jax import attacks
from atmc_jax import data
from atmc_jax import training
from atmc_jax.training import parallel
from benchmarks import _timing
from benchmarks import flops as flops_lib

# Step name -> (stage, flops kind, factorized).
STEPS = {
    'plain_step': ('natural', 'plain', False),
    'pgd7_step': ('da', 'adversarial', False),
    'atmc32_step': ('atmc32', 'adversarial', True),
    'atmc8_step_amortised': ('atmc8', 'adversarial', True),
}
DATASET_OF = {'lenet': 'fashion_mnist', 'resnet34': 'cifar10'}
DEFAULT_BATCH = {'lenet': 256, 'resnet34': 128}
EPSILON = {'lenet': 0.1, 'resnet34': 4.0 / 255.0}


def base_config():
  """The trainer's default config (``experiments/configs/default.py``)."""
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  return default.get_config()


def make_config(model: str, stage: str, *, batch_size: int,
                attack_steps: int = 7, eval_steps: int = 20,
                sparsity: float = 0.01, admm_interval: int = 10,
                model_kwargs: Optional[dict[str, Any]] = None):
  """A stage-applied training config for a benchmark step.

  Args:
    model: ``"lenet"`` or ``"resnet34"``.
    stage: a ``training.STAGES`` entry.
    batch_size: the global batch.
    attack_steps: PGD iterations of the training attack.
    eval_steps: PGD iterations of the evaluation attack.
    sparsity: keep fraction ``p`` of the L0 budget.
    admm_interval: steps between two quantisations (``atmc8``).
    model_kwargs: extra model attributes (e.g. ``{"conv_impl": "lax"}``).

  Returns:
    The config after ``training.apply_stage``.

  Raises:
    ValueError: unknown ``model`` or an invalid config.
  """
  if model not in DATASET_OF:
    raise ValueError(
        f'model must be one of {sorted(DATASET_OF)}, got {model!r}.')
  config = base_config()
  config.stage = stage
  config.model = model
  config.dataset = DATASET_OF[model]
  config.data_source = 'synthetic'
  config.batch_size = batch_size
  config.eval_batch_size = batch_size
  config.sparsity = sparsity
  config.admm_interval = admm_interval
  config.adv_loss = 'mixed'          # 0.5 clean + 0.5 adversarial.
  config.weight_decay_all = True     # Reference: decay on every parameter.
  config.allow_random_init = True
  for k, v in (model_kwargs or {}).items():
    config.model_kwargs[k] = v
  config.progress = False
  eps = EPSILON[model]
  for attack, steps in ((config.train_attack, attack_steps),
                        (config.eval.attack, eval_steps)):
    attack.epsilon = eps
    attack.num_steps = steps
    attack.random_start = False      # Reference: deterministic start.
    attack.step_size = float(attacks.reference_step_size(eps, steps))
  config = training.apply_stage(config)
  training.validate_config(config, num_devices=1)
  return config


def synthetic_batch(spec, batch_size: int, seed: int = 0) -> dict[str, Any]:
  """A host batch ``{"image": float32 in [0, 1], "label": int32}``."""
  images, labels = training.synthetic_split(spec, batch_size, seed=seed)
  return {'image': images.astype(np.float32) / 255.0,
          'label': labels.astype(np.int32)}


@dataclasses.dataclass
class TrainBench:
  """A ready-to-time training step with its state threaded in a closure.

  Attributes:
    step: ``step() -> metrics``; each call runs one training step on the
      fixed batch and keeps the new state.
    traces: ``traces()`` returns how often the per-device step was traced.
    config: the stage-applied config.
    num_devices: devices the step is mapped over.
    lower: ``lower() -> jax.stages.Lowered`` of the mapped step for the
      current state (for XLA's cost analysis).
  """
  step: Callable[[], Any]
  traces: Callable[[], int]
  config: Any
  num_devices: int
  lower: Callable[[], Any]


def build_train_step(config, *, devices: Optional[Sequence[Any]] = None,
                     seed: int = 0) -> TrainBench:
  """Builds the trainer's pmapped train step for ``config``.

  Args:
    config: from :func:`make_config`.
    devices: devices to map over (default: the first local device).
    seed: model init / data / step key seed.

  Returns:
    A :class:`TrainBench`.
  """
  devices = list(devices) if devices is not None else jax.local_devices()[:1]
  spec = data.DATASETS[config.dataset]
  key = jax.random.PRNGKey(seed)
  init_key, train_key = jax.random.split(key)
  model = training.create_model(config, spec, axis_name=parallel.AXIS_NAME)
  dummy = jnp.zeros((1,) + tuple(spec.image_shape), jnp.float32)
  variables = jax.jit(lambda k: model.init(
      {'params': k, 'dropout': k}, dummy, train=False))(init_key)
  params = jax.device_get(variables['params'])
  batch_stats = jax.device_get(variables.get('batch_stats', {}))
  params, compression = training.prepare_compression(config, params)
  params = jax.device_get(params)
  tx = training.make_optimizer(config, params, compression,
                               steps_per_epoch=1000)
  state = jax.device_get(training.TrainState.create(params, batch_stats, tx))

  count = [0]
  per_device = training.make_train_step(
      model, tx, loss=config.loss,
      attack=training.attack_kwargs(config.train_attack),
      attack_bn_mode=config.attack_bn_mode)

  def counted(*args):
    count[0] += 1  # Runs only while tracing.
    return per_device(*args)

  p_train = parallel.pmap_train_step(counted, devices=devices)
  holder = {'state': parallel.replicate(state, devices)}
  host = synthetic_batch(spec, config.batch_size, seed)
  batch = next(parallel.prefetch_to_device([host], size=1, devices=devices))
  train_key = jax.device_put(train_key, devices[0])

  def step():
    holder['state'], metrics = p_train(holder['state'], batch, train_key)
    return metrics

  def lower():
    return p_train.lower(holder['state'], batch, train_key)

  return TrainBench(step=step, traces=lambda: count[0], config=config,
                    num_devices=len(devices), lower=lower)


def build_eval_step(config, *, devices: Optional[Sequence[Any]] = None,
                    seed: int = 0) -> TrainBench:
  """The trainer's pmapped eval step (clean + PGD accuracy) for ``config``."""
  devices = list(devices) if devices is not None else jax.local_devices()[:1]
  spec = data.DATASETS[config.dataset]
  init_key, eval_key = jax.random.split(jax.random.PRNGKey(seed))
  model = training.create_model(config, spec, axis_name=parallel.AXIS_NAME)
  dummy = jnp.zeros((1,) + tuple(spec.image_shape), jnp.float32)
  variables = jax.jit(lambda k: model.init(
      {'params': k, 'dropout': k}, dummy, train=False))(init_key)
  params_r = parallel.replicate(jax.device_get(variables['params']), devices)
  stats_r = parallel.replicate(
      jax.device_get(variables.get('batch_stats', {})), devices)
  count = [0]
  per_device = training.make_eval_step(
      model, attack=training.attack_kwargs(config.eval.attack))

  def counted(*args):
    count[0] += 1
    return per_device(*args)

  p_eval = parallel.pmap_eval_step(counted, devices=devices)
  host = synthetic_batch(spec, config.eval_batch_size, seed)
  batch = next(parallel.prefetch_to_device([host], size=1, devices=devices))
  eval_key = jax.device_put(eval_key, devices[0])

  return TrainBench(
      step=lambda: p_eval(params_r, stats_r, batch, eval_key),
      traces=lambda: count[0], config=config, num_devices=len(devices),
      lower=lambda: p_eval.lower(params_r, stats_r, batch, eval_key))


def _stability(times: Sequence[float]) -> dict[str, Any]:
  """Spread of the timed steps (all after warm-up)."""
  arr = np.asarray(times)
  return {'cv': float(arr.std() / arr.mean()) if arr.size > 1 else 0.0}


def _guarded(fn: Callable[[], Any]) -> Callable[[], Any]:
  """``fn`` with implicit host<->device transfers turned into errors."""

  def run():
    with jax.transfer_guard_host_to_device('disallow'), \
        jax.transfer_guard_device_to_host('disallow'):
      return fn()

  return run


def time_train_step(model: str, name: str, *, batch_size: int, n: int,
                    warmup: int = 2, peak_gflops: Optional[float] = None,
                    block: int = 1, admm_interval: int = 10,
                    cost_analysis: bool = True,
                    devices: Optional[Sequence[Any]] = None,
                    note: str = '') -> dict[str, Any]:
  """Times one of :data:`STEPS` and returns its results record.

  Args:
    model: ``"lenet"`` or ``"resnet34"``.
    name: a key of :data:`STEPS`.
    batch_size: the global batch.
    n: timed repetitions.
    warmup: untimed steps first (the first one compiles).
    peak_gflops: the same-run matmul peak, for ``fraction_of_peak``.
    block: consecutive steps per repetition (the record is per step).
    admm_interval: quantisation interval of ``atmc8``.
    cost_analysis: also read XLA's FLOP estimate of the compiled step.
    devices: devices to map over (default one).
    note: appended to the record's ``note``.

  Returns:
    The timing record with ``flops``, ``achieved_gflops``,
    ``fraction_of_peak``, ``xla_flops`` (when available), ``first_call_s``
    (compilation + one step), ``traces`` (must be 1), ``cv`` and the
    ``per_step_s`` of the last repetition.

  Raises:
    ValueError: unknown ``name``.
  """
  if name not in STEPS:
    raise ValueError(f'name must be one of {sorted(STEPS)}, got {name!r}.')
  stage, kind, factorized = STEPS[name]
  config = make_config(model, stage, batch_size=batch_size,
                       admm_interval=admm_interval)
  bench = build_train_step(config, devices=devices)
  start = time.perf_counter()
  jax.block_until_ready(bench.step())
  first = time.perf_counter() - start
  step_times: list[float] = []

  def one_block():
    out = None
    for _ in range(block):
      t0 = time.perf_counter()
      out = jax.block_until_ready(bench.step())
      step_times.append(time.perf_counter() - t0)
    return out

  record, times = _timing.time_calls(_guarded(one_block), n=n,
                                     warmup=max(warmup - 1, 0) if block == 1
                                     else max(warmup - 1, 0))
  if block > 1:
    record = _timing.summarize([t / block for t in times])
  step_times = step_times[-block * n:]
  record['block'] = block
  flops = flops_lib.step_flops(model, kind, batch_size,
                               attack_steps=int(config.train_attack.num_steps),
                               factorized=factorized)
  _timing.add_rate(record, flops, peak_gflops)
  if cost_analysis:
    record['xla_flops'] = flops_lib.xla_flops(bench.lower().compile())
  record['first_call_s'] = first
  record['traces'] = bench.traces()
  record.update(_stability(times))
  record['per_step_s'] = [round(t, 5) for t in step_times[-block:]]
  record['batch'] = batch_size
  record['stage'] = stage
  record['note'] = (f'stage {stage}, batch {batch_size}, '
                    f'{bench.num_devices} device(s)' +
                    (f', {block} consecutive steps per repetition'
                     if block > 1 else '') + (f'; {note}' if note else ''))
  return record


def time_atmc8_components(model: str, *, batch_size: int,
                          peak_gflops: Optional[float] = None,
                          admm_interval: int = 10) -> dict[str, Any]:
  """Amortised ATMC-8 step from one quantising and one ordinary step.

  For slow devices (ResNet-34 on a CPU) where 10 consecutive steps per
  repetition are too long. The step is built with ``admm_interval = 2`` so
  that the third step (``t = 2``) quantises; the record is
  ``(t_quantise + (admm_interval - 1) * t_ordinary) / admm_interval``.
  """
  config = make_config(model, 'atmc8', batch_size=batch_size,
                       admm_interval=2)
  bench = build_train_step(config)
  times = []
  for _ in range(4):  # t = 0 (compiles), 1, 2 (quantises), 3.
    t0 = time.perf_counter()
    jax.block_until_ready(bench.step())
    times.append(time.perf_counter() - t0)
  t_quant, t_plain = times[2], min(times[1], times[3])
  amortised = (t_quant + (admm_interval - 1) * t_plain) / admm_interval
  record = _timing.summarize([amortised])
  flops = flops_lib.step_flops(model, 'adversarial', batch_size,
                               factorized=True)
  _timing.add_rate(record, flops, peak_gflops)
  record.update({
      'first_call_s': times[0], 'quantising_step_s': t_quant,
      'ordinary_step_s': t_plain, 'traces': bench.traces(),
      'batch': batch_size, 'stage': 'atmc8', 'estimated': True,
      'note': (f'estimated as (t_quantise + {admm_interval - 1} t_ordinary)'
               f' / {admm_interval} from single steps (admm_interval=2 so '
               'the third step quantises); one repetition'),
  })
  return record


def time_eval_step(model: str, *, batch_size: int, n: int, warmup: int = 1,
                   peak_gflops: Optional[float] = None,
                   cost_analysis: bool = True,
                   factorized: bool = False) -> dict[str, Any]:
  """Times the PGD-20 evaluation step; adds ``examples_per_s``.

  ``factorized`` evaluates the U·V+C model (stage ``atmc32``) instead of the
  dense one (stage ``da``); the step runs it as its dense twin.
  """
  config = make_config(model, 'atmc32' if factorized else 'da',
                       batch_size=batch_size)
  bench = build_eval_step(config)
  start = time.perf_counter()
  jax.block_until_ready(bench.step())
  first = time.perf_counter() - start
  record, times = _timing.time_calls(_guarded(bench.step), n=n,
                                     warmup=max(warmup - 1, 0))
  flops = flops_lib.step_flops(model, 'eval_pgd', batch_size,
                               attack_steps=int(config.eval.attack.num_steps))
  # The eval step also runs one clean forward pass.
  flops += flops_lib.step_flops(model, 'forward', batch_size)
  _timing.add_rate(record, flops, peak_gflops)
  if cost_analysis:
    record['xla_flops'] = flops_lib.xla_flops(bench.lower().compile())
  record['examples_per_s'] = batch_size / record['median_s']
  record['first_call_s'] = first
  record['traces'] = bench.traces()
  record.update(_stability(times))
  record['batch'] = batch_size
  record['note'] = (f'clean + PGD-{int(config.eval.attack.num_steps)} '
                    f'accuracy, batch {batch_size}'
                    + (', factorized model' if factorized else ''))
  return record


def time_parallel(*, batch_size: int = 256, n: int = 10,
                  name: str = 'pgd7_step') -> dict[str, Any]:
  """``parallel/pmap8_step`` vs ``parallel/single_step`` (LeNet, same batch).

  Needs eight devices (``--xla_force_host_platform_device_count=8`` before
  JAX starts). Both steps are built in this process and timed in
  alternation, so they see the same machine load. Fake CPU devices share the
  same cores, so the ratio measures the overhead of splitting the batch and
  of the collectives, not a speed-up.

  Raises:
    ValueError: fewer than 8 devices, or ``batch_size`` not a multiple of 8.
  """
  if jax.local_device_count() < 8:
    raise ValueError(
        f'time_parallel needs 8 local devices, got {jax.local_device_count()}'
        '; set XLA_FLAGS=--xla_force_host_platform_device_count=8 before '
        'JAX starts.')
  if batch_size % 8:
    raise ValueError(
        f'batch_size must be a multiple of 8, got {batch_size}.')
  stage = STEPS[name][0]
  config = make_config('lenet', stage, batch_size=batch_size)
  benches = {
      'parallel/single_step': build_train_step(
          config, devices=jax.local_devices()[:1]),
      'parallel/pmap8_step': build_train_step(
          config, devices=jax.local_devices()[:8]),
  }
  firsts = {}
  for key, bench in benches.items():
    t0 = time.perf_counter()
    jax.block_until_ready(bench.step())
    firsts[key] = time.perf_counter() - t0
    jax.block_until_ready(bench.step())
  times = {key: [] for key in benches}
  for _ in range(n):
    for key, bench in benches.items():
      t0 = time.perf_counter()
      jax.block_until_ready(bench.step())
      times[key].append(time.perf_counter() - t0)
  out = {}
  for key, bench in benches.items():
    record = _timing.summarize(times[key])
    record.update(_stability(times[key]))
    record['first_call_s'] = firsts[key]
    record['traces'] = bench.traces()
    record['batch'] = batch_size
    record['note'] = (f'LeNet {name}, global batch {batch_size} over '
                      f'{bench.num_devices} fake CPU device(s) sharing the '
                      'same cores; timed in alternation')
    out[key] = record
  return out


def main(argv=None) -> int:
  """``python -m benchmarks.steps --parallel``: prints the parallel records."""
  import argparse  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument('--parallel', action='store_true', required=True)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args(argv)
  out = time_parallel(batch_size=args.batch, n=5 if args.quick else 10)
  sys.stdout.write(json.dumps(out) + '\n')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
