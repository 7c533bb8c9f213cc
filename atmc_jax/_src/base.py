"""Type aliases and shared messages used across atmc_jax."""

from typing import Any, Callable, Mapping

import jax

PyTree = Any
Params = PyTree
Updates = PyTree
PRNGKey = jax.Array
Batch = Mapping[str, jax.Array]
# A model closed over its parameters: images (in pixel space) -> logits.
LogitsFn = Callable[[jax.Array], jax.Array]
# ``None`` (default selection), a bool pytree, or ``params -> bool pytree``.
MaskOrFn = Any

NO_PARAMS_MSG = (
    'You are using a transformation that requires the current value of the '
    'parameters, but you are not passing `params` when calling `update`. '
    'Call `tx.update(grads, state, params)`.'
)
