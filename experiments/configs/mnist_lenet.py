r"""MNIST / Caffe LeNet, the ATMC paper's setting.

Mixed loss 0.5 clean + 0.5 PGD (the reference code for MNIST), batch 256,
PGD-16 at eps 76/255 (about 0.3) with the reference step 1.25 eps / 16 in
training, PGD-20 with random start for evaluation. The per-stage recipe is
the CIFAR-10 one (the reference gives none for MNIST)::

  python -m experiments.train \
      --config experiments/configs/mnist_lenet.py:da --workdir runs/mnist/da
  python -m experiments.train \
      --config experiments/configs/mnist_lenet.py:atmc32 \
      --workdir runs/mnist/atmc32 --config.init_from=runs/mnist/al0

MNIST is read from IDX files in ``--config.data_dir`` or from tfds.

Expected runtime: not measured here. Expected accuracy, read from the
paper's figure (approximate, paper's evaluation PGD-16): DA TA 0.981 /
ATA 0.783; at p = 0.01 AL0 0.855 / 0.725, ATMC-32 0.873 / 0.72.
"""

from experiments.configs import _paper


def get_config(stage: str = 'da'):
  """MNIST / LeNet; ``stage`` is the config string."""
  config = _paper.paper_config(
      stage, dataset='mnist', model='lenet', sparsity=0.01,
      adv_loss='mixed', batch_size=256, eval_batch_size=1000,
      epsilon=76 / 255, train_steps=16)
  return config
