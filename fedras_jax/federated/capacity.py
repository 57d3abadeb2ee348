"""Static buffer sizes of a run, planned once by replaying its rounds' sampling."""
import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedras_jax.compress.base import round_up
from fedras_jax.federated.local_data import client_sizes
from fedras_jax.federated.local_training import lane_schedule
from fedras_jax.federated.state import round_clients


class Capacity(NamedTuple):
  """Static buffer sizes of a run (fields of ``RoundConfig``)."""
  slot_capacity: int
  client_buckets: tuple
  max_lane_steps: int


def client_buckets(sorted_slots: np.ndarray, max_buckets: int = 3, granule: int = 64):
  """Static padding buckets for clients sorted by size, cheapest of up to ``max_buckets``.

  Args:
    sorted_slots: ``[rounds, M]`` each round's client slot counts, descending.
  Returns:
    ``((count, width), ...)``: the ``j``-th largest client of any round fits the
    width of the bucket that holds position ``j``.
  """
  bound = np.maximum.accumulate(sorted_slots.max(axis=0)[::-1])[::-1]  # non-increasing
  width = [round_up(max(b, 1), granule) for b in bound]
  m = len(width)
  cuts = sorted({int(c) for c in np.linspace(1, m - 1, num=min(m - 1, 16))}
                - {0, m}) if m > 1 else []
  best = (m * width[0], ((m, width[0]),))

  def buckets_of(points):
    edges = [0, *points, m]
    return tuple((edges[i + 1] - edges[i], width[edges[i]]) for i in range(len(edges) - 1))

  for n in range(1, max_buckets):
    for points in itertools.combinations(cuts, n):
      b = buckets_of(points)
      cost = sum(c * w for c, w in b)
      if cost < best[0]:
        best = (cost, b)
  return best[1]


def plan_capacity(num_pos: np.ndarray, num_seen: np.ndarray, num_items: int, *, seed, rounds: int,
                  clients_per_round: int, local_epochs: int, batch_size: int, neg_ratio: int,
                  num_lanes: int) -> Capacity:
  """Static buffer sizes that fit every round ``0..rounds-1`` of a run.

  Replays the round's client sampling and lane packing (the same jax functions)
  and rounds the maxima up coarsely (slots to 1024, client widths to 64, lane
  steps to 16), so runs of similar size share compiled programs. ``seed`` may be
  a sequence: the sizes then fit the runs of every seed (a vmapped sweep).
  """
  num_users = len(num_pos)
  slots, steps = client_sizes(num_pos,
                              num_seen,
                              num_items,
                              neg_ratio=neg_ratio,
                              epochs=local_epochs,
                              batch_size=batch_size)
  steps_dev = jnp.asarray(steps, jnp.int32)

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(None, 0))
  def replay(base, r):
    sampled = round_clients(base, r, num_users, clients_per_round)
    return sampled, jnp.max(lane_schedule(steps_dev[sampled], num_lanes)[1][:, -1])

  seeds = [seed] if np.ndim(seed) == 0 else list(seed)
  replays = [jax.device_get(replay(jax.random.key(s), jnp.arange(rounds))) for s in seeds]
  sampled = np.concatenate([r[0] for r in replays])
  lane_steps = np.concatenate([r[1] for r in replays])
  per_client = slots[sampled]
  return Capacity(slot_capacity=round_up(per_client.sum(axis=1).max(), 1024),
                  client_buckets=client_buckets(-np.sort(-per_client, axis=1)),
                  max_lane_steps=round_up(lane_steps.max(), 16))
