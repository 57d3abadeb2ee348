"""One federated round as one jitted XLA program.

    sample M clients from (seed, round) -> plans (sizes, negatives, shuffles)
    -> packed local training of the M clients (lanes, see ``local_training``)
    -> uplink compressor per client (vmap, each with its own bit budget)
    -> aggregation by item id (inverse frequency or FedAvg) + FedAvg of dense params
    -> server optimizer -> downlink compressor on the server update, with the
       server's compressor state (e.g. ``compress.error_feedback``'s residual)
    -> the decoded update is applied, so the server model is what clients rebuild
    -> private user rows scattered back into the stacked client states.

Every random draw comes from ``fold_in(fold_in(key(seed), round), purpose[, user])``,
so a round depends only on (seed, round, state): reruns are bit-identical and a
resumed run continues exactly.
"""
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedras_jax.compress.base import (Compressor, Context, check_bit_count, dense_bits, identity)
from fedras_jax.compress.roundtrip import Roundtrip, roundtrip, roundtrip_clients
from fedras_jax.federated.aggregation import aggregate_item_updates
from fedras_jax.federated.client_data import ClientData
from fedras_jax.federated.local_data import client_plan, slot_item
from fedras_jax.federated.local_training import (LocalHParams, lane_schedule, packed_client_updates,
                                                 slot_layout)
from fedras_jax.federated.state import (BANDWIDTH, DOWNLINK, UPLINK, ClientStates, RoundConfig,
                                        RoundHParams, RoundMetrics, ServerState, client_keys,
                                        round_basis_key, round_clients, round_key)
from fedras_jax.models.base import RecModel
from fedras_jax.quantize.bits import saturating_int32


def _bits(x):
  """A float bit budget as int32 ``>= 0``, saturating (``inf`` -> the largest value)."""
  return jnp.maximum(saturating_int32(jnp.asarray(x, jnp.float32)), 0)


def _client_finite(deltas, slot_client, num_clients, users, dense_deltas):
  """``[M]`` bool: the client's update and new user row are finite."""
  # A sum is non-finite iff a term is non-finite (or it overflows: also bad).
  row_sums = jax.ops.segment_sum(jnp.sum(deltas, axis=1), slot_client, num_segments=num_clients)
  bad = ~jnp.isfinite(row_sums)
  bad |= ~jnp.isfinite(jnp.sum(users, axis=1))
  for leaf in jax.tree.leaves(dense_deltas):
    bad |= ~jnp.isfinite(jnp.sum(leaf.reshape(num_clients, -1), axis=1))
  return ~bad


def relative_error(decoded, rows, segments=None, num_segments=None):
  """``||decoded - rows|| / ||rows||`` of ``[..., d]`` rows: one ``[]`` over all of them,
  or ``[num_segments]`` per segment with ``segments`` (e.g. ``[S]`` the client of each
  slot row)."""
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
  """The server's view after aggregation: counts ``[I]`` (clients per item), the negated
  aggregate ``(items [I, item_dim], dense)`` the optimizer took as its gradient, the
  optimizer's steps and state."""
  counts: jax.Array
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
    the server update's encode + decode (from the server's compressor state), the
    new states and the round's metrics.
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
  round's :class:`RoundStages`. ``uplink``/``downlink``: compressors (default
  ``identity``); every client encodes from ``uplink.init``, the server from its
  ``ServerState.downlink_state`` (``init_states`` must get the same ``downlink``).
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


class RoundParts(NamedTuple):
  """What a round is built from (the arguments of :func:`make_round`, defaults filled
  in); every stage function takes it first."""
  model: RecModel
  data: ClientData
  config: RoundConfig
  server_opt: optax.GradientTransformation
  uplink: Compressor
  downlink: Compressor
  mesh: Any = None


def make_round_stages(model: RecModel,
                      data: ClientData,
                      config: RoundConfig,
                      server_opt: optax.GradientTransformation = None,
                      *,
                      uplink: Compressor = None,
                      downlink: Compressor = None,
                      mesh=None) -> RoundStages:
  """The :class:`RoundStages` of ``make_round`` (same arguments)."""
  if config.clients_per_round > data.num_users:
    raise ValueError(f"clients_per_round={config.clients_per_round} exceeds the number of users "
                     f"{data.num_users}")
  parts = RoundParts(model=model,
                     data=data,
                     config=config,
                     server_opt=server_opt or optax.sgd(1.0),
                     uplink=uplink or identity(data.num_items),
                     downlink=downlink or identity(data.num_items),
                     mesh=mesh)
  return RoundStages(local=functools.partial(local_stage, parts),
                     uplink=functools.partial(uplink_stage, parts),
                     aggregate=functools.partial(aggregate_stage, parts),
                     downlink=functools.partial(downlink_stage, parts))


