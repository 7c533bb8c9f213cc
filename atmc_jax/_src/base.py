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

def json_default(x: Any) -> Any:
  """``json.dump``'s ``default`` for NumPy/JAX values: scalars as Python."""
  if hasattr(x, 'item'):
    return x.item()
  if hasattr(x, 'tolist'):
    return x.tolist()
  return str(x)


NO_PARAMS_MSG = (
    'You are using a transformation that requires the current value of the '
    'parameters, but you are not passing `params` when calling `update`. '
    'Call `tx.update(grads, state, params)`.'
)


def check_init_params(params: Any, name: str) -> None:
  """Raises ``ValueError`` unless ``params`` is a pytree with array leaves.

  ``tx.init(None)`` (or an empty tree) would otherwise build a state of
  ``None`` leaves that fails much later inside jax.
  """
  if params is None or not jax.tree.leaves(params):
    raise ValueError(
        f'{name}.init needs the params: a pytree with at least one array '
        f'leaf, got {params!r}.')
