"""The compressor protocol every uplink/downlink method goes through.

A compressor is a NamedTuple of pure functions, like an optax
``GradientTransformation``:

* ``init(num_rows, dim) -> state``: the state a sender starts from (a pytree;
  ``()`` for stateless compressors);
* ``encode(rows [n, d], mask [n] bool, budget_bits, key, state, context) ->
  Encoded``: the payload (a pytree with an int32 ``bits`` field, the exact payload
  size, and optionally an int32 ``num_actions``), the sender's next state and the
  update the payload stands for. Rows where ``mask`` is False carry no update
  (``budget_bits`` is a traced scalar, so every client in a ``vmap`` can have its
  own);
* ``decode(payload) -> rows [n, d]``: the update the receiver reconstructs;
  masked rows decode to zero;
* ``item_projection(shared_key) -> [d, d] or None``: the projection the round
  applies to the clients' item-row gradients before training (None: none);
* ``exact``: True when ``decode(encode(rows, mask, ...).payload)`` is always the
  masked rows, the state never changes and ``bits`` depends on neither the rows
  nor their count (``identity``). A promise that lets ``roundtrip_clients`` and the
  round skip work whose result they know (the per-client pass, a second
  aggregation); the results are those of the general path (tested).

``context`` (:class:`Context`) is what sender and receiver both know: the rows
the update applies to and the round's shared key. A plain compressor ignores it;
the wrappers below use it. A plain compressor is a module with ``encode(rows,
mask, budget_bits, key) -> payload`` and ``decode(payload) -> rows`` made into a
``Compressor`` by :func:`stateless`; the round's special cases are wrappers
around it, each again a ``Compressor``:

* :func:`error_feedback`: the sender keeps what it failed to send (its state) and
  adds it to the next update;
* :func:`cold_start`: a stateful compressor that starts every encode from
  ``init`` (and keeps no state);
* :func:`on_embeddings`: the compressor codes the receiver's NEW rows
  (``context.base_rows + update``) rather than the update;
* :func:`shared_basis`: the compressor codes in a subspace drawn per round from
  ``context.shared_key`` (CoLR), in which the clients also train.
"""
import functools
import numbers
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp


class Context(NamedTuple):
  """What sender and receiver both know besides the payload.

  base_rows: ``[n, d]`` the rows the update applies to (the receiver's item rows);
  shared_key: the round's key common to every client and the server. Either may be
  None (not given) when no compressor of the chain needs it.
  """
  base_rows: Any = None
  shared_key: Any = None


class Encoded(NamedTuple):
  """What ``Compressor.encode`` returns: payload (has an int32 ``bits`` field);
  state: the sender's next state; target ``[n, d]``: the update the payload stands
  for (the masked rows; with error feedback, plus the residual), what ``decode``
  approximates."""
  payload: Any
  state: Any
  target: jax.Array


def no_state(num_rows: int, dim: int):
  """``init`` of a stateless compressor: the empty state ``()``."""
  del num_rows, dim
  return ()


def no_projection(shared_key) -> None:
  """``item_projection`` of a compressor that leaves local training alone."""
  del shared_key


class Compressor(NamedTuple):
  """The protocol (module docstring): name, init, encode, decode, item_projection,
  exact."""
  name: str
  init: Callable[[int, int], Any]
  encode: Callable[..., Encoded]
  decode: Callable[[Any], jax.Array]
  item_projection: Callable[[Any], Optional[jax.Array]] = no_projection
  exact: bool = False


def _stateless_encode(plain_encode, rows, mask, budget_bits, key, state, context) -> Encoded:
  del context
  return Encoded(payload=plain_encode(rows, mask, budget_bits, key),
                 state=state,
                 target=jnp.where(mask[:, None], rows, 0.0))


def stateless(name: str, encode: Callable[..., Any], decode: Callable[[Any],
                                                                      jax.Array]) -> Compressor:
  """A plain ``encode(rows [n, d], mask [n], budget_bits, key) -> payload`` and
  ``decode(payload) -> rows [n, d]`` as a stateless :class:`Compressor`."""
  return Compressor(name=name,
                    init=no_state,
                    encode=functools.partial(_stateless_encode, encode),
                    decode=decode)


def check_value_bits(value_bits: int):
  """Raises ``ValueError`` unless ``value_bits`` is 16 or 32 (what payloads support)."""
  if value_bits not in (16, 32):
    raise ValueError(f"value_bits must be 16 or 32, got {value_bits}")


