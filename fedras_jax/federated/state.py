"""The round's state, configuration and randomness: what a run carries between rounds.

``RoundConfig`` is the static shape (a change recompiles), ``RoundHParams`` the traced
hyper-parameters, ``ServerState`` / ``ClientStates`` the pytrees a round maps to their
successors, ``RoundMetrics`` what it measures. Every random draw of a round comes from
``fold_in(fold_in(key(seed), round), purpose[, user])`` (the key functions below), so a
round depends only on (seed, round, state).
"""
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedras_jax.compress.base import Compressor, identity
from fedras_jax.federated.aggregation import AGGREGATIONS
from fedras_jax.federated.local_training import LocalHParams
from fedras_jax.models.base import RecModel

# fold_in purposes of the round key.
SAMPLE, CLIENT, BANDWIDTH, UPLINK, DOWNLINK, BASIS = range(6)


@dataclasses.dataclass(frozen=True)
class RoundConfig:
  """Static shape of a round (a change recompiles).

  slot_capacity: flat slot buffer size ``S`` >= the sampled clients' total slots in
    every round of the run; client_buckets: ``((count, width), ...)``, the
    ``count`` largest remaining clients of a round have at most ``width`` slots
    (how compressors pad clients); max_lane_steps: >= the busiest lane's SGD
    steps (all three from ``plan_capacity``). num_lanes: ``W`` lanes of packed
    local training. (Downlink error feedback and warm starts are compressor
    wrappers: ``compress.error_feedback``, ``compress.cold_start``.)
  """
  clients_per_round: int
  slot_capacity: int
  client_buckets: tuple
  max_lane_steps: int
  local_epochs: int = 2
  batch_size: int = 64
  neg_ratio: int = 4
  num_lanes: int = 8
  aggregation: str = "inverse_frequency"

  def __post_init__(self):
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
    for name in ("clients_per_round", "local_epochs", "batch_size", "num_lanes", "slot_capacity",
                 "max_lane_steps"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.neg_ratio < 0:
      raise ValueError(f"neg_ratio must be >= 0, got {self.neg_ratio}")
    if sum(c for c, _ in self.client_buckets) != self.clients_per_round:
      raise ValueError(f"client_buckets {self.client_buckets} must cover "
                       f"{self.clients_per_round} clients")

  @property
  def max_client_slots(self) -> int:
    return self.client_buckets[0][1]


class RoundHParams(NamedTuple):
  """Traced round hyper-parameters (sweepable in one program).

  fluctuation: each round a client's bandwidth is scaled by ``1 + U(-f, f)``.
  round_seconds: nominal round length; a client's uplink budget is its
    bandwidth times this. compute_seconds: simulated local compute time.
  downlink_budget_bits: the server's payload budget per round.
  """
  local: LocalHParams = LocalHParams()
  fluctuation: Any = 0.0
  round_seconds: Any = 1.0
  compute_seconds: Any = 0.0
  downlink_budget_bits: Any = float(2**31 - 1)


class ServerState(NamedTuple):
  """items ``[I, item_dim]`` and dense: the shared model as clients rebuild it;
  opt_state: server optimizer state; round: int32; key: the run's base PRNG key;
  downlink_state: the downlink compressor's state (``Compressor.init(I,
  item_dim)``; with ``compress.error_feedback``, ``FeedbackState`` whose
  ``residual [I, item_dim]`` is the server update not yet sent)."""
  items: jax.Array
  dense: Any
  opt_state: Any
  round: jax.Array
  key: jax.Array
  downlink_state: Any = ()


class ClientStates(NamedTuple):
  """Stacked per-user state: users ``[U, user_dim]`` private rows; bandwidth ``[U]``
  bits per simulated second."""
  users: jax.Array
  bandwidth: jax.Array


class RoundMetrics(NamedTuple):
  """Per-round measurements (``[M]`` arrays are per sampled client)."""
  sampled: jax.Array  # [M] user ids
  loss: jax.Array  # [M] mean local training loss
  bits_up: jax.Array  # [M] int32 uplink payload
  bits_down: jax.Array  # int32 downlink payload per client (item table + dense)
  budget_up: jax.Array  # [M] uplink budget in bits
  num_actions: jax.Array  # [M] actions used per client (-1 when not applicable)
  error_up: jax.Array  # [M] ||decode(encode(G)) - G|| / ||G||
  error_down: jax.Array  # same for the server update
  info_loss: jax.Array  # ||applied item update - uncompressed item update||_F
  touched_items: jax.Array  # items with at least one update
  skipped: jax.Array  # clients whose update was non-finite and dropped
  sim_seconds: jax.Array  # simulated round duration (slowest client)
  overflow: jax.Array  # bool: the round's clients outgrew RoundConfig's static sizes


def init_states(model: RecModel,
                num_users: int,
                num_items: int,
                server_opt,
                *,
                seed: int,
                bandwidth=None,
                downlink: Compressor = None):
  """Initial ``(ServerState, ClientStates)``; bandwidth ``[U]`` defaults to unlimited.
  ``downlink``: the round's downlink compressor (default ``identity``), whose
  ``init(num_items, item_dim)`` the server state holds."""
  key = jax.random.key(seed)
  params = model.init(jax.random.fold_in(key, 0), num_users, num_items)
  shared = (params.items, params.dense)
  if bandwidth is None:
    bandwidth = jnp.full((num_users,), jnp.inf, jnp.float32)
  downlink = downlink or identity(num_items)
  server = ServerState(items=params.items,
                       dense=params.dense,
                       opt_state=server_opt.init(shared),
                       round=jnp.int32(0),
                       key=key,
                       downlink_state=downlink.init(num_items, model.item_dim))
  return server, ClientStates(users=params.users, bandwidth=jnp.asarray(bandwidth, jnp.float32))


def sample_clients(key, num_users: int, num_clients: int) -> jax.Array:
  """``[num_clients]`` distinct user ids, uniform without replacement."""
  return jax.random.choice(key, num_users, (num_clients,), replace=False).astype(jnp.int32)


def round_key(base_key, round_index):
  """The key of round ``round_index`` of the run whose base key is ``base_key``."""
  return jax.random.fold_in(base_key, round_index)


def round_clients(base_key, round_index, num_users: int, num_clients: int) -> jax.Array:
  """``[M]`` users sampled in a round: a function of (seed, round) only."""
  key = jax.random.fold_in(round_key(base_key, round_index), SAMPLE)
  return sample_clients(key, num_users, num_clients)


def client_keys(base_key, round_index, users) -> jax.Array:
  """``[M]`` local-training keys of ``users`` in a round: (seed, round, user) only."""
  key = jax.random.fold_in(round_key(base_key, round_index), CLIENT)
  return jax.vmap(jax.random.fold_in, (None, 0))(key, users)


def round_basis_key(base_key, round_index):
  """The round's key shared by every client and the server (``Context.shared_key``,
  e.g. of CoLR's basis ``B``)."""
  return jax.random.fold_in(round_key(base_key, round_index), BASIS)
