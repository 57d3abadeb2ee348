"""Synthetic implicit-feedback data: long-tail item popularity, ragged users.

For scale benchmarks (``experiments/bench_scale.py``) and tests: catalogues of
10^3 to 10^6 items and thousands of users, generated with numpy in seconds.

The model:

* item popularity is Zipf: item ``i`` (0-based) has weight ``(i + 1) ** -a``,
  so item 0 is the most popular and ids are popularity ranks;
* user ``u`` has ``n_u`` interactions, ``n_u`` lognormal (``median``,
  ``sigma``) rounded and clipped to ``[min_interactions, max_interactions]``
  (the maximum is also clipped to the catalogue: every user must keep
  ``num_test_negatives`` items it never interacted with);
* a user's items are ``n_u`` *distinct* items drawn by successive sampling
  proportional to popularity (draw an item with probability proportional to
  its weight among the items the user does not have yet; repeat);
* timestamps are a random permutation of the rows, so the leave-one-out test
  (and validation) item is a uniformly random one of the user's items.

Two exact implementations of successive sampling, chosen automatically:
rejection (draw with replacement from the popularity distribution, keep the
first occurrence of each item, top up the users still short; cheap when a
user's items are a small part of the catalogue) and exponential keys (item
``i`` gets key ``E_i / w_i`` with ``E_i ~ Exp(1)``; the ``n_u`` smallest keys
in increasing order are a successive sample; ``O(U * I)``, used for small
catalogues or users that hold much of theirs). Test negatives are uniform
over the items a user never interacted with, distinct (the distribution of
`negatives.sample_negatives`, drawn the same two ways).
"""

import math

import numpy as np

from fedras_jax.data.interactions import Interactions
from fedras_jax.data.split import Split, build_split, latest_rows, pair_csr, sorted_member

# Elements of one [users, items] key block of the exponential-keys method.
_KEY_BLOCK = 1 << 22
# Rejection is used when every user needs at most this part of its catalogue.
_REJECTION_MAX_FRACTION = 0.25
_MAX_ROUNDS = 64


def zipf_popularity(num_items: int, exponent: float = 1.1) -> np.ndarray:
  """float64 [I]: ``p_i = (i + 1) ** -exponent / sum_j (j + 1) ** -exponent``."""
  if num_items < 1:
    raise ValueError(f"num_items must be >= 1, got {num_items}")
  if not exponent >= 0:
    raise ValueError(f"exponent must be >= 0, got {exponent}")
  w = np.arange(1, num_items + 1, dtype=np.float64)**-float(exponent)
  return w / w.sum()


def interaction_counts(num_users: int,
                       rng: np.random.Generator,
                       *,
                       median: float = 64.0,
                       sigma: float = 1.0,
                       min_interactions: int = 20,
                       max_interactions: int = 700) -> np.ndarray:
  """int64 [U]: lognormal(log(median), sigma) rounded, clipped to the bounds."""
  if not 1 <= min_interactions <= max_interactions:
    raise ValueError(f"need 1 <= min_interactions ({min_interactions}) <= "
                     f"max_interactions ({max_interactions})")
  if median <= 0 or sigma < 0:
    raise ValueError(f"need median > 0 and sigma >= 0, got {median}, "
                     f"{sigma}")
  raw = np.exp(rng.normal(math.log(median), sigma, num_users))
  return np.clip(np.rint(raw), min_interactions, max_interactions).astype(np.int64)


def _exclusion_keys(exclude, num_items):
  """Sorted int64 keys ``user * I + item`` of a CSR ``(indptr, items)``."""
  if exclude is None:
    return None
  indptr, items = exclude
  indptr = np.asarray(indptr, np.int64)
  rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
  return np.sort(rows * np.int64(num_items) + np.asarray(items, np.int64))


