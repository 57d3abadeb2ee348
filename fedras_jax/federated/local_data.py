"""What one client trains on in one round: its examples, negatives and shuffles.

Everything here is a pure function of (client data, user, key), so the packed
round and the one-client reference see exactly the same examples.

Local example space of a client with ``P`` positives, negative ratio ``r`` and
``C`` items it never saw: examples ``0..P-1`` are the positives, examples
``P..P+rP-1`` the negatives. Local *slots* hold the distinct items it trains:
slots ``0..P-1`` are the positives, slots ``P..P+min(rP, C)-1`` distinct negatives.
Negative example ``q`` uses slot ``P + q mod min(rP, C)``, so when a client needs
more negatives than there are unseen items the same item is reused through the
same slot (its row is one local parameter, as in a dense local model).

Two sort-free permutations (XLA:CPU sorts are slow):
* negative slot ``m`` holds unseen item number ``(b + m * p) mod C``, with a random
  offset ``b`` and a random prime stride ``p`` coprime to ``C``: distinct items,
  each unseen item equally likely;
* epoch ``e`` visits example ``(a_e * i + c_e) mod n`` at position ``i``, an
  affine permutation with a random prime multiplier coprime to ``n``.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedras_jax.federated.client_data import ClientData


def _primes(lo: int, hi: int) -> np.ndarray:
  sieve = np.ones(hi, bool)
  sieve[:2] = False
  for i in range(2, int(hi**0.5) + 1):
    if sieve[i]:
      sieve[i * i::i] = False
  primes = np.nonzero(sieve)[0]
  return primes[primes >= lo].astype(np.int32)


# Strides/multipliers: primes in [2^11, 2^12). Three distinct ones multiply to more
# than 2^33, so at least one of any three consecutive table entries is coprime to an
# int32 n. Products stay below 2^31 for local indices below 2^19 (``MAX_LOCAL_INDEX``).
_PRIMES = _primes(2048, 4096)
MAX_LOCAL_INDEX = 2**19


def coprime_prime(rand: jax.Array, n: jax.Array) -> jax.Array:
  """A prime from the table chosen by ``rand`` that does not divide ``n`` (int32)."""
  primes = jnp.asarray(_PRIMES)
  start = jnp.abs(rand) % primes.shape[0]
  candidates = primes[(start + jnp.arange(3)) % primes.shape[0]]
  coprime = (jnp.maximum(n, 1) % candidates) != 0
  return candidates[jnp.argmax(coprime)]


class ClientPlan(NamedTuple):
  """One client's round, as int32 scalars (a batch of plans has ``[M]`` leaves).

  num_slots: distinct items it trains (positives + distinct negatives).
  num_examples: positives + negatives; steps_per_epoch = ceil(num_examples / B).
  num_steps: epochs * steps_per_epoch.
  neg_offset, neg_stride: the negative-slot permutation of its unseen items.
  perm_mult, perm_shift: ``[E]`` the affine example permutation of each epoch.
  """
  user: jax.Array
  num_pos: jax.Array
  num_unseen: jax.Array
  num_neg_slots: jax.Array
  num_slots: jax.Array
  num_examples: jax.Array
  steps_per_epoch: jax.Array
  num_steps: jax.Array
  neg_offset: jax.Array
  neg_stride: jax.Array
  perm_mult: jax.Array
  perm_shift: jax.Array


def client_sizes(num_pos: np.ndarray, num_seen: np.ndarray, num_items: int, *, neg_ratio: int,
                 epochs: int, batch_size: int):
  """Host-side ``(num_slots, num_steps)`` of clients, as ``client_plan`` computes them.

  ``ValueError`` naming the first client whose local examples (positives and negatives,
  plus a batch past the last: the positions of its epoch) reach ``MAX_LOCAL_INDEX``: its
  permutations would overflow int32 and stop being permutations."""
  num_pos = np.asarray(num_pos, np.int64)
  num_neg = neg_ratio * num_pos
  too_many = np.flatnonzero(num_pos + num_neg + batch_size > MAX_LOCAL_INDEX)
  if too_many.size:
    u = int(too_many[0])
    raise ValueError(f"user index {u} (of {too_many.size} such users) has {num_pos[u]} training "
                     f"interactions: with --neg_ratio={neg_ratio} its {num_pos[u] + num_neg[u]} "
                     f"local examples exceed the simulator's limit of {MAX_LOCAL_INDEX} "
                     f"minus --batch_size; drop or split such users, or lower --neg_ratio")
  num_slots = num_pos + np.minimum(num_neg, num_items - np.asarray(num_seen, np.int64))
  num_steps = epochs * (-(-(num_pos + num_neg) // batch_size))
  return num_slots, num_steps


def client_plan(data: ClientData, user: jax.Array, key: jax.Array, *, neg_ratio: int, epochs: int,
                batch_size: int) -> ClientPlan:
  """The plan of ``user`` for the round whose client key is ``key``."""
  num_pos = data.num_train[user]
  num_unseen = data.num_items - data.num_seen[user]
  num_neg = neg_ratio * num_pos
  num_neg_slots = jnp.minimum(num_neg, num_unseen)
  num_examples = num_pos + num_neg
  steps_per_epoch = (num_examples + batch_size - 1) // batch_size
  rand = jax.random.randint(key, (2 + 2 * epochs,), 0, 2**30, jnp.int32)
  epoch_rand = rand[2:].reshape(epochs, 2)
  return ClientPlan(user=user,
                    num_pos=num_pos,
                    num_unseen=num_unseen,
                    num_neg_slots=num_neg_slots,
                    num_slots=num_pos + num_neg_slots,
                    num_examples=num_examples,
                    steps_per_epoch=steps_per_epoch,
                    num_steps=epochs * steps_per_epoch,
                    neg_offset=rand[0] % jnp.maximum(num_unseen, 1),
                    neg_stride=coprime_prime(rand[1], num_unseen),
                    perm_mult=jax.vmap(coprime_prime, (0, None))(epoch_rand[:, 0], num_examples),
                    perm_shift=epoch_rand[:, 1] % jnp.maximum(num_examples, 1))


def unseen_item(data: ClientData, user: jax.Array, rank: jax.Array) -> jax.Array:
  """The ``rank``-th (0-based) item id that ``user`` never interacted with.

  With the user's sorted seen items ``s_0 < s_1 < ...``, the answer is
  ``rank + #{j : s_j - j <= rank}``; ``s_j - j`` is non-decreasing, so the count
  is a binary search over the user's CSR row (fixed ``search_steps`` iterations).
  """
  start = data.seen_indptr[user]
  count = data.num_seen[user]
  last = data.seen_items.shape[0] - 1

  def step(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    below = (data.seen_items[jnp.minimum(start + mid, last)] - mid <= rank) & (mid < hi)
    return jnp.where(below, mid + 1, lo), jnp.where(below, hi, mid)

  init = (jnp.zeros(jnp.shape(rank), jnp.int32), jnp.broadcast_to(count, jnp.shape(rank)))
  lo, _ = jax.lax.fori_loop(0, data.search_steps, step, init)
  return rank + lo


def slot_item(data: ClientData, plan: ClientPlan, slot: jax.Array) -> jax.Array:
  """Item id held by local ``slot`` of the client (garbage where slot >= num_slots)."""
  positive = data.train_items[jnp.clip(data.train_indptr[plan.user] + slot, 0,
                                       data.train_items.shape[0] - 1)]
  m = jnp.maximum(slot - plan.num_pos, 0)
  rank = (plan.neg_offset + m * plan.neg_stride) % jnp.maximum(plan.num_unseen, 1)
  return jnp.where(slot < plan.num_pos, positive, unseen_item(data, plan.user, rank))


def minibatch(plan: ClientPlan, step: jax.Array, batch_size: int):
  """Local step ``step``'s minibatch: ``(slots [B], labels [B], valid [B])``.

  ``valid`` is False past the end of the epoch (and for every position when
  ``step >= num_steps``), which makes the SGD step an exact no-op there.
  """
  epoch = jnp.minimum(step // jnp.maximum(plan.steps_per_epoch, 1), plan.perm_mult.shape[0] - 1)
  position = (step % jnp.maximum(plan.steps_per_epoch, 1)) * batch_size + jnp.arange(batch_size)
  example = (plan.perm_mult[epoch] * position + plan.perm_shift[epoch]) % jnp.maximum(
      plan.num_examples, 1)
  is_pos = example < plan.num_pos
  neg_slot = plan.num_pos + (example - plan.num_pos) % jnp.maximum(plan.num_neg_slots, 1)
  slots = jnp.where(is_pos, example, neg_slot)
  valid = ((position < plan.num_examples) & (step < plan.num_steps)
           & (is_pos | (plan.num_neg_slots > 0)))
  return slots, is_pos, valid
