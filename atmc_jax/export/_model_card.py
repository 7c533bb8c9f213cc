"""Model cards: what a packed model is, how it was trained, how it scores.

:func:`write_model_card` writes ``<stem>.json`` and ``<stem>.md`` next to
a packed file ``<stem>.atmc`` from the training stage's ``summary.json``
and the file's size report. The JSON card is what the model-zoo check
reads: it holds ``checks.test_accuracy``, the accuracy of the
packed model on the first ``checks.test_examples`` test images (1,000 by
default), measured at export time.
"""

import json
import os
from typing import Any, Mapping, Optional

from atmc_jax.export import _format

_SUMMARY_KEYS = ('stage', 'dataset', 'model', 'factorized', 'compression',
                 'sparsity', 'bits', 'budget', 'dense_weight_count', 'ta',
                 'ata', 'test_accuracy', 'test_adv_accuracy', 'nnz',
                 'model_bits', 'compression_ratio', 'eval_attack',
                 'train_attack', 'epochs', 'steps', 'ata_paper',
                 'paper_attack', 'selected_step', 'test_count')


def card_paths(packed_path: str) -> tuple[str, str]:
  """``(json_path, md_path)`` of the card of ``packed_path``."""
  stem = os.path.splitext(packed_path)[0]
  return stem + '.json', stem + '.md'


def _fmt(x: Any) -> str:
  if isinstance(x, float):
    return f'{x:.4g}'
  return '—' if x is None else str(x)


def write_model_card(packed_path: str, summary: Mapping[str, Any], *,
                     checks: Optional[Mapping[str, Any]] = None,
                     command: Optional[str] = None
                     ) -> tuple[str, str]:
  """Writes the JSON and Markdown cards of a packed model.

  Args:
    packed_path: the packed file (its size report goes into the card).
    summary: the stage's ``summary.json`` (``train_and_evaluate``'s
      summary).
    checks: measurements of the packed file itself, e.g.
      ``{'test_examples': 1000, 'test_accuracy': 0.861}``.
    command: the command that produced the packed file (recorded).

  Returns:
    ``(json_path, md_path)``.

  Raises:
    ValueError: ``summary`` lacks ``ta`` (not a finished stage's summary).
  """
  if summary.get('ta') is None:
    raise ValueError("summary has no 'ta'; accepted: the summary.json of a "
                     'finished train_and_evaluate run.')
  report = _format.size_report(packed_path)
  header = _format.read_header(packed_path)
  total = report['total']
  card = {
      'file': os.path.basename(packed_path),
      'training': {k: summary.get(k) for k in _SUMMARY_KEYS
                   if k in summary},
      'metadata': header['metadata'],
      'size': {k: total.get(k) for k in (
          'accounted_bits', 'index_bits', 'uncompressed_bits',
          'header_bytes', 'container_bytes', 'file_bytes',
          'dense_float32_bytes', 'paper_ratio', 'file_ratio')},
      'checks': dict(checks or {}),
      'command': command,
  }
  json_path, md_path = card_paths(packed_path)
  with open(json_path, 'w') as f:
    json.dump(card, f, indent=2, default=str)
  t = card['training']
  attack = t.get('eval_attack') or {}
  lines = [
      f'# {card["file"]}',
      '',
      f'{t.get("model")} on {t.get("dataset")}, stage `{t.get("stage")}` '
      f'(compression `{t.get("compression")}`, p = {_fmt(t.get("sparsity"))}'
      f', bits = {_fmt(t.get("bits"))}).',
      '',
      '| quantity | value |',
      '| --- | --- |',
      f'| TA (test, deployable) | {_fmt(t.get("ta"))} |',
      f'| ATA (test, deployable) | {_fmt(t.get("ata"))} |',
      f'| evaluation attack | {_fmt(attack)} |',
      f'| ATA-paper (the paper\'s protocol) | {_fmt(t.get("ata_paper"))} |',
      f'| paper attack | {_fmt(t.get("paper_attack"))} |',
      f'| training attack | {_fmt(t.get("train_attack"))} |',
      f'| test examples | {_fmt(t.get("test_count"))} |',
      f'| checkpoint (selected on validation) | step '
      f'{_fmt(t.get("selected_step"))} |',
      f'| non-zeros | {_fmt(t.get("nnz"))} |',
      f'| accounted bits (paper) | {_fmt(total["accounted_bits"])} |',
      f'| paper compression ratio | {_fmt(total.get("paper_ratio"))} |',
      f'| file bytes | {_fmt(total["file_bytes"])} |',
      f'| file ratio (vs dense float32) | {_fmt(total.get("file_ratio"))} |',
  ]
  for k, v in card['checks'].items():
    lines.append(f'| check: {k} | {_fmt(v)} |')
  if command:
    lines += ['', f'Produced by: `{command}`']
  lines += ['', 'Load with NumPy only: see `docs/deployment.md`.', '']
  with open(md_path, 'w') as f:
    f.write('\n'.join(lines))
  return json_path, md_path
