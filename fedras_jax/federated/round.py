"""One federated round as one jitted XLA program.

    sample M clients from (seed, round) -> plans (sizes, negatives, shuffles)
    -> packed local training of the M clients (lanes, see ``local_training``)
    -> uplink compressor per client (vmap, each with its own bit budget)
    -> aggregation by item id (inverse frequency or FedAvg) + FedAvg of dense params
    -> server optimizer -> downlink compressor on the server update plus the
       residual it failed to send before (error feedback, ``downlink_feedback``)
    -> the decoded update is applied, so the server model is what clients rebuild
    -> private user rows scattered back into the stacked client states.

Every random draw comes from ``fold_in(fold_in(key(seed), round), purpose[, user])``,
so a round depends only on (seed, round, state): reruns are bit-identical and a
resumed run continues exactly.
"""
import dataclasses
import functools
import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedras_jax.compress.base import Compressor, dense_bits, identity
from fedras_jax.compress.roundtrip import Roundtrip, roundtrip, roundtrip_clients
from fedras_jax.federated.aggregation import AGGREGATIONS, aggregate_item_updates
from fedras_jax.federated.client_data import ClientData
from fedras_jax.federated.local_data import client_plan, client_sizes, slot_item
from fedras_jax.federated.local_training import (LocalHParams, lane_schedule, packed_client_updates,
                                                 slot_layout)
from fedras_jax.models.base import RecModel

# fold_in purposes of the round key.
_SAMPLE, _CLIENT, _BANDWIDTH, _UPLINK, _DOWNLINK, _BASIS = range(6)


@dataclasses.dataclass(frozen=True)
class RoundConfig:
  """Static shape of a round (a change recompiles).

  slot_capacity: flat slot buffer size ``S`` >= the sampled clients' total slots in
    every round of the run; client_buckets: ``((count, width), ...)``, the
    ``count`` largest remaining clients of a round have at most ``width`` slots
    (how compressors pad clients); max_lane_steps: >= the busiest lane's SGD
    steps (all three from ``plan_capacity``). num_lanes: ``W`` lanes of packed
    local training. downlink_feedback: the server keeps what its lossy downlink
    failed to send (``ServerState.residual``) and adds it to the next round's
    update (error feedback), so nothing of the aggregate is lost, only delayed.
    downlink_warm_start: a downlink compressor with memory (FedRAS) starts from the
    last round's payload (``ServerState.downlink_memory``, when ``init_states`` was
    given the downlink; otherwise every round starts cold).
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
  downlink_feedback: bool = True
  downlink_warm_start: bool = True

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
  residual ``[I, item_dim]``: server update not yet sent (downlink error feedback;
  zero with a lossless downlink); opt_state: server optimizer state; round: int32;
  key: the run's base PRNG key; downlink_memory: what a warm-started downlink
  compressor keeps between rounds (``Compressor.init_memory``; ``()`` = none)."""
  items: jax.Array
  residual: jax.Array
  dense: Any
  opt_state: Any
  round: jax.Array
  key: jax.Array
  downlink_memory: Any = ()


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


def init_states(model: RecModel,
                num_users: int,
                num_items: int,
                server_opt,
                *,
                seed: int,
                bandwidth=None,
                downlink: Compressor = None):
  """Initial ``(ServerState, ClientStates)``; bandwidth ``[U]`` defaults to unlimited.
  ``downlink``: a compressor with ``init_memory`` gets its memory in the server state,
  so a round with ``downlink_warm_start`` starts each round's encode from the last."""
  key = jax.random.key(seed)
  params = model.init(jax.random.fold_in(key, 0), num_users, num_items)
  shared = (params.items, params.dense)
  if bandwidth is None:
    bandwidth = jnp.full((num_users,), jnp.inf, jnp.float32)
  server = ServerState(items=params.items,
                       residual=jnp.zeros_like(params.items),
                       dense=params.dense,
                       opt_state=server_opt.init(shared),
                       round=jnp.int32(0),
                       key=key,
                       downlink_memory=(downlink.init_memory(num_items, model.item_dim)
                                        if downlink is not None and downlink.init_memory else ()))
  return server, ClientStates(users=params.users, bandwidth=jnp.asarray(bandwidth, jnp.float32))


