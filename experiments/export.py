r"""Packs a finished stage's deployable model into one file.

Rebuilds the stage's deployable model from its checkpoint
(``experiments.reproduce.load_deployable``: the model whose TA/ATA the
stage reports), writes it with ``atmc_jax.export.save`` and prints the
size report. Optionally writes the dense weights in PyTorch's layout and a
model card (``<out stem>.json`` / ``.md``) holding the stage's summary and
the packed model's accuracy on the first test images.

Usage::

  python -m experiments.export --workdir runs/quick/atmc8_p0.01 \
      --out model.atmc [--torch_npz model_torch.npz] [--card] \
      [--check_examples 1000]

See ``docs/deployment.md``.
"""

import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

from absl import app
from absl import flags
import numpy as np

from experiments import _logs
from experiments import reproduce

# Allowed gap between the card's TA (whole test split) and the accuracy on
# its first 1,000 images: about 4 standard deviations of a 1,000-sample
# estimate near 0.8.
TA_SAMPLE_TOLERANCE = 0.05


def stage_metadata(config, summary: Mapping[str, Any], model
                   ) -> dict[str, Any]:
  """The packed file's metadata: model, threat model, metrics.

  Args:
    config: the stage's config (``reproduce.read_stage_config``).
    summary: the stage's ``summary.json``.
    model: the stage's dense Flax model (its ``num_classes``, ``mean`` and
      ``std`` are recorded).

  Returns:
    A JSON-serialisable dict.
  """
  kwargs = dict(config.model_kwargs.to_dict()) if config.get(
      'model_kwargs') else {}
  for name in ('mean', 'std'):
    value = getattr(model, name, None)
    if value is not None:
      kwargs[name] = [float(v) for v in value]
  ev = config.eval.attack
  metrics = {k: summary[k] for k in ('ta', 'ata', 'compression_ratio')
             if summary.get(k) is not None}
  metrics.update({k: v for k, v in summary.items()
                  if k.startswith('test_deployable_strong_')})
  return {
      'model': config.model,
      'model_config': dict(num_classes=int(model.num_classes),
                           factorized=bool(config.factorized), **kwargs),
      'dataset': config.dataset,
      'stage': config.stage,
      'sparsity': config.get('sparsity'),
      'bits': config.get('bits') if config.compression == 'atmc' else None,
      'threat_model': {
          'norm': str(ev.norm),
          'epsilon': float(config.train_attack.epsilon),
          'eval_epsilon': float(ev.epsilon),
          'num_steps': int(ev.num_steps),
          'step_size': None if ev.get('step_size') is None
                       else float(ev.step_size),
          'random_start': bool(ev.get('random_start', True)),
      },
      'metrics': metrics,
  }


def packed_accuracy(path: str, images: np.ndarray, labels: np.ndarray,
                    batch_size: int = 500) -> float:
  """Clean accuracy of a packed model (NumPy forward where there is one).

  Args:
    path: a packed model file.
    images: uint8 (or ``[0, 1]`` float) NHWC images.
    labels: int labels.
    batch_size: images per forward pass.

  Returns:
    The fraction of correct predictions.
  """
  from atmc_jax import export  # pylint: disable=g-import-not-at-top
  loaded = export.load(path)
  if loaded.metadata.get('model') in ('lenet',):
    def logits_fn(x):
      return export.logits(loaded.variables, loaded.metadata, x)
  else:
    logits_fn = reproduce.load_packed(path).logits_fn()
  correct = 0
  for i in range(0, len(labels), batch_size):
    x = np.asarray(images[i:i + batch_size], np.float32)
    if images.dtype == np.uint8:
      x = x / np.float32(255)
    pred = np.asarray(logits_fn(x)).argmax(-1)
    correct += int((pred == np.asarray(labels[i:i + batch_size])).sum())
  return correct / max(len(labels), 1)


