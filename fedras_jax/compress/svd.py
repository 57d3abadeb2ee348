"""Low-rank (truncated SVD) compression of the update matrix.

The client's update ``X [n, d]`` (masked rows zero) is replaced by its best rank-r
approximation ``U_r diag(S_r) V_r^T``. The payload counts ``U`` over the catalog
rows (the receiver needs a row of ``U`` per item an index could refer to), ``S``
and ``V``::

    bits = r * (num_index_rows + 1 + d) * value_bits

With ``index_coding="touched"`` only the rows the payload updates (live, nonzero) get a
row of ``U``, after a presence bitmap of ``num_index_rows`` bits:
``num_index_rows + r * (T + 1 + d) * value_bits`` for ``T`` such rows
(docs/design/index_coding.md).

``r`` is the largest rank that fits the (traced) budget, at most the static
``max_rank``, the number of live rows and the numerical rank: components with
``s_i <= s_max * max(n, d) * eps`` (numpy's ``matrix_rank`` rule) are round-off and
not sent. At full rank the decode equals ``X`` up to float32 round-off.

Computing it (``method``):

* ``"gram"`` (default): ``V`` from ``eigh(X^T X)`` (a ``d x d`` problem), then
  ``U S = X V`` column by column (``S`` the column norms). ``U S V^T = X V V^T``,
  so the decode is exact at full rank for any orthonormal ``V``, and the leading
  singular directions (those a truncation keeps) are accurate. The Gram matrix
  cannot resolve singular values below ``~ s_max * sqrt(eps)``: an exactly
  rank-deficient ``X`` shows them at that level, above the rank threshold, so at a
  budget beyond its true rank such a matrix is sent with a few near-null
  components (exact, but not the fewest bits).
* ``"lapack"``: ``jnp.linalg.svd(full_matrices=False)`` (``gesdd``): the exact
  numerical rank, but on XLA:CPU under ``vmap`` about ten times slower than the Gram
  route (figures in the CHANGELOG).

Neither cost depends on ``max_rank``. Both go through ``compress.linalg``, whose
``vmap`` loops over the batch instead of making a batched LAPACK call: independent
batched LAPACK calls in one program can hang XLA:CPU (see that module).
"""
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedras_jax.compress import linalg
from fedras_jax.compress.base import (Compressor, check_index_coding, check_value_bits,
                                      content_budget, indexed_rows, stateless, units_bits,
                                      units_for_budget, with_overhead)
from fedras_jax.quantize import round_values


def svd_bits(rank, num_index_rows, dim: int, value_bits: int = 32):
  """``rank * (num_index_rows + 1 + dim) * value_bits``: U, S and V of a rank-r payload.

  Python int for a Python ``rank`` and ``num_index_rows``, else an int32 array.
  """
  if isinstance(num_index_rows, numbers.Integral):
    return units_bits(rank, (int(num_index_rows) + 1 + int(dim)) * int(value_bits))
  unit = (jnp.asarray(num_index_rows, jnp.int32) + 1 + int(dim)) * int(value_bits)
  return jnp.maximum(jnp.asarray(rank, jnp.int32), 0) * unit


def rank_for_budget(budget_bits, num_index_rows, dim: int, *, max_rank: int, value_bits: int = 32):
  """Largest ``r <= max_rank`` with ``svd_bits(r) <= budget_bits`` (traced int32)."""
  return units_for_budget(budget_bits, svd_bits(1, num_index_rows, dim, value_bits), max_rank)


class SVDPayload(NamedTuple):
  """u ``[n, P]``, s ``[P]``, vt ``[P, d]`` with ``P = min(max_rank, n, d)`` static;
  components ``>= rank`` and the rows of masked rows are zero; rank: r; bits: exact."""
  u: jax.Array
  s: jax.Array
  vt: jax.Array
  rank: jax.Array
  bits: jax.Array


_EPS = float(jnp.finfo(jnp.float32).eps)
METHODS = ("gram", "lapack")


def _mm(a, b):
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def svd(num_index_rows: int,
        *,
        max_rank: int,
        value_bits: int = 32,
        method: str = "gram",
        index_coding: str = "catalog") -> Compressor:
  """Rank-r truncated SVD behind the compressor contract.

  Args:
    num_index_rows: the catalog size: the rows of ``U`` counted in the payload under
      ``index_coding="catalog"``, the bitmap's length under ``"touched"``.
    max_rank: static bound on ``r``.
    value_bits: 32, or 16 (``U``, ``S``, ``V`` rounded to bfloat16).
    method: ``"gram"`` (default; ``eigh`` of ``X^T X``, then ``U S = X V``) or
      ``"lapack"`` (``jnp.linalg.svd``; on XLA:CPU tens of times slower, see the
      module docstring).
    index_coding: ``"catalog"`` or ``"touched"`` (module docstring; ``base.indexed_rows``).
  """
  check_index_coding(index_coding)
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  check_value_bits(value_bits)
  if max_rank < 1:
    raise ValueError(f"max_rank must be >= 1, got {max_rank}")

  def encode(rows, mask, budget_bits, key):
    del key
    n, d = rows.shape
    x = jnp.asarray(rows, jnp.float32)
    live = mask & jnp.all(jnp.isfinite(x), axis=1)
    x = jnp.where(live[:, None], x, 0.0)
    p = min(max_rank, n, d)
    if method == "lapack":
      u, s, vt = linalg.svd(x)
      u, s, vt = u[:, :p], s[:p], vt[:p]
    else:  # right singular vectors from the d x d Gram matrix, U S = X V
      _, v = linalg.eigh(_mm(x.T, x))
      v = v[:, ::-1][:, :p]  # descending eigenvalues
      xv = _mm(x, v)
      s = jnp.sqrt(jnp.sum(xv * xv, axis=0))
      u = xv / jnp.where(s > 0, s, 1.0)[None, :]
      vt = v.T
    tol = jnp.max(s) * max(n, d) * _EPS
    n_live = jnp.sum(live, dtype=jnp.int32)
    numerical_rank = jnp.minimum(jnp.sum(s > tol, dtype=jnp.int32), n_live)
    index_rows, overhead = indexed_rows(live & jnp.any(x != 0, axis=1), num_index_rows,
                                        index_coding)
    budget = content_budget(budget_bits, overhead)
    r = jnp.minimum(rank_for_budget(budget, index_rows, d, max_rank=p, value_bits=value_bits),
                    numerical_rank)
    keep = jnp.arange(p) < r
    u = jnp.where(live[:, None] & keep[None, :], u, 0.0)
    return SVDPayload(u=round_values(u, value_bits),
                      s=round_values(jnp.where(keep, s, 0.0), value_bits),
                      vt=round_values(jnp.where(keep[:, None], vt, 0.0), value_bits),
                      rank=r,
                      bits=with_overhead(svd_bits(r, index_rows, d, value_bits), overhead))

  def decode(payload: SVDPayload):
    return _mm(payload.u * payload.s[None, :], payload.vt)

  return stateless("svd", encode, decode)
