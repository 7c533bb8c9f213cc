"""The ATMC paper's published numbers, read off its figure (spec §5.1).

Gui et al., NeurIPS 2019, Fig. 2 (the repository's ``ATMC_exps.png``): TA
and ATA (under the paper's training PGD) against the compression ratio.
Every value is a read-off, accurate to about ±0.01–0.02; values the spec
marks as hidden behind another curve (interpolated) are included as read.
Rows have the keys of ``experiments._report.RESULT_FIELDS`` that apply
(``method``, ``p``, ``compression_ratio``, ``ta``, ``ata``); for ATMC-8 and
ALR, ``p`` is the sparsity level the point belongs to (ALR: None, matched by
compression ratio).
"""

from typing import Any, Optional

# MNIST / Caffe LeNet, eps 76/255 (about 0.3), PGD-16 (spec §5.1).
_MNIST_PS = (0.0015, 0.003, 0.006, 0.01, 0.025, 0.05, 0.1, 0.2)
_MNIST_CURVES = {
    'nap': ((.21, .06), (.89, .00), (.98, .00), (.99, .00), (.99, .01),
            (.99, .01), (.99, .01), (.99, .02)),
    'ap': ((.67, .53), (.76, .62), (.81, .66), (.85, .69), (.94, .70),
           (.96, .74), (.975, .765), (.975, .76)),
    'al0': ((.765, .585), (.78, .61), (.83, .705), (.855, .725),
            (.955, .715), (.965, .75), (.975, .77), (.975, .78)),
    'atmc32': ((.78, .605), (.795, .64), (.845, .70), (.873, .72),
               (.954, .73), (.966, .76), (.973, .775), (.975, .79)),
}
# ATMC-8: (compression ratio, TA, ATA), one per p of _MNIST_PS.
_MNIST_ATMC8 = ((0.00067, .78, .595), (0.0019, .80, .635),
                (0.0034, .845, .70), (0.0048, .875, .73),
                (0.0104, .95, .73), (0.0166, .97, .745),
                (0.030, .975, .775), (0.055, .975, .785))
_MNIST_ALR = ((0.0056, .11, .11), (0.0068, .21, .165), (0.014, .57, .40),
              (0.028, .74, .565))


def _mnist() -> list[dict[str, Any]]:
  rows = [dict(method='da', p=None, compression_ratio=1.0, ta=.981,
               ata=.783)]
  for method, points in _MNIST_CURVES.items():
    rows += [dict(method=method, p=p, compression_ratio=p, ta=ta, ata=ata)
             for p, (ta, ata) in zip(_MNIST_PS, points)]
  rows += [dict(method='atmc8', p=p, compression_ratio=cr, ta=ta, ata=ata)
           for p, (cr, ta, ata) in zip(_MNIST_PS, _MNIST_ATMC8)]
  rows += [dict(method='alr', p=None, compression_ratio=cr, ta=ta, ata=ata)
           for cr, ta, ata in _MNIST_ALR]
  return rows


READOFFS = {'mnist': _mnist}


def paper_rows(dataset: str) -> list[dict[str, Any]]:
  """The paper's read-offs for ``dataset``.

  Raises:
    ValueError: no read-offs for ``dataset``.
  """
  if dataset not in READOFFS:
    raise ValueError(f'no read-offs of the paper for dataset={dataset!r}; '
                     f'accepted: {sorted(READOFFS)}.')
  return READOFFS[dataset]()


def matching_row(paper: list[dict[str, Any]], row: dict[str, Any]
                 ) -> Optional[dict[str, Any]]:
  """The paper's point for one of our result rows, or None.

  Same method and p; for ALR (whose p is a fraction of singular values,
  not a budget) the paper point nearest in compression ratio (log scale,
  within a factor 1.5).
  """
  same = [r for r in paper if r['method'] == row['method']]
  if row['method'] == 'alr':
    import math  # pylint: disable=g-import-not-at-top
    cr = row.get('compression_ratio')
    if not cr or not same:
      return None
    best = min(same, key=lambda r: abs(math.log(r['compression_ratio'] / cr)))
    return best if abs(math.log(best['compression_ratio'] / cr)) < math.log(
        1.5) else None
  for r in same:
    if r['p'] == row.get('p'):
      return r
  return None