def export_stage(stage_dir: str, out: str, *,
                 torch_npz: Optional[str] = None, card: bool = True,
                 check_examples: int = 1000,
                 command: Optional[str] = None) -> dict[str, Any]:
  """Packs one finished stage; returns the size report.

  Args:
    stage_dir: the workdir of a finished ``train_and_evaluate`` run.
    out: the packed file to write.
    torch_npz: also write the dense weights in PyTorch's layout here.
    card: write the model card next to ``out``.
    check_examples: measure the packed model's accuracy on this many test
      images for the card (0: none; skipped when the dataset is absent).
    command: the command line recorded in the card.

  Returns:
    The size report of ``out``.

  Raises:
    ValueError: ``stage_dir`` is not a finished stage.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from atmc_jax import data  # pylint: disable=g-import-not-at-top
  from atmc_jax import export  # pylint: disable=g-import-not-at-top
  from atmc_jax import optim  # pylint: disable=g-import-not-at-top
  from atmc_jax import training  # pylint: disable=g-import-not-at-top

  summary_path = os.path.join(stage_dir, reproduce.SUMMARY_FILE)
  if not os.path.exists(summary_path):
    raise ValueError(f'{stage_dir!r} holds no {reproduce.SUMMARY_FILE}; '
                     'accepted: the workdir of a finished stage.')
  with open(summary_path) as f:
    summary = json.load(f)
  dep = reproduce.load_deployable(stage_dir)
  config = dep.config
  spec = data.DATASETS[config.dataset]
  # The dense model: its kernel shapes let factorized (U, V, C) and
  # fixed-rank (B, A) layers load as dense kernels, and it is what a
  # loaded (materialised) file runs as.
  dense_config = type(config)(config.to_dict())
  dense_config.factorized = False
  dense_model = training.create_model(dense_config, spec)
  like = jax.eval_shape(lambda: dense_model.init(
      jax.random.key(0), jnp.zeros((1,) + tuple(spec.image_shape)),
      train=False))['params']
  stats = optim.compression_stats(dep.params, dep.dense_weight_count)
  report = export.save(out, dep.params, stats,
                       metadata=stage_metadata(config, summary, dense_model),
                       batch_stats=dep.batch_stats, like=like)
  if torch_npz:
    loaded = export.load(out)
    params = loaded.variables['params']
    shapes = (export.lenet_flatten_shapes(params) if config.model == 'lenet'
              else None)
    with open(torch_npz, 'wb') as f:
      np.savez(f, **export.to_torch_layout(
          params, shapes, loaded.variables.get('batch_stats')))
  if card:
    checks = {}
    if check_examples:
      try:
        images, labels = data.load_split(config.dataset, 'test')
      except (ValueError, OSError, ImportError):
        images = None
      if images is not None:
        n = min(int(check_examples), len(labels))
        checks = {'test_examples': n, 'test_accuracy': packed_accuracy(
            out, images[:n], labels[:n])}
    export.write_model_card(out, summary, checks=checks, command=command)
  return report


def verify_card(path: str, images: np.ndarray, labels: np.ndarray, *,
                tolerance: float = 0.002) -> dict[str, float]:
  """Checks a packed model against its card; returns the measurements.

  Measures the accuracy on the card's first ``checks.test_examples`` test
  images and compares it with the card's ``checks.test_accuracy`` (the
  same measurement at export time, within ``tolerance``) and with the
  stage's TA (within :data:`TA_SAMPLE_TOLERANCE`).

  Args:
    path: a packed model with a card (``write_model_card``).
    images: the dataset's test images (at least ``test_examples``).
    labels: their labels.
    tolerance: allowed difference to the recorded check.

  Returns:
    ``{'measured', 'recorded', 'ta'}``.

  Raises:
    ValueError: no card or no check in it, or a difference above the
      tolerances.
  """
  from atmc_jax import export  # pylint: disable=g-import-not-at-top
  json_path = export.card_paths(path)[0]
  if not os.path.exists(json_path):
    raise ValueError(f'{path!r} has no card {json_path!r}; accepted: a file '
                     'written by experiments.export with --card.')
  with open(json_path) as f:
    card = json.load(f)
  checks = card.get('checks') or {}
  if 'test_accuracy' not in checks:
    raise ValueError(f'{json_path!r} holds no checks.test_accuracy; '
                     'accepted: a card written with check_examples > 0.')
  n = int(checks['test_examples'])
  measured = packed_accuracy(path, images[:n], labels[:n])
  out = {'measured': measured, 'recorded': float(checks['test_accuracy']),
         'ta': float(card['training']['ta'])}
  if abs(measured - out['recorded']) > tolerance:
    raise ValueError(f'{path!r}: accuracy {measured:.4f} on the first {n} '
                     f'test images, the card records {out["recorded"]:.4f} '
                     f'(accepted difference: {tolerance}).')
  if n >= 1000 and abs(measured - out['ta']) > TA_SAMPLE_TOLERANCE:
    raise ValueError(f'{path!r}: accuracy {measured:.4f} on the first {n} '
                     f'test images, the card\'s TA is {out["ta"]:.4f} '
                     f'(accepted difference: {TA_SAMPLE_TOLERANCE}).')
  return out


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  fl = flags.FLAGS
  _logs.quiet_libraries(not fl.library_logs)
  from atmc_jax import export  # pylint: disable=g-import-not-at-top
  command = 'python -m experiments.export ' + ' '.join(
      a for a in sys.argv[1:] if not a.startswith('--library_logs'))
  report = export_stage(fl.workdir, fl.out, torch_npz=fl.torch_npz,
                        card=fl.card, check_examples=fl.check_examples,
                        command=command)
  print(export.format_size_report(report))


if __name__ == '__main__':
  # Flags are defined here, not at import, so that tests and other entry
  # points (experiments.evaluate_attacks) can import this module.
  flags.DEFINE_string('workdir', None, 'The workdir of a finished stage.')
  flags.DEFINE_string('out', None, 'The packed file to write.')
  flags.DEFINE_string('torch_npz', None,
                      'Also write the dense weights in PyTorch layout here.')
  flags.DEFINE_bool('card', True, 'Write the model card next to --out.')
  flags.DEFINE_integer('check_examples', 1000,
                       "Test images the card's accuracy check uses (0: no "
                       'check).')
  flags.DEFINE_bool('library_logs', False, 'Also show the INFO/WARNING log '
                    'lines of JAX, Orbax and absl.')
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)
