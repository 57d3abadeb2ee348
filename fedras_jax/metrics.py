"""Ranking metrics: HR@K and NDCG@K on the leave-one-out protocol.

Two protocols rank each user's held-out positive (the test item, or the validation
item when tuning):

* **sampled**: among its fixed candidates, the positive and its sampled negatives (99 by
  default, ``--test_negatives``) (``hr@K``, ``ndcg@K``);
* **full**: among every item of the catalogue except the user's training items
  (``full_hr@K``, ``full_ndcg@K``; see ``docs/design/full_ranking.md``).

In both, the rank is the number of competing items scoring at least as high as the
positive: ties count against the model, so a constant scorer gets the worst rank
instead of a lucky 0. A positive whose score is not finite (NaN, inf) gets the worst
rank too (a NaN compares false with everything and would otherwise rank first).
"""
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedras_jax.models.base import RecModel

PROTOCOLS = ("sampled", "full", "both")
# Scores a full-ranking block may hold per model "width" (users x items x width).
_BLOCK_ELEMENTS = 1 << 22


def rank_of_positive(pos_scores, neg_scores, ignore=None):
  """``pos_scores [U]``, ``neg_scores [U, N]`` -> ``[U]`` int32 0-based ranks.

  ignore: optional ``[U, N]`` bool, negatives that do not count. A non-finite
  positive score gets rank N (worst).
  """
  beats = neg_scores >= pos_scores[:, None]
  if ignore is not None:
    beats &= ~ignore
  ranks = jnp.sum(beats, axis=1).astype(jnp.int32)
  return jnp.where(jnp.isfinite(pos_scores), ranks, neg_scores.shape[1])


def hit_and_ndcg(ranks, ks: Sequence[int] = (5, 10, 20), prefix: str = "") -> Dict[str, jax.Array]:
  """``{"hr@K": mean hit, "ndcg@K": mean 1/log2(rank + 2) within top K}`` (keys prefixed)
  of ``ranks [U]``, each user's 0-based rank of its held-out item."""
  out = {}
  ranks = jnp.asarray(ranks)
  for k in ks:
    hit = ranks < k
    out[f"{prefix}hr@{k}"] = jnp.mean(hit.astype(jnp.float32))
    out[f"{prefix}ndcg@{k}"] = jnp.mean(jnp.where(hit, 1.0 / jnp.log2(ranks + 2.0), 0.0))
  return out


