"""TopK sparsification: the ``k`` largest-magnitude entries of the update.

A client sends ``k`` (value, index) pairs; every other entry decodes to zero. An
index addresses one entry of the catalog-wide ``[num_index_rows, d]`` update, so it
costs ``ceil(log2(num_index_rows * d))`` bits::

    bits = k * (value_bits + ceil(log2(R * d)))          (R = num_index_rows)

With ``index_coding="touched"`` a presence bitmap of ``R`` bits names the rows with a
nonzero entry, ``T`` of them, and an index addresses one entry of those rows:
``R + k * (value_bits + ceil(log2(T * d)))`` (docs/design/index_coding.md).

With ``int32_indices`` every index is counted as 32 bits, the convention most papers
use (``k * (value_bits + 32)``): fewer entries fit a budget (registered as the method
``topk_int32``, for comparisons with published figures). ``k`` is the largest count
that fits the client's (traced) budget, at most the static ``max_entries`` and at most
the number of non-zero entries (sending zeros would be wasted bits), so
``bits <= budget``.

Selection (``method``; both select the same entries, ties to the lowest flat
positions):

* ``"top_k"`` (default): ``lax.top_k`` on the flattened ``|values|``, its first
  ``k`` of the static ``E = min(max_entries, n * d)`` kept (values gathered).
* ``"threshold"``: the k-th largest ``|value|`` found by bisection on its float32
  bit pattern (non-negative floats order like their int32 patterns): 31 counting
  passes over the ``n * d`` entries, no sort, then a ``nonzero`` compaction.

``lax.top_k``'s cost grows with ``E``, the bisection's does not; measured on XLA:CPU
(encode + decode under ``vmap``, figures in the CHANGELOG), the sort wins at the budgets
of interest, hence the default.
"""
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fedras_jax.compress.base import (Compressor, check_index_coding, check_value_bits,
                                      content_budget, indexed_rows, stateless, units_bits,
                                      units_for_budget, with_overhead)
from fedras_jax.quantize import index_bits, round_values

METHODS = ("top_k", "threshold")


def topk_bits(k, n, d, int32_indices: bool = False, value_bits: int = 32):
  """Exact size of ``k`` (value, index) pairs into an ``[n, d]`` matrix.

  ``k * (value_bits + ceil(log2(n * d)))``, or ``k * (value_bits + 32)`` with
  ``int32_indices`` (the papers' convention). Python int for a Python ``k`` and ``n``,
  else an int32 array.
  """
  if int32_indices:
    return units_bits(k, int(value_bits) + 32)
  # ceil(log2(n * d)) bits address an entry: the bits of the largest address n*d - 1.
  if isinstance(n, numbers.Integral):
    return units_bits(k, int(value_bits) + index_bits(max(int(n) * int(d) - 1, 0)))
  unit = int(value_bits) + index_bits(jnp.asarray(n, jnp.int32) * int(d) - 1)
  return jnp.maximum(jnp.asarray(k, jnp.int32), 0) * unit


def entries_for_budget(budget_bits,
                       num_index_rows,
                       dim: int,
                       *,
                       max_entries: int,
                       value_bits: int = 32,
                       int32_indices: bool = False):
  """Largest ``k <= max_entries`` with ``topk_bits(k) <= budget_bits`` (traced int32)."""
  return units_for_budget(budget_bits,
                          topk_bits(1, num_index_rows, dim, int32_indices, value_bits=value_bits),
                          max_entries)


class TopKPayload(NamedTuple):
  """values ``[E]`` float32 and indices ``[E]`` int32 (flat ``row * d + col``; -1 in
  unused slots), ``E = min(max_entries, n * d)`` static; num_entries: k; bits:
  exact size; layout: ``[n, d, 0]`` (no data, carries the decoded shape)."""
  values: jax.Array
  indices: jax.Array
  num_entries: jax.Array
  bits: jax.Array
  layout: jax.Array


