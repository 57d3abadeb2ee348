"""Local training: one client's SGD step, one client's update, and many clients packed.

``client_update`` trains one client and is the reference semantics. The round uses
``packed_client_updates``, which computes the same thing for ``M`` clients at once:
clients are packed into ``W`` lanes (longest first, snake order), each lane runs
its clients back to back, and one ``lax.while_loop`` advances every lane by one
SGD step per iteration (``vmap`` over lanes). Padding clients to the round's
longest wastes most of the work when clients need 4 to 100+ steps; lanes keep
every lane busy until the longest lane ends.

The item rows a client trains are stored as *deltas* from the shared item table,
one row per local slot (see ``local_data``): ``[S, item_dim]`` for the whole round,
client ``c`` owning rows ``slot_offset[c] : slot_offset[c] + num_slots[c]``.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from fedras_jax.federated.client_data import ClientData
from fedras_jax.federated.local_data import ClientPlan, minibatch, slot_item
from fedras_jax.federated.rows import add_rows, set_rows, take_rows
from fedras_jax.models.base import RecModel, bce_loss


class LocalHParams(NamedTuple):
  """Traced local-training hyper-parameters (sweepable without recompiling).

  user_lr: SGD step of the private user row; item_lr: of item rows;
  dense_lr: of shared dense weights (NCF); weight_decay: L2 coefficient applied to
  the parameters a step touches. item_projection: optional ``[item_dim, item_dim]``
  applied to every item-row gradient (``G @ P``): the round sets it for methods
  that train item rows in a subspace (CoLR, see ``compress.colr``); None: plain SGD.
  """
  user_lr: Any = 1.0
  item_lr: Any = 1.0
  dense_lr: Any = 0.1
  weight_decay: Any = 0.0
  item_projection: Any = None


def local_step(model: RecModel, hp: LocalHParams, user, rows, dense, labels, valid):
  """One SGD step of one client on one minibatch.

  Args:
    user: ``[user_dim]``; rows: ``[B, item_dim]`` current item rows of the batch;
    dense: the client's dense params; labels, valid: ``[B]`` bool.
  Returns:
    ``(new_user, row_updates [B, item_dim], new_dense, loss)``; with no valid
    example every update is exactly zero.
  """
  weights = valid.astype(jnp.float32)

  def loss_fn(user, rows, dense):
    return bce_loss(model.score(user, rows, dense), labels, weights)

  loss, (g_user, g_rows, g_dense) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(user, rows,
                                                                                   dense)
  active = jnp.any(valid).astype(jnp.float32)
  wd = hp.weight_decay
  g_user = g_user + wd * active * user
  g_rows = g_rows + wd * weights[:, None] * rows
  if hp.item_projection is not None:
    g_rows = jnp.matmul(g_rows, hp.item_projection, precision=jax.lax.Precision.HIGHEST)
  new_dense = jax.tree.map(lambda p, g: p - hp.dense_lr * (g + wd * active * p), dense, g_dense)
  return user - hp.user_lr * g_user, -hp.item_lr * g_rows, new_dense, loss


class ClientOutput(NamedTuple):
  """What one client's local training produces.

  user: ``[user_dim]`` its new private row. items: ``[L]`` the item of each local
  slot; deltas: ``[L, item_dim]`` the change of each slot's row; mask: ``[L]``
  which slots are real; dense_delta: the change of the dense params; loss: mean
  training loss over its steps.
  """
  user: jax.Array
  items: jax.Array
  deltas: jax.Array
  mask: jax.Array
  dense_delta: Any
  loss: jax.Array


def client_update(model: RecModel, hp: LocalHParams, data: ClientData, plan: ClientPlan, item_table,
                  dense, user_row, *, max_slots: int, batch_size: int) -> ClientOutput:
  """Trains one client for ``plan.num_steps`` SGD steps; ``max_slots`` >= num_slots."""
  slots = jnp.arange(max_slots)
  items = slot_item(data, plan, slots)

  def body(step, carry):
    user, deltas, dense_c, loss_sum = carry
    local, labels, valid = minibatch(plan, step, batch_size)
    rows = item_table[items[local]] + deltas[local]
    user, updates, dense_c, loss = local_step(model, hp, user, rows, dense_c, labels, valid)
    return user, deltas.at[local].add(updates), dense_c, loss_sum + loss

  zeros = jnp.zeros((max_slots, item_table.shape[1]), item_table.dtype)
  user, deltas, new_dense, loss_sum = jax.lax.fori_loop(0, plan.num_steps, body,
                                                        (user_row, zeros, dense, jnp.float32(0)))
  return ClientOutput(user=user,
                      items=items,
                      deltas=deltas,
                      mask=slots < plan.num_slots,
                      dense_delta=jax.tree.map(jnp.subtract, new_dense, dense),
                      loss=loss_sum / jnp.maximum(plan.num_steps, 1))


class SlotLayout(NamedTuple):
  """Where each sampled client's slots live in the round's flat slot buffer.

  offset: ``[M]`` first slot of each client. client, local: ``[S]`` owner and
  local slot index of every flat slot; valid: ``[S]`` slot is in use.
  """
  offset: jax.Array
  client: jax.Array
  local: jax.Array
  valid: jax.Array


def slot_layout(num_slots: jax.Array, capacity: int) -> SlotLayout:
  """Lays ``num_slots [M]`` clients' slots back to back in ``capacity`` flat slots."""
  ends = jnp.cumsum(num_slots)
  offset = ends - num_slots
  flat = jnp.arange(capacity)
  starts = jnp.zeros(capacity, jnp.int32).at[offset[1:]].add(1, mode="drop")
  client = jnp.cumsum(starts)
  # A client with zero slots shares its start with the next one; skip it.
  client = jnp.minimum(client, num_slots.shape[0] - 1)
  return SlotLayout(offset=offset,
                    client=client,
                    local=flat - offset[client],
                    valid=flat < ends[-1])