def sample_clients(key, num_users: int, num_clients: int) -> jax.Array:
  """``[num_clients]`` distinct user ids, uniform without replacement."""
  return jax.random.choice(key, num_users, (num_clients,), replace=False).astype(jnp.int32)


def round_key(base_key, round_index):
  """The key of round ``round_index`` of the run whose base key is ``base_key``."""
  return jax.random.fold_in(base_key, round_index)


def round_clients(base_key, round_index, num_users: int, num_clients: int) -> jax.Array:
  """``[M]`` users sampled in a round: a function of (seed, round) only."""
  key = jax.random.fold_in(round_key(base_key, round_index), _SAMPLE)
  return sample_clients(key, num_users, num_clients)


def client_keys(base_key, round_index, users) -> jax.Array:
  """``[M]`` local-training keys of ``users`` in a round: (seed, round, user) only."""
  key = jax.random.fold_in(round_key(base_key, round_index), _CLIENT)
  return jax.vmap(jax.random.fold_in, (None, 0))(key, users)


def round_basis_key(base_key, round_index):
  """The key of a round's shared subspace (``Compressor.basis``, e.g. CoLR's ``B``)."""
  return jax.random.fold_in(round_key(base_key, round_index), _BASIS)


class Capacity(NamedTuple):
  """Static buffer sizes of a run (fields of ``RoundConfig``)."""
  slot_capacity: int
  client_buckets: tuple
  max_lane_steps: int


