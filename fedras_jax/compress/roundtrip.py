"""Applying a per-matrix compressor to every client of a round at once."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

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


def _encode_decode(compressor: Compressor, rows, mask, budget_bits, key, base_rows, memory=None):
  """One matrix's ``(payload, decoded update)``; ``base_rows`` only for on_embeddings,
  ``memory`` only for warm-started compressors."""
  extra = {} if memory is None else dict(memory=memory)
  if not compressor.on_embeddings:
    payload = compressor.encode(rows, mask, budget_bits, key, **extra)
    return payload, compressor.decode(payload)
  payload = compressor.encode(rows + base_rows, mask, budget_bits, key, **extra)
  decoded = compressor.decode(payload) - base_rows
  return payload, jnp.where(payload.sent[:, None], decoded, 0.0)


def roundtrip(compressor: Compressor,
              rows,
              mask,
              budget_bits,
              key,
              *,
              lossless_bits: int,
              base_rows=None,
              memory=None) -> Roundtrip:
  """encode then decode one matrix ``rows [n, d]`` (a lossless one is skipped).

  base_rows: ``[n, d]`` the rows the update applies to (e.g. the item table); needed
  by (only used for) ``on_embeddings`` compressors. memory: warm start of a
  compressor with ``init_memory`` (the result's ``memory`` is the next one).
  """
  _check_base(compressor, base_rows)
  if memory is not None and compressor.init_memory is None:
    raise ValueError(f"compressor {compressor.name!r} keeps no memory (init_memory is None)")
  if compressor.lossless:
    return Roundtrip(jnp.where(mask[:, None], rows, 0.0), jnp.int32(lossless_bits), jnp.int32(-1),
                     memory)
  payload, decoded = _encode_decode(compressor, rows, mask, budget_bits, key, base_rows, memory)
  return Roundtrip(decoded, payload.bits, _num_actions(payload, ()),
                   None if memory is None else payload.memory)


def roundtrip_clients(compressor: Compressor,
                      flat_rows,
                      offset,
                      num_slots,
                      budget_bits,
                      keys,
                      *,
                      buckets,
                      lossless_bits: int,
                      base_rows=None) -> Roundtrip:
  """Compresses each client's rows of a flat slot buffer, ``vmap``-ed over clients.

  Args:
    flat_rows: ``[S, d]`` the round's slot rows, client ``c`` owning
      ``offset[c] : offset[c] + num_slots[c]`` (clients in order: ``offset``
      non-decreasing, as ``slot_layout`` makes it); budget_bits: ``[M]``; keys: ``[M]``.
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
  capacity, d = flat_rows.shape
  order = jnp.argsort(-num_slots)  # M keys: cheap
  bits = jnp.zeros((m,), jnp.int32)
  num_actions = jnp.zeros((m,), jnp.int32)
  first_row = jnp.zeros((m,), jnp.int32)  # client -> its first row in the bucket outputs
  # Each client's rows are one contiguous window of the flat buffer (padded so that
  # every window fits): a gather of whole windows, not of single rows. Rows past a
  # client's own are masked (a compressor ignores them; they hold the next client's).
  widest = max(width for _, width in buckets)
  pad = lambda x: jnp.concatenate([x, jnp.zeros((widest, d), x.dtype)])
  rows_pad = pad(flat_rows)
  base_pad = pad(base_rows) if compressor.on_embeddings else None
  outputs, start, rows_so_far = [], 0, 0
  for count, width in buckets:
    clients = order[start:start + count]
    start += count
    window = jax.vmap(lambda x, o, w=width: lax.dynamic_slice(x, (o, 0), (w, d)), (None, 0))
    mask = jnp.arange(width)[None, :] < num_slots[clients, None]
    rows = window(rows_pad, offset[clients])
    base = None if base_pad is None else window(base_pad, offset[clients])
    payload, decoded = jax.vmap(
        lambda r, msk, b, k, base: _encode_decode(compressor, r, msk, b, k, base))(
            rows, mask, budget_bits[clients], keys[clients], base)
    outputs.append(decoded.reshape(-1, d))
    first_row = first_row.at[clients].set(rows_so_far + width * jnp.arange(count))
    rows_so_far += count * width
    bits = bits.at[clients].set(payload.bits)
    num_actions = num_actions.at[clients].set(_num_actions(payload, (count,)))
  # Back to the flat layout by a gather (XLA:CPU gathers rows faster than it
  # scatters them): slot s of client c, local row s - offset[c].
  slot = jnp.arange(capacity)
  owner = jnp.clip(jnp.searchsorted(offset, slot, side="right") - 1, 0, m - 1)
  local = slot - offset[owner]
  inside = (local >= 0) & (local < num_slots[owner])
  decoded = jnp.concatenate(outputs)[jnp.where(inside, first_row[owner] + local, 0)]
  return Roundtrip(jnp.where(inside[:, None], decoded, 0.0), bits, num_actions)