def lane_schedule(num_steps: jax.Array, num_lanes: int):
  """Packs ``M`` clients into ``num_lanes`` lanes, longest first in snake order.

  Returns ``(clients [W, J], ends [W, J])``: the clients of each lane in run order
  (-1 for none) and the cumulative step count at which each finishes.
  """
  m = num_steps.shape[0]
  per_lane = -(-m // num_lanes)
  order = jnp.argsort(-num_steps)  # M keys: cheap.
  rank = jnp.arange(m)
  turn = rank // num_lanes
  lane = jnp.where(turn % 2 == 0, rank % num_lanes, num_lanes - 1 - rank % num_lanes)
  clients = jnp.full((num_lanes, per_lane), -1, jnp.int32).at[lane, turn].set(order)
  steps = jnp.where(clients >= 0, num_steps[jnp.maximum(clients, 0)], 0)
  return clients, jnp.cumsum(steps, axis=1)


class PackedOutput(NamedTuple):
  """Local training of the ``M`` sampled clients in the flat slot layout.

  users: ``[M, user_dim]``; deltas: ``[S, item_dim]`` (zero on unused slots);
  dense_deltas: dense params with a leading ``[M]`` axis; loss: ``[M]``.
  """
  users: jax.Array
  deltas: jax.Array
  dense_deltas: Any
  loss: jax.Array


class LaneBatches(NamedTuple):
  """Every iteration's work, precomputed: ``client [T, W]`` (M for an idle lane);
  ``flat``, ``items``, ``labels``, ``valid``: ``[T, W, B]`` flat slot (past the last for
  an idle lane), item id, label and validity of each minibatch position."""
  client: jax.Array
  flat: jax.Array
  items: jax.Array
  labels: jax.Array
  valid: jax.Array


def lane_batches(plans: ClientPlan, layout: SlotLayout, slot_items, *, num_lanes: int,
                 max_iters: int, batch_size: int) -> LaneBatches:
  """The minibatches of ``max_iters`` iterations of ``num_lanes`` lanes, vectorized.

  Computing them up front as a few large fused ops is much cheaper on CPU than
  many small index computations inside each loop iteration.
  """
  m = plans.user.shape[0]
  clients, ends = lane_schedule(plans.num_steps, num_lanes)
  per_lane = clients.shape[1]
  t = jnp.arange(max_iters)[:, None]
  k = jnp.sum(ends[None, :, :] <= t[:, :, None], axis=-1)  # [T, W] clients finished
  client = jnp.take_along_axis(clients, jnp.minimum(k, per_lane - 1).T, axis=1).T
  busy = (k < per_lane) & (client >= 0)
  client = jnp.where(busy, client, 0)
  start = jnp.where(k > 0, jnp.take_along_axis(ends, jnp.maximum(k - 1, 0).T, axis=1).T, 0)
  plan = jax.tree.map(lambda x: x[client], plans)
  local, labels, valid = jax.vmap(jax.vmap(minibatch, (0, 0, None)), (0, 0, None))(plan, t - start,
                                                                                   batch_size)
  flat = layout.offset[client][..., None] + local
  items = slot_items[flat]
  # An idle lane writes past the last slot (dropped). It reads the last client's user row
  # (its index m clamps), and a diverged client's NaN times a zero weight is NaN: written
  # into the first client's slots, it made that client non-finite too.
  flat = jnp.where(busy[..., None], flat, slot_items.shape[0])
  return LaneBatches(client=jnp.where(busy, client, m),
                     flat=flat,
                     items=items,
                     labels=labels,
                     valid=valid & busy[..., None])


@jax.custom_batching.custom_vmap
def _shared_trip_count(n):
  """``n``; under ``vmap`` the batch's maximum, unbatched.

  A ``while_loop`` whose trip count is batched (a sweep's runs) selects its whole
  carry every iteration, the ``[S, d]`` deltas included; running every run to the
  longest run's count instead is exact here (steps past a run's end have no valid
  example: zero updates, dropped writes) and much faster on CPU.
  """
  return n


@_shared_trip_count.def_vmap
def _shared_trip_count_vmap(size, in_batched, n):
  del size
  return (jnp.max(n) if in_batched[0] else n), False


def run_lanes(model: RecModel, hp: LocalHParams, work: LaneBatches, item_table, dense, users,
              num_slots: int) -> PackedOutput:
  """Runs the lanes of ``work`` (any subset of lanes) to completion.

  Returns the new rows of the clients these lanes own (others unchanged), their
  slot deltas ``[num_slots, d]`` (zero elsewhere) and loss sums (zero elsewhere).
  """
  m = users.shape[0]
  client_dense = jax.tree.map(lambda p: jnp.broadcast_to(p, (m,) + p.shape), dense)
  busy = work.valid.any(axis=2)  # [T, W]
  num_iters = _shared_trip_count(jnp.max(jnp.where(busy,
                                                   jnp.arange(busy.shape[0])[:, None] + 1, 0)))

  def lane_step(user, rows, dense_c, labels, valid):
    return local_step(model, hp, user, rows, dense_c, labels, valid)

  def body(carry):
    t, users, deltas, dense_c, loss_sum = carry
    # An idle lane's client index is m and its slots past the last: its reads clamp, its
    # writes are dropped.
    # (rows.* keep these gathers/scatters fast when a sweep vmaps the round.)
    client, flat = work.client[t], work.flat[t]
    rows = take_rows(item_table, work.items[t]) + take_rows(deltas, flat)
    lane_dense = jax.tree.map(lambda p: take_rows(p, client), dense_c)
    new_user, updates, new_dense, loss = jax.vmap(lane_step)(take_rows(users,
                                                                       client), rows, lane_dense,
                                                             work.labels[t], work.valid[t])
    users = set_rows(users, client, new_user)
    dense_c = jax.tree.map(lambda all_p, new_p: set_rows(all_p, client, new_p), dense_c, new_dense)
    # Invalid examples have exactly zero updates, so no mask is needed here.
    deltas = add_rows(deltas, flat.reshape(-1), updates.reshape(-1, updates.shape[-1]))
    loss_sum = add_rows(loss_sum, client, loss)
    return t + 1, users, deltas, dense_c, loss_sum

  deltas = jnp.zeros((num_slots, item_table.shape[1]), item_table.dtype)
  init = (jnp.int32(0), users, deltas, client_dense, jnp.zeros(m, jnp.float32))
  _, users, deltas, new_dense, loss_sum = jax.lax.while_loop(lambda c: c[0] < num_iters, body, init)
  return PackedOutput(users=users,
                      deltas=deltas,
                      dense_deltas=jax.tree.map(jnp.subtract, new_dense, client_dense),
                      loss=loss_sum)


def _sharded_run_lanes(model, hp, work, item_table, dense, users, num_slots, mesh, axis):
  """``run_lanes`` with the lanes split over ``mesh[axis]``; exact ``psum`` merge.

  Every client belongs to exactly one lane, hence one device: the other devices
  contribute exact zeros to its rows, deltas and loss.
  """
  lane_spec = jax.tree.map(lambda x: P(None, axis) if x.ndim >= 2 else P(), work)

  def local(work, item_table, dense, users):
    out = run_lanes(model, hp, work, item_table, dense, users, num_slots)
    m = users.shape[0]
    owned = jnp.zeros((m,), bool).at[work.client.reshape(-1)].set(True, mode="drop")
    own = lambda new, old: jnp.where(owned.reshape((-1,) + (1,) * (new.ndim - 1)), new, 0)
    return PackedOutput(users=jax.lax.psum(own(out.users, users), axis),
                        deltas=jax.lax.psum(out.deltas, axis),
                        dense_deltas=jax.tree.map(lambda d: jax.lax.psum(own(d, d), axis),
                                                  out.dense_deltas),
                        loss=jax.lax.psum(out.loss, axis))

  return jax.shard_map(local,
                       mesh=mesh,
                       in_specs=(lane_spec, P(), P(), P()),
                       out_specs=P(),
                       check_vma=False)(work, item_table, dense, users)


def packed_client_updates(model: RecModel,
                          hp: LocalHParams,
                          plans: ClientPlan,
                          layout: SlotLayout,
                          slot_items: jax.Array,
                          item_table,
                          dense,
                          users,
                          *,
                          num_lanes: int,
                          max_iters: int,
                          batch_size: int,
                          mesh=None,
                          axis: str = "clients") -> PackedOutput:
  """``client_update`` for ``M`` clients at once (see the module docstring).

  Args:
    plans: a batch of ``M`` plans; layout/slot_items: the flat slots ``[S]`` and
      their items; item_table: ``[I, item_dim]``; dense: shared dense params;
      users: ``[M, user_dim]`` the clients' private rows.
    max_iters: static bound on the longest lane's step count (see ``lane_schedule``).
    mesh: optional ``jax.sharding.Mesh``; lanes are split over its ``axis``
      (``num_lanes`` must be a multiple of that axis' size).
  Returns:
    ``PackedOutput``; ``loss`` is each client's mean loss over its steps.
  """
  work = lane_batches(plans,
                      layout,
                      slot_items,
                      num_lanes=num_lanes,
                      max_iters=max_iters,
                      batch_size=batch_size)
  if mesh is None:
    out = run_lanes(model, hp, work, item_table, dense, users, slot_items.shape[0])
  else:
    if num_lanes % mesh.shape[axis]:
      raise ValueError(f"num_lanes={num_lanes} is not a multiple of the {mesh.shape[axis]} "
                       f"devices of mesh axis {axis!r}")
    out = _sharded_run_lanes(model, hp, work, item_table, dense, users, slot_items.shape[0], mesh,
                             axis)
  return out._replace(loss=out.loss / jnp.maximum(plans.num_steps, 1))
