"""Combinators around a plain compressor: the round's special cases as compressors.

Each wrapper returns a :class:`~fedras_jax.compress.base.Compressor` (same name,
same protocol), so the round has one path for every method: ``init`` once,
``encode`` with the round's :class:`~fedras_jax.compress.base.Context`, ``decode``.

* :func:`error_feedback`: the sender's state holds the residual ``[n, d]``, what
  it failed to send; each encode codes ``update + residual``.
* :func:`cold_start`: a stateful compressor (FedRAS's warm-started actions) that
  starts every encode from its ``init``.
* :func:`on_embeddings`: the inner compressor codes ``context.base_rows + update``
  (e.g. K-Means of item embeddings); decode returns the implied update.
* :func:`shared_basis`: the inner compressor gets the round's shared key (CoLR's
  basis ``B [r, d]``) instead of a per-sender one, and the clients train their item
  rows in ``B``'s row space (``item_projection``: ``B^T B``).
* :func:`row_gains`: every row the inner compressor decodes to a nonzero row also
  gets a quantized gain, its least-squares scale onto the row it stands for
  (gain-shape coding: the inner compressor codes directions, the gains magnitudes).
"""
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedras_jax.compress.base import Compressor, Encoded, no_state
from fedras_jax.quantize.bits import saturating_int32


class FeedbackState(NamedTuple):
  """residual ``[n, d]``: what the sender failed to send so far; inner: the wrapped
  compressor's state."""
  residual: jax.Array
  inner: Any


def _feedback_init(inner: Compressor, num_rows: int, dim: int) -> FeedbackState:
  return FeedbackState(residual=jnp.zeros((num_rows, dim), jnp.float32),
                       inner=inner.init(num_rows, dim))


def _feedback_encode(inner: Compressor, rows, mask, budget_bits, key, state: FeedbackState,
                     context) -> Encoded:
  # Every row holding something unsent is sent: the residual holds rows of earlier
  # rounds, and a server optimizer with momentum moves rows nobody touched.
  del mask
  rows = rows + state.residual
  send = jnp.any(rows != 0, axis=1)
  coded = inner.encode(rows, send, budget_bits, key, state.inner, context)
  residual = rows - inner.decode(coded.payload)
  return Encoded(payload=coded.payload,
                 state=FeedbackState(residual=residual, inner=coded.state),
                 target=coded.target)


def error_feedback(inner: Compressor) -> Compressor:
  """``inner`` with error feedback: nothing of the update is lost, only delayed.

  Encodes ``rows + residual`` on every row where that is nonzero (``mask`` is not
  used) and keeps ``residual = that - decode(payload)`` as its state (``[n, d]``,
  zero at ``init``). With an exact inner compressor the residual stays zero.
  """
  return inner._replace(init=functools.partial(_feedback_init, inner),
                        encode=functools.partial(_feedback_encode, inner),
                        exact=False)  # it codes every nonzero row, not the masked ones


def _cold_encode(inner: Compressor, rows, mask, budget_bits, key, state, context) -> Encoded:
  coded = inner.encode(rows, mask, budget_bits, key, inner.init(*rows.shape), context)
  return coded._replace(state=state)


def cold_start(inner: Compressor) -> Compressor:
  """``inner`` started from its ``init`` at every encode; keeps no state."""
  return inner._replace(init=no_state, encode=functools.partial(_cold_encode, inner))


class EmbeddingPayload(NamedTuple):
  """inner: the inner compressor's payload of the new rows (with a ``sent [n]``
  bool field); base_rows ``[n, d]``: the rows the receiver already holds (not
  sent, not counted)."""
  inner: Any
  base_rows: jax.Array

  @property
  def bits(self):
    return self.inner.bits

  @property
  def num_actions(self):
    return self.inner.num_actions


