r"""Base training config: every key of ``train_and_evaluate``, commented.

Other configs import this one and override what differs. Defaults here train
dense adversarially (stage ``da``) the Caffe LeNet on Fashion-MNIST, which
this config sets up to run on a laptop CPU::

  python -m experiments.train --config experiments/configs/default.py \
      --workdir runs/default

Stage defaults (``loss``, ``compression``, ``factorized``, ``bits``) are left
``None`` and filled from ``config.stage`` at train time by
``atmc_jax.training.apply_stage``, so ``--config.stage=al0`` switches them
all; set any of them explicitly to override the stage.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """The base config."""
  config = ml_collections.ConfigDict()

  # ---- Method / stage ----------------------------------------------------
  # One of: natural, da, nap, ap, al0, alr, atmc32, atmc8 (see
  # atmc_jax.training.STAGES).
  config.stage = 'da'
  # Keep fraction p: the L0 budget is k = floor(p * dense weight count); for
  # ALR, the fraction of all singular values kept. In (0, 1].
  config.sparsity = 0.01
  # Codebook bits per tensor for compression="atmc" (1..16); None: no
  # quantisation (32-bit floats). atmc8 sets 8 when left None.
  config.bits = config_dict.placeholder(int)
  # Filled from the stage when None.
  config.loss = config_dict.placeholder(str)  # natural|adversarial|mixed
  config.compression = config_dict.placeholder(str)
  config.factorized = config_dict.placeholder(bool)
  # The loss of adversarial stages: "adversarial" (the paper: pure PGD loss)
  # or "mixed" (the reference code for MNIST/CIFAR-10: 0.5 clean + 0.5 adv).
  config.adv_loss = 'adversarial'
  # ADMM (compression="atmc"): penalty weight, Z/U update interval (in
  # steps), the k-means method ("lloyd" or "optimal") and Lloyd's
  # initialisation ("quantile", deterministic, or "forgy", the reference
  # code's random one, keyed by the update count).
  config.rho = 0.1
  config.admm_interval = 10
  config.quantizer = 'lloyd'
  config.quantizer_init = 'quantile'
  # Warm start: the workdir of another stage ('' = random init). Its
  # checkpoint selected on validation is loaded (its latest one with
  # init_from_best=False); dense params are factorized when this stage's
  # model is factorized.
  config.init_from = ''
  config.init_from_best = True
  # Pruning / truncation stages (nap, ap, alr) expect init_from; set this to
  # prune a random init instead (tests, smoke runs).
  config.allow_random_init = False

  # ---- Data --------------------------------------------------------------
  # mnist, fashion_mnist, cifar10, cifar100, svhn (atmc_jax.data.DATASETS).
  config.dataset = 'fashion_mnist'
  # "auto" (IDX files if present, else tfds), "idx", "tfds", or
  # "synthetic" (random learnable images shaped like the dataset).
  config.data_source = 'auto'
  config.data_dir = ''
  config.synthetic_sizes = (512, 128)  # (train, test) for "synthetic".
  # Validation = the LAST num_val training examples (model selection).
  config.num_val = 5000
  # Optional subsets (None = all), e.g. for quick runs.
  config.max_train_examples = config_dict.placeholder(int)
  config.max_test_examples = config_dict.placeholder(int)

  # ---- Model -------------------------------------------------------------
  # lenet, resnet34, wrn16_8, resnet18, resnet_tiny (atmc_jax.models).
  config.model = 'lenet'
  # Extra model attributes (e.g. dropout_rate, conv_impl, dtype).
  config.model_kwargs = ml_collections.ConfigDict()

  # ---- Optimisation ------------------------------------------------------
  config.seed = 0
  config.num_epochs = 20
  config.batch_size = 128  # Global; a multiple of the device count.
  config.eval_batch_size = 512
  config.learning_rate = 0.01
  config.lr_decay_epochs = (10, 15)  # lr *= lr_decay_factor at each.
  config.lr_decay_factor = 0.1
  config.momentum = 0.9
  config.weight_decay = 1e-4
  # False: decay only kernels / U, V, C; True: every parameter (reference).
  config.weight_decay_all = False

  # ---- Attacks (pixel units, images in [0, 1]) -----------------------------
  config.train_attack = ml_collections.ConfigDict(dict(
      norm='linf',
      epsilon=0.1,
      num_steps=7,
      step_size=config_dict.placeholder(float),  # None: the attack default.
      random_start=True,
      num_restarts=1,
  ))
  # "eval": craft with BatchNorm running statistics; "train": with batch
  # statistics and dropout on, as the reference code does.
  config.attack_bn_mode = 'eval'

  # ---- Evaluation --------------------------------------------------------
  config.eval = ml_collections.ConfigDict()
  config.eval.attack = ml_collections.ConfigDict(dict(
      norm='linf',
      epsilon=0.1,
      num_steps=20,
      step_size=config_dict.placeholder(float),
      random_start=True,
      num_restarts=1,
  ))
  # After training, also run PGD with restarts, APGD-CE and their
  # per-example worst case on the test split (deployable params).
  config.eval.strong = False
  config.eval.strong_attack = ml_collections.ConfigDict(dict(
      pgd_steps=50, pgd_restarts=5, apgd_steps=100))
  # After training, also run AutoAttack (standard version: APGD-CE, APGD-T,
  # FAB-T, Square) and PGD-20 on the first autoattack_examples test examples
  # (deployable params, eval.attack's epsilon; L-inf only). None: off.
  config.eval.autoattack_examples = config_dict.placeholder(int)
  # AutoAttack's iterations (per target), targets and Square queries (the
  # standard version's values), and the steps of the PGD it is compared
  # with. Lower the first three only for quick checks: the summary then
  # records version "reduced".
  config.eval.autoattack = ml_collections.ConfigDict(dict(
      num_steps=100, num_targets=9, num_queries=5000, pgd_steps=20))

  # ---- Loop --------------------------------------------------------------
  # Stop (with a checkpoint) after this many steps in total; None: train to
  # the end. Rerunning with the same workdir resumes.
  config.max_steps = config_dict.placeholder(int)
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.log_every_steps = 50  # Also the interval of the NaN/Inf check.
  config.prefetch = 2
  # Local devices to use (None: all); single host only.
  config.num_devices = config_dict.placeholder(int)
  config.progress = True  # tqdm progress bars.
  return config
