"""Uniform negative sampling without replacement, excluding seen items."""

import numpy as np

# Random keys drawn per chunk of users (float64 each): bounds peak memory.
_CHUNK_ELEMENTS = 1 << 22


class TooFewCandidatesError(ValueError):
  """A user has fewer unseen items than the negatives asked for."""


def sample_negatives(seen_indptr: np.ndarray,
                     seen_items: np.ndarray,
                     num_items: int,
                     k: int,
                     seed: int,
                     name: str = "",
                     raw_user_ids=None) -> np.ndarray:
  """Per user, `k` distinct items the user never interacted with.

  Each user's set is uniform over the k-subsets of the items outside the
  user's seen set: every item gets an independent uniform key (seen items
  get key 2 > 1, never chosen), and the `k` smallest keys win, listed in
  increasing key order (a uniformly random order). Keys come from
  ``np.random.default_rng(seed).random`` in chunks of users, so the result
  depends only on (seed, seen sets, num_items, k).

  Cost is O(num_users * num_items) time, O(_CHUNK_ELEMENTS) memory, which
  is fine for MovieLens / Last.fm sized catalogs.

  Args:
      seen_indptr: int64 [U+1], CSR row pointers of the seen sets.
      seen_items: int32 [N], CSR column indices (item ids).
      num_items: catalog size I.
      k: negatives per user.
      seed: seed of the numpy Generator.
      name: dataset name for error messages.
      raw_user_ids: [U] the users' ids in the data, for error messages (None: unnamed).

  Returns:
      int32 [U, k].

  Raises:
      TooFewCandidatesError: a user has fewer than `k` items they never
          interacted with (the message names the user).
  """
  num_users = seen_indptr.shape[0] - 1
  counts = np.diff(seen_indptr)
  free = num_items - counts
  short = np.flatnonzero(free < k)
  if short.size:
    u = int(short[0])
    raw = "" if raw_user_ids is None else f" (raw id {raw_user_ids[u]})"
    raise TooFewCandidatesError(
        f"{name}: user {u}{raw} interacted with {int(counts[u])} of {num_items} items, "
        f"leaving {int(free[u])} < {k} candidates for test negatives ({short.size} such users)")
  out = np.empty((num_users, k), dtype=np.int32)
  if k == 0 or num_users == 0:
    return out
  rng = np.random.default_rng(seed)
  rows_of = np.repeat(np.arange(num_users), counts)
  chunk = max(1, _CHUNK_ELEMENTS // max(num_items, 1))
  for lo in range(0, num_users, chunk):
    hi = min(num_users, lo + chunk)
    keys = rng.random((hi - lo, num_items))
    a, b = seen_indptr[lo], seen_indptr[hi]
    keys[rows_of[a:b] - lo, seen_items[a:b]] = 2.0
    if k < num_items:
      idx = np.argpartition(keys, k - 1, axis=1)[:, :k]
    else:
      idx = np.broadcast_to(np.arange(num_items), keys.shape)
    order = np.argsort(np.take_along_axis(keys, idx, axis=1), axis=1)
    out[lo:hi] = np.take_along_axis(idx, order, axis=1)
  return out