def _threshold_select(mag, k):
  """``[N]`` bool: the ``k`` largest of ``mag`` (>= 0, finite), ties to lower positions."""
  keys = lax.bitcast_convert_type(mag, jnp.int32)  # monotone for non-negative floats

  def bit(i, t):
    cand = t | (jnp.int32(1) << (30 - i))
    return jnp.where(jnp.sum(keys >= cand, dtype=jnp.int32) >= k, cand, t)

  # The largest t with count(keys >= t) >= k (k >= 1 and k <= nnz, so t > 0).
  t = lax.fori_loop(0, 31, bit, jnp.int32(0))
  above = keys > t
  ties = keys == t
  room = k - jnp.sum(above, dtype=jnp.int32)
  tie_rank = jnp.cumsum(ties.astype(jnp.int32))
  return (above | (ties & (tie_rank <= room))) & (k > 0)


def topk(num_index_rows: int,
         *,
         max_entries: int,
         value_bits: int = 32,
         method: str = "top_k",
         int32_indices: bool = False,
         index_coding: str = "catalog") -> Compressor:
  """TopK sparsification behind the compressor contract.

  Args:
    num_index_rows: the catalog size: the rows an index can address under
      ``index_coding="catalog"``, the bitmap's length under ``"touched"``.
    max_entries: static bound on ``k`` (the payload buffer size).
    value_bits: 32, or 16 (values rounded to bfloat16).
    method: ``"top_k"`` (``lax.top_k``, default) or ``"threshold"`` (bisection); see
      the module docstring.
    int32_indices: count 32 bits per index (the papers' convention) instead of
      ``ceil(log2(num_index_rows * d))``.
    index_coding: ``"catalog"`` or ``"touched"`` (module docstring; ``base.indexed_rows``).
  """
  check_index_coding(index_coding)
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  check_value_bits(value_bits)
  if max_entries < 1:
    raise ValueError(f"max_entries must be >= 1, got {max_entries}")

  def encode(rows, mask, budget_bits, key):
    del key
    n, d = rows.shape
    x = jnp.asarray(rows, jnp.float32)
    x = jnp.where(mask[:, None] & jnp.isfinite(x), x, 0.0).reshape(-1)
    mag = jnp.abs(x)
    slots = min(max_entries, n * d)
    nnz = jnp.sum(mag > 0, dtype=jnp.int32)
    index_rows, overhead = indexed_rows(jnp.any(mag.reshape(n, d) > 0, axis=1), num_index_rows,
                                        index_coding)
    budget = content_budget(budget_bits, overhead)
    k = jnp.minimum(
        entries_for_budget(budget,
                           index_rows,
                           d,
                           max_entries=slots,
                           value_bits=value_bits,
                           int32_indices=int32_indices), nnz)
    keep = jnp.arange(slots) < k
    if method == "top_k":  # sorted by magnitude, ties to lower positions
      _, flat = lax.top_k(mag, slots)
    else:  # selected entries in position order
      sel = _threshold_select(mag, k)
      flat = jnp.nonzero(sel, size=slots, fill_value=0)[0]
    indices = jnp.where(keep, flat, -1).astype(jnp.int32)
    values = jnp.where(keep, x[flat], 0.0)
    return TopKPayload(values=round_values(values, value_bits),
                       indices=indices,
                       num_entries=k,
                       bits=with_overhead(topk_bits(k, index_rows, d, int32_indices, value_bits),
                                          overhead),
                       layout=jnp.zeros((n, d, 0), jnp.float32))

  def decode(payload: TopKPayload):
    n, d, _ = payload.layout.shape
    idx = jnp.where(payload.indices >= 0, payload.indices, n * d)
    return jnp.zeros((n * d,), jnp.float32).at[idx].set(payload.values, mode="drop").reshape(n, d)

  return stateless("topk_int32" if int32_indices else "topk", encode, decode)