class ClientPlans(NamedTuple):
  """The round's sampled clients ``[M]``, their plans, slot layout and the item of each
  slot ``[S]``."""
  sampled: jax.Array
  plans: Any
  layout: Any
  items_of_slot: jax.Array


def plan_clients(parts: RoundParts, server: ServerState) -> ClientPlans:
  """Samples the round's clients and lays their slots out (sizes, negatives, shuffles)."""
  data, config = parts.data, parts.config
  sampled = round_clients(server.key, server.round, data.num_users, config.clients_per_round)
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
  return ClientPlans(sampled, plans, layout, items_of_slot)


def train_clients(parts: RoundParts, server: ServerState, users, local_hp: LocalHParams,
                  plan: ClientPlans):
  """Packed local training of the planned clients from the server's model; ``users``
  ``[M, user_dim]``: their private rows. Returns the ``ClientOutput`` of every slot."""
  config = parts.config
  return packed_client_updates(parts.model,
                               local_hp,
                               plan.plans,
                               plan.layout,
                               plan.items_of_slot,
                               server.items,
                               server.dense,
                               users,
                               num_lanes=config.num_lanes,
                               max_iters=config.max_lane_steps,
                               batch_size=config.batch_size,
                               mesh=parts.mesh)


def capacity_overflow(config: RoundConfig, num_slots, num_steps):
  """``[]`` bool: clients of ``num_slots [M]`` slots and ``num_steps [M]`` SGD steps do not
  fit ``config``'s static sizes (total slots, bucket widths of the clients by size, the
  busiest lane's steps). ``plan_capacity`` sizes a run so this never holds; an overflow
  would drop slots, read a neighbour's rows and cut lanes short."""
  widths = jnp.asarray([w for c, w in config.client_buckets for _ in range(c)], jnp.int32)
  lane_steps = jnp.max(lane_schedule(num_steps, config.num_lanes)[1][:, -1])
  return ((jnp.sum(num_slots) > config.slot_capacity) | jnp.any(-jnp.sort(-num_slots) > widths)
          | (lane_steps > config.max_lane_steps))


def local_stage(parts: RoundParts, server: ServerState, clients: ClientStates,
                hp: RoundHParams) -> LocalResult:
  """Samples the round's clients, trains them (packed lanes), checks their updates and
  draws their bandwidths and uplink budgets."""
  m = parts.config.clients_per_round
  key = round_key(server.key, server.round)
  plan = plan_clients(parts, server)
  # Methods with a shared round subspace (CoLR) train the item rows inside it.
  local_hp = hp.local._replace(
      item_projection=parts.uplink.item_projection(round_basis_key(server.key, server.round)))
  trained = train_clients(parts, server, clients.users[plan.sampled], local_hp, plan)
  sampled, plans, layout, items_of_slot = plan

  ok = _client_finite(trained.deltas, layout.client, m, trained.users, trained.dense_deltas)
  slot_ok = layout.valid & ok[layout.client]
  deltas = jnp.where(slot_ok[:, None], trained.deltas, 0.0)

  # Bandwidth this round and the uplink budget it gives.
  wiggle = jax.random.uniform(jax.random.fold_in(key, BANDWIDTH), (m,), minval=-1.0, maxval=1.0)
  bandwidth = clients.bandwidth[sampled] * (1.0 + hp.fluctuation * wiggle)
  up_keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(key, UPLINK), sampled)
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


def uplink_stage(parts: RoundParts, server: ServerState, hp: RoundHParams,
                 local: LocalResult) -> Roundtrip:
  """Every client's encode and decode of its item-row update, from ``uplink.init``."""
  del hp
  return roundtrip_clients(parts.uplink,
                           local.deltas,
                           local.layout.offset,
                           local.plans.num_slots,
                           local.budget,
                           local.up_keys,
                           buckets=parts.config.client_buckets,
                           context=Context(base_rows=server.items[local.items_of_slot],
                                           shared_key=round_basis_key(server.key, server.round)))


def _aggregate_rows(parts: RoundParts, local: LocalResult, rows):
  """``(update [I, item_dim], counts [I])``: the slot rows ``[S, item_dim]`` aggregated
  per item by the round's rule."""
  return aggregate_item_updates(rows,
                                local.items_of_slot,
                                local.slot_ok,
                                num_items=parts.data.num_items,
                                num_clients=parts.config.clients_per_round,
                                rule=parts.config.aggregation)


