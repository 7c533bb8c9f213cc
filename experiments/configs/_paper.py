"""Per-stage recipes of the ATMC paper's experiments (shared by the configs).

The reference README gives a recipe for CIFAR-10 only (epochs, learning
rate, decay epochs per stage; SGD momentum 0.9, weight decay 1e-4, lr x0.1
at each listed epoch, seed 117). The other datasets reuse it; stages the
README does not list reuse the recipe of the stage they replace (natural as
DA; NAP, AP and ALR as AL0).
"""

import ml_collections

from experiments.configs import default

# stage -> (epochs, learning rate, lr decay epochs, warm start from)
CIFAR10_RECIPE = {
    'natural': (200, 0.05, (80, 120, 150), None),
    'da': (200, 0.05, (80, 120, 150), None),
    'nap': (200, 0.01, (30, 60, 90, 120), 'natural'),
    'ap': (200, 0.01, (30, 60, 90, 120), 'da'),
    'al0': (200, 0.01, (30, 60, 90, 120), 'da'),
    'alr': (200, 0.01, (30, 60, 90, 120), 'da'),
    'atmc32': (200, 0.005, (60, 80, 120), 'al0'),
    'atmc8': (150, 0.005, (60, 80, 120), 'atmc32'),
}


def apply_recipe(config: ml_collections.ConfigDict, stage: str,
                 recipe=None) -> ml_collections.ConfigDict:
  """Sets ``stage``, epochs, learning rate and decay epochs of ``stage``.

  Raises:
    ValueError: ``stage`` has no recipe.
  """
  recipe = CIFAR10_RECIPE if recipe is None else recipe
  if stage not in recipe:
    raise ValueError(f'stage {stage!r} (the config string) is unknown; '
                     f'accepted: {sorted(recipe)}.')
  epochs, lr, decay, _ = recipe[stage]
  config.stage = stage
  config.num_epochs = epochs
  config.learning_rate = lr
  config.lr_decay_epochs = decay
  return config


def set_pgd(attack: ml_collections.ConfigDict, epsilon: float,
            num_steps: int, *, reference_step: bool = True,
            random_start: bool = True) -> None:
  """Sets an L-inf PGD; ``reference_step``: step ``1.25 * eps / K``."""
  attack.norm = 'linf'
  attack.epsilon = epsilon
  attack.num_steps = num_steps
  attack.step_size = 1.25 * epsilon / num_steps if reference_step else None
  attack.random_start = random_start


def paper_config(stage: str, *, dataset: str, model: str, sparsity: float,
                 adv_loss: str, batch_size: int, eval_batch_size: int,
                 epsilon: float, train_steps: int
                 ) -> ml_collections.ConfigDict:
  """One of the paper's settings: the default config plus the recipe.

  Seed 117 (the reference's), L-inf PGD at ``epsilon`` with
  ``train_steps`` iterations and the reference step ``1.25 * eps / K`` in
  training, PGD-20 with the default step in evaluation.

  Raises:
    ValueError: ``stage`` has no recipe.
  """
  config = default.get_config()
  config.dataset = dataset
  config.model = model
  config.sparsity = sparsity
  config.adv_loss = adv_loss
  config.batch_size = batch_size
  config.eval_batch_size = eval_batch_size
  config.seed = 117
  set_pgd(config.train_attack, epsilon, train_steps)
  set_pgd(config.eval.attack, epsilon, 20, reference_step=False)
  return apply_recipe(config, stage)
