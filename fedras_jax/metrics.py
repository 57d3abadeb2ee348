"""Ranking metrics: HR@K and NDCG@K on the leave-one-out protocol.

Each user's test positive is ranked among its candidates (the positive and its
sampled negatives). The rank is the number of negatives scoring at least as high
as the positive: ties count against the model, so a constant scorer gets rank
``num_negatives`` instead of a lucky 0.
"""
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedras_jax.models.base import RecModel


def rank_of_positive(pos_scores, neg_scores, ignore=None):
  """``pos_scores [U]``, ``neg_scores [U, N]`` -> ``[U]`` int32 0-based ranks.

  ignore: optional ``[U, N]`` bool, negatives that do not count.
  """
  beats = neg_scores >= pos_scores[:, None]
  if ignore is not None:
    beats &= ~ignore
  return jnp.sum(beats, axis=1).astype(jnp.int32)


def hit_and_ndcg(ranks, ks: Sequence[int] = (5, 10, 20)) -> Dict[str, jax.Array]:
  """``{"hr@K": mean hit, "ndcg@K": mean 1/log2(rank + 2) within top K}``."""
  out = {}
  ranks = jnp.asarray(ranks)
  for k in ks:
    hit = ranks < k
    out[f"hr@{k}"] = jnp.mean(hit.astype(jnp.float32))
    out[f"ndcg@{k}"] = jnp.mean(jnp.where(hit, 1.0 / jnp.log2(ranks + 2.0), 0.0))
  return out


def make_evaluate(model: RecModel, test_items: np.ndarray, test_negatives: np.ndarray, *,
                  ks: Sequence[int] = (5, 10, 20), chunk: int = 512):
  """Builds a jitted ``evaluate(users [U, du], items [I, di], dense) -> metrics``.

  test_items ``[U]``, test_negatives ``[U, N]``: the fixed candidates of the split.
  Users are scored in chunks of ``chunk`` (``lax.map``) to bound memory.
  """
  num_users = len(test_items)
  padded = -(-num_users // chunk) * chunk
  candidates = np.concatenate([np.asarray(test_items)[:, None], np.asarray(test_negatives)], 1)
  candidates = np.pad(candidates, ((0, padded - num_users), (0, 0)))
  candidates = jnp.asarray(candidates.reshape(padded // chunk, chunk, -1), jnp.int32)

  @jax.jit
  def evaluate(users, items, dense):
    users = jnp.pad(users, ((0, padded - num_users), (0, 0))).reshape(
        padded // chunk, chunk, -1)

    def scores(args):
      u, c = args
      return jax.vmap(lambda uu, cc: model.score(uu, items[cc], dense))(u, c)

    s = jax.lax.map(scores, (users, candidates)).reshape(padded, -1)[:num_users]
    c = candidates.reshape(padded, -1)[:num_users]
    ranks = rank_of_positive(s[:, 0], s[:, 1:], ignore=c[:, 1:] == c[:, :1])
    return hit_and_ndcg(ranks, ks)

  return evaluate