def _by_rejection(rng, counts, num_items, cdf, excl_keys):
  """Successive samples by rejection; returns (users, items) grouped by user,
  each user's items in draw order."""
  num_users = counts.shape[0]
  acc_u = np.zeros(0, np.int64)
  acc_i = np.zeros(0, np.int64)
  deficit = counts.copy()
  factor = 1.3
  for _ in range(_MAX_ROUNDS):
    short = np.flatnonzero(deficit > 0)
    if short.size == 0:
      return acc_u, acc_i
    n_new = np.ceil(deficit[short] * factor).astype(np.int64) + 2
    new_u = np.repeat(short, n_new)
    if cdf is None:
      new_i = rng.integers(0, num_items, new_u.shape[0])
    else:
      new_i = np.searchsorted(cdf, rng.random(new_u.shape[0]) * cdf[-1], side="right")
      new_i = np.minimum(new_i, num_items - 1)
    # Accepted rows first (they were drawn earlier), then the new draws.
    u = np.concatenate([acc_u, new_u])
    i = np.concatenate([acc_i, new_i.astype(np.int64)])
    keys = u * np.int64(num_items) + i
    pos = np.arange(keys.shape[0])
    if excl_keys is not None:
      ok = ~sorted_member(excl_keys, keys)
      keys, pos = keys[ok], pos[ok]
    _, first = np.unique(keys, return_index=True)
    first = np.sort(pos[first])  # first occurrence of each item, draw order
    u, i = u[first], i[first]
    order = np.argsort(u, kind="stable")
    u, i = u[order], i[order]
    have = np.bincount(u, minlength=num_users)
    start = np.cumsum(have) - have
    keep = np.arange(u.shape[0]) - start[u] < counts[u]
    acc_u, acc_i = u[keep], i[keep]
    deficit = counts - np.minimum(have, counts)
    factor *= 2.0
  raise RuntimeError("rejection sampling did not converge; use "
                     "method='keys'")


