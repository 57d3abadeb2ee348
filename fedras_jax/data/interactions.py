"""The `Interactions` container: a de-duplicated implicit-feedback log.

Every rating counts as one interaction (implicit feedback); rating values are
validated by the parsers and then dropped.

Ids are contiguous and 0-based. Parsers of raw formats remap raw ids by sorted
raw id (`np.unique`), so MovieLens user ``u`` (1-based) becomes ``u - 1``; the
raw id of new id ``k`` is kept in ``raw_user_ids[k]`` / ``raw_item_ids[k]``.

Rows are kept in file order. Duplicate (user, item) pairs are collapsed to one
row: the earliest one (smallest timestamp; ties -> the earlier line).
"""

import dataclasses
import logging

import numpy as np

_log = logging.getLogger(__name__)


def frozen_array(x, dtype) -> np.ndarray:
  """A read-only, C-contiguous array of `dtype` (never mutates `x` itself)."""
  a = np.ascontiguousarray(x, dtype=dtype).view()
  a.flags.writeable = False
  return a


@dataclasses.dataclass(frozen=True, eq=False)
class Interactions:
  """An implicit-feedback interaction log, one row per (user, item) pair.

  Attributes:
      users: int32 [n], user id in [0, num_users).
      items: int32 [n], item id in [0, num_items).
      timestamps: int64 [n]; order key (without time: the line index for Last.fm, a
        seeded random permutation for user files and synthetic data).
      num_users: number of users.
      num_items: number of items.
      name: dataset name (for messages and bookkeeping).
      raw_user_ids: optional [num_users], raw id of each user (int or str).
      raw_item_ids: optional [num_items], raw id of each item (int or str).

  Rows are in file order: for equal timestamps, a larger row index is the
  later event. Arrays are read-only.
  """

  users: np.ndarray
  items: np.ndarray
  timestamps: np.ndarray
  num_users: int
  num_items: int
  name: str
  raw_user_ids: np.ndarray | None = None
  raw_item_ids: np.ndarray | None = None

  def __post_init__(self):
    setf = lambda k, v: object.__setattr__(self, k, v)
    setf("users", frozen_array(self.users, np.int32))
    setf("items", frozen_array(self.items, np.int32))
    setf("timestamps", frozen_array(self.timestamps, np.int64))
    setf("num_users", int(self.num_users))
    setf("num_items", int(self.num_items))
    n = self.users.shape[0]
    if (self.users.ndim != 1 or self.items.shape != (n,) or self.timestamps.shape != (n,)):
      raise ValueError(f"{self.name}: users/items/timestamps must be 1-D of equal "
                       f"length, got {self.users.shape}, {self.items.shape}, "
                       f"{self.timestamps.shape}")
    for field, arr, hi in (("user", self.users, self.num_users), ("item", self.items,
                                                                  self.num_items)):
      bad = np.flatnonzero((arr < 0) | (arr >= hi))
      if bad.size:
        raise ValueError(f"{self.name}: {field} id {int(arr[bad[0]])} at row "
                         f"{int(bad[0])} out of range [0, {hi})")

  @property
  def num_interactions(self) -> int:
    return int(self.users.shape[0])

  def __repr__(self) -> str:
    return (f"Interactions(name={self.name!r}, "
            f"num_users={self.num_users}, num_items={self.num_items}, "
            f"num_interactions={self.num_interactions})")


def dedupe_keep_earliest(users: np.ndarray, items: np.ndarray,
                         timestamps: np.ndarray) -> np.ndarray:
  """Row indices to keep, ascending (file order), one per (user, item).

  Of each duplicated pair the earliest row is kept: smallest timestamp, ties
  broken by row index (the earlier line). Returns int64 [n_unique].
  """
  n = users.shape[0]
  if n == 0:
    return np.zeros(0, dtype=np.int64)
  order = np.lexsort((np.arange(n), timestamps, items, users))
  u, i = users[order], items[order]
  first = np.ones(n, dtype=bool)
  first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
  return np.sort(order[first])


def from_raw_ids(name: str, raw_users, raw_items, timestamps) -> Interactions:
  """Builds `Interactions` from raw ids: remap by sorted raw id, de-duplicate.

  Args:
      name: dataset name.
      raw_users: [n] raw user ids (ints or strings), in file order.
      raw_items: [n] raw item ids (ints or strings), in file order.
      timestamps: [n] int64 timestamps, in file order.
  """
  raw_users = np.asarray(raw_users)
  raw_items = np.asarray(raw_items)
  timestamps = np.asarray(timestamps, dtype=np.int64)
  uniq_u, users = np.unique(raw_users, return_inverse=True)
  uniq_i, items = np.unique(raw_items, return_inverse=True)
  users = users.reshape(-1).astype(np.int32)
  items = items.reshape(-1).astype(np.int32)
  keep = dedupe_keep_earliest(users, items, timestamps)
  if keep.shape[0] != users.shape[0]:
    _log.info("%s: dropped %d duplicate (user, item) rows (kept earliest)", name,
              users.shape[0] - keep.shape[0])
    users, items, timestamps = users[keep], items[keep], timestamps[keep]
  return Interactions(users=users,
                      items=items,
                      timestamps=timestamps,
                      num_users=len(uniq_u),
                      num_items=len(uniq_i),
                      name=name,
                      raw_user_ids=uniq_u,
                      raw_item_ids=uniq_i)
