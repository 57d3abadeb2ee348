"""Applying a per-matrix compressor to every client of a round at once."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedras_jax.compress.base import Compressor


class Roundtrip(NamedTuple):
  """decoded: rows as the receiver sees them (shape of the input); bits: int32
  payload sizes (``[M]`` for clients); payload: the encoded pytree (None when the
  compressor is lossless and was skipped)."""
  decoded: jax.Array
  bits: jax.Array
  payload: Any


def roundtrip(compressor: Compressor, rows, mask, budget_bits, key, *,
              lossless_bits: int) -> Roundtrip:
  """encode then decode one matrix ``rows [n, d]`` (a lossless one is skipped)."""
  if compressor.lossless:
    return Roundtrip(jnp.where(mask[:, None], rows, 0.0), jnp.int32(lossless_bits), None)
  payload = compressor.encode(rows, mask, budget_bits, key)
  return Roundtrip(compressor.decode(payload), payload.bits, payload)


def roundtrip_clients(compressor: Compressor, flat_rows, offset, num_slots, budget_bits,
                      keys, *, max_slots: int, lossless_bits: int) -> Roundtrip:
  """Compresses each client's rows of a flat slot buffer, ``vmap``-ed over clients.

  Args:
    flat_rows: ``[S, d]`` the round's slot rows, client ``c`` owning
      ``offset[c] : offset[c] + num_slots[c]``; budget_bits: ``[M]``; keys: ``[M]``.
    max_slots: static bound on ``num_slots``; each client is padded to it.
  Returns:
    decoded ``[S, d]`` in the same flat layout, bits ``[M]``, payloads ``[M, ...]``.
  """
  m = offset.shape[0]
  if compressor.lossless:
    return Roundtrip(flat_rows, jnp.full((m,), lossless_bits, jnp.int32), None)
  capacity = flat_rows.shape[0]
  local = jnp.arange(max_slots)
  index = offset[:, None] + local[None, :]
  mask = local[None, :] < num_slots[:, None]
  rows = jnp.where(mask[..., None], flat_rows[jnp.minimum(index, capacity - 1)], 0.0)
  payload = jax.vmap(compressor.encode)(rows, mask, budget_bits, keys)
  decoded = jax.vmap(compressor.decode)(payload)
  target = jnp.where(mask, index, capacity)
  flat = jnp.zeros_like(flat_rows).at[target.reshape(-1)].add(
      decoded.reshape(-1, decoded.shape[-1]), mode="drop")
  return Roundtrip(flat, payload.bits, payload)