def _round_up(x, granule: int) -> int:
  return int(-(-int(x) // granule) * granule)


def client_buckets(sorted_slots: np.ndarray, max_buckets: int = 3, granule: int = 64):
  """Static padding buckets for clients sorted by size, cheapest of up to ``max_buckets``.

  Args:
    sorted_slots: ``[rounds, M]`` each round's client slot counts, descending.
  Returns:
    ``((count, width), ...)``: the ``j``-th largest client of any round fits the
    width of the bucket that holds position ``j``.
  """
  bound = np.maximum.accumulate(sorted_slots.max(axis=0)[::-1])[::-1]  # non-increasing
  width = [_round_up(max(b, 1), granule) for b in bound]
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
  return Capacity(slot_capacity=_round_up(per_client.sum(axis=1).max(), 1024),
                  client_buckets=client_buckets(-np.sort(-per_client, axis=1)),
                  max_lane_steps=_round_up(lane_steps.max(), 16))


def _bits(x):
  """A float bit budget as int32, saturating (``inf`` -> the largest exact value)."""
  return jnp.clip(jnp.asarray(x, jnp.float32), 0.0, 2.0**31 - 2.0**8).astype(jnp.int32)


def _client_finite(deltas, slot_client, num_clients, users, dense_deltas):
  """``[M]`` bool: the client's update and new user row are finite."""
  # A sum is non-finite iff a term is non-finite (or it overflows: also bad).
  row_sums = jax.ops.segment_sum(jnp.sum(deltas, axis=1), slot_client, num_segments=num_clients)
  bad = ~jnp.isfinite(row_sums)
  bad |= ~jnp.isfinite(jnp.sum(users, axis=1))
  for leaf in jax.tree.leaves(dense_deltas):
    bad |= ~jnp.isfinite(jnp.sum(leaf.reshape(num_clients, -1), axis=1))
  return ~bad


def _relative_error(decoded, rows, segments=None, num_segments=None):
  diff = jnp.sum(jnp.square(decoded - rows), axis=-1)
  norm = jnp.sum(jnp.square(rows), axis=-1)
  if segments is not None:
    diff = jax.ops.segment_sum(diff, segments, num_segments=num_segments)
    norm = jax.ops.segment_sum(norm, segments, num_segments=num_segments)
  else:
    diff, norm = jnp.sum(diff), jnp.sum(norm)
  return jnp.sqrt(diff / jnp.maximum(norm, 1e-30))


class LocalResult(NamedTuple):
  """What the local stage hands on: the sampled clients, their slot layout and items,
  the training output, which clients are finite (``ok [M]``, ``slot_ok [S]``), the
  masked item-row deltas ``[S, d]``, the round's bandwidths and uplink budgets ``[M]``
  and the uplink keys ``[M]``."""
  sampled: jax.Array
  plans: Any
  layout: Any
  items_of_slot: jax.Array
  trained: Any
  ok: jax.Array
  slot_ok: jax.Array
  deltas: jax.Array
  bandwidth: jax.Array
  budget: jax.Array
  up_keys: jax.Array


class Aggregate(NamedTuple):
  """The server's view after aggregation: per-item update and counts, the dense
  update, the optimizer's steps and state."""
  item_update: jax.Array
  counts: jax.Array
  dense_update: Any
  neg_grad: Any
  item_step: jax.Array
  dense_step: Any
  opt_state: Any


class RoundStages(NamedTuple):
  """The round as four pure stages (``round_fn`` is their composition), so each can
  be jitted and timed on its own (``experiments/bench_round.py``):

  * ``local(server, clients, hp) -> LocalResult``: sampling, plans, packed local
    training, finiteness, bandwidth and budgets;
  * ``uplink(server, hp, local) -> Roundtrip``: every client's encode + decode;
  * ``aggregate(server, local, up) -> Aggregate``: per-item aggregation, FedAvg of
    dense weights, the server optimizer;
  * ``downlink(server, clients, hp, local, up, agg) -> (server, clients, metrics)``:
    the server update's encode + decode (with error feedback), the new states and
    the round's metrics.
  """
  local: Any
  uplink: Any
  aggregate: Any
  downlink: Any


def make_round(model: RecModel,
               data: ClientData,
               config: RoundConfig,
               server_opt: optax.GradientTransformation = None,
               *,
               uplink: Compressor = None,
               downlink: Compressor = None,
               mesh=None):
  """Builds ``round_fn(server, clients, hp) -> (server, clients, RoundMetrics)``.

  The returned function is pure and not yet jitted (``jax.jit`` it with
  ``donate_argnums=(0, 1)``; ``jax.vmap`` it over seeds or traced hyper-params).
  ``server_opt`` gets the negated aggregated update as gradient (default
  ``optax.sgd(1.0)``: add the update). ``mesh``: a ``jax.sharding.Mesh`` with a
  ``"clients"`` axis to split local training (the lanes, hence the clients) over
  devices; results equal the single-device round. ``round_fn.stages`` holds the
  round's :class:`RoundStages`.
  """
  stages = make_round_stages(model,
                             data,
                             config,
                             server_opt,
                             uplink=uplink,
                             downlink=downlink,
                             mesh=mesh)

  def round_fn(server: ServerState, clients: ClientStates, hp: RoundHParams):
    local = stages.local(server, clients, hp)
    up = stages.uplink(server, hp, local)
    agg = stages.aggregate(server, local, up)
    return stages.downlink(server, clients, hp, local, up, agg)

  round_fn.stages = stages
  return round_fn


def make_round_stages(model: RecModel,
                      data: ClientData,
                      config: RoundConfig,
                      server_opt: optax.GradientTransformation = None,
                      *,
                      uplink: Compressor = None,
                      downlink: Compressor = None,
                      mesh=None) -> RoundStages:
  """The :class:`RoundStages` of ``make_round`` (same arguments)."""
  server_opt = server_opt or optax.sgd(1.0)
  uplink = uplink or identity(data.num_items)
  downlink = downlink or identity(data.num_items)
  m = config.clients_per_round
  if m > data.num_users:
    raise ValueError(f"clients_per_round={m} exceeds the number of users {data.num_users}")
  dense_table_bits = dense_bits(data.num_items, model.item_dim)

  def local_stage(server: ServerState, clients: ClientStates, hp: RoundHParams) -> LocalResult:
    key = round_key(server.key, server.round)
    sampled = round_clients(server.key, server.round, data.num_users, m)
    plans = jax.vmap(lambda u, k: client_plan(data,
                                              u,
                                              k,
                                              neg_ratio=config.neg_ratio,
                                              epochs=config.local_epochs,
                                              batch_size=config.batch_size))(
                                                  sampled,
                                                  client_keys(server.key, server.round, sampled))
    layout = slot_layout(plans.num_slots, config.slot_capacity)
    slot_plans = jax.tree.map(lambda x: x[layout.client], plans)
    items_of_slot = jax.vmap(slot_item, (None, 0, 0))(data, slot_plans, layout.local)

    # Methods with a shared round subspace (CoLR) train the item rows inside it.
    basis_key = round_basis_key(server.key, server.round)
    local_hp = hp.local
    if uplink.basis is not None:
      b = uplink.basis(basis_key)
      local_hp = local_hp._replace(item_projection=b.T @ b)
    trained = packed_client_updates(model,
                                    local_hp,
                                    plans,
                                    layout,
                                    items_of_slot,
                                    server.items,
                                    server.dense,
                                    clients.users[sampled],
                                    num_lanes=config.num_lanes,
                                    max_iters=config.max_lane_steps,
                                    batch_size=config.batch_size,
                                    mesh=mesh)

    ok = _client_finite(trained.deltas, layout.client, m, trained.users, trained.dense_deltas)
    slot_ok = layout.valid & ok[layout.client]
    deltas = jnp.where(slot_ok[:, None], trained.deltas, 0.0)

    # Bandwidth this round and the uplink budget it gives.
    wiggle = jax.random.uniform(jax.random.fold_in(key, _BANDWIDTH), (m,), minval=-1.0, maxval=1.0)
    bandwidth = clients.bandwidth[sampled] * (1.0 + hp.fluctuation * wiggle)
    if uplink.basis is None:
      up_keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(key, _UPLINK), sampled)
    else:
      up_keys = jnp.broadcast_to(basis_key, sampled.shape)
    return LocalResult(sampled=sampled,
                       plans=plans,
                       layout=layout,
                       items_of_slot=items_of_slot,
                       trained=trained,
                       ok=ok,
                       slot_ok=slot_ok,
                       deltas=deltas,
                       bandwidth=bandwidth,
                       budget=_bits(bandwidth * hp.round_seconds),
                       up_keys=up_keys)

  def uplink_stage(server: ServerState, hp: RoundHParams, local: LocalResult) -> Roundtrip:
    del hp
    return roundtrip_clients(
        uplink,
        local.deltas,
        local.layout.offset,
        local.plans.num_slots,
        local.budget,
        local.up_keys,
        buckets=config.client_buckets,
        lossless_bits=dense_table_bits,
        base_rows=server.items[local.items_of_slot] if uplink.on_embeddings else None)

  def aggregate_stage(server: ServerState, local: LocalResult, up: Roundtrip) -> Aggregate:
    item_update, counts = aggregate_item_updates(up.decoded,
                                                 local.items_of_slot,
                                                 local.slot_ok,
                                                 num_items=data.num_items,
                                                 num_clients=m,
                                                 rule=config.aggregation)
    ok_f = local.ok.astype(jnp.float32)
    dense_update = jax.tree.map(
        lambda d: jnp.tensordot(ok_f, d, axes=1) / jnp.maximum(jnp.sum(ok_f), 1.0),
        local.trained.dense_deltas)
    neg_grad = jax.tree.map(jnp.negative, (item_update, dense_update))
    updates, opt_state = server_opt.update(neg_grad, server.opt_state, (server.items, server.dense))
    item_step, dense_step = updates
    return Aggregate(item_update=item_update,
                     counts=counts,
                     dense_update=dense_update,
                     neg_grad=neg_grad,
                     item_step=item_step,
                     dense_step=dense_step,
                     opt_state=opt_state)

  def downlink_stage(server: ServerState, clients: ClientStates, hp: RoundHParams,
                     local: LocalResult, up: Roundtrip, agg: Aggregate):
    key = round_key(server.key, server.round)
    basis_key = round_basis_key(server.key, server.round)
    item_step = agg.item_step
    if config.downlink_feedback and not downlink.lossless:
      item_step = item_step + server.residual
      send = jnp.any(item_step != 0, axis=1)
    else:
      send = agg.counts > 0
    warm = (config.downlink_warm_start and downlink.init_memory is not None
            and bool(jax.tree.leaves(server.downlink_memory)))
    down = roundtrip(downlink,
                     item_step,
                     send,
                     _bits(hp.downlink_budget_bits),
                     jax.random.fold_in(key, _DOWNLINK) if downlink.basis is None else basis_key,
                     lossless_bits=dense_table_bits,
                     base_rows=server.items if downlink.on_embeddings else None,
                     memory=server.downlink_memory if warm else None)
    residual = (item_step - down.decoded
                if config.downlink_feedback and not downlink.lossless else server.residual)
    if uplink.lossless and downlink.lossless:
      info_loss = jnp.float32(0.0)
    else:  # The same state's update had nothing been compressed.
      raw_update, _ = aggregate_item_updates(local.deltas,
                                             local.items_of_slot,
                                             local.slot_ok,
                                             num_items=data.num_items,
                                             num_clients=m,
                                             rule=config.aggregation)
      raw_step, _ = server_opt.update((-raw_update, agg.neg_grad[1]), server.opt_state,
                                      (server.items, server.dense))
      info_loss = jnp.sqrt(jnp.sum(jnp.square(down.decoded - raw_step[0])))
    dense_count = sum(x.size for x in jax.tree.leaves(server.dense))
    bits_down = down.bits + jnp.int32(32 * dense_count)
    bits_up = up.bits + jnp.int32(32 * dense_count)

    sampled, trained = local.sampled, local.trained
    seconds = (bits_up + bits_down) / local.bandwidth + hp.compute_seconds
    new_users = jnp.where(local.ok[:, None], trained.users, clients.users[sampled])
    metrics = RoundMetrics(sampled=sampled,
                           loss=trained.loss,
                           bits_up=bits_up,
                           bits_down=bits_down,
                           budget_up=local.budget,
                           num_actions=up.num_actions,
                           error_up=(jnp.zeros((m,)) if uplink.lossless else _relative_error(
                               up.decoded, local.deltas, local.layout.client, m)),
                           error_down=(jnp.float32(0.0) if downlink.lossless else _relative_error(
                               down.decoded, jnp.where(send[:, None], item_step, 0.0))),
                           info_loss=info_loss,
                           touched_items=jnp.sum(agg.counts > 0),
                           skipped=jnp.sum(~local.ok),
                           sim_seconds=jnp.max(seconds))
    server = ServerState(items=server.items + down.decoded,
                         residual=residual,
                         dense=jax.tree.map(jnp.add, server.dense, agg.dense_step),
                         opt_state=agg.opt_state,
                         round=server.round + 1,
                         key=server.key,
                         downlink_memory=down.memory if warm else server.downlink_memory)
    clients = clients._replace(users=clients.users.at[sampled].set(new_users))
    return server, clients, metrics

  return RoundStages(local=local_stage,
                     uplink=uplink_stage,
                     aggregate=aggregate_stage,
                     downlink=downlink_stage)
