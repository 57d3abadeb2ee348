"""The compressor contract every uplink/downlink method goes through.

A compressor is a NamedTuple of pure functions on one client's update matrix:

* ``encode(rows [n, d], mask [n] bool, budget_bits, key) -> payload``: a pytree
  with an int32 ``bits`` field, the exact payload size; rows where ``mask`` is
  False carry no update (``budget_bits`` is a traced scalar, so every client in a
  ``vmap`` can have its own);
* ``decode(payload) -> rows [n, d]``: what the receiver reconstructs; masked rows
  decode to zero.

``lossless`` marks compressors with ``decode(encode(x)) == x`` that send the dense
float32 update; the round then skips their encode/decode and counts the dense size.

``on_embeddings`` marks compressors that code the receiver's NEW rows rather than
the update (e.g. K-Means of item embeddings): ``roundtrip``/``roundtrip_clients``
then need ``base_rows`` (the rows the update applies to), encode ``rows +
base_rows`` and return ``decoded - base_rows`` on the rows the payload's ``sent``
``[n]`` bool field marks (0 elsewhere: rows not sent keep their base row).

``init_memory`` marks compressors that can start from what they sent last time
(FedRAS's downlink: the last actions): ``init_memory(num_rows, dim) -> memory`` (a
pytree, "nothing yet"), and then ``encode(rows, mask, budget_bits, key, memory=m)``
warm-starts from ``m`` and returns a payload whose ``memory`` field is the next one.
Without ``memory`` (the default) the encode is cold and stateless.

``basis`` marks methods that own the client's parameterisation (CoLR):
``basis(key) -> B [r, d]``. The round then draws one basis key per round, trains
every client's item rows in ``B``'s row space (item-row gradients times
``B^T B``) and passes that key, not a per-client one, to ``encode``.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp


class Compressor(NamedTuple):
  name: str
  encode: Callable[..., Any]
  decode: Callable[[Any], jax.Array]
  lossless: bool = False
  on_embeddings: bool = False  # codes base_rows + update (see the module docstring)
  basis: Optional[Callable[[jax.Array], jax.Array]] = None  # shared round subspace
  init_memory: Optional[Callable[[int, int], Any]] = None  # warm start (module docstring)


def check_value_bits(value_bits: int):
  """Raises ``ValueError`` unless ``value_bits`` is 16 or 32 (what payloads support)."""
  if value_bits not in (16, 32):
    raise ValueError(f"value_bits must be 16 or 32, got {value_bits}")


def round_values(values, value_bits: int):
  """What a receiver gets from ``value_bits`` 32 (as is) or 16 (bfloat16, clipped to its
  finite range) float values."""
  if value_bits == 16:
    big = float(jnp.finfo(jnp.bfloat16).max)
    return jnp.clip(values, -big, big).astype(jnp.bfloat16).astype(jnp.float32)
  return values


def dense_bits(num_rows: int, dim: int, value_bits: int = 32) -> int:
  """Size in bits of a dense ``[num_rows, dim]`` matrix (Python int, exact)."""
  return int(num_rows) * int(dim) * int(value_bits)


class DensePayload(NamedTuple):
  """rows ``[n, d]`` sent as they are; bits: their dense size."""
  rows: jax.Array
  bits: jax.Array


def identity(num_index_rows: int) -> Compressor:
  """No compression: the dense float32 ``[num_index_rows, d]`` update is sent."""

  def encode(rows, mask, budget_bits, key):
    del budget_bits, key
    bits = jnp.int32(dense_bits(num_index_rows, rows.shape[-1]))
    return DensePayload(rows=jnp.where(mask[:, None], rows, 0.0), bits=bits)

  return Compressor(name="identity", encode=encode, decode=lambda p: p.rows, lossless=True)
