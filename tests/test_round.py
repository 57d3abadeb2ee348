"""The jitted packed round against a plain per-client loop of ``client_update``."""
import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedras_jax.compress import identity
from fedras_jax.config import TrainConfig
from fedras_jax.experiment import server_optimizer
from fedras_jax.federated import (LocalHParams, RoundConfig, RoundHParams, aggregate_item_updates,
                                  capacity_overflow, client_keys, client_plan, client_update,
                                  init_states, make_round, plan_capacity, round_clients)
from fedras_jax.models import get_model

M, EPOCHS, BATCH, RATIO = 5, 2, 4, 2
HP = RoundHParams(local=LocalHParams(user_lr=0.5, item_lr=2.0, dense_lr=0.1, weight_decay=1e-3))
MODELS = {"mf": dict(dim=8), "ncf": dict(gmf_dim=4, mlp_dim=8, layers=(16, 8, 4))}


def config(synthetic, aggregation="inverse_frequency", lanes=2, extra=0, clients=M):
  cap = plan_capacity(np.diff(synthetic.train_indptr),
                      np.diff(synthetic.seen_indptr),
                      synthetic.num_items,
                      seed=0,
                      rounds=3,
                      clients_per_round=clients,
                      local_epochs=EPOCHS,
                      batch_size=BATCH,
                      neg_ratio=RATIO,
                      num_lanes=lanes)
  return RoundConfig(clients_per_round=clients,
                     slot_capacity=cap.slot_capacity + extra,
                     client_buckets=tuple((c, w + extra) for c, w in cap.client_buckets),
                     max_lane_steps=cap.max_lane_steps + extra,
                     local_epochs=EPOCHS,
                     batch_size=BATCH,
                     neg_ratio=RATIO,
                     num_lanes=lanes,
                     aggregation=aggregation)


def run_rounds(model, synthetic, cfg, rounds=2, users=None, server_opt=None):
  server_opt = server_opt or optax.sgd(1.0)
  server, clients = init_states(model, synthetic.num_users, synthetic.num_items, server_opt, seed=0)
  if users is not None:
    clients = clients._replace(users=users)
  round_fn = jax.jit(make_round(model, synthetic.data, cfg, server_opt))
  history = []
  for _ in range(rounds):
    history.append((server, clients))
    server, clients, metrics = round_fn(server, clients, HP)
  return history, (server, clients, metrics)


def reference_round(model, synthetic, cfg, server, clients, exclude=(), server_lr=1.0):
  """One round as PyTorch-style codebases simulate it: a Python loop over clients.

  Users in `exclude` are left out (their rows unchanged, no item counts, the dense mean
  over the others); FedAvg's divisor stays the number sampled. The server adds
  ``server_lr`` times the aggregate."""
  data = synthetic.data
  sampled = round_clients(server.key, server.round, data.num_users, M)
  keys = client_keys(server.key, server.round, sampled)
  plan_fn = jax.jit(
      functools.partial(client_plan, data, neg_ratio=RATIO, epochs=EPOCHS, batch_size=BATCH))
  update_fn = jax.jit(
      functools.partial(client_update,
                        model,
                        HP.local,
                        data,
                        max_slots=cfg.max_client_slots,
                        batch_size=BATCH))
  sums = np.zeros(server.items.shape, np.float64)
  counts = np.zeros(data.num_items)
  users = np.array(clients.users)
  dense_sum = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), server.dense)
  for user, key in zip(np.asarray(sampled), keys):
    if int(user) in exclude:
      continue
    out = update_fn(plan_fn(user, key), server.items, server.dense, clients.users[user])
    mask = np.asarray(out.mask)
    items = np.asarray(out.items)[mask]
    assert len(np.unique(items)) == len(items)
    sums[items] += np.asarray(out.deltas, np.float64)[mask]
    counts[items] += 1
    users[user] = np.asarray(out.user)
    dense_sum = jax.tree.map(lambda a, d: a + np.asarray(d, np.float64), dense_sum, out.dense_delta)
  divisor = np.maximum(counts, 1)[:, None] if cfg.aggregation == "inverse_frequency" else M
  items = np.asarray(server.items, np.float64) + server_lr * sums / divisor
  dense = jax.tree.map(lambda p, s: np.asarray(p, np.float64) + server_lr * s / (M - len(exclude)),
                       server.dense, dense_sum)
  return items, users, dense


