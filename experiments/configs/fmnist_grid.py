r"""The full CPU grid: every method of the paper × p in {0.003, 0.01, 0.03, 0.1}.

Fashion-MNIST / Caffe LeNet, L-inf epsilon 0.1, PGD-7 training, PGD-20
evaluation, with the data subset and per-stage settings of
``fmnist_quick.py``: NAT and DA once, then NAP, AP, AL0, ALR, ATMC-32 and
ATMC-8 at each of the four levels (26 stages)::

  python -m experiments.reproduce \
      --config experiments/configs/fmnist_grid.py --workdir runs/grid
  python -m experiments.evaluate_attacks --workdir runs/grid

Subsets of the grid: ``--config.methods=da,ap,al0,atmc32``,
``--config.sparsities=0.01,0.1``. Finished stages are never recomputed, so
a grid can be grown (more levels, more methods) in the same workdir, and
``runs/quick`` can be reused: DA, AL0, ATMC-32 and ATMC-8 at p = 0.01 have
the same configs here.

Measured (one run, 2-core CPU shared with other jobs): 4,526 s of stage
wall time for the 26 stages, of which the four reused p = 0.01 stages of
the quick preset took 1,209 s. The results are
``docs/results/fmnist_grid.csv`` (tables and figure in
``docs/results.md``; a test keeps them equal).
"""

import ml_collections

from experiments.configs import fmnist_quick


def get_config() -> ml_collections.ConfigDict:
  """The CPU grid config."""
  grid = fmnist_quick.get_config()
  grid.title = 'Fashion-MNIST, Caffe LeNet (CPU grid)'
  grid.methods = 'natural,da,nap,ap,al0,alr,atmc32,atmc8'
  grid.sparsities = '0.003,0.01,0.03,0.1'
  return grid
