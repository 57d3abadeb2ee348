"""Exact bit accounting for an action payload.

A payload with ``K`` actions over ``R`` index-carrying rows of a ``d``-wide
gradient matrix costs::

    K * d * value_bits            (the K centroids)
  + R * ceil(log2(K + 1))         (one index per row; K + 1 symbols because
                                   one code is reserved for "no update")

``ceil(log2(K + 1))`` equals the bit length of ``K``, computed exactly with
integer ops (``32 - clz(K)``) for traced ints and ``int.bit_length`` for Python
ints. With ``K = 0`` the payload is empty (0 bits).

The published FedRAS/FedPAQ-style numbers count a full int32 per index;
:func:`payload_bits_int32_indices` gives that convention for comparisons.
All traced arithmetic is int32 (payloads below 2**31 bits, 256 MiB); a budget
beyond int32's range is saturated to it by :func:`saturating_int32`, and
:func:`max_actions_for_budget` compares without overflow.
"""

import numbers

import jax.numpy as jnp
import numpy as np
from jax import lax

_INT32 = np.iinfo(np.int32)


def saturating_int32(value):
  """``value`` (a Python or NumPy number or array, or a JAX array of any integer or
  float dtype, traced too) as int32, values beyond int32's range clipped to it, never
  wrapped; NaN is 0. A float32 array saturates at ``2**31 - 128``, its largest value
  below ``2**31``."""
  if isinstance(value, (numbers.Number, np.ndarray, np.generic)):  # exact, in NumPy
    v = np.asarray(value)
    if v.dtype.kind == "f":
      v = np.nan_to_num(v.astype(np.float64), nan=0.0)
    return jnp.asarray(np.clip(v, _INT32.min, _INT32.max).astype(np.int32))
  v = jnp.asarray(value)
  if jnp.issubdtype(v.dtype, jnp.floating):
    v = jnp.nan_to_num(v.astype(jnp.promote_types(v.dtype, jnp.float32)), nan=0.0)
    v = jnp.clip(v, -2.0**31, 2.0**31 - 128)  # bounds exact in float32
  elif jnp.iinfo(v.dtype).bits > 32:
    v = jnp.clip(v, _INT32.min, _INT32.max)
  elif jnp.issubdtype(v.dtype, jnp.unsignedinteger):  # uint32 reaches past int32's max
    v = jnp.minimum(v, _INT32.max)
  return v.astype(jnp.int32)


def _is_concrete_int(v) -> bool:
  return isinstance(v, numbers.Integral)


def index_bits(num_actions):
  """``ceil(log2(num_actions + 1))``: bits per index for K actions + 1 reserved code.

  Python int in -> Python int out; array/traced in -> int32 array out.
  """
  if _is_concrete_int(num_actions):
    return int(num_actions).bit_length()
  k = jnp.maximum(jnp.asarray(num_actions, jnp.int32), 0)
  return jnp.int32(32) - lax.clz(k)


def payload_bits(num_actions, num_index_rows, dim, value_bits=32):
  """Exact payload size ``K*d*value_bits + R*ceil(log2(K+1))`` in bits.

  Args:
    num_actions: K (Python int or traced int; broadcasts).
    num_index_rows: R, rows that carry an index.
    dim: d, embedding width.
    value_bits: bits per centroid value (32 or 16).

  Returns:
    Python int if every argument is a Python int, else an int32 array.
  """
  if all(_is_concrete_int(v) for v in (num_actions, num_index_rows, dim, value_bits)):
    k = max(int(num_actions), 0)
    return k * int(dim) * int(value_bits) + int(num_index_rows) * k.bit_length()
  k = jnp.maximum(jnp.asarray(num_actions, jnp.int32), 0)
  r = jnp.asarray(num_index_rows, jnp.int32)
  return k * jnp.int32(dim) * jnp.int32(value_bits) + r * index_bits(k)


def payload_bits_int32_indices(num_actions, num_index_rows, dim, value_bits=32):
  """Paper convention: ``K*d*value_bits + R*32`` (a full int32 per index).

  Zero when ``K = 0``. Same int/array behaviour as :func:`payload_bits`.
  """
  if all(_is_concrete_int(v) for v in (num_actions, num_index_rows, dim, value_bits)):
    k = max(int(num_actions), 0)
    return 0 if k == 0 else k * int(dim) * int(value_bits) + int(num_index_rows) * 32
  k = jnp.maximum(jnp.asarray(num_actions, jnp.int32), 0)
  r = jnp.asarray(num_index_rows, jnp.int32)
  return jnp.where(k > 0, k * jnp.int32(dim) * jnp.int32(value_bits) + r * 32, 0)


def max_actions_for_budget(budget_bits, num_index_rows, dim, *, max_k: int, value_bits=32):
  """Largest ``K <= max_k`` with ``payload_bits(K, R, d) <= budget_bits``; 0 if none.

  ``payload_bits`` is increasing in K, so this is the count of fitting
  ``K in 1..max_k``. Evaluated over the static range ``0..max_k``.
  Python ints in -> Python int out; otherwise an int32 array, the budget and
  ``num_index_rows`` taken to int32 by :func:`saturating_int32` (a float or int64
  budget beyond int32's range is clipped, never wrapped; negative rows count as 0).
  """
  if all(_is_concrete_int(v) for v in (budget_bits, num_index_rows, dim, value_bits)):
    best = 0
    for k in range(1, max_k + 1):
      if payload_bits(k, max(num_index_rows, 0), dim, value_bits) <= budget_bits:
        best = k
    return best
  ks = jnp.arange(max_k + 1, dtype=jnp.int32)
  rows = jnp.maximum(saturating_int32(num_index_rows), 0)[..., None]
  budget = saturating_int32(budget_bits)[..., None]
  # payload_bits(K) <= budget without an int32 overflow: the centroids fit (max_k * d *
  # value_bits is small), and then R <= (budget - centroid bits) // index bits (never forming
  # R * index bits, nor subtracting from a budget near -2**31).
  centroid_bits = ks * jnp.int32(dim) * jnp.int32(value_bits)
  fits = budget >= centroid_bits
  left = jnp.where(fits, budget - centroid_bits, 0)
  fits &= rows <= left // jnp.maximum(index_bits(ks), 1)
  return jnp.max(jnp.where(fits, ks, 0), axis=-1).astype(jnp.int32)


def compression_rate(bits, n, d):
  """``1 - bits / (n * d * 32)``: saving relative to a dense float32 upload."""
  if all(_is_concrete_int(v) for v in (bits, n, d)):
    return 1.0 - bits / (n * d * 32)
  return 1.0 - jnp.asarray(bits, jnp.float32) / (jnp.float32(n) * jnp.float32(d) * 32.0)
