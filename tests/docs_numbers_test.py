"""Numbers in the README, the docs and config docstrings equal the results.

The committed results (``docs/results/*.csv``) are what the commands wrote;
every table that quotes them is checked here, so no number can drift.
"""

import os
import re

import pytest

from experiments import _report
from experiments.configs import fmnist_quick

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'docs', 'results')


def _read(*parts):
  with open(os.path.join(ROOT, *parts)) as f:
    return f.read()


def _table_rows(text, labels):
  """``{label: [numbers]}`` of the markdown rows starting with a label."""
  rows = {}
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if cells and cells[0] in labels and cells[0] not in rows:
      rows[cells[0]] = cells[1:]
  return rows


def _close(printed: str, value: float) -> bool:
  decimals = len(printed.split('.')[1]) if '.' in printed else 0
  return abs(float(printed) - value) <= 0.5 * 10.0 ** -decimals + 1e-12


def _check_quick_table(text, where):
  rows = {_report.method_label(r['method']): r for r in
          _report.read_csv(os.path.join(RESULTS, 'fmnist_quick.csv'))}
  table = _table_rows(text, rows)
  assert set(table) == set(rows), where
  for label, cells in table.items():
    r = rows[label]
    expected = (r['compression_ratio'], r['ta'], r['ata'], r['ata_paper'])
    for printed, value in zip(cells, expected):
      assert _close(printed, value), (where, label, printed, value)


def test_readme_quick_table_equals_the_committed_results():
  readme = _read('README.md')
  section = readme[readme.index('**The quick ATMC run**'):
                   readme.index('**The full CPU grid**')]
  _check_quick_table(section, 'README')


def test_quick_config_docstring_equals_the_committed_results():
  _check_quick_table(fmnist_quick.__doc__, 'fmnist_quick.py')


@pytest.mark.parametrize('name', ['fmnist_quick', 'fmnist_grid'])
def test_committed_markdown_is_generated_from_the_csv(name):
  rows = _report.read_csv(os.path.join(RESULTS, f'{name}.csv'))
  generated = _report.results_markdown(rows)
  committed = _read('docs', 'results', f'{name}.md')
  # The committed file is the table the command wrote (under its title).
  assert generated.strip() in committed


def test_results_doc_quotes_the_grid_table():
  rows = _report.read_csv(os.path.join(RESULTS, 'fmnist_grid.csv'))
  table = [l for l in _report.results_markdown(rows).splitlines()
           if l.startswith('|')]
  doc = _read('docs', 'results.md')
  for line in table:
    assert line in doc, line


def test_numbers_quoted_in_prose_exist():
  """Every 'TA / ATA' pair the README quotes for the quick run is real."""
  rows = _report.read_csv(os.path.join(RESULTS, 'fmnist_quick.csv'))
  values = {f'{v:.4f}' for r in rows for v in (r['ta'], r['ata'])
            if v is not None}
  readme = _read('README.md')
  section = readme[readme.index('**The quick ATMC run**'):
                   readme.index('**The full CPU grid**')]
  for pair in re.findall(r'\((0\.\d{4}) vs (0\.\d{4}) ATA\)', section):
    assert set(pair) <= values, pair


def test_mnist_da_numbers_equal_the_committed_stage():
  import json  # pylint: disable=g-import-not-at-top
  from experiments.configs import mnist_paper  # pylint: disable=g-import-not-at-top
  with open(os.path.join(RESULTS, 'mnist', 'stages', 'da',
                         'summary.json')) as f:
    s = json.load(f)
  row = _table_rows(_read('docs', 'results_mnist.md'),
                    ['ours (epoch 7 of 8, selected on validation)',
                     'ours, last epoch'])
  for cells, keys in (
      (row['ours (epoch 7 of 8, selected on validation)'],
       ('ta', 'ata_paper', 'ata')),
      (row['ours, last epoch'], ('last_ta', 'last_ata_paper', 'last_ata'))):
    for printed, key in zip(cells, keys):
      assert _close(printed, s[key]), (key, printed, s[key])
  doc = ' '.join(mnist_paper.__doc__.split())
  for key in ('ta', 'ata_paper', 'ata'):
    assert f'{s[key]:.4f}' in doc, (key, s[key])
  assert f'{round(s["wall_time_s"]):,} s' in doc


def test_mnist_chain_rows_equal_the_committed_stages():
  import json  # pylint: disable=g-import-not-at-top
  text = _read('docs', 'results_mnist.md')
  stages = os.path.join(RESULTS, 'mnist', 'stages')
  labels = {'AL0, p = 0.01': 'al0_p0.01', 'ATMC-32, p = 0.01': 'atmc32_p0.01',
            'ATMC-8, p = 0.01': 'atmc8_p0.01', 'NAT': 'natural',
            'NAP, p = 0.01': 'nap_p0.01', 'AP, p = 0.01': 'ap_p0.01'}
  rows = {}
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    for label, stage in labels.items():
      if cells and cells[0].startswith(label + ' ('):
        rows[stage] = cells[1:]
  assert len(rows) >= 5, rows
  for stage, cells in rows.items():
    with open(os.path.join(stages, stage, 'summary.json')) as f:
      s = json.load(f)
    for printed, key in zip(cells, ('compression_ratio', 'ta', 'ata_paper',
                                    'ata')):
      assert _close(printed, s[key]), (stage, key, printed, s[key])
