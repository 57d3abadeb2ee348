"""Applying a per-matrix compressor to every client of a round at once."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedras_jax.compress.base import Compressor


class Roundtrip(NamedTuple):
  """decoded: rows as the receiver sees them (shape of the input); bits: int32
  payload sizes (``[M]`` for clients); num_actions: actions used (-1 where the
  compressor has no such notion); memory: a warm-started encode's next memory
  (``roundtrip`` with ``memory``; None otherwise)."""
  decoded: jax.Array
  bits: jax.Array
  num_actions: jax.Array
  memory: Any = None


def _num_actions(payload, shape):
  return getattr(payload, "num_actions", jnp.full(shape, -1, jnp.int32))


def _check_base(compressor: Compressor, base_rows):
  if compressor.on_embeddings and base_rows is None:
    raise ValueError(f"compressor {compressor.name!r} codes embeddings (on_embeddings=True): "
                     "pass base_rows, the rows the update applies to")


def _encode_decode(compressor: Compressor, rows, mask, budget_bits, key, base_rows,
                   memory=None):
  """One matrix's ``(payload, decoded update)``; ``base_rows`` only for on_embeddings,
  ``memory`` only for warm-started compressors."""
  extra = {} if memory is None else dict(memory=memory)
  if not compressor.on_embeddings:
    payload = compressor.encode(rows, mask, budget_bits, key, **extra)
    return payload, compressor.decode(payload)
  payload = compressor.encode(rows + base_rows, mask, budget_bits, key, **extra)
  decoded = compressor.decode(payload) - base_rows
  return payload, jnp.where(payload.sent[:, None], decoded, 0.0)


def roundtrip(compressor: Compressor, rows, mask, budget_bits, key, *,
              lossless_bits: int, base_rows=None, memory=None) -> Roundtrip:
  """encode then decode one matrix ``rows [n, d]`` (a lossless one is skipped).

  base_rows: ``[n, d]`` the rows the update applies to (e.g. the item table); needed
  by (only used for) ``on_embeddings`` compressors. memory: warm start of a
  compressor with ``init_memory`` (the result's ``memory`` is the next one).
  """
  _check_base(compressor, base_rows)
  if memory is not None and compressor.init_memory is None:
    raise ValueError(f"compressor {compressor.name!r} keeps no memory (init_memory is None)")
  if compressor.lossless:
    return Roundtrip(jnp.where(mask[:, None], rows, 0.0), jnp.int32(lossless_bits),
                     jnp.int32(-1), memory)
  payload, decoded = _encode_decode(compressor, rows, mask, budget_bits, key, base_rows,
                                    memory)
  return Roundtrip(decoded, payload.bits, _num_actions(payload, ()),
                   None if memory is None else payload.memory)


def roundtrip_clients(compressor: Compressor, flat_rows, offset, num_slots, budget_bits,
                      keys, *, buckets, lossless_bits: int, base_rows=None) -> Roundtrip:
  """Compresses each client's rows of a flat slot buffer, ``vmap``-ed over clients.

  Args:
    flat_rows: ``[S, d]`` the round's slot rows, client ``c`` owning
      ``offset[c] : offset[c] + num_slots[c]``; budget_bits: ``[M]``; keys: ``[M]``.
    buckets: static ``((count, width), ...)`` with counts summing to ``M``: the
      ``count`` largest remaining clients are padded to ``width`` rows (widths
      must bound their clients' ``num_slots``; see ``plan_capacity``). Padding
      every client to the largest one wastes most of a quantizer's work.
    base_rows: ``[S, d]`` flat like ``flat_rows``: the rows each slot's update
      applies to (the slot's item row); needed by (only used for) ``on_embeddings``
      compressors.
  Returns:
    decoded ``[S, d]`` in the same flat layout, bits ``[M]``, num_actions ``[M]``.
  """
  m = offset.shape[0]
  _check_base(compressor, base_rows)
  if compressor.lossless:
    return Roundtrip(flat_rows, jnp.full((m,), lossless_bits, jnp.int32),
                     jnp.full((m,), -1, jnp.int32))
  if sum(count for count, _ in buckets) != m:
    raise ValueError(f"buckets {buckets} do not cover {m} clients")
  capacity = flat_rows.shape[0]
  order = jnp.argsort(-num_slots)  # M keys: cheap
  decoded_flat = jnp.zeros_like(flat_rows)
  bits = jnp.zeros((m,), jnp.int32)
  num_actions = jnp.zeros((m,), jnp.int32)
  start = 0
  for count, width in buckets:
    clients = order[start:start + count]
    start += count
    local = jnp.arange(width)
    index = offset[clients, None] + local[None, :]
    mask = local[None, :] < num_slots[clients, None]
    gather = jnp.minimum(index, capacity - 1)
    rows = jnp.where(mask[..., None], flat_rows[gather], 0.0)
    base = None if not compressor.on_embeddings else jnp.where(mask[..., None],
                                                               base_rows[gather], 0.0)
    payload, decoded = jax.vmap(
        lambda r, msk, b, k, base: _encode_decode(compressor, r, msk, b, k, base))(
            rows, mask, budget_bits[clients], keys[clients], base)
    target = jnp.where(mask, index, capacity)
    decoded_flat = decoded_flat.at[target.reshape(-1)].add(
        decoded.reshape(-1, decoded.shape[-1]), mode="drop")
    bits = bits.at[clients].set(payload.bits)
    num_actions = num_actions.at[clients].set(_num_actions(payload, (count,)))
  return Roundtrip(decoded_flat, bits, num_actions)
