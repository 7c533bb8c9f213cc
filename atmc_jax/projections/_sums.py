"""Compensated prefix sums for range sums over long float32 vectors.

A plain ``cumsum`` of ``n`` values carries an absolute error of about
``eps * sum_i |x_i|`` at its end, so a short range sum read as
``cumsum[j] - cumsum[i]`` far along the vector loses most of its digits
(1-D k-means reads every cluster's sum and sum of squares this way). Here
the vector is cut into blocks of ``BLOCK`` entries: within a block a plain
``cumsum`` (error about ``eps`` times the block's absolute sum), across
blocks a running sum kept as an unevaluated pair ``hi + lo`` (Knuth's
error-free TwoSum), so the error of a range sum no longer grows with the
vector's length. The cross-block pass is a sequential scan over
``n / BLOCK`` blocks, cheap to compile and to run.
"""

import jax
import jax.numpy as jnp

BLOCK = 128


def _two_sum(a, b):
  """``(s, e)`` with ``s = fl(a + b)`` and ``s + e == a + b`` exactly."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


def compensated_cumsum(x: jax.Array):
  """Prefix sums of a 1-D ``x``, for :func:`range_sum`.

  Returns:
    An opaque tuple: ``range_sum(prefix, i, j)`` is ``sum(x[i:j])`` for
    ``0 <= i, j <= len(x)``.
  """
  n = x.shape[0]
  nb = -(-n // BLOCK)
  blocks = jnp.zeros((nb * BLOCK,), x.dtype).at[:n].set(x).reshape(
      nb, BLOCK)
  inclusive = jnp.cumsum(blocks, axis=1)
  within = jnp.concatenate([
      (inclusive - blocks).reshape(-1), jnp.zeros((1,), x.dtype)])

  def step(carry, total):
    hi, lo = carry
    s, e = _two_sum(hi, total)
    e = e + lo
    new_hi = s + e
    new = (new_hi, e - (new_hi - s))
    return new, carry

  zero = jnp.zeros((), x.dtype)
  last, (hi, lo) = jax.lax.scan(step, (zero, zero), inclusive[:, -1])
  hi = jnp.concatenate([hi, last[0][None]])
  lo = jnp.concatenate([lo, last[1][None]])
  return hi, lo, within


def range_sum(prefix, i, j) -> jax.Array:
  """``sum(x[i:j])`` from :func:`compensated_cumsum`'s output."""
  hi, lo, within = prefix
  bi, bj = i // BLOCK, j // BLOCK
  return ((hi[bj] - hi[bi]) + (lo[bj] - lo[bi])) + (within[j] - within[i])
