r"""CIFAR-100 / ResNet-34 (100 classes), the ATMC paper's setting.

As ``cifar10_resnet34.py`` (the same per-stage recipe, which the reference
gives for CIFAR-10 only) but: pure adversarial loss (the reference code for
CIFAR-100), batch 256, per-channel normalisation inside the model
(mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010)); eps stays
4/255 in pixel units::

  python -m experiments.train \
      --config experiments/configs/cifar100_resnet34.py:da \
      --workdir runs/c100/da

Expected runtime: not measured here. Expected accuracy, read from the
paper's figure (approximate): DA TA 0.593 / ATA 0.349; at p = 0.005 AL0
0.47 / 0.289, ATMC-32 0.493 / 0.299.
"""

from experiments.configs import _paper


def get_config(stage: str = 'da'):
  """CIFAR-100 / ResNet-34; ``stage`` is the config string."""
  config = _paper.paper_config(
      stage, dataset='cifar100', model='resnet34', sparsity=0.005,
      adv_loss='adversarial', batch_size=256, eval_batch_size=512,
      epsilon=4 / 255, train_steps=7)
  return config
