"""Leave-one-out split (NCF / PFedRec / CoLR protocol) and its stats.

Per user, the latest interaction (by timestamp; equal timestamps: the later
line is the later event) is the test positive; with ``num_valid=1`` the next
latest is the validation positive; the rest is training data. Each user gets
`num_test_negatives` (99) test negatives, sampled uniformly without
replacement from the items the user never interacted with (train, valid or
test). A method is scored by ranking the test positive among these 1 + 99
candidates; the split is saved with its negatives so every method is scored
on the same candidates (file format: ``split_file``).

Shapes: U = num_users, I = num_items, K = num_test_negatives.
"""

import dataclasses

import numpy as np

from fedras_jax.data.interactions import Interactions, frozen_array
from fedras_jax.data.negatives import sample_negatives


class EmptyClientError(ValueError):
  """A user has too few interactions for the split (an empty client)."""


def _csr_rows(indptr: np.ndarray) -> np.ndarray:
  """Row (user) id of each CSR entry, int64 [indptr[-1]]."""
  return np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))


def sorted_member(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
  """bool ``[len(query)]``: is each ``query`` value in the sorted array ``keys``?"""
  if keys.shape[0] == 0:
    return np.zeros(query.shape, dtype=bool)
  pos = np.minimum(np.searchsorted(keys, query), keys.shape[0] - 1)
  return keys[pos] == query


def pair_csr(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int):
  """``(indptr [U + 1] int64, items [P] int32)``: the distinct (user, item) pairs as CSR
  rows, each row's items sorted."""
  keys = np.unique(users.astype(np.int64) * num_items + items)
  indptr = np.zeros(num_users + 1, dtype=np.int64)
  np.cumsum(np.bincount(keys // num_items, minlength=num_users), out=indptr[1:])
  return indptr, (keys % num_items).astype(np.int32)


def _csr_contains(indptr, items, num_items, users, query) -> np.ndarray:
  """bool [len(users)]: is query[j] in row users[j]? (rows sorted)."""
  keys = _csr_rows(indptr) * np.int64(num_items) + items
  return sorted_member(keys, users.astype(np.int64) * num_items + query)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """A leave-one-out split with fixed test candidates. Arrays are read-only.

  Attributes:
      num_users: U.
      num_items: I.
      name: dataset name.
      train_indptr: int64 [U+1], CSR row pointers of training positives.
      train_items: int32 [N_train]; user u's training items are
          ``train_items[train_indptr[u]:train_indptr[u+1]]``, ascending.
      valid_item: int32 [U], validation positive (all -1: no validation).
      test_item: int32 [U], test positive.
      test_negatives: int32 [U, K], test negatives (distinct per user).
      seen_indptr: int64 [U+1], CSR of every item each user interacted with
      seen_items: int32 [N_seen]   (train + valid + test, ascending); use it
          to exclude items when sampling training negatives.

  Invariants (checked on construction): ids in range; every user has >= 1
  training item; test/valid items are not training items; seen = train +
  valid + test exactly; negatives distinct per user. Negatives are NOT
  required to avoid the seen set (the published NCF ML-1M negatives do not
  always; `describe` counts such collisions); sampled ones always avoid it.
  """

  num_users: int
  num_items: int
  name: str
  train_indptr: np.ndarray
  train_items: np.ndarray
  valid_item: np.ndarray
  test_item: np.ndarray
  test_negatives: np.ndarray
  seen_indptr: np.ndarray
  seen_items: np.ndarray

  def __post_init__(self):
    setf = lambda k, v: object.__setattr__(self, k, v)
    setf("num_users", int(self.num_users))
    setf("num_items", int(self.num_items))
    setf("name", str(self.name))
    for field, dtype in (("train_indptr", np.int64), ("train_items", np.int32),
                         ("valid_item", np.int32), ("test_item", np.int32),
                         ("test_negatives", np.int32), ("seen_indptr", np.int64), ("seen_items",
                                                                                   np.int32)):
      setf(field, frozen_array(getattr(self, field), dtype))
    self._validate()

  # ------------------------------------------------------------ helpers --
  @property
  def num_train_per_user(self) -> np.ndarray:
    """int64 [U], training positives per user."""
    return np.diff(self.train_indptr)

  @property
  def num_seen_per_user(self) -> np.ndarray:
    """int64 [U], all interactions per user (train + valid + test)."""
    return np.diff(self.seen_indptr)

  @property
  def train_users(self) -> np.ndarray:
    """int32 [N_train], the user of each entry of `train_items`."""
    return _csr_rows(self.train_indptr).astype(np.int32)

  @property
  def num_test_negatives(self) -> int:
    return int(self.test_negatives.shape[1])

  @property
  def has_validation(self) -> bool:
    return bool(self.num_users and self.valid_item[0] >= 0)

  def user_train_items(self, u: int) -> np.ndarray:
    """int32 [n_u], user u's training items (ascending)."""
    return self.train_items[self.train_indptr[u]:self.train_indptr[u + 1]]

  def user_seen_items(self, u: int) -> np.ndarray:
    """int32 [m_u], every item user u interacted with (ascending)."""
    return self.seen_items[self.seen_indptr[u]:self.seen_indptr[u + 1]]

  def __repr__(self) -> str:
    return (f"Split(name={self.name!r}, num_users={self.num_users}, "
            f"num_items={self.num_items}, "
            f"num_train={self.train_items.shape[0]}, "
            f"validation={self.has_validation}, "
            f"num_test_negatives={self.num_test_negatives})")

  # --------------------------------------------------------- validation --
  def _fail(self, what: str):
    raise ValueError(f"invalid split {self.name!r}: {what}")

  def _check_ids(self, field: str, arr: np.ndarray):
    bad = np.flatnonzero((arr < 0) | (arr >= self.num_items))
    if bad.size:
      self._fail(f"{field} has item id {int(arr.flat[bad[0]])} out of "
                 f"range [0, {self.num_items})")

  def _check_csr(self, prefix: str):
    indptr = getattr(self, prefix + "_indptr")
    items = getattr(self, prefix + "_items")
    if indptr.shape != (self.num_users + 1,) or indptr[0] != 0 or (
        indptr[-1] != items.shape[0]) or (np.diff(indptr) < 0).any():
      self._fail(f"{prefix}_indptr is not a CSR pointer array of "
                 f"shape [{self.num_users + 1}] ending at "
                 f"{items.shape[0]}")
    self._check_ids(prefix + "_items", items)
    keys = _csr_rows(indptr) * np.int64(self.num_items) + items
    if (np.diff(keys) <= 0).any():
      self._fail(f"{prefix}_items not strictly ascending within users")

  def _validate(self):
    U, I = self.num_users, self.num_items
    if U < 1 or I < 1:
      self._fail(f"num_users={U}, num_items={I}")
    self._check_csr("train")
    self._check_csr("seen")
    users = np.arange(U)
    empty = np.flatnonzero(self.num_train_per_user == 0)
    if empty.size:
      self._fail(f"empty client: user {int(empty[0])} has no training "
                 "items")
    for field in ("valid_item", "test_item"):
      if getattr(self, field).shape != (U,):
        self._fail(f"{field} must have shape [{U}]")
    self._check_ids("test_item", self.test_item)
    has_valid = self.valid_item >= 0
    if has_valid.any() and not has_valid.all():
      self._fail("valid_item must be -1 for all users or none")
    if has_valid.all():
      self._check_ids("valid_item", self.valid_item)
      if (self.valid_item == self.test_item).any():
        self._fail("valid_item equals test_item")
    held = [self.test_item] + ([self.valid_item] if has_valid.all() else [])
    for h in held:
      if _csr_contains(self.train_indptr, self.train_items, I, users, h).any():
        self._fail("a held-out item is also a training item")
      if not _csr_contains(self.seen_indptr, self.seen_items, I, users, h).all():
        self._fail("a held-out item is missing from seen_items")
    if not _csr_contains(self.seen_indptr, self.seen_items, I, self.train_users,
                         self.train_items).all():
      self._fail("a training item is missing from seen_items")
    if (self.num_seen_per_user != self.num_train_per_user + len(held)).any():
      self._fail("seen_items != train + valid + test")
    neg = self.test_negatives
    if neg.ndim != 2 or neg.shape[0] != U:
      self._fail(f"test_negatives must have shape [{U}, K], got "
                 f"{neg.shape}")
    self._check_ids("test_negatives", neg)
    if neg.shape[1] > 1:
      s = np.sort(neg, axis=1)
      dup = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
      if dup.size:
        self._fail(f"user {int(dup[0])} has repeated test negatives")


# --------------------------------------------------------- construction --


def build_split(inter: Interactions,
                test_rows: np.ndarray,
                valid_rows: np.ndarray | None = None,
                test_negatives: np.ndarray | None = None,
                *,
                num_test_negatives: int = 99,
                seed: int = 0) -> Split:
  """Assembles a `Split` from held-out rows of `inter`.

  Args:
      inter: all interactions (no duplicate (user, item) pairs).
      test_rows: int [U], row of `inter` that is user u's test positive.
      valid_rows: optional int [U], row that is user u's validation
          positive.
      test_negatives: optional int [U, K] given negatives (e.g. the NCF
          file); None: sample `num_test_negatives` per user with `seed`.
      num_test_negatives: K when sampling.
      seed: sampling seed.
  """
  U, I = inter.num_users, inter.num_items
  users = np.arange(U)
  test_rows = np.asarray(test_rows, dtype=np.int64)
  if test_rows.shape != (U,) or (inter.users[test_rows] != users).any():
    raise ValueError(f"{inter.name}: test_rows must give one row per user")
  train = np.ones(inter.num_interactions, dtype=bool)
  train[test_rows] = False
  valid_item = np.full(U, -1, dtype=np.int32)
  if valid_rows is not None:
    valid_rows = np.asarray(valid_rows, dtype=np.int64)
    if valid_rows.shape != (U,) or (inter.users[valid_rows] != users).any():
      raise ValueError(f"{inter.name}: valid_rows must give one row "
                       "per user")
    train[valid_rows] = False
    valid_item = inter.items[valid_rows]
  tu, ti = inter.users[train], inter.items[train]
  order = np.lexsort((ti, tu))
  train_indptr = np.zeros(U + 1, dtype=np.int64)
  np.cumsum(np.bincount(tu, minlength=U), out=train_indptr[1:])
  seen_indptr, seen_items = pair_csr(inter.users, inter.items, U, I)
  if seen_items.shape[0] != inter.num_interactions:
    raise ValueError(f"{inter.name}: duplicate (user, item) pairs")
  if test_negatives is None:
    test_negatives = sample_negatives(seen_indptr,
                                      seen_items,
                                      I,
                                      num_test_negatives,
                                      seed,
                                      name=inter.name,
                                      raw_user_ids=inter.raw_user_ids)
  return Split(num_users=U,
               num_items=I,
               name=inter.name,
               train_indptr=train_indptr,
               train_items=ti[order],
               valid_item=valid_item,
               test_item=inter.items[test_rows],
               test_negatives=test_negatives,
               seen_indptr=seen_indptr,
               seen_items=seen_items)


def latest_rows(inter: Interactions,
                mask: np.ndarray | None = None,
                num: int = 1) -> list[np.ndarray]:
  """Rows of each user's `num` latest interactions (among `mask`).

  Latest = largest timestamp; equal timestamps: larger row (later line).
  Returns `num` int64 [U] arrays: latest, second latest, ...

  Raises:
      EmptyClientError: a user has fewer than `num` + 1 rows (one must be
          left for training); the message names the user.
  """
  rows = np.arange(inter.num_interactions)
  if mask is not None:
    rows = rows[mask]
  users = inter.users[rows]
  counts = np.bincount(users, minlength=inter.num_users)
  need = num + 1
  short = np.flatnonzero(counts < need)
  if short.size:
    u = int(short[0])
    raw = ("" if inter.raw_user_ids is None else f" (raw id {inter.raw_user_ids[u]})")
    more = f"; {short.size - 1} more such users" if short.size > 1 else ""
    raise EmptyClientError(f"{inter.name}: empty client: user {u}{raw} has {int(counts[u])} "
                           f"interaction(s), leave-one-out needs at least {need} (1 train + "
                           f"{num} held out){more}")
  order = rows[np.lexsort((rows, inter.timestamps[rows], users))]
  ends = np.cumsum(counts) - 1
  return [order[ends - j] for j in range(num)]


def leave_one_out(inter: Interactions,
                  *,
                  num_test_negatives: int = 99,
                  num_valid: int = 0,
                  seed: int = 0) -> Split:
  """Leave-one-out split of `inter` (see module docstring).

  Args:
      inter: interactions; every user id in [0, U) must occur.
      num_test_negatives: K, sampled per user (seeded, deterministic).
      num_valid: 0 or 1 validation positives per user.
      seed: seed of the numpy Generator used for the negatives.

  Raises:
      EmptyClientError: a user has < 2 (< 3 with validation) interactions.
  """
  if num_valid not in (0, 1):
    raise ValueError(f"num_valid must be 0 or 1, got {num_valid}")
  if num_test_negatives < 0:
    raise ValueError("num_test_negatives must be >= 0")
  held = latest_rows(inter, num=1 + num_valid)
  return build_split(inter,
                     held[0],
                     held[1] if num_valid else None,
                     num_test_negatives=num_test_negatives,
                     seed=seed)


# ------------------------------------------------------------------ stats --


def describe(split: Split) -> dict:
  """Summary statistics of a split (plain Python numbers).

  Keys: name, users, items, interactions (train + valid + test), train,
  valid, test, density, min/median/max_interactions_per_user (all of a
  user's interactions), min/median/max_train_per_user,
  test_negatives_per_user, test_negatives_seen (test negatives the user
  did interact with: 0 for sampled negatives).
  """
  per_user = split.num_seen_per_user
  per_train = split.num_train_per_user
  U, I = split.num_users, split.num_items
  neg = split.test_negatives
  seen_neg = int(
      _csr_contains(split.seen_indptr, split.seen_items, I, np.repeat(np.arange(U), neg.shape[1]),
                    neg.reshape(-1)).sum())
  n = int(split.seen_items.shape[0])
  return {
      "name": split.name, "users": U, "items": I, "interactions": n,
      "train": int(split.train_items.shape[0]), "valid": U if split.has_validation else 0,
      "test": U, "density": n / (U * I), "min_interactions_per_user": int(per_user.min()),
      "median_interactions_per_user": float(np.median(per_user)),
      "max_interactions_per_user": int(per_user.max()), "min_train_per_user": int(per_train.min()),
      "median_train_per_user": float(np.median(per_train)
                                    ), "max_train_per_user": int(per_train.max()),
      "test_negatives_per_user": int(neg.shape[1]), "test_negatives_seen": seen_neg,
  }
