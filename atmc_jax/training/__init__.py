"""Training: per-device steps, data parallelism, checkpoints, the loop.

``atmc_jax.training.parallel`` is the only module that calls ``jax.pmap``.
"""

from atmc_jax.training import parallel
from atmc_jax.training._checkpoint import CheckpointError
from atmc_jax.training._checkpoint import Checkpoints
from atmc_jax.training._checkpoint import restore_state_dict
from atmc_jax.training._config import apply_stage
from atmc_jax.training._config import STAGES
from atmc_jax.training._config import validate_config
from atmc_jax.training._evaluate import attack_kwargs
from atmc_jax.training._loop import train_and_evaluate
from atmc_jax.training._optimizer import budget_for
from atmc_jax.training._optimizer import Compression
from atmc_jax.training._optimizer import lr_schedule
from atmc_jax.training._optimizer import make_optimizer
from atmc_jax.training._optimizer import prepare_compression
from atmc_jax.training._setup import create_model
from atmc_jax.training._setup import init_variables
from atmc_jax.training._setup import load_data
from atmc_jax.training._setup import synthetic_split
from atmc_jax.training._state import TrainState
from atmc_jax.training._steps import make_eval_step
from atmc_jax.training._steps import logits_partial
from atmc_jax.training._steps import make_logits_fn
from atmc_jax.training._steps import make_train_step
