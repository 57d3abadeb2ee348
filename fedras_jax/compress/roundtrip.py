"""Encoding then decoding one matrix, or every client of a round at once."""
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fedras_jax.compress.base import Compressor, Context


class Roundtrip(NamedTuple):
  """decoded: rows as the receiver sees them (shape of the input); bits: int32
  payload sizes (``[M]`` for clients); num_actions: actions used (-1 where the
  compressor has no such notion); target: the update the payload stood for, shape of
  ``decoded`` (``roundtrip``: ``Encoded.target``; ``roundtrip_clients``: its
  ``flat_rows``); state: the sender's next state
  (``roundtrip``; None for clients, who keep none); payload: what was sent
  (``roundtrip``; None for clients)."""
  decoded: jax.Array
  bits: jax.Array
  num_actions: jax.Array
  target: jax.Array
  state: Any = None
  payload: Any = None


def _num_actions(payload, shape):
  return getattr(payload, "num_actions", jnp.full(shape, -1, jnp.int32))


def roundtrip(compressor: Compressor,
              rows,
              mask,
              budget_bits,
              key,
              *,
              state=None,
              context: Context = Context()) -> Roundtrip:
  """encode then decode one matrix ``rows [n, d]`` (``mask [n]`` bool).

  state: the sender's state (default ``compressor.init(n, d)``); context: what the
  receiver knows too (``Context``: base rows ``[n, d]``, the round's shared key).
  """
  if state is None:
    state = compressor.init(*rows.shape)
  coded = compressor.encode(rows, mask, budget_bits, key, state, context)
  return Roundtrip(decoded=compressor.decode(coded.payload),
                   bits=coded.payload.bits,
                   num_actions=_num_actions(coded.payload, ()),
                   target=coded.target,
                   state=coded.state,
                   payload=coded.payload)


def _client_roundtrip(compressor: Compressor, rows, mask, budget_bits, key, base_rows, shared_key):
  """One client's ``(payload, decoded [width, d])``, from the compressor's ``init``."""
  coded = compressor.encode(rows, mask, budget_bits, key, compressor.init(*rows.shape),
                            Context(base_rows=base_rows, shared_key=shared_key))
  return coded.payload, compressor.decode(coded.payload)


def _windows(flat, starts, width: int):
  """``[len(starts), width, d]`` windows of ``flat [S, d]`` starting at ``starts``."""
  return jax.vmap(lambda o: lax.dynamic_slice(flat, (o, 0), (width, flat.shape[1])))(starts)


def _exact_roundtrip(compressor: Compressor, flat_rows, inside, budget_bits, keys,
                     context: Context) -> Roundtrip:
  """``roundtrip_clients`` of an ``exact`` compressor: every client's rows come back as
  they are; its bits (which depend on no row) from encoding one empty row each."""
  d = flat_rows.shape[1]

  def client_bits(budget, key):
    empty = jnp.zeros((1, d), flat_rows.dtype)
    coded = compressor.encode(empty, jnp.zeros((1,), bool), budget, key, compressor.init(1, d),
                              context._replace(base_rows=None))
    return coded.payload.bits, _num_actions(coded.payload, ())

  bits, num_actions = jax.vmap(client_bits)(budget_bits, keys)
  return Roundtrip(decoded=jnp.where(inside[:, None], flat_rows, 0.0),
                   bits=bits,
                   num_actions=num_actions,
                   target=flat_rows)


def roundtrip_clients(compressor: Compressor,
                      flat_rows,
                      offset,
                      num_slots,
                      budget_bits,
                      keys,
                      *,
                      buckets,
                      context: Context = Context()) -> Roundtrip:
  """Compresses each client's rows of a flat slot buffer, ``vmap``-ed over clients.

  Clients keep no state: each encode starts from ``compressor.init(width, d)``.

  Args:
    flat_rows: ``[S, d]`` the round's slot rows, client ``c`` owning
      ``offset[c] : offset[c] + num_slots[c]`` (clients in order: ``offset``
      non-decreasing, as ``slot_layout`` makes it).
    offset, num_slots: ``[M]`` int32, each client's first slot and slot count.
    budget_bits: ``[M]``; keys: ``[M]``.
    buckets: static ``((count, width), ...)`` with counts summing to ``M``: the
      ``count`` largest remaining clients are padded to ``width`` rows (widths
      must bound their clients' ``num_slots``; see ``plan_capacity``). Padding
      every client to the largest one wastes most of a quantizer's work.
    context: ``base_rows`` ``[S, d]`` flat like ``flat_rows`` (the rows each slot's
      update applies to, the slot's item row; each client gets its window) and the
      round's ``shared_key`` (the same for every client).
  Returns:
    decoded ``[S, d]`` in the same flat layout, bits ``[M]``, num_actions ``[M]``,
    target: ``flat_rows``.
  """
  m = offset.shape[0]
  if sum(count for count, _ in buckets) != m:
    raise ValueError(f"buckets {buckets} do not cover {m} clients")
  capacity, d = flat_rows.shape
  slot = jnp.arange(capacity)
  owner = jnp.clip(jnp.searchsorted(offset, slot, side="right") - 1, 0, m - 1)
  local = slot - offset[owner]
  inside = (local >= 0) & (local < num_slots[owner])
  if compressor.exact:
    return _exact_roundtrip(compressor, flat_rows, inside, budget_bits, keys, context)
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
  base_pad = None if context.base_rows is None else pad(context.base_rows)
  outputs, start, rows_so_far = [], 0, 0
  for count, width in buckets:
    clients = order[start:start + count]
    start += count
    mask = jnp.arange(width)[None, :] < num_slots[clients, None]
    base = None if base_pad is None else _windows(base_pad, offset[clients], width)
    payload, decoded = jax.vmap(functools.partial(_client_roundtrip, compressor),
                                (0, 0, 0, 0, 0, None))(_windows(rows_pad, offset[clients],
                                                                width), mask, budget_bits[clients],
                                                       keys[clients], base, context.shared_key)
    outputs.append(decoded.reshape(-1, d))
    first_row = first_row.at[clients].set(rows_so_far + width * jnp.arange(count))
    rows_so_far += count * width
    bits = bits.at[clients].set(payload.bits)
    num_actions = num_actions.at[clients].set(_num_actions(payload, (count,)))
  # Back to the flat layout by a gather (XLA:CPU gathers rows faster than it
  # scatters them): slot s of client c, local row s - offset[c].
  decoded = jnp.concatenate(outputs)[jnp.where(inside, first_row[owner] + local, 0)]
  return Roundtrip(decoded=jnp.where(inside[:, None], decoded, 0.0),
                   bits=bits,
                   num_actions=num_actions,
                   target=flat_rows)
