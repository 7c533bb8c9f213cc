r"""Quick reproduction: DA -> AL0 -> ATMC-32 -> ATMC-8 on Fashion-MNIST, p = 0.01.

The ATMC pipeline of the paper (spec §3.2) at one sparsity level, on the
Caffe LeNet (430,500 weights; budget k = 4,305), L-inf epsilon 0.1 in pixel
units, PGD-7 adversarial training and PGD-20 evaluation, sized for a laptop
CPU: a 10,000-image training subset (the last 1,000 of the first 11,000 are
the validation set), 2,000 test images, a few epochs per stage::

  python -m experiments.reproduce \
      --config experiments/configs/fmnist_quick.py --workdir runs/quick

(``make demo`` runs the same.) Outputs: ``runs/quick/results.{csv,md,png,pdf}``
and one sub-workdir per stage (``da``, ``al0_p0.01``, ``atmc32_p0.01``,
``atmc8_p0.01``). Rerunning resumes an interrupted stage and skips finished
ones. Then ``python -m experiments.evaluate_attacks --workdir runs/quick``
adds the paper's other attacks and the strong suite.

Measured (this repository, one run on a 2-core machine shared with other
jobs; the committed results are ``docs/results/fmnist_quick.csv``, and a
test keeps this table equal to them): 1,209 s of stage wall time (DA 334 s,
AL0 203 s, ATMC-32 198 s, ATMC-8 474 s). Test accuracies on 2,000 test
images of the deployable models, selected on validation: TA clean, ATA
under PGD-20 with random start (eps 0.1), ATA-paper under the paper's
protocol (deterministic BIM-7, step 1.25 eps / 7):

| method | CR | TA | ATA | ATA-paper |
|---|---|---|---|---|
| DA | 1 | 0.7535 | 0.5660 | 0.5700 |
| AL0 | 0.01 | 0.6985 | 0.5155 | 0.5155 |
| ATMC-32 | 0.01 | 0.6875 | 0.5215 | 0.5240 |
| ATMC-8 | 0.0049 | 0.7105 | 0.5260 | 0.5255 |

(ATMC-8: 4,302 non-zeros, 67,496 bits; its checkpoint after epoch 1 was
selected, the last one gives TA 0.6895 / ATA 0.5270.)
"""

import ml_collections

from experiments.configs import fmnist_lenet


def get_config() -> ml_collections.ConfigDict:
  """The quick grid config."""
  grid = ml_collections.ConfigDict()
  # Fashion-MNIST / LeNet, eps 0.1, PGD-7 training, PGD-20 evaluation,
  # pure adversarial loss, SGD momentum 0.9, weight decay 1e-4, batch 128.
  base = fmnist_lenet.get_config()
  # Data: a subset, sized for about 10 minutes on 2 CPU cores.
  base.max_train_examples = 11000
  base.num_val = 1000
  base.max_test_examples = 2000
  base.eval_batch_size = 500
  base.num_epochs = 3
  base.lr_decay_epochs = (2,)
  base.learning_rate = 0.01
  base.admm_interval = 10
  base.rho = 0.1
  base.checkpoint_every_steps = 200
  base.log_every_steps = 20
  grid.base = base
  grid.title = 'Fashion-MNIST, Caffe LeNet (quick)'
  # Overridable from the command line: --config.methods=da,al0
  # --config.sparsities=0.01,0.1
  grid.methods = 'da,al0,atmc32,atmc8'
  grid.sparsities = '0.01'
  grid.atmc_bits = 8
  # On a stage's error, go on with the stages that do not depend on it (and
  # exit with an error listing the failures after writing the reports).
  grid.keep_going = True
  # Per-stage settings (the paper's CIFAR-10 recipe, shortened: lr 0.05 /
  # 0.01 / 0.005 / 0.005 for DA / AL0 / ATMC-32 / ATMC-8).
  grid.stage_overrides = ml_collections.ConfigDict(dict(
      natural=dict(num_epochs=3, learning_rate=0.02),
      da=dict(num_epochs=4, learning_rate=0.02, lr_decay_epochs=(3,)),
      nap=dict(num_epochs=2, learning_rate=0.01, lr_decay_epochs=()),
      ap=dict(num_epochs=2, learning_rate=0.01, lr_decay_epochs=()),
      al0=dict(num_epochs=3, learning_rate=0.01),
      alr=dict(num_epochs=2, learning_rate=0.01, lr_decay_epochs=()),
      atmc32=dict(num_epochs=2, learning_rate=0.005, lr_decay_epochs=()),
      atmc8=dict(num_epochs=2, learning_rate=0.005, lr_decay_epochs=()),
  ))
  return grid
