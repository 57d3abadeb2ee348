"""Every client's training data as device arrays (CSR), built once from a split."""
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# Where training negatives come from: "unseen", the items the user never interacted with,
# held-out ones included (PFedRec's sampler, this project's protocol), or "untrained", the
# items outside its training positives (NCF's original code: a held-out item can be a
# negative). docs/design/data.md.
TRAIN_NEGATIVES = ("unseen", "untrained")


@flax.struct.dataclass
class ClientData:
  """Per-user positives and seen items as CSR device arrays.

  train_indptr: ``[U + 1]`` int32, user u's positives are
    ``train_items[train_indptr[u]:train_indptr[u + 1]]``.
  train_items: ``[N_train]`` int32 item ids.
  seen_indptr / seen_items: CSR of the items training negatives are never drawn from,
    sorted ascending within a user: every item the user interacted with (training,
    validation and test positives), or its training positives alone
    (``TRAIN_NEGATIVES``); negatives are drawn from the complement.
  num_users, num_items: static sizes.
  search_steps: static number of binary-search steps that cover the longest seen list.
  """
  train_indptr: jax.Array
  train_items: jax.Array
  seen_indptr: jax.Array
  seen_items: jax.Array
  num_users: int = flax.struct.field(pytree_node=False)
  num_items: int = flax.struct.field(pytree_node=False)
  search_steps: int = flax.struct.field(pytree_node=False)

  @property
  def num_train(self) -> jax.Array:
    """``[U]`` number of training positives per user."""
    return self.train_indptr[1:] - self.train_indptr[:-1]

  @property
  def num_seen(self) -> jax.Array:
    """``[U]`` number of items each user interacted with."""
    return self.seen_indptr[1:] - self.seen_indptr[:-1]


def client_data_from_csr(train_indptr, train_items, seen_indptr, seen_items,
                         num_items: int) -> ClientData:
  """Builds ``ClientData`` from host CSR arrays (``seen_items`` sorted per user)."""
  train_indptr = np.asarray(train_indptr, np.int64)
  seen_indptr = np.asarray(seen_indptr, np.int64)
  if train_indptr[-1] >= 2**31 or seen_indptr[-1] >= 2**31:
    raise ValueError("more than 2**31 interactions do not fit int32 offsets")
  max_seen = int(np.max(np.diff(seen_indptr), initial=0))
  return ClientData(train_indptr=jnp.asarray(train_indptr, jnp.int32),
                    train_items=jnp.asarray(train_items, jnp.int32),
                    seen_indptr=jnp.asarray(seen_indptr, jnp.int32),
                    seen_items=jnp.asarray(seen_items, jnp.int32),
                    num_users=len(train_indptr) - 1,
                    num_items=int(num_items),
                    search_steps=max(1, math.ceil(math.log2(max_seen + 1))))


def negative_exclusions(split, train_negatives: str = "unseen"):
  """``(indptr [U + 1], items)``: the CSR of the items a user's training negatives avoid
  under ``train_negatives`` (one of ``TRAIN_NEGATIVES``), from a ``data.Split``."""
  if train_negatives not in TRAIN_NEGATIVES:
    raise ValueError(f"train_negatives must be one of {TRAIN_NEGATIVES}, got {train_negatives!r}")
  if train_negatives == "unseen":
    return split.seen_indptr, split.seen_items
  return split.train_indptr, split.train_items


def client_data_from_split(split, train_negatives: str = "unseen") -> ClientData:
  """Builds ``ClientData`` from a ``fedras_jax.data.Split`` (training negatives as
  ``train_negatives`` says: :func:`negative_exclusions`)."""
  return client_data_from_csr(split.train_indptr, split.train_items,
                              *negative_exclusions(split, train_negatives), split.num_items)