def units_bits(count, unit_bits: int):
  """``max(count, 0) * unit_bits``: the size of ``count`` equal units (a rank, an entry).

  Python int for a Python ``count``, else an int32 array.
  """
  if isinstance(count, numbers.Integral):
    return max(int(count), 0) * int(unit_bits)
  return jnp.maximum(jnp.asarray(count, jnp.int32), 0) * jnp.int32(unit_bits)


def units_for_budget(budget_bits, unit_bits: int, max_units: int):
  """Largest ``count <= max_units`` with ``units_bits(count, unit_bits) <= budget_bits``
  (traced int32; 0 for a negative budget)."""
  count = jnp.maximum(jnp.asarray(budget_bits, jnp.int32), 0) // jnp.asarray(unit_bits, jnp.int32)
  return jnp.minimum(count, max_units).astype(jnp.int32)


def round_up(x, granule: int) -> int:
  """``x`` rounded up to a multiple of ``granule`` (a Python int): static buffer sizes
  coarse enough that runs of similar size share compiled programs."""
  return -(-int(x) // granule) * granule


INDEX_CODINGS = ("catalog", "touched")


def check_index_coding(index_coding: str):
  """Raises ``ValueError`` unless ``index_coding`` is one of ``INDEX_CODINGS``."""
  if index_coding not in INDEX_CODINGS:
    raise ValueError(f"index_coding must be one of {INDEX_CODINGS}, got {index_coding!r}")


def indexed_rows(sent, num_index_rows: int, index_coding: str):
  """``(rows, overhead_bits)``: how many rows a payload addresses, and what addressing them
  costs besides their per-row content (docs/design/index_coding.md).

  * ``"catalog"``: every one of the ``num_index_rows`` catalog rows carries its content (an
    index, a row of ``U``), the unsent ones a "no update" code: ``(num_index_rows, 0)``.
  * ``"touched"``: a presence bitmap of ``num_index_rows`` bits says which rows are sent,
    and only those ``sum(sent)`` rows carry content: ``(sum(sent), num_index_rows)``.

  Args:
    sent: ``[n]`` bool, the rows the payload updates.
  Returns:
    int32 arrays. A payload that sends nothing costs nothing: the caller adds the
    overhead only to a non-empty payload (:func:`with_overhead`).
  """
  check_index_coding(index_coding)
  if index_coding == "catalog":
    return jnp.int32(num_index_rows), jnp.int32(0)
  return jnp.sum(sent, dtype=jnp.int32), jnp.int32(num_index_rows)


def content_budget(budget_bits, overhead_bits):
  """What is left of ``budget_bits`` for content once ``overhead_bits`` are set aside (int32,
  at least 0; never overflows)."""
  budget = jnp.asarray(budget_bits, jnp.int32)
  return jnp.maximum(budget, overhead_bits) - overhead_bits


def with_overhead(content_bits, overhead_bits):
  """``content_bits`` plus ``overhead_bits`` when the content is not empty (int32)."""
  content = jnp.asarray(content_bits, jnp.int32)
  return jnp.where(content > 0, content + overhead_bits, 0).astype(jnp.int32)


def dense_bits(num_rows: int, dim: int, value_bits: int = 32) -> int:
  """Size in bits of a dense ``[num_rows, dim]`` matrix (Python int, exact)."""
  return int(num_rows) * int(dim) * int(value_bits)


def check_bit_count(bits: int, what: str) -> int:
  """``bits`` if it fits the payloads' int32 bit counts (below ``2**31``), else a
  ValueError naming ``what`` (e.g. a dense table of 2**20 rows of 64 floats)."""
  if bits >= 2**31:
    raise ValueError(f"{what} of {bits:,} bits does not fit the int32 bit counts "
                     "(below 2**31): use fewer rows or narrower ones")
  return bits


class DensePayload(NamedTuple):
  """rows ``[n, d]`` sent as they are; bits: their dense size."""
  rows: jax.Array
  bits: jax.Array


def _dense_encode(num_index_rows: int, rows, mask, budget_bits, key) -> DensePayload:
  del budget_bits, key
  bits = jnp.int32(check_bit_count(dense_bits(num_index_rows, rows.shape[-1]), "a dense payload"))
  return DensePayload(rows=jnp.where(mask[:, None], rows, 0.0), bits=bits)


def _dense_decode(payload: DensePayload) -> jax.Array:
  return payload.rows


def identity(num_index_rows: int) -> Compressor:
  """No compression: the dense float32 ``[num_index_rows, d]`` update is sent
  (``decode(encode(x))`` is the masked ``x``: no error, nothing to feed back)."""
  return stateless("identity", functools.partial(_dense_encode, num_index_rows),
                   _dense_decode)._replace(exact=True)