def _embedding_encode(inner: Compressor, rows, mask, budget_bits, key, state, context) -> Encoded:
  if context.base_rows is None:
    raise ValueError(f"compressor {inner.name!r} codes embeddings (on_embeddings): pass "
                     "base_rows, the rows the update applies to")
  coded = inner.encode(rows + context.base_rows, mask, budget_bits, key, state, context)
  return Encoded(payload=EmbeddingPayload(inner=coded.payload, base_rows=context.base_rows),
                 state=coded.state,
                 target=jnp.where(mask[:, None], rows, 0.0))


def _embedding_decode(inner: Compressor, payload: EmbeddingPayload) -> jax.Array:
  decoded = inner.decode(payload.inner) - payload.base_rows
  return jnp.where(payload.inner.sent[:, None], decoded, 0.0)


def on_embeddings(inner: Compressor) -> Compressor:
  """``inner`` coding the receiver's new rows ``context.base_rows + update``.

  ``inner``'s payload must mark the rows it sent (``sent [n]`` bool); decode is
  ``inner``'s decode minus the base rows on those rows, 0 elsewhere (rows not
  sent keep their base row). Encoding without ``context.base_rows`` raises.
  """
  return inner._replace(encode=functools.partial(_embedding_encode, inner),
                        decode=functools.partial(_embedding_decode, inner))


def _shared_key_encode(inner: Compressor, rows, mask, budget_bits, key, state, context) -> Encoded:
  del key
  return inner.encode(rows, mask, budget_bits, context.shared_key, state, context)


def _basis_projection(basis: Callable[[Any], jax.Array], shared_key) -> jax.Array:
  b = basis(shared_key)
  return b.T @ b


def shared_basis(inner: Compressor, basis: Callable[[Any], jax.Array]) -> Compressor:
  """``inner`` in a subspace shared by the round: ``basis(key) -> B [r, d]``.

  ``inner`` gets ``context.shared_key`` (the round's, the same for every client
  and the server) instead of its own key, and ``item_projection`` is ``B^T B``
  ``[d, d]``: the round trains every client's item rows in ``B``'s row space.
  """
  return inner._replace(encode=functools.partial(_shared_key_encode, inner),
                        item_projection=functools.partial(_basis_projection, basis))


class GainPayload(NamedTuple):
  """inner: the inner compressor's payload; codes ``[n]`` int32: each row's gain
  code (``gain_codes``); lo, hi: ``[]`` float32 log2 range of the gains' magnitudes;
  on: ``[]`` bool, gains sent (False when the inner payload was exact);
  bits: the inner payload's bits plus the gains' (``gain_bits`` per nonzero decoded
  row and 64 for the range, when on)."""
  inner: Any
  codes: jax.Array
  lo: jax.Array
  hi: jax.Array
  on: jax.Array
  bits: jax.Array

  @property
  def num_actions(self):
    return self.inner.num_actions


def _gain_step(lo, hi, gain_bits: int):
  """``(L, step)``: the number of nonzero levels and their spacing in log2."""
  levels = 2**(gain_bits - 1) - 1
  return levels, jnp.where(hi > lo, (hi - lo) / (levels - 1), 1.0)


def gain_codes(gains, sent, gain_bits: int):
  """Quantizes ``gains [n]`` (where ``sent [n]``) to ``gain_bits``-bit codes.

  A code is a sign bit and a level: 0 for a zero gain, else ``1 .. L`` (``L =
  2^(gain_bits - 1) - 1``) spaced evenly in ``log2 |gain|`` between the smallest and
  largest over the sent rows (``lo``, ``hi``), nearest level. Returns ``(codes [n]
  int32, lo, hi)``; :func:`gain_values` inverts it.
  """
  mag = jnp.abs(gains)
  nonzero = sent & (mag > 0)
  log_mag = jnp.log2(jnp.where(nonzero, mag, 1.0))
  lo = jnp.min(jnp.where(nonzero, log_mag, jnp.inf))
  hi = jnp.max(jnp.where(nonzero, log_mag, -jnp.inf))
  lo, hi = jnp.where(jnp.any(nonzero), lo, 0.0), jnp.where(jnp.any(nonzero), hi, 0.0)
  levels, step = _gain_step(lo, hi, gain_bits)
  level = 1 + jnp.clip(jnp.round((log_mag - lo) / step), 0, levels - 1).astype(jnp.int32)
  codes = jnp.where(nonzero, level, 0) + jnp.where(gains < 0, levels + 1, 0)
  return codes, lo, hi


