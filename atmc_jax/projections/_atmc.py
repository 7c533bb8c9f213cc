"""The ATMC feasible set: a global L0 budget and per-tensor codebooks."""

from typing import Any

import numpy as np

from atmc_jax._src import base
from atmc_jax._src import tree_utils
from atmc_jax.projections import _l0
from atmc_jax.projections import _quantize


def project_atmc(tree: base.PyTree, k, bits: int,
                 mask: base.MaskOrFn = None, *, method: str = 'lloyd',
                 **kwargs: Any) -> base.PyTree:
  r"""A point satisfying both ATMC constraints.

  Applies ``project_l0`` (keep the ``k`` largest magnitudes globally) and
  then ``project_quantize`` (per leaf, at most ``2**bits`` distinct non-zero
  values with a fixed zero level). Quantisation never creates non-zeros, so
  the result satisfies

  .. math::

    \sum_l \|z_l\|_0 \le k \quad\text{and}\quad |z_l|_0 \le 2^{b}
    \ \text{for every selected leaf } l.

  It is a feasible point close to ``tree``, not in general the exact
  Euclidean projection onto the intersection.

  Args:
    tree: a pytree of arrays.
    k: the global non-zero budget (Python int or traced int scalar).
    bits: an int in ``[1, 16]``.
    mask: as in ``project_l0``.
    method: ``"lloyd"`` or ``"optimal"``, as in ``project_quantize``.
    **kwargs: ``max_iters``, ``tol``, ``init``, ``key`` for
      ``project_quantize``.

  Returns:
    A pytree with ``tree``'s structure and dtypes.

  Raises:
    ValueError: bad ``k``, ``bits``, options, or mask.
  """
  _l0.check_k(k)
  _quantize.check_bits(bits)
  mask = tree_utils.resolve_mask(tree, mask)
  sparse = _l0.project_l0(tree, k, mask)
  # A static budget bounds every leaf's non-zeros: the quantiser then
  # compiles only the compacted copies it can reach.
  static_k = (int(k) if isinstance(k, (int, np.integer))
              and not isinstance(k, bool) else None)
  return _quantize.project_quantize(sparse, bits, mask, method=method,
                                    max_nonzeros=static_k, **kwargs)
