"""atmc_jax: adversarially robust model compression (ATMC) in JAX.

ATMC (Gui et al., "Model Compression with Adversarial Robustness: A Unified
Optimization Framework", NeurIPS 2019) trains a network against PGD attacks
under a global L0 budget over a W = U·V + C factorization of every layer and a
per-tensor codebook of 2^b non-zero values, solved by ADMM.

Sub-packages: :mod:`atmc_jax.attacks` (pure jitted attacks),
:mod:`atmc_jax.projections` (pure pytree -> pytree constraint projections),
:mod:`atmc_jax.optim` (the ATMC optax transformation and size accounting),
:mod:`atmc_jax.models` (Flax models and U·V+C layers), :mod:`atmc_jax.data`
(input pipelines), :mod:`atmc_jax.training` (adversarial training runs) and
:mod:`atmc_jax.export` (the compressed model as one file, loadable with
NumPy).
The most used names are re-exported here. ``training`` (and
``train_and_evaluate``) load on first use: the library layers do not import
orbax, tqdm or ml_collections.
"""

from atmc_jax import attacks
from atmc_jax import data
from atmc_jax import export
from atmc_jax import models
from atmc_jax import optim
from atmc_jax import projections
from atmc_jax.attacks import apgd
from atmc_jax.attacks import autoattack
from atmc_jax.attacks import fgsm
from atmc_jax.attacks import pgd
from atmc_jax.attacks import robust_accuracy
from atmc_jax.attacks import wrm
from atmc_jax.models import create_model
from atmc_jax.models import factorize
from atmc_jax.models import materialize
from atmc_jax.optim import atmc
from atmc_jax.optim import AtmcState
from atmc_jax.optim import compression_ratio
from atmc_jax.optim import compression_stats
from atmc_jax.optim import dense_weight_count
from atmc_jax.optim import deployable_params
from atmc_jax.optim import fixed_support
from atmc_jax.optim import model_size_bits
from atmc_jax.optim import projected
from atmc_jax.projections import project_atmc
from atmc_jax.projections import project_l0
from atmc_jax.projections import project_low_rank
from atmc_jax.projections import project_low_rank_global
from atmc_jax.projections import project_quantize
from atmc_jax.projections import quantize_codebook

__version__ = '0.1.0'


def __getattr__(name):
  # ``atmc_jax.training`` pulls in orbax, tqdm and ml_collections: it is
  # imported on first access instead of with the package.
  if name in ('training', 'train_and_evaluate'):
    import importlib  # pylint: disable=g-import-not-at-top
    training = importlib.import_module('atmc_jax.training')
    return training if name == 'training' else training.train_and_evaluate
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