def make_evaluate(model: RecModel,
                  test_items: np.ndarray,
                  test_negatives: np.ndarray,
                  *,
                  ks: Sequence[int] = (5, 10, 20),
                  chunk: int = 512,
                  protocol: str = "sampled",
                  train_indptr=None,
                  train_items=None,
                  num_items: int = None):
  """Builds a jitted ``evaluate(users [U, du], items [I, di], dense) -> metrics``.

  test_items ``[U]``, test_negatives ``[U, N]``: the fixed candidates of the split.
  Users are scored in chunks of ``chunk`` (``lax.map``) to bound memory.
  protocol: "sampled" (keys ``hr@K``, ``ndcg@K``), "full" (``full_hr@K``,
  ``full_ndcg@K``; needs the training CSR ``train_indptr [U+1]``, ``train_items``
  and ``num_items``, see ``make_full_ranks``) or "both".
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
  parts = []
  if protocol in ("sampled", "both"):
    sampled = make_sampled_ranks(model, test_items, test_negatives, chunk=chunk)
    parts.append(lambda *a: hit_and_ndcg(sampled(*a), ks))
  if protocol in ("full", "both"):
    missing = [
        name for name, v in (("train_indptr", train_indptr), ("train_items", train_items),
                             ("num_items", num_items)) if v is None
    ]
    if missing:
      raise ValueError(f"protocol {protocol!r} ranks the whole catalogue and needs "
                       f"{', '.join(missing)} (the training CSR and the catalogue size)")
    full = make_full_ranks(model, test_items, train_indptr, train_items, num_items)
    parts.append(lambda *a: hit_and_ndcg(full(*a), ks, prefix="full_"))

  @jax.jit
  def evaluate(users, items, dense):
    return {k: v for part in parts for k, v in part(users, items, dense).items()}

  return evaluate


def make_sampled_ranks(model: RecModel,
                       test_items: np.ndarray,
                       test_negatives: np.ndarray,
                       *,
                       chunk: int = 512):
  """``ranks(users, items, dense) -> [U]`` ranks among the sampled candidates."""
  num_users = len(test_items)
  padded = -(-num_users // chunk) * chunk
  candidates = np.concatenate([np.asarray(test_items)[:, None], np.asarray(test_negatives)], 1)
  candidates = np.pad(candidates, ((0, padded - num_users), (0, 0)))
  candidates = jnp.asarray(candidates.reshape(padded // chunk, chunk, -1), jnp.int32)

  def ranks(users, items, dense):
    users = jnp.pad(users, ((0, padded - num_users), (0, 0))).reshape(padded // chunk, chunk, -1)

    def scores(args):
      u, c = args
      return jax.vmap(lambda uu, cc: model.score(uu, items[cc], dense))(u, c)

    s = jax.lax.map(scores, (users, candidates)).reshape(padded, -1)[:num_users]
    c = candidates.reshape(padded, -1)[:num_users]
    return rank_of_positive(s[:, 0], s[:, 1:], ignore=c[:, 1:] == c[:, :1])

  return ranks


def full_ranking_blocks(model: RecModel, num_users: int, num_items: int):
  """``(user_batch, item_chunk)`` of a full-ranking block: at most ``_BLOCK_ELEMENTS``
  scores x the model's per-pair width (1 for MF, whose block is one matmul)."""
  width = 1 if model.name == "mf" else model.user_dim + model.item_dim
  user_batch = int(min(256, max(num_users, 1)))
  budget = max(_BLOCK_ELEMENTS // (width * user_batch), 128)
  item_chunk = int(min(-(-num_items // 128) * 128, budget // 128 * 128))
  return user_batch, item_chunk


def make_full_ranks(model: RecModel,
                    targets: np.ndarray,
                    train_indptr: np.ndarray,
                    train_items: np.ndarray,
                    num_items: int,
                    *,
                    user_batch: int = None,
                    item_chunk: int = None):
  """``ranks(users [U, du], items [I, di], dense) -> [U]`` full-ranking ranks.

  User u's rank is the number of items j with score >= the score of ``targets[u]``,
  among all ``num_items`` items except ``targets[u]`` itself and u's training items
  (the CSR ``train_indptr [U+1]``, ``train_items``). Other held-out items of u (the
  test item when ranking the validation item) stay candidates: nothing but training
  data decides what is excluded.

  Users go in batches of ``user_batch`` (``lax.map``) and the catalogue in chunks of
  ``item_chunk`` rows (``fori_loop``): memory is one ``[user_batch, item_chunk]``
  block of scores whatever the catalogue size (defaults: ``full_ranking_blocks``).
  A batch's training items are a static ``[L]`` list (L: the most training items of
  any batch), scattered into a ``[user_batch, item_chunk]`` mask per chunk.
  """
  targets = np.asarray(targets, np.int64)
  train_indptr = np.asarray(train_indptr, np.int64)
  num_users = len(targets)
  b0, c0 = full_ranking_blocks(model, num_users, num_items)
  B, C = user_batch or b0, item_chunk or c0
  nb, nc = -(-num_users // B), -(-num_items // C)
  # Per batch: the local user (0..B-1; B = padding, dropped) and item of each entry.
  starts = train_indptr[np.minimum(np.arange(nb + 1) * B, num_users)]
  L = max(int(np.max(np.diff(starts))), 1)
  ent_user = np.full((nb, L), B, np.int32)
  ent_item = np.zeros((nb, L), np.int32)
  rows = np.repeat(np.arange(num_users), np.diff(train_indptr))
  for b in range(nb):
    lo, hi = starts[b], starts[b + 1]
    ent_user[b, :hi - lo] = rows[lo:hi] - b * B
    ent_item[b, :hi - lo] = train_items[lo:hi]
  tgt = np.zeros(nb * B, np.int32)
  tgt[:num_users] = targets
  tgt = jnp.asarray(tgt.reshape(nb, B))
  ent_user, ent_item = jnp.asarray(ent_user), jnp.asarray(ent_item)

  def ranks(users, items, dense):
    users = jnp.pad(users, ((0, nb * B - num_users), (0, 0))).reshape(nb, B, -1)
    table = jnp.pad(items, ((0, nc * C - num_items), (0, 0)))

    def block(u, c):  # [B, C] scores of chunk c, computed alike in both passes
      rows = jax.lax.dynamic_slice_in_dim(table, c * C, C)
      return jax.vmap(lambda uu: model.score(uu, rows, dense))(u)

    def batch(args):
      u, t, eu, ei = args

      # The positive's score is read out of its chunk's block, not scored alone: a
      # different shape of the same product can round differently, and an item tied
      # with the positive then ranked below it (every tie went to the model).
      def positive(c, pos):
        j = c * C + jnp.arange(C)
        return pos + jnp.sum(jnp.where(j[None, :] == t[:, None], block(u, c), 0.0), axis=1)

      pos = jax.lax.fori_loop(0, nc, positive, jnp.zeros(B, jnp.float32))

      def chunk(c, count):
        lo = c * C
        s = block(u, c)
        j = lo + jnp.arange(C)
        local = jnp.where((ei >= lo) & (ei < lo + C), ei - lo, C)
        seen = jnp.zeros((B, C), bool).at[eu, local].set(True, mode="drop")
        beats = ((s >= pos[:, None]) & ~seen & (j < num_items)[None, :]
                 & (j[None, :] != t[:, None]))
        return count + jnp.sum(beats, axis=1, dtype=jnp.int32)

      count = jax.lax.fori_loop(0, nc, chunk, jnp.zeros(B, jnp.int32))
      return jnp.where(jnp.isfinite(pos), count, num_items)

    return jax.lax.map(batch, (users, tgt, ent_user, ent_item)).reshape(-1)[:num_users]

  return ranks
