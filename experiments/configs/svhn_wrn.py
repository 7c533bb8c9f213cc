r"""SVHN / WRN-16-8 (dropout 0.4), the ATMC paper's setting.

Pure adversarial loss, batch 256, PGD-7 at eps 4/255 (the reading notes;
the reference code's default is 16 steps), normalisation inside the model;
the ``train`` (73,257) and ``test`` (26,032) splits, ``extra`` unused. The
per-stage recipe is the CIFAR-10 one (the reference gives no other)::

  python -m experiments.train \
      --config experiments/configs/svhn_wrn.py:da --workdir runs/svhn/da

Expected runtime: not measured here. Expected accuracy, read from the
paper's figure (approximate): DA TA 0.950 / ATA 0.746; at p = 0.005 AL0
0.901 / 0.62, ATMC-32 0.914 / 0.636.
"""

from experiments.configs import _paper


def get_config(stage: str = 'da'):
  """SVHN / WRN-16-8; ``stage`` is the config string."""
  config = _paper.paper_config(
      stage, dataset='svhn', model='wrn16_8', sparsity=0.005,
      adv_loss='adversarial', batch_size=256, eval_batch_size=512,
      epsilon=4 / 255, train_steps=7)
  return config
