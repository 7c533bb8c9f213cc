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

Expected runtime (an estimate, not a measured run of this grid): the quick
preset's measured run took 772 s of CPU time for 11 epochs of PGD-7
adversarial training on 10,000 images with their PGD-20 evaluations, i.e.
about 70 s of CPU per adversarial epoch, compilation and test evaluation
included. This grid has 48 adversarial epochs (DA 4; per level AP 2, AL0 3,
ALR 2, ATMC-32 2, ATMC-8 2) and 11 natural-loss epochs (NAT 3, NAP 2 per
level), each about 0.45 of an adversarial one (the PGD-20 validation still
runs), so about 53 adversarial-epoch equivalents, about 62 min of CPU time:
31 to 62 min of wall time on 2 free cores, within the 2-hour target. The
expected accuracies at p = 0.01 are those measured for the quick preset
(same stage configs); the other cells have not been measured.
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
