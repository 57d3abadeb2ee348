"""CoLR (Nguyen et al., WWW 2024): low-rank updates in a subspace shared per round.

Each round the server draws ``B [r, d]`` from the round's key (orthonormal rows
scaled by ``sqrt(d / r)``, so ``B B^T = (d / r) I_r``). A client freezes its item
rows ``Q`` and trains only ``A [n, r]`` (initialised at 0), its rows being
``Q + A B``; it uploads ``A``; the server averages ``A`` per item and merges
``Q += A_avg B``.

With plain SGD this is local training of the rows themselves with every item-row
gradient ``G`` replaced by ``G B^T B`` (the gradient of ``A`` is ``G B^T`` and its
step moves the rows by ``-lr G B^T B``), so the round trains CoLR through the
``wrappers.shared_basis`` wrapper: the round's shared key draws ``B``, the
clients' item-row gradients are projected with ``B^T B`` (the compressor's
``item_projection``, ``LocalHParams.item_projection``) and every client and the
server encode with that key. The update then lies in ``B``'s row space,
``encode`` recovers ``A = X B^T (r / d)`` exactly and ``decode`` is ``A B``; since
decode is linear, averaging decoded updates per item is averaging ``A``. At
``r = d``, ``B^T B = I``: the round equals the uncompressed one.

Payload: ``A`` over the catalog, ``bits = num_index_rows * r * value_bits``
(``B`` comes from the shared seed). ``r`` is static: CoLR is a fixed-rate method,
its rate chosen from the nominal budget, whatever a client's bandwidth this round.
With ``index_coding="touched"`` only the rows the client updates send their row of ``A``,
after a presence bitmap of ``num_index_rows`` bits (``base.indexed_rows``); the rank stays
the one the registry chose, so the bits saved are not spent (docs/design/index_coding.md).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedras_jax.compress import linalg
from fedras_jax.compress.base import (Compressor, check_bit_count, check_index_coding,
                                      check_value_bits, indexed_rows, stateless, with_overhead)
from fedras_jax.compress.wrappers import shared_basis
from fedras_jax.quantize import round_values


class CoLRPayload(NamedTuple):
  """a ``[n, r]``: the low-rank factor (masked rows zero); basis ``[r, d]``: the
  round's ``B``, rebuilt by the receiver from the shared key (not counted);
  bits: exact payload size."""
  a: jax.Array
  basis: jax.Array
  bits: jax.Array


def colr_bits(rank: int, num_index_rows: int, value_bits: int = 32) -> int:
  """``num_index_rows * rank * value_bits``: the ``A`` factor over the catalog."""
  return int(num_index_rows) * int(rank) * int(value_bits)


def _check_rank(rank: int, dim: int):
  if not 1 <= rank <= dim:
    raise ValueError(f"CoLR rank must be in [1, {dim}], got {rank}")


def colr_basis(key, rank: int, dim: int) -> jax.Array:
  """``[rank, dim]`` random orthonormal rows scaled by ``sqrt(dim / rank)``."""
  _check_rank(rank, dim)
  q, _ = linalg.qr(jax.random.normal(key, (dim, rank), jnp.float32))
  return jnp.sqrt(dim / rank) * q.T


def colr(num_index_rows: int,
         dim: int,
         *,
         rank: int,
         value_bits: int = 32,
         index_coding: str = "catalog") -> Compressor:
  """CoLR's payload behind the compressor contract (see the module docstring).

  ``encode`` projects any ``[n, d]`` rows onto ``B``'s row space (exact for
  updates trained by the round, which stay there); ``B`` comes from the context's
  shared key (``wrappers.shared_basis``). ``index_coding``: ``"catalog"`` (``A`` over every
  catalog row) or ``"touched"`` (module docstring).
  """
  check_index_coding(index_coding)
  check_value_bits(value_bits)
  _check_rank(rank, dim)
  check_bit_count(colr_bits(rank, num_index_rows, value_bits), "CoLR's payload")

  def basis(key):
    return colr_basis(key, rank, dim)

  def encode(rows, mask, budget_bits, key):
    del budget_bits  # fixed rate
    b = basis(key)
    live = mask & jnp.all(jnp.isfinite(rows), axis=1)
    x = jnp.where(live[:, None], rows, 0.0)
    a = jnp.matmul(x, b.T, precision=jax.lax.Precision.HIGHEST) * (rank / dim)
    index_rows, overhead = indexed_rows(jnp.any(x != 0, axis=1), num_index_rows, index_coding)
    return CoLRPayload(a=round_values(a, value_bits),
                       basis=b,
                       bits=with_overhead(index_rows * (rank * value_bits), overhead))

  def decode(payload: CoLRPayload):
    return jnp.matmul(payload.a, payload.basis, precision=jax.lax.Precision.HIGHEST)

  return shared_basis(stateless("colr", encode, decode), basis)
