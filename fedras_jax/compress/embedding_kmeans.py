"""Embedding clustering: K-Means on the item EMBEDDINGS, not on their update.

The baseline FedRAS argues against: the sender clusters its new item rows
(``base rows + update``) into ``K`` centroids and sends the centroids plus one
index per catalog row; the receiver replaces each sent row by its centroid, so the
implied update is ``centroid - base row``. Embeddings of different items are far
apart compared with one round's update, so at the same ``K`` the implied update is
dominated by the clustering error of the embeddings themselves.

The payload is priced exactly like FedRAS's actions
(``quantize.payload_bits(K, num_index_rows, d, value_bits)``: ``K * d * value_bits``
for the centroids plus ``ceil(log2(K + 1))`` bits per catalog row), ``K`` the
largest that fits the (traced) budget (``quantize.max_actions_for_budget``), at
most the static ``max_k`` and at most the number of live rows; empty clusters are
dropped before counting. With ``index_coding="touched"`` a bitmap of the catalog rows
names the sent rows and only those carry an index (``base.indexed_rows``). ``K = 0``
(no budget) sends nothing: every row keeps its base embedding (update 0).

The plain K-Means coder (``encode`` takes embedding rows, ``decode`` returns
reconstructed embedding rows, 0 for rows not sent) is wrapped by
``wrappers.on_embeddings``: it codes ``context.base_rows + update`` and decodes to
the implied update (``decoded - base_rows`` on the rows ``payload.sent`` marks, 0
elsewhere).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedras_jax import quantize
from fedras_jax.compress.base import (Compressor, check_index_coding, check_value_bits,
                                      content_budget, indexed_rows, stateless, with_overhead)
from fedras_jax.compress.wrappers import on_embeddings


class EmbeddingKMeansPayload(NamedTuple):
  """centroids ``[max_k, d]`` (slots ``>= num_actions`` zero); indices ``[n]`` int32
  (``quantize.NO_UPDATE`` = -1 for rows not sent); sent ``[n]`` bool (``indices >=
  0``); num_actions: K; bits: ``quantize.payload_bits(K, R, d, value_bits)``."""
  centroids: jax.Array
  indices: jax.Array
  sent: jax.Array
  num_actions: jax.Array
  bits: jax.Array


def embedding_kmeans(num_index_rows: int,
                     *,
                     max_k: int,
                     value_bits: int = 32,
                     max_iters: int = 50,
                     index_coding: str = "catalog") -> Compressor:
  """K-Means of the embedding rows, coding ``base_rows + update`` (``on_embeddings``).

  Args:
    num_index_rows: the catalog size: the rows that carry an index under
      ``index_coding="catalog"``, the bitmap's length under ``"touched"``.
    max_k: static number of centroid slots.
    value_bits: 32, or 16 (centroids rounded to bfloat16).
    max_iters: Lloyd iteration bound (``quantize.kmeans``; k-means++ seeding).
    index_coding: ``"catalog"`` or ``"touched"`` (module docstring).
  """
  check_index_coding(index_coding)
  check_value_bits(value_bits)
  if max_k < 1:
    raise ValueError(f"max_k must be >= 1, got {max_k}")

  def encode(rows, mask, budget_bits, key):
    n, d = rows.shape
    x = jnp.asarray(rows, jnp.float32)
    live = mask & jnp.all(jnp.isfinite(x), axis=1)
    n_live = jnp.sum(live, dtype=jnp.int32)
    index_rows, overhead = indexed_rows(live, num_index_rows, index_coding)
    k_budget = quantize.max_actions_for_budget(content_budget(budget_bits, overhead),
                                               index_rows,
                                               d,
                                               max_k=max_k,
                                               value_bits=value_bits)
    k = jnp.minimum(k_budget, n_live)
    fit = quantize.kmeans(x,
                          key,
                          max_k=max_k,
                          k=jnp.maximum(k, 1),
                          weights=live.astype(jnp.float32),
                          max_iters=max_iters)
    # Compact the non-empty clusters into slots 0..K-1 (duplicate rows leave some empty).
    slot = jnp.clip(fit.assignment, 0, max_k - 1)
    count = jax.ops.segment_sum(live.astype(jnp.int32), slot, num_segments=max_k)
    keep = fit.active & (count > 0) & (k > 0)
    (centroids,), indices, num_actions = quantize.compact_clusters(
        (fit.centroids.astype(jnp.float32),), fit.assignment, keep, live)
    centroids = quantize.round_values(centroids, value_bits)
    sent = indices != quantize.NO_UPDATE
    return EmbeddingKMeansPayload(centroids=centroids,
                                  indices=indices,
                                  sent=sent,
                                  num_actions=num_actions,
                                  bits=with_overhead(
                                      quantize.payload_bits(num_actions, index_rows, d, value_bits),
                                      overhead))

  def decode(payload: EmbeddingKMeansPayload):
    rows = payload.centroids[jnp.clip(payload.indices, 0, payload.centroids.shape[0] - 1)]
    return jnp.where(payload.sent[:, None], rows, 0.0)

  return on_embeddings(stateless("embedding_kmeans", encode, decode))
