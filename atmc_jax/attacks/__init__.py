"""Pure, jitted, model-agnostic adversarial attacks and robust accuracy.

The model enters as ``logits_fn(x) -> logits``, a closure the caller builds
(e.g. a flax ``apply`` with its variables and BatchNorm in inference mode).
Inputs are in pixel space, inside ``bounds`` (default ``[0, 1]``); per-channel
normalisation belongs inside ``logits_fn``.
"""

from atmc_jax.attacks._apgd import apgd
from atmc_jax.attacks._apgd import apgd_checkpoints
from atmc_jax.attacks._apgd import apgd_targeted
from atmc_jax.attacks._autoattack import ATTACK_NAMES
from atmc_jax.attacks._autoattack import AutoAttackResult
from atmc_jax.attacks._autoattack import autoattack
from atmc_jax.attacks._autoattack import MASKING_GAP
from atmc_jax.attacks._autoattack import masking_suspected
from atmc_jax.attacks._autoattack import STANDARD_ATTACKS
from atmc_jax.attacks._autoattack import standard_attacks
from atmc_jax.attacks._fab import fab
from atmc_jax.attacks._losses import cross_entropy
from atmc_jax.attacks._losses import dlr_loss
from atmc_jax.attacks._losses import dlr_targeted_loss
from atmc_jax.attacks._losses import margin_loss
from atmc_jax.attacks._pgd import default_step_size
from atmc_jax.attacks._pgd import pgd
from atmc_jax.attacks._pgd import reference_step_size
from atmc_jax.attacks._robust import AttackFn
from atmc_jax.attacks._robust import attack_key
from atmc_jax.attacks._robust import paper_attack_suite
from atmc_jax.attacks._robust import robust_accuracy
from atmc_jax.attacks._simple import fgsm
from atmc_jax.attacks._simple import wrm
from atmc_jax.attacks._square import square