@pytest.mark.parametrize("model_name,aggregation", [("mf", "inverse_frequency"), ("mf", "fedavg"),
                                                    ("ncf", "inverse_frequency")])
def test_round_equals_per_client_loop(synthetic, model_name, aggregation):
  model = get_model(model_name, **MODELS[model_name])
  cfg = config(synthetic, aggregation)
  history, _ = run_rounds(model, synthetic, cfg, rounds=3)
  for (server, clients), (next_server, next_clients) in zip(history[:-1], history[1:]):
    items, users, dense = reference_round(model, synthetic, cfg, server, clients)
    np.testing.assert_allclose(next_server.items, items, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(next_clients.users, users, atol=2e-6, rtol=1e-5)
    chex.assert_trees_all_close(next_server.dense, dense, atol=2e-6, rtol=1e-5)
    assert int(next_server.round) == int(server.round) + 1


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_server_lr_schedule_scales_each_rounds_step(synthetic, schedule):
  # Round r (1-based) of R adds lr * (end + (1 - end) c((r - 1) / R)) times the aggregate.
  lr, end, rounds = 0.8, 0.25, 3
  decay = {"cosine": lambda t: (1 + np.cos(np.pi * t)) / 2, "linear": lambda t: 1 - t}[schedule]
  opt = server_optimizer(
      TrainConfig(rounds=rounds, server_lr=lr, server_lr_schedule=schedule, server_lr_end=end))
  model = get_model("ncf", **MODELS["ncf"])
  cfg = config(synthetic)
  history, last = run_rounds(model, synthetic, cfg, rounds=rounds, server_opt=opt)
  history.append(last[:2])
  for r, ((server, clients), (next_server, _)) in enumerate(zip(history[:-1], history[1:]), 1):
    step = lr * (end + (1 - end) * decay((r - 1) / rounds))
    items, _, dense = reference_round(model, synthetic, cfg, server, clients, server_lr=step)
    np.testing.assert_allclose(next_server.items, items, atol=2e-6, rtol=1e-5)
    chex.assert_trees_all_close(next_server.dense, dense, atol=2e-6, rtol=1e-5)


def test_padding_is_inert(synthetic):
  """Bigger slot buffers, more idle lane iterations and more lanes change nothing."""
  model = get_model("mf", **MODELS["mf"])
  _, (server_a, clients_a, metrics_a) = run_rounds(model, synthetic, config(synthetic), rounds=2)
  _, (server_b, clients_b, metrics_b) = run_rounds(model,
                                                   synthetic,
                                                   config(synthetic, lanes=3, extra=37),
                                                   rounds=2)
  np.testing.assert_allclose(server_a.items, server_b.items, atol=1e-6)
  np.testing.assert_allclose(clients_a.users, clients_b.users, atol=1e-6)
  np.testing.assert_allclose(metrics_a.loss, metrics_b.loss, atol=1e-6)


def test_round_compiles_once(synthetic):
  model = get_model("mf", **MODELS["mf"])
  cfg = config(synthetic)
  round_fn = jax.jit(chex.assert_max_traces(make_round(model, synthetic.data, cfg), n=1),
                     donate_argnums=(0, 1))
  server, clients = init_states(model,
                                synthetic.num_users,
                                synthetic.num_items,
                                optax.sgd(1.0),
                                seed=1)
  for lr in (0.5, 1.0, 2.0):  # traced hyper-parameters do not retrace either
    hp = HP._replace(local=HP.local._replace(item_lr=lr))
    server, clients, metrics = round_fn(server, clients, hp)
  assert int(server.round) == 3
  assert np.all(np.isfinite(metrics.loss))


@pytest.mark.parametrize("name", ["mf", "ncf"])
@pytest.mark.parametrize("position", [0, M - 1])
def test_nonfinite_client_is_skipped(synthetic, name, position):
  # The last sampled client too: a lane that had finished its clients read that client's
  # (clamped) user row and wrote NaN * 0 into the first client's slots, skipping it too.
  model = get_model(name, **MODELS[name])
  cfg = config(synthetic)
  server, clients = init_states(model,
                                synthetic.num_users,
                                synthetic.num_items,
                                optax.sgd(1.0),
                                seed=0)
  victim = int(round_clients(server.key, 0, synthetic.num_users, M)[position])
  users = clients.users.at[victim].set(jnp.nan)
  [(server, clients)], (server_b, clients_b, metrics) = run_rounds(model,
                                                                   synthetic,
                                                                   cfg,
                                                                   rounds=1,
                                                                   users=users)
  assert int(metrics.skipped) == 1
  assert np.all(np.isnan(clients_b.users[victim])), "the bad client's row is left as it was"
  # The others' updates land as a round without the victim would apply them.
  items, users, dense = reference_round(model, synthetic, cfg, server, clients, exclude={victim})
  np.testing.assert_allclose(server_b.items, items, atol=2e-6, rtol=1e-5)
  np.testing.assert_allclose(clients_b.users, users, atol=2e-6, rtol=1e-5)
  chex.assert_trees_all_close(server_b.dense, dense, atol=2e-6, rtol=1e-5)


def test_round_bits_past_int32_give_the_right_seconds_or_a_clear_error(synthetic):
  # identity's bits depend only on its catalogue size: 5M rows of 8 floats are 1.28e9 bits
  # each way, 2.56e9 together, which wrapped in int32 to negative simulated seconds.
  model = get_model("mf", **MODELS["mf"])
  rows = 5_000_000
  server, clients = init_states(model,
                                synthetic.num_users,
                                synthetic.num_items,
                                optax.sgd(1.0),
                                seed=0,
                                bandwidth=np.full(synthetic.num_users, 1e8, np.float32))
  round_fn = make_round(model,
                        synthetic.data,
                        config(synthetic),
                        optax.sgd(1.0),
                        uplink=identity(rows),
                        downlink=identity(rows))
  _, _, metrics = jax.jit(round_fn)(server, clients, HP)
  each_way = rows * 8 * 32
  assert int(metrics.bits_down) == each_way and np.all(np.asarray(metrics.bits_up) == each_way)
  np.testing.assert_allclose(metrics.sim_seconds, 2 * each_way / 1e8, rtol=1e-6)
  # NeuMF: a table whose dense size fits int32 only without the tower's parameters.
  model = get_model("ncf", **MODELS["ncf"])
  server, clients = init_states(model,
                                synthetic.num_users,
                                synthetic.num_items,
                                optax.sgd(1.0),
                                seed=0)
  rows = (2**31 - 1) // (model.item_dim * 32)
  round_fn = make_round(model, synthetic.data, config(synthetic), optax.sgd(1.0))
  big = server._replace(items=jax.ShapeDtypeStruct((rows, model.item_dim), jnp.float32))
  with pytest.raises(ValueError, match="the dense item table plus the dense parameters of"):
    jax.eval_shape(round_fn, big, clients, HP)


def test_neumf_rounds_count_the_tower_both_ways_and_wait_for_the_slowest_client(synthetic):
  """Bits each way: the item payload plus the dense parameters at float32 (their sizes
  counted here); simulated seconds: the slowest sampled client's up and down at its own
  bandwidth, plus the compute time."""
  model = get_model("ncf", **MODELS["ncf"])
  bandwidth = (1e4 * (1 + np.arange(synthetic.num_users))).astype(np.float32)
  server, clients = init_states(model,
                                synthetic.num_users,
                                synthetic.num_items,
                                optax.sgd(1.0),
                                seed=0,
                                bandwidth=bandwidth)
  round_fn = make_round(model,
                        synthetic.data,
                        config(synthetic),
                        optax.sgd(1.0),
                        uplink=identity(synthetic.num_items),
                        downlink=identity(synthetic.num_items))
  _, _, metrics = jax.jit(round_fn)(server, clients, HP._replace(compute_seconds=0.5))
  tower = sum(np.asarray(x).size for x in jax.tree.leaves(server.dense))
  assert tower > 0
  each_way = int(np.prod(server.items.shape)) * 32 + 32 * tower
  assert int(metrics.bits_down) == each_way and np.all(np.asarray(metrics.bits_up) == each_way)
  slowest = np.max(2.0 * each_way / bandwidth[np.asarray(metrics.sampled)].astype(np.float64))
  np.testing.assert_allclose(float(metrics.sim_seconds), slowest + 0.5, rtol=1e-6)


def test_a_server_step_with_momentum_reaches_the_rows_nobody_touched(synthetic):
  # Momentum moves earlier rounds' rows again. The downlink sent only the rows touched this
  # round, so the table lost the other rows' steps (info_loss 0.41 in round 1 for an exact
  # downlink) while the optimizer's state kept them.
  model = get_model("mf", **MODELS["mf"])
  server_opt = optax.sgd(1.0, momentum=0.9)
  server, clients = init_states(model, synthetic.num_users, synthetic.num_items, server_opt, seed=0)
  # Two clients a round leave rows untouched (five touch nearly all 30).
  round_fn = jax.jit(make_round(model, synthetic.data, config(synthetic, clients=2), server_opt))
  untouched_moved = 0
  for _ in range(3):
    before = np.asarray(server.items)
    server, clients, metrics = round_fn(server, clients, HP)
    moved = int(np.sum(np.any(np.asarray(server.items) != before, axis=1)))
    untouched_moved += moved - int(metrics.touched_items)
    assert float(metrics.info_loss) == 0.0  # identity both ways: the whole step arrives
  assert untouched_moved > 0, "momentum must have moved rows no client touched"


def test_capacity_overflow_hand_cases():
  cfg = RoundConfig(clients_per_round=3,
                    slot_capacity=10,
                    client_buckets=((1, 6), (2, 4)),
                    max_lane_steps=5,
                    num_lanes=2)
  flag = lambda slots, steps: bool(capacity_overflow(cfg, jnp.array(slots), jnp.array(steps)))
  # Lanes in snake order by steps: 3 -> lane 0, then 2 and 2 -> lane 1 (4 steps).
  assert not flag([4, 6, 0], [3, 2, 2])
  assert flag([5, 6, 0], [3, 2, 2])  # 11 slots
  assert flag([5, 5, 0], [3, 2, 2])  # the second largest client is wider than 4
  assert flag([4, 6, 0], [3, 3, 3])  # lane 1 runs 6 steps


def test_planned_rounds_fit_and_a_short_shape_is_flagged(synthetic):
  model = get_model("mf", **MODELS["mf"])
  cfg = config(synthetic)
  _, (_, _, metrics) = run_rounds(model, synthetic, cfg, rounds=2)
  assert not bool(metrics.overflow)
  short = dataclasses.replace(cfg, max_lane_steps=1)
  _, (_, _, metrics) = run_rounds(model, synthetic, short, rounds=1)
  assert bool(metrics.overflow)


def test_aggregation_hand_case():
  # Three clients; item 0 touched by all, item 1 by clients 0 and 2, item 2 by client 1.
  rows = jnp.array([[3.0], [6.0], [0.0], [9.0], [1.0], [2.0], [5.0]])
  items = jnp.array([0, 1, 0, 2, 0, 1, 2])
  touched = jnp.array([True, True, True, True, True, True, False])
  inv, counts = aggregate_item_updates(rows,
                                       items,
                                       touched,
                                       num_items=4,
                                       num_clients=3,
                                       rule="inverse_frequency")
  avg, _ = aggregate_item_updates(rows, items, touched, num_items=4, num_clients=3, rule="fedavg")
  np.testing.assert_array_equal(counts, [3, 2, 1, 0])
  np.testing.assert_allclose(inv[:, 0], [4 / 3, 4.0, 9.0, 0.0])
  np.testing.assert_allclose(avg[:, 0], [4 / 3, 8 / 3, 3.0, 0.0])
