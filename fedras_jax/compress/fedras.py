"""FedRAS's compressor: the action quantizer behind the compressor contract.

A thin wrapper over ``fedras_jax.quantize``: the client's update rows become at
most ``max_k`` actions (K-Means centroids) plus one index per catalog item, K
chosen by the client's bit budget and the cosine split test. When the touched rows
themselves fit the budget (``n_touched * d * value_bits`` bits plus a presence bit
per catalog item), they go dense instead: the rows as ``value_bits`` floats (16: rounded
to bfloat16, as the centroids), no larger than allowed.

With ``stages > 1`` the rows are sent as a sum of actions (residual K-Means): each
stage clusters what the stages before it left, with an equal share of what is left
of the budget (docs/design/residual_stages.md).

``index_coding="touched"`` addresses the rows with a presence bitmap (one bit per catalog
item, sent once for all stages) and gives indices to the sent rows only, instead of one
index per catalog item (docs/design/index_coding.md).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedras_jax import quantize
from fedras_jax.compress.base import (Compressor, Encoded, check_index_coding, content_budget,
                                      indexed_rows, with_overhead)
from fedras_jax.quantize.bits import saturating_int32


class FedRASPayload(NamedTuple):
  """actions: the quantizer's ``ActionPayload``, or a tuple of one per stage when
  ``stages > 1``; dense_rows ``[n, d]``: the rows when sent dense; is_dense: which form
  was sent; num_actions: K, summed over the stages (0 when dense); bits: exact size of
  what was sent."""
  actions: quantize.ActionPayload
  dense_rows: jax.Array
  is_dense: jax.Array
  num_actions: jax.Array
  bits: jax.Array


def sparse_dense_bits(num_rows_sent, num_index_rows, dim, value_bits=32):
  """Bits of sending ``num_rows_sent`` rows as values plus a presence bitmap (0 for no
  rows: nothing is sent)."""
  return with_overhead(num_rows_sent * dim * value_bits, num_index_rows)


def dense_fits(num_rows_sent, num_index_rows, dim, value_bits, budget_bits):
  """Whether ``sparse_dense_bits(num_rows_sent, ...) <= budget_bits`` (bool array).

  Asked as a row count, which cannot overflow: rows whose dense size passes ``2**31``
  bits never fit (their int32 size would wrap to a small number).
  """
  rows_that_fit = content_budget(saturating_int32(budget_bits),
                                 num_index_rows) // (dim * value_bits)
  return jnp.where(num_rows_sent == 0,
                   jnp.asarray(budget_bits) >= 0, num_rows_sent <= rows_that_fit)


def fedras(num_index_rows: int,
           *,
           max_k: int,
           tau: float = 0.9,
           tau_mode: str = "auto",
           value_bits: int = 32,
           max_iters: int = 2,
           dense_fallback: bool = True,
           stages: int = 1,
           index_coding: str = "catalog") -> Compressor:
  """The FedRAS action compressor.

  Args:
    num_index_rows: the catalog size: under ``index_coding="catalog"`` the rows that
      carry an index, so the receiver knows which item each index belongs to; under
      ``"touched"`` the bitmap's length.
    max_k: static bound on actions (the budget usually binds first).
    tau, tau_mode: the split test's cosine threshold (see ``quantize.encode``);
      with ``tau_mode="fixed"``, ``tau > 1`` disables adaptivity: every client uses
      the budget's K.
    max_iters: Lloyd M-steps per refinement (one after each split test). 2 by default:
      a bisection already leaves the halves near a fixed point, and more steps cost
      time without a measurable gain in the round (docs/design/quantizer_speed.md).
    dense_fallback: send the touched rows as values (rounded to ``value_bits``) when that
      fits the budget.
    stages: residual stages (>= 1). Stage ``s`` (0-based) clusters the rows less what
      stages ``0 .. s-1`` decode to, within ``remaining // (stages - s)`` bits of the
      budget (``remaining``: the budget less the bits of the stages before), each with
      ``max_k`` slots and its own indices; decode is the sum of the stages' decodes. A
      later stage whose share cannot pay for two actions sends nothing (one action would
      be the mean of a residual whose mean is ~0) and leaves its share to those after.
      The dense fallback is tested once, against the whole budget.
    index_coding: ``"catalog"`` (one index per catalog row and stage) or ``"touched"``
      (a bitmap of the sent rows, then one index per sent row and stage); see
      ``base.indexed_rows``.

  The state is ``(centroids [max_k, d], k)``, the last actions sent (none at
  ``init``), a tuple of one per stage when ``stages > 1``: each encode warm-starts
  each stage's clustering from that stage's last actions (unchanged by an encode sent
  dense). ``wrappers.cold_start`` makes every encode start from none.
  """
  if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
    raise ValueError(f"stages must be an int >= 1, got {stages!r}")
  check_index_coding(index_coding)

  # One stage keeps its state and payload bare (the format from before stages existed).
  def unpack(x):
    return (x,) if stages == 1 else x

  def pack(xs):
    return xs[0] if stages == 1 else tuple(xs)

  def init(num_rows: int, dim: int):
    del num_rows
    # One buffer per stage: the round donates the state, and a buffer cannot go twice.
    return pack([(jnp.zeros((max_k, dim), jnp.float32), jnp.int32(0)) for _ in range(stages)])

  def encode(rows, mask, budget_bits, key, start, context):
    del context
    live = mask & jnp.any(rows != 0, axis=1) & jnp.all(jnp.isfinite(rows), axis=1)
    num_live = jnp.sum(live, dtype=jnp.int32)
    is_dense = jnp.bool_(dense_fallback) & dense_fits(num_live, num_index_rows, rows.shape[1],
                                                      value_bits, budget_bits)
    dense_size = sparse_dense_bits(jnp.where(is_dense, num_live, 0), num_index_rows, rows.shape[1],
                                   value_bits)
    index_rows, overhead = indexed_rows(live, num_index_rows, index_coding)
    # A client sent dense is not clustered: a zero budget makes the quantizer skip it. The
    # bitmap (if any) is set aside once, for every stage.
    remaining = jnp.where(is_dense, 0, content_budget(budget_bits, overhead))
    residual = rows
    sent, states = [], []
    two_actions = quantize.payload_bits(2, index_rows, rows.shape[1], value_bits)
    for stage, (centroids, k) in enumerate(unpack(start)):
      share = remaining // (stages - stage)
      if stage > 0:
        # What the stages before left has mean ~0 (each centroid is its members' mean): one
        # action would pay for a centroid of rounding noise. A share below two actions is
        # left to the stages after.
        share = jnp.where((share >= two_actions) & (max_k >= 2), share, 0)
      actions = quantize.encode(residual,
                                key,
                                budget_bits=share,
                                max_k=max_k,
                                tau=tau,
                                tau_mode=tau_mode,
                                mask=mask,
                                num_index_rows=index_rows,
                                value_bits=value_bits,
                                max_iters=max_iters,
                                init_centroids=centroids,
                                init_k=k)
      remaining = remaining - actions.bits
      if stage + 1 < stages:
        residual = residual - quantize.decode(actions)
      sent.append(actions)
      states.append((actions.centroids, actions.num_actions))
    payload = FedRASPayload(actions=pack(sent),
                            dense_rows=quantize.round_values(jnp.where(live[:, None], rows, 0.0),
                                                             value_bits),
                            is_dense=is_dense,
                            num_actions=jnp.where(is_dense, 0, sum(a.num_actions for a in sent)),
                            bits=jnp.where(is_dense, dense_size,
                                           with_overhead(sum(a.bits for a in sent),
                                                         overhead)).astype(jnp.int32))
    return Encoded(payload=payload,
                   state=jax.tree.map(lambda new, old: jnp.where(is_dense, old, new), pack(states),
                                      start),
                   target=jnp.where(mask[:, None], rows, 0.0))

  def decode(payload: FedRASPayload):
    decoded = sum(quantize.decode(a) for a in unpack(payload.actions))
    return jnp.where(payload.is_dense, payload.dense_rows, decoded)

  return Compressor(name="fedras", init=init, encode=encode, decode=decode)
