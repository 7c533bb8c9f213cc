r"""CIFAR-10 / ResNet-34, the ATMC paper's README pipeline (spec 3.2).

Every stage: SGD momentum 0.9, weight decay 1e-4, batch 128, seed 117,
mixed loss 0.5 clean + 0.5 PGD (the reference code for CIFAR-10), PGD-7 at
eps 4/255 with the reference step 1.25 eps / 7 in training; evaluation
with PGD-20 (random start) on the validation split (last 5,000 training
images) every epoch and on the test split at the end. The stage is the
config string; each stage warm-starts from the previous one::

  python -m experiments.train \
      --config experiments/configs/cifar10_resnet34.py:da --workdir runs/c10/da
  python -m experiments.train \
      --config experiments/configs/cifar10_resnet34.py:al0 \
      --workdir runs/c10/al0 --config.init_from=runs/c10/da
  python -m experiments.train \
      --config experiments/configs/cifar10_resnet34.py:atmc32 \
      --workdir runs/c10/atmc32 --config.init_from=runs/c10/al0
  python -m experiments.train \
      --config experiments/configs/cifar10_resnet34.py:atmc8 \
      --workdir runs/c10/atmc8 --config.init_from=runs/c10/atmc32

Recipe (epochs, lr, decay epochs): da 200/0.05/(80,120,150); al0
200/0.01/(30,60,90,120); atmc32 200/0.005/(60,80,120); atmc8
150/0.005/(60,80,120); natural as da; nap, ap, alr as al0.

Needs CIFAR-10 prepared for ``tfds.data_source`` (array_record) under
``--config.data_dir`` or ``$TFDS_DATA_DIR``.

Expected runtime: not measured here (200 epochs of PGD-7 training of
ResNet-34; the dense stage is about 8x the cost of natural training).
Expected accuracy, read from the paper's figure (approximate, p = 0.005,
paper's evaluation PGD-7): DA TA 0.886 / ATA 0.665; AL0 0.84 / 0.635;
ATMC-32 0.838 / 0.630; ATMC-8 (CR 0.0019) 0.835 / 0.625.
"""

from experiments.configs import _paper


def get_config(stage: str = 'da'):
  """CIFAR-10 / ResNet-34; ``stage`` is the config string."""
  config = _paper.paper_config(
      stage, dataset='cifar10', model='resnet34', sparsity=0.005,
      adv_loss='mixed', batch_size=128, eval_batch_size=512,
      epsilon=4 / 255, train_steps=7)
  config.admm_interval = 10
  config.rho = 0.1
  return config
