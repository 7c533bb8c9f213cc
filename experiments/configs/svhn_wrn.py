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
from experiments.configs import default


def get_config(stage: str = 'da'):
  """SVHN / WRN-16-8; ``stage`` is the config string."""
  config = default.get_config()
  config.dataset = 'svhn'
  config.model = 'wrn16_8'
  config.sparsity = 0.005
  config.adv_loss = 'adversarial'
  config.batch_size = 256
  config.eval_batch_size = 512
  config.seed = 117
  _paper.set_pgd(config.train_attack, 4 / 255, 7)
  _paper.set_pgd(config.eval.attack, 4 / 255, 20, reference_step=False)
  return _paper.apply_recipe(config, stage)
