"""Writing the reproduction's results: CSV, markdown tables and the figure.

Everything here is plain Python + NumPy + matplotlib (Agg backend); no JAX.
A *result row* is a dict with the keys of :data:`RESULT_FIELDS`; dense methods
(NAT, DA) have ``p = None``. An *attack row* has the keys of
:func:`attack_fields` for the attacks evaluated.

The figure follows the paper's layout (Gui et al., 2019, Fig. 2): two panels,
clean test accuracy (TA) and adversarial test accuracy (ATA) against the
compression ratio on a log x axis, one line per method, and the dense models
(DA, NAT) as dashed horizontal lines.
"""

import csv
import math
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

# Method keys (the training stages) in the paper's order, and their labels.
METHOD_LABELS = {
    'natural': 'NAT',
    'da': 'DA',
    'nap': 'NAP',
    'ap': 'AP',
    'al0': 'AL0',
    'alr': 'ALR',
    'atmc32': 'ATMC-32',
    'atmc8': 'ATMC-8',
}
DENSE_METHODS = ('natural', 'da')

_STYLE = {  # colour, marker
    'natural': ('tab:gray', None),
    'da': ('black', None),
    'nap': ('tab:green', 'v'),
    'ap': ('tab:blue', 's'),
    'al0': ('tab:purple', 'D'),
    'alr': ('tab:cyan', 'x'),
    'atmc32': ('tab:red', 'o'),
    'atmc8': ('tab:orange', '*'),
}

RESULT_FIELDS = (
    'dataset',  # e.g. 'fashion_mnist'
    'method',  # a key of METHOD_LABELS
    'p',  # the L0 budget as a fraction of the dense weight count; '' if dense
    'compression_ratio',  # compressed bits / dense bits (paper's accounting)
    'ta',  # clean test accuracy
    'ata',  # test accuracy under the evaluation attack (config.eval.attack)
    'ata_paper',  # test accuracy under the paper's protocol (BIM, K steps)
    'nnz',  # non-zero weights of the deployable model
    'bits',  # size of the deployable model in bits (paper's accounting)
    'selected_step',  # the checkpoint selected on validation
    'last_ta',  # TA of the last step (robust overfitting shows here)
    'last_ata',  # ATA of the last step
    'test_examples',  # number of test examples evaluated
    'wall_time_s',  # training wall time of the stage
)
# Appended to RESULT_FIELDS when a stage ran AutoAttack after training
# (config.eval.autoattack_examples; see result_fields).
AUTOATTACK_RESULT_FIELDS = (
    'autoattack',  # accuracy under AutoAttack (deployable model)
    'autoattack_examples',  # the first this many test examples
    'autoattack_masking_suspected',  # AutoAttack > 5 points below PGD-20
)
_FLOAT_FIELDS = ('p', 'compression_ratio', 'ta', 'ata', 'ata_paper',
                 'last_ta', 'last_ata', 'wall_time_s', 'autoattack')
_INT_FIELDS = ('nnz', 'bits', 'selected_step', 'test_examples',
               'autoattack_examples')


def has_autoattack(rows: Iterable[Mapping[str, Any]]) -> bool:
  """Whether any row holds an AutoAttack accuracy."""
  return any(r.get('autoattack') is not None for r in rows)