def gain_values(codes, lo, hi, gain_bits: int):
  """``[n]`` float32 gains of :func:`gain_codes`'s ``codes`` and range."""
  levels, step = _gain_step(lo, hi, gain_bits)
  negative = codes > levels
  level = jnp.where(negative, codes - levels - 1, codes)
  mag = jnp.where(level > 0, jnp.exp2(lo + (level - 1).astype(jnp.float32) * step), 0.0)
  return jnp.where(negative, -mag, mag)


def _gains_encode(inner: Compressor, gain_bits: int, rows, mask, budget_bits, key, state,
                  context) -> Encoded:
  # The gains' bits are set aside first, for the masked rows with an update: the rows
  # an update coder can decode nonzero.
  candidates = jnp.sum(mask & jnp.any(rows != 0, axis=1), dtype=jnp.int32)
  coded = inner.encode(rows, mask, budget_bits - candidates * gain_bits - 64, key, state, context)
  approx = inner.decode(coded.payload)
  norm2 = jnp.sum(approx * approx, axis=1)
  sent = norm2 > 0  # the receiver knows these rows: they decode nonzero
  gains = jnp.where(sent, jnp.sum(coded.target * approx, axis=1) / jnp.where(sent, norm2, 1.0), 1.0)
  codes, lo, hi = gain_codes(gains, sent, gain_bits)
  gain_size = jnp.sum(sent, dtype=jnp.int32) * gain_bits + 64
  # A coder of new rows (``on_embeddings``) also decodes masked rows without an update
  # nonzero, beyond the set-aside: when the gains do not fit what is left, none are sent.
  fits = gain_size <= jnp.maximum(saturating_int32(budget_bits), 0) - coded.payload.bits
  on = jnp.any(sent) & jnp.any(approx != coded.target) & fits
  bits = coded.payload.bits + jnp.where(on, gain_size, 0)
  return coded._replace(
      payload=GainPayload(inner=coded.payload, codes=codes, lo=lo, hi=hi, on=on, bits=bits))


def _gains_decode(inner: Compressor, gain_bits: int, payload: GainPayload) -> jax.Array:
  gains = gain_values(payload.codes, payload.lo, payload.hi, gain_bits)
  return inner.decode(payload.inner) * jnp.where(payload.on, gains, 1.0)[:, None]


def row_gains(inner: Compressor, gain_bits: int) -> Compressor:
  """``inner`` with a ``gain_bits``-bit gain per nonzero decoded row (gain-shape coding).

  Encodes with the budget less the gains' share (``gain_bits`` per masked nonzero row, 64
  for the range), decodes, and sends for every row ``i`` that decodes nonzero the
  quantized (:func:`gain_codes`) least-squares gain ``g_i = t_i . a_i / |a_i|^2`` of its
  decoded row ``a_i`` onto the row ``t_i`` it stands for; decode is ``g_i a_i``. Never
  over the budget: when the gains of the rows that decode nonzero do not fit what the
  inner payload left (a coder of new rows, ``on_embeddings``, decodes rows without an
  update too), none are sent. An action quantizer's decoded rows are shared directions
  (the centroids): the gains restore each row's magnitude, which a cosine split test does
  not see (docs/design/fedras.md). Sends no gains (and counts none) when the inner payload
  decoded exactly. An exact ``inner`` is returned as it is.
  """
  if inner.exact:
    return inner
  if not 3 <= gain_bits <= 16:
    raise ValueError(f"gain_bits must be in [3, 16], got {gain_bits}")
  return inner._replace(encode=functools.partial(_gains_encode, inner, gain_bits),
                        decode=functools.partial(_gains_decode, inner, gain_bits))