def aggregate_stage(parts: RoundParts, server: ServerState, local: LocalResult,
                    up: Roundtrip) -> Aggregate:
  """Per-item aggregation of the decoded uplink, FedAvg of the dense weights, the server
  optimizer."""
  item_update, counts = _aggregate_rows(parts, local, up.decoded)
  ok_f = local.ok.astype(jnp.float32)

  def dense_mean(d):  # a skipped client's NaN must not reach the sum (0 * NaN is NaN)
    d = jnp.where(local.ok.reshape((-1,) + (1,) * (d.ndim - 1)), d, 0.0)
    return jnp.tensordot(ok_f, d, axes=1) / jnp.maximum(jnp.sum(ok_f), 1.0)

  dense_update = jax.tree.map(dense_mean, local.trained.dense_deltas)
  neg_grad = jax.tree.map(jnp.negative, (item_update, dense_update))
  updates, opt_state = parts.server_opt.update(neg_grad, server.opt_state,
                                               (server.items, server.dense))
  item_step, dense_step = updates
  return Aggregate(counts=counts,
                   neg_grad=neg_grad,
                   item_step=item_step,
                   dense_step=dense_step,
                   opt_state=opt_state)


def uncompressed_item_step(parts: RoundParts, server: ServerState, local: LocalResult,
                           agg: Aggregate):
  """``[I, item_dim]`` the server's item step of this round had nothing been compressed
  (after an exact uplink: the one aggregated)."""
  if parts.uplink.exact:
    return agg.item_step
  raw_update, _ = _aggregate_rows(parts, local, local.deltas)
  raw_step, _ = parts.server_opt.update((-raw_update, agg.neg_grad[1]), server.opt_state,
                                        (server.items, server.dense))
  return raw_step[0]


def downlink_stage(parts: RoundParts, server: ServerState, clients: ClientStates, hp: RoundHParams,
                   local: LocalResult, up: Roundtrip, agg: Aggregate):
  """The server update's encode and decode (from ``ServerState.downlink_state``), the new
  states and the round's metrics."""
  key = round_key(server.key, server.round)
  # The touched rows, and any other the server's step moves (an optimizer with momentum
  # moves rows nobody touched this round; plain SGD moves none).
  moved = (agg.counts > 0) | jnp.any(agg.item_step != 0, axis=1)
  down = roundtrip(parts.downlink,
                   agg.item_step,
                   moved,
                   _bits(hp.downlink_budget_bits),
                   jax.random.fold_in(key, DOWNLINK),
                   state=server.downlink_state,
                   context=Context(base_rows=server.items,
                                   shared_key=round_basis_key(server.key, server.round)))
  info_loss = jnp.sqrt(
      jnp.sum(jnp.square(down.decoded - uncompressed_item_step(parts, server, local, agg))))
  dense_count = sum(x.size for x in jax.tree.leaves(server.dense))
  # Each direction's bits are int32: a dense item table plus the dense parameters must fit
  # (a payload the budget bounds is no larger). Their sum need not: seconds are float.
  check_bit_count(
      dense_bits(*server.items.shape) + 32 * dense_count,
      "the dense item table plus the dense parameters")
  bits_down = down.bits + jnp.int32(32 * dense_count)
  bits_up = up.bits + jnp.int32(32 * dense_count)

  sampled, trained = local.sampled, local.trained
  seconds = (bits_up.astype(jnp.float32) + bits_down.astype(jnp.float32)) / local.bandwidth
  seconds = seconds + hp.compute_seconds
  new_users = jnp.where(local.ok[:, None], trained.users, clients.users[sampled])
  metrics = RoundMetrics(sampled=sampled,
                         loss=trained.loss,
                         bits_up=bits_up,
                         bits_down=bits_down,
                         budget_up=local.budget,
                         num_actions=up.num_actions,
                         error_up=relative_error(up.decoded, up.target, local.layout.client,
                                                 parts.config.clients_per_round),
                         error_down=relative_error(down.decoded, down.target),
                         info_loss=info_loss,
                         touched_items=jnp.sum(agg.counts > 0),
                         skipped=jnp.sum(~local.ok),
                         sim_seconds=jnp.max(seconds),
                         overflow=capacity_overflow(parts.config, local.plans.num_slots,
                                                    local.plans.num_steps))
  server = ServerState(items=server.items + down.decoded,
                       dense=jax.tree.map(jnp.add, server.dense, agg.dense_step),
                       opt_state=agg.opt_state,
                       round=server.round + 1,
                       key=server.key,
                       downlink_state=down.state)
  clients = clients._replace(users=clients.users.at[sampled].set(new_users))
  return server, clients, metrics