def result_fields(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
  """The CSV columns of ``rows``: :data:`RESULT_FIELDS`, plus
  :data:`AUTOATTACK_RESULT_FIELDS` when a row holds an AutoAttack accuracy.
  """
  return RESULT_FIELDS + (AUTOATTACK_RESULT_FIELDS if has_autoattack(rows)
                          else ())


def method_label(method: str) -> str:
  """The paper's name for a method key (``'atmc8'`` -> ``'ATMC-8'``)."""
  return METHOD_LABELS.get(method, method)


def _method_order(method: str) -> int:
  keys = list(METHOD_LABELS)
  return keys.index(method) if method in keys else len(keys)


def sort_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Rows sorted by method (paper order), then by p (dense first)."""
  return sorted((dict(r) for r in rows), key=lambda r: (
      _method_order(r['method']), -1.0 if r.get('p') is None else r['p']))


def _fmt_csv(value: Any) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return repr(value)
  return str(value)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str,
              fields: Sequence[str]) -> None:
  """Writes ``rows`` (dicts) to ``path`` with header ``fields``.

  Raises:
    ValueError: a row lacks one of ``fields``.
  """
  for r in rows:
    missing = [f for f in fields if f not in r]
    if missing:
      raise ValueError(f'row {dict(r)!r} lacks fields {missing}; '
                       f'expected all of {list(fields)}.')
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(fields)
    for r in rows:
      writer.writerow([_fmt_csv(r[k]) for k in fields])
  os.replace(tmp, path)


def read_csv(path: str) -> list[dict[str, Any]]:
  """Reads a CSV written by :func:`write_csv`, parsing numbers back.

  Empty cells become ``None``; the result fields of :data:`RESULT_FIELDS`
  get their types back (``nnz``/``bits`` int, the others float); any other
  cell that parses as a float does too, and ``True``/``False`` become
  bools.
  """
  with open(path, newline='') as f:
    raw = list(csv.DictReader(f))
  rows = []
  for r in raw:
    row = {}
    for k, v in r.items():
      if v == '':
        row[k] = None
      elif k in _INT_FIELDS:
        row[k] = int(float(v))
      elif k in ('dataset', 'method'):
        row[k] = v
      elif v in ('True', 'False'):
        row[k] = v == 'True'
      else:
        try:
          row[k] = float(v)
        except ValueError:
          row[k] = v
    rows.append(row)
  return rows


def _acc(x: Optional[float]) -> str:
  return '–' if x is None or (isinstance(x, float) and math.isnan(x)) else (
      f'{x:.3f}')


def _accuracies(r: Mapping[str, Any], autoattack: bool = False) -> str:
  keys = ('ta', 'ata', 'ata_paper') + (('autoattack',) if autoattack else ())
  return ' / '.join(_acc(r.get(k)) for k in keys)


def _cr(x: Optional[float]) -> str:
  return '–' if x is None else f'{x:.3g}'


def results_markdown(rows: Sequence[Mapping[str, Any]],
                     title: Optional[str] = None) -> str:
  """A methods × p table with ``TA / ATA / ATA-paper`` cells and CR columns.

  Dense methods (NAT, DA; compression ratio 1) fill a ``dense`` column. For
  each sparsity level p there is a ``TA / ATA / ATA-paper`` column and a
  ``CR`` column holding the compression ratio by the paper's accounting
  (which differs from p for ATMC-8 and ALR). ATA is the evaluation attack
  (PGD-20 with random start in the shipped configs), ATA-paper the paper's
  protocol (deterministic BIM with the training attack's steps). When a row
  holds ``autoattack`` (stages run with ``config.eval.autoattack_examples``)
  every cell gets a fourth number, AA, the AutoAttack accuracy (``–`` where
  a stage did not run it), and the notes name the example counts and the
  models flagged for gradient masking.

  Args:
    rows: result rows (dicts with the keys of :data:`RESULT_FIELDS`).
    title: optional heading placed above the table.

  Returns:
    The markdown text, ending with a newline.
  """
  rows = sort_rows(rows)
  ps = sorted({r['p'] for r in rows if r.get('p') is not None})
  methods = []
  for r in rows:
    if r['method'] not in methods:
      methods.append(r['method'])
  has_dense = any(r.get('p') is None for r in rows)
  aa = has_autoattack(rows)
  cells = 'TA / ATA / ATA-paper' + (' / AA' if aa else '')
  header = ['method']
  if has_dense:
    header.append(f'dense: {cells}')
  for p in ps:
    header += [f'p = {p:g}: {cells}', 'CR']
  lines = []
  if title:
    lines += [f'## {title}', '']
  lines.append('| ' + ' | '.join(header) + ' |')
  lines.append('|' + '|'.join(['---'] * len(header)) + '|')
  cell = {(r['method'], r.get('p')): r for r in rows}
  for m in methods:
    line = [method_label(m)]
    if has_dense:
      r = cell.get((m, None))
      line.append(_accuracies(r, aa) if r else '')
    for p in ps:
      r = cell.get((m, p))
      if r:
        line += [_accuracies(r, aa), _cr(r['compression_ratio'])]
      else:
        line += ['', '']
    lines.append('| ' + ' | '.join(line) + ' |')
  lines.append('')
  counts = sorted({r['test_examples'] for r in rows
                   if r.get('test_examples')})
  lines.append(
      'TA: clean test accuracy; ATA: test accuracy under the evaluation '
      'attack (PGD-20 with random start in the shipped configs); ATA-paper: '
      "under the paper's protocol (deterministic BIM from the clean input, "
      'K = the training attack\'s steps, step 1.25 eps / K); CR: compressed '
      'bits / dense bits (codebooks included, index storage, biases and '
      'BatchNorm excluded). Every model is the checkpoint selected on '
      'validation ATA (clean accuracy for natural training).'
      + (f' Test examples: {", ".join(f"{c:,}" for c in counts)}.'
         if counts else ''))
  if aa:
    aa_counts = sorted({r['autoattack_examples'] for r in rows
                        if r.get('autoattack_examples')})
    flagged = [method_label(r['method']) + (
        '' if r.get('p') is None else f' (p = {r["p"]:g})') for r in rows
               if r.get('autoattack_masking_suspected')]
    lines += ['', 'AA: accuracy under AutoAttack (APGD-CE, APGD-T, FAB-T, '
              "Square) at the evaluation attack's epsilon, on the first "
              f'{", ".join(f"{c:,}" for c in aa_counts)} test examples '
              '(config.eval.autoattack_examples). Flagged as possibly masking '
              'gradients (AutoAttack more than 5 points below PGD-20 on the '
              'same examples): ' + (', '.join(flagged) if flagged else 'none')
              + '.']
  return '\n'.join(lines) + '\n'


def plot_results(rows: Sequence[Mapping[str, Any]], path_stem: str,
                 title: Optional[str] = None,
                 reference: Optional[Sequence[Mapping[str, Any]]] = None
                 ) -> list[str]:
  """Draws the paper-layout figure and saves ``path_stem``.png and .pdf.

  Args:
    rows: result rows (dicts with the keys of :data:`RESULT_FIELDS`).
    path_stem: output path without extension.
    title: optional figure title (e.g. the dataset and model).
    reference: optional rows of the paper's read-offs
      (``experiments.paper_readoffs``), drawn as hollow markers in each
      method's colour (DA as a dotted line). With a reference, the ATA panel
      shows ATA-paper (the paper's protocol), which is what the paper plots.

  Returns:
    The paths written.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = sort_rows(rows)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)

  sparse = [r for r in rows if r.get('p') is not None]
  crs = [r['compression_ratio'] for r in sparse
         if r['compression_ratio'] and r['compression_ratio'] > 0]
  reference = list(reference or [])
  crs += [r['compression_ratio'] for r in reference
          if r['method'] not in DENSE_METHODS]
  keys = (('ta', 'TA'), ('ata_paper', 'ATA-paper') if reference
          else ('ata', 'ATA'))
  for ax, (key, name) in zip(axes, keys):
    methods = []
    for r in sparse:
      if r['method'] not in methods:
        methods.append(r['method'])
    for m in methods:
      pts = sorted((r['compression_ratio'], r[key]) for r in sparse
                   if r['method'] == m and r[key] is not None
                   and r['compression_ratio'])
      if not pts:
        continue
      colour, marker = _STYLE.get(m, (None, 'o'))
      ax.plot([x for x, _ in pts], [y for _, y in pts], color=colour,
              marker=marker or 'o', label=method_label(m))
    for r in rows:
      if r.get('p') is None and r.get(key) is not None:
        colour, _ = _STYLE.get(r['method'], ('black', None))
        ax.axhline(r[key], color=colour, linestyle='--',
                   label=method_label(r['method']))
    ref_key = 'ta' if key == 'ta' else 'ata'
    for m in dict.fromkeys(r['method'] for r in reference):
      colour, marker = _STYLE.get(m, (None, 'o'))
      pts = sorted((r['compression_ratio'], r[ref_key]) for r in reference
                   if r['method'] == m)
      if m in DENSE_METHODS:
        ax.axhline(pts[0][1], color=colour, linestyle=':',
                   label=f'{method_label(m)} (paper)')
        continue
      ax.plot([x for x, _ in pts], [y for _, y in pts], linestyle='none',
              marker=marker or 'o', markerfacecolor='none', color=colour,
              label=f'{method_label(m)} (paper)')
    ax.set_xscale('log')
    if crs:
      lo, hi = min(crs), max(crs)
      ax.set_xlim(lo / 1.5, hi * 1.5)
    ax.set_xlabel('compression ratio (compressed / dense bits)')
    ax.set_ylabel(name)
    ax.set_title(name if not title else f'{title}: {name}')
    ax.grid(True, which='both', alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  if handles:
    axes[1].legend(handles, labels, loc='best', fontsize='small')
  paths = []
  for ext in ('png', 'pdf'):
    path = f'{path_stem}.{ext}'
    fig.savefig(path, dpi=150)
    paths.append(path)
  plt.close(fig)
  return paths


def comparison_markdown(rows: Sequence[Mapping[str, Any]],
                        reference: Sequence[Mapping[str, Any]],
                        match) -> str:
  """Our numbers beside the paper's, with the difference in points.

  Args:
    rows: our result rows.
    reference: the paper's read-offs (``experiments.paper_readoffs``).
    match: ``(reference, row) -> reference row or None``.

  Returns:
    A markdown table: TA and ATA-paper (ours, the paper's, ours − paper in
    points) and our PGD-20 ATA, one line per stage; stages without a paper
    point show only ours.
  """
  header = ['method', 'p', 'CR ours', 'CR paper', 'TA ours', 'TA paper',
            'Δ TA', 'ATA-paper ours', 'ATA paper', 'Δ ATA', 'ATA PGD-20']
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join(['---'] * len(header)) + '|']

  def delta(ours, theirs):
    if ours is None or theirs is None:
      return ''
    return f'{100 * (ours - theirs):+.1f}'

  for r in sort_rows(rows):
    ref = match(list(reference), r) or {}
    p = '' if r.get('p') is None else f'{r["p"]:g}'
    lines.append('| ' + ' | '.join([
        method_label(r['method']), p, _cr(r['compression_ratio']),
        _cr(ref.get('compression_ratio')), _acc(r['ta']),
        _acc(ref.get('ta')), delta(r['ta'], ref.get('ta')),
        _acc(r.get('ata_paper')), _acc(ref.get('ata')),
        delta(r.get('ata_paper'), ref.get('ata')), _acc(r['ata'])]) + ' |')
  lines.append('')
  lines.append("Paper values are read off the paper's figure (±0.01–0.02). "
               "ATA-paper is our accuracy under the paper's protocol "
               '(deterministic BIM with the training steps, step 1.25 eps/K), '
               'the attack the paper reports; Δ = ours − paper, in points.')
  return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------
# Other attacks.

ATTACK_BASE_FIELDS = ('dataset', 'method', 'p', 'compression_ratio', 'ta')
ATTACK_TAIL_FIELDS = ('paper_pgd', 'strong', 'gap', 'masking_suspected')


def attack_fields(attack_names: Sequence[str]) -> tuple[str, ...]:
  """The CSV header of ``attacks.csv`` for the given attack columns."""
  return ATTACK_BASE_FIELDS + tuple(attack_names) + ATTACK_TAIL_FIELDS


def attacks_markdown(rows: Sequence[Mapping[str, Any]],
                     attack_names: Sequence[str],
                     gap_threshold: float,
                     notes: Sequence[str] = ()) -> str:
  """A markdown table of accuracies under each attack, one row per model.

  Args:
    rows: attack rows (dicts with the keys of :func:`attack_fields`).
    attack_names: the attack columns, in order.
    gap_threshold: the ``paper_pgd - strong`` accuracy gap above which a
      model is flagged (as a fraction, e.g. 0.05 for 5 points).
    notes: extra lines printed under the table (one per bullet).

  Returns:
    The markdown text, ending with a newline.
  """
  rows = sort_rows(rows)
  header = (['method', 'p', 'CR', 'clean'] + list(attack_names) +
            ['paper PGD', 'strong suite', 'gap', 'masking?'])
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join(['---'] * len(header)) + '|']
  flagged = []
  for r in rows:
    p = '' if r.get('p') is None else f'{r["p"]:g}'
    flag = bool(r['masking_suspected'])
    if flag:
      flagged.append(f'{method_label(r["method"])} (p = {p or "dense"})')
    line = ([method_label(r['method']), p, _cr(r['compression_ratio']),
             _acc(r['ta'])] + [_acc(r[a]) for a in attack_names] +
            [_acc(r['paper_pgd']), _acc(r['strong']),
             '' if r['gap'] is None else f'{100 * r["gap"]:+.1f}',
             '**yes**' if flag else 'no'])
    lines.append('| ' + ' | '.join(line) + ' |')
  lines.append('')
  lines.append(
      f'gap = paper-protocol PGD accuracy − strong-suite accuracy, in points. '
      f'A gap above {100 * gap_threshold:g} points is flagged as possible '
      'gradient masking: the weak attack overestimates robustness.')
  if flagged:
    lines.append('')
    lines.append('Flagged: ' + ', '.join(flagged) + '.')
  if notes:
    lines.append('')
    lines += [f'- {n}' for n in notes]
  return '\n'.join(lines) + '\n'