def _by_keys(rng, counts, num_items, weights, excl_keys):
  """Successive samples by exponential keys (exact, O(U * I))."""
  num_users = counts.shape[0]
  out_u, out_i = [], []
  chunk = max(1, _KEY_BLOCK // num_items)
  inv_w = None if weights is None else 1.0 / weights
  for lo in range(0, num_users, chunk):
    hi = min(num_users, lo + chunk)
    c = counts[lo:hi]
    kmax = int(c.max(initial=0))
    if kmax == 0:
      continue
    keys = rng.standard_exponential((hi - lo, num_items))
    if inv_w is not None:
      keys *= inv_w
    if excl_keys is not None:
      a, b = np.searchsorted(excl_keys, [lo * np.int64(num_items), hi * np.int64(num_items)])
      k = excl_keys[a:b]
      keys[k // num_items - lo, k % num_items] = np.inf
    if kmax < num_items:
      idx = np.argpartition(keys, kmax - 1, axis=1)[:, :kmax]
    else:
      idx = np.broadcast_to(np.arange(num_items), keys.shape)
    idx = np.take_along_axis(idx, np.argsort(np.take_along_axis(keys, idx, axis=1), axis=1), axis=1)
    take = np.arange(kmax)[None, :] < c[:, None]
    out_u.append(np.broadcast_to(np.arange(lo, hi)[:, None], idx.shape)[take])
    out_i.append(idx[take].astype(np.int64))
  if not out_u:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return np.concatenate(out_u), np.concatenate(out_i)


def sample_distinct(rng: np.random.Generator,
                    counts,
                    num_items: int,
                    *,
                    popularity: np.ndarray | None = None,
                    exclude=None,
                    method: str = "auto"):
  """Per user, ``counts[u]`` distinct items by successive sampling.

  Args:
      rng: numpy Generator.
      counts: int [U], items wanted per user.
      num_items: catalogue size I.
      popularity: optional float [I] weights (> 0); None: uniform.
      exclude: optional CSR ``(indptr [U+1], items)``: items a user must
          not get (e.g. the items it interacted with).
      method: "auto", "rejection" or "keys" (module docstring); "auto"
          picks rejection when every user needs at most a quarter of the
          items open to it, else exponential keys.

  Returns:
      ``(indptr int64 [U+1], items int32 [sum counts])``: user u's items,
      in draw order, are ``items[indptr[u]:indptr[u+1]]``.

  Raises:
      ValueError: a user wants more items than are open to it.
  """
  counts = np.asarray(counts, np.int64)
  num_users = counts.shape[0]
  excl_keys = _exclusion_keys(exclude, num_items)
  n_excl = (np.zeros(num_users, np.int64) if exclude is None else np.diff(
      np.asarray(exclude[0], np.int64)))
  open_items = num_items - n_excl
  bad = np.flatnonzero((counts < 0) | (counts > open_items))
  if bad.size:
    u = int(bad[0])
    raise ValueError(f"user {u} wants {int(counts[u])} distinct items, "
                     f"{int(open_items[u])} are open to it")
  if method == "auto":
    method = ("rejection" if np.all(counts <= _REJECTION_MAX_FRACTION * open_items) else "keys")
  if method == "rejection":
    cdf = None if popularity is None else np.cumsum(np.asarray(popularity, np.float64))
    users, items = _by_rejection(rng, counts, num_items, cdf, excl_keys)
  elif method == "keys":
    w = None if popularity is None else np.asarray(popularity, np.float64)
    users, items = _by_keys(rng, counts, num_items, w, excl_keys)
  else:
    raise ValueError(f"method must be auto, rejection or keys, got "
                     f"{method!r}")
  indptr = np.zeros(num_users + 1, np.int64)
  np.cumsum(np.bincount(users, minlength=num_users), out=indptr[1:])
  return indptr, items.astype(np.int32)


def _check_sizes(num_items, min_interactions, max_interactions, num_test_negatives, held_out):
  cap = min(max_interactions, num_items - num_test_negatives)
  if min_interactions < held_out + 1 or min_interactions > cap:
    raise ValueError(f"{num_items} items and {num_test_negatives} test negatives allow "
                     f"users of {held_out + 1}..{cap} interactions; got "
                     f"min_interactions={min_interactions}")
  return cap


def synthetic_interactions(num_users: int,
                           num_items: int,
                           *,
                           exponent: float = 1.1,
                           median: float = 64.0,
                           sigma: float = 1.0,
                           min_interactions: int = 20,
                           max_interactions: int = 700,
                           num_test_negatives: int = 99,
                           seed: int = 0,
                           method: str = "auto",
                           name: str | None = None,
                           held_out: int = 1) -> Interactions:
  """Zipf-popularity interactions of ragged users (module docstring).

  ``max_interactions`` is clipped to ``num_items - num_test_negatives`` so
  that every user keeps enough never-seen items for its test negatives;
  ``min_interactions`` must leave a training item after ``held_out`` items per
  user are held out.
  """
  cap = _check_sizes(num_items, min_interactions, max_interactions, num_test_negatives, held_out)
  rng = np.random.default_rng(seed)
  counts = interaction_counts(num_users,
                              rng,
                              median=median,
                              sigma=sigma,
                              min_interactions=min_interactions,
                              max_interactions=cap)
  indptr, items = sample_distinct(rng,
                                  counts,
                                  num_items,
                                  popularity=zipf_popularity(num_items, exponent),
                                  method=method)
  users = np.repeat(np.arange(num_users, dtype=np.int32), counts)
  timestamps = rng.permutation(items.shape[0]).astype(np.int64)
  return Interactions(users=users,
                      items=items,
                      timestamps=timestamps,
                      num_users=num_users,
                      num_items=num_items,
                      name=name or f"synthetic-u{num_users}-i{num_items}")


def synthetic_split(num_users: int,
                    num_items: int,
                    *,
                    num_valid: int = 0,
                    num_test_negatives: int = 99,
                    seed: int = 0,
                    method: str = "auto",
                    **interactions) -> Split:
  """Leave-one-out `Split` of `synthetic_interactions` (``interactions``: its other
  arguments, e.g. ``exponent``, ``median``, ``min_interactions``).

  Test (and validation) items are each user's latest interactions (random
  timestamps: a uniformly random one of its items); test negatives are
  uniform over the items the user never interacted with, drawn without
  the ``O(U * I)`` cost of `negatives.sample_negatives` on large catalogues.
  """
  if num_valid not in (0, 1):
    raise ValueError(f"num_valid must be 0 or 1, got {num_valid}")
  inter = synthetic_interactions(num_users,
                                 num_items,
                                 num_test_negatives=num_test_negatives,
                                 seed=seed,
                                 method=method,
                                 held_out=1 + num_valid,
                                 **interactions)
  held = latest_rows(inter, num=1 + num_valid)
  seen_indptr, seen_items = pair_csr(inter.users, inter.items, num_users, num_items)
  rng = np.random.default_rng([seed, 1])
  _, negatives = sample_distinct(rng,
                                 np.full(num_users, num_test_negatives),
                                 num_items,
                                 exclude=(seen_indptr, seen_items),
                                 method=method)
  return build_split(inter,
                     held[0],
                     held[1] if num_valid else None,
                     test_negatives=negatives.reshape(num_users, num_test_negatives))
