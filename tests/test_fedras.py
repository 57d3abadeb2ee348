"""FedRAS in the round: exactness at a large budget, per-client budgets, exact bits."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedras_jax import quantize
from fedras_jax.compress import (Context, cold_start, dense_bits, error_feedback, fedras, identity,
                                 roundtrip)
from fedras_jax.config import TrainConfig
from fedras_jax.experiment import build_compressors
from fedras_jax.federated import init_states, make_round
from fedras_jax.federated.state import BANDWIDTH, round_key
from fedras_jax.models import get_model

from test_round import HP, M, config

DIM = 8


def build(synthetic, uplink, downlink=None, bandwidth=None, aggregation="inverse_frequency"):
  """``(server, clients, round)``: FedMF's initial states and (unjitted) round."""
  model = get_model("mf", dim=DIM)
  server, clients = init_states(model,
                                synthetic.num_users,
                                synthetic.num_items,
                                optax.sgd(1.0),
                                seed=0,
                                bandwidth=bandwidth,
                                downlink=downlink)
  return server, clients, make_round(model,
                                     synthetic.data,
                                     config(synthetic, aggregation),
                                     uplink=uplink,
                                     downlink=downlink)


def run(synthetic,
        uplink,
        downlink=None,
        bandwidth=None,
        rounds=2,
        aggregation="inverse_frequency"):
  server, clients, round_fn = build(synthetic, uplink, downlink, bandwidth, aggregation)
  round_fn = jax.jit(chex.assert_max_traces(round_fn, n=1))
  out = []
  for _ in range(rounds):
    server, clients, metrics = round_fn(server, clients, HP)
    out.append(jax.device_get(metrics))
  return server, clients, out


@pytest.fixture(scope="module")
def uncompressed(synthetic):
  return run(synthetic, identity(synthetic.num_items))


def test_actions_with_a_budget_for_every_row_equal_the_uncompressed_round(synthetic, uncompressed):
  # tau > 1: split until the budget's K; a budget for >= 32 actions covers every
  # client's distinct rows, so each row becomes its own action and decodes exactly.
  exact = fedras(synthetic.num_items, max_k=32, tau=2.0, tau_mode="fixed", dense_fallback=False)
  server, clients, metrics = run(synthetic, exact, error_feedback(cold_start(exact)))
  server_u, clients_u, _ = uncompressed
  np.testing.assert_allclose(server.items, server_u.items, atol=1e-6)
  np.testing.assert_allclose(clients.users, clients_u.users, atol=1e-6)
  assert all(float(m.info_loss) < 1e-5 for m in metrics)
  assert all(np.all(m.num_actions > 1) for m in metrics), "the action path was exercised"


def test_dense_fallback_is_exact_when_rows_fit(synthetic, uncompressed):
  server, clients, metrics = run(synthetic, fedras(synthetic.num_items, max_k=4))
  np.testing.assert_allclose(server.items, uncompressed[0].items, atol=1e-6)
  assert all(np.all(m.num_actions == 0) for m in metrics), "every client went dense"


def bfloat16_round(x):
  """NumPy reference: float32 to the nearest bfloat16 (ties to even), back to float32."""
  bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
  bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
  return bits.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("value_bits", [32, 16])
def test_dense_fallback_sends_the_values_it_counts(value_bits):
  # 5 live rows of 40 as values: 5 * 6 * value_bits + 40 presence bits, the whole budget.
  rows = np.zeros((40, 6), np.float32)
  rows[:5] = np.random.default_rng(0).normal(size=(5, 6))
  budget = 5 * 6 * value_bits + 40
  out = roundtrip(fedras(40, max_k=8, value_bits=value_bits),
                  jnp.asarray(rows),
                  jnp.ones(40, bool),
                  jnp.int32(budget),
                  jax.random.key(0),
                  context=Context())
  assert bool(out.payload.is_dense) and int(out.bits) == budget
  want = rows if value_bits == 32 else bfloat16_round(rows)
  assert value_bits == 32 or np.any(want != rows), "the rows must need rounding"
  np.testing.assert_array_equal(np.asarray(out.decoded), want)


def test_per_client_budgets_set_k_and_bits_in_one_compiled_round(synthetic):
  dense = synthetic.num_items * DIM * 32
  bandwidth = dense / np.array([2, 4, 8, 2, 4, 8, 2, 4, 8, 16], np.float32)
  comp = fedras(synthetic.num_items, max_k=16, tau=2.0, tau_mode="fixed", dense_fallback=False)
  server, clients, round_fn = build(synthetic,
                                    comp,
                                    identity(synthetic.num_items),
                                    bandwidth=bandwidth)
  local_fn, step = jax.jit(round_fn.stages.local), jax.jit(round_fn)
  budgets_seen, below_budget = set(), 0
  for _ in range(3):
    local = local_fn(server, clients, HP)
    server, clients, m = jax.device_get(step(server, clients, HP))
    assert np.all(m.bits_up <= m.budget_up), "a client exceeded its budget"
    k_budget = np.array([
        int(quantize.max_actions_for_budget(int(b), synthetic.num_items, DIM, max_k=16))
        for b in m.budget_up
    ])
    # tau > 1 splits until the budget's K, or until every action is one distinct row of
    # the client's update: K = min(budget's K, distinct nonzero rows).
    deltas = np.asarray(local.deltas)
    rows = np.array([
        len(np.unique(d[np.any(d != 0, axis=1)], axis=0)) for d in (deltas[o:o + n] for o, n in zip(
            np.asarray(local.layout.offset), np.asarray(local.plans.num_slots)))
    ])
    np.testing.assert_array_equal(m.num_actions, np.minimum(k_budget, rows))
    below_budget += int(np.sum(rows < k_budget))
    expected_bits = [
        int(quantize.payload_bits(int(k), synthetic.num_items, DIM)) for k in m.num_actions
    ]
    np.testing.assert_array_equal(m.bits_up, expected_bits)
    budgets_seen.update(m.budget_up.tolist())
  assert len(budgets_seen) >= 3, "clients of one round had different budgets"
  assert 0 < below_budget < 3 * M, "both branches of the min were exercised"


def test_fluctuation_changes_budgets_within_bounds(synthetic):
  dense = synthetic.num_items * DIM * 32
  bandwidth = np.full(synthetic.num_users, dense / 4, np.float32)
  server, clients, round_fn = build(synthetic,
                                    fedras(synthetic.num_items, max_k=8),
                                    bandwidth=bandwidth)
  round_fn = jax.jit(round_fn)
  _, _, metrics = round_fn(server, clients, HP._replace(fluctuation=0.3))
  budget = np.asarray(metrics.budget_up)
  assert np.all(budget >= np.floor(0.7 * dense / 4)) and np.all(budget <= 1.3 * dense / 4)
  assert len(np.unique(budget)) == M
  # The documented draw (state.py): bandwidth * (1 + f * U(-1, 1)) from the round key's
  # BANDWIDTH stream, floored to bits over a one-second round (float64 here, to a bit).
  wiggle = np.asarray(
      jax.random.uniform(jax.random.fold_in(round_key(server.key, server.round), BANDWIDTH), (M,),
                         minval=-1.0,
                         maxval=1.0), np.float64)
  np.testing.assert_allclose(budget, np.floor(dense / 4 * (1 + 0.3 * wiggle)), atol=1)


def _round(synthetic, downlink):
  model = get_model("mf", dim=DIM)
  return model, jax.jit(make_round(model, synthetic.data, config(synthetic), downlink=downlink))


@pytest.mark.parametrize("feedback,warm,stages", [(True, False, 1), (False, False, 1),
                                                  (True, True, 1), (True, True, 2)])
def test_downlink_error_feedback_loses_nothing(synthetic, feedback, warm, stages):
  # K <= 2 actions for the server update: lossy. From the same state, the lossy
  # round's applied update plus its new residual must equal the dense update plus
  # the old residual (nothing lost, only delayed); without feedback there is no
  # residual and the difference is lost. warm: the downlink starts from the last
  # round's actions (the server's compressor state), which must be what it sent
  # (with two residual stages: each stage's own last actions).
  lossy = fedras(synthetic.num_items,
                 max_k=2,
                 tau=2.0,
                 tau_mode="fixed",
                 dense_fallback=False,
                 stages=stages)
  lossy = lossy if warm else cold_start(lossy)
  lossy = error_feedback(lossy) if feedback else lossy
  model, lossy_round = _round(synthetic, lossy)
  # identity is stateless: it hands the lossy downlink's state on unchanged.
  _, dense_round = _round(synthetic, identity(synthetic.num_items))
  server, clients = init_states(model,
                                synthetic.num_users,
                                synthetic.num_items,
                                optax.sgd(1.0),
                                seed=0,
                                downlink=lossy)
  memory = lambda state: state.inner if feedback else state
  residual = lambda state: state.residual if feedback else 0.0
  assert bool(jax.tree.leaves(memory(server.downlink_state))) == warm
  for _ in range(3):
    dense_server, _, _ = dense_round(server, clients, HP)
    new_server, clients, metrics = lossy_round(server, clients, HP)
    # The metrics, in float64: information loss, what the applied update misses of the dense
    # step; the downlink's relative error, against what it was asked to send (the step plus
    # the residual it carried in).
    f64 = lambda x: np.asarray(x, np.float64)
    sent, step = f64(new_server.items) - f64(server.items), f64(dense_server.items) - f64(
        server.items)
    np.testing.assert_allclose(float(metrics.info_loss),
                               np.linalg.norm(sent - step),
                               rtol=1e-4,
                               atol=1e-6)
    target = step + f64(residual(server.downlink_state))
    np.testing.assert_allclose(float(metrics.error_down),
                               np.linalg.norm(sent - target) / np.linalg.norm(target),
                               rtol=1e-4)
    if warm:
      # Every applied row is a sum of one sent action per stage (a stage may send no
      # update for a row), each stage's actions those its state holds.
      per_stage = memory(new_server.downlink_state)
      per_stage = per_stage if stages > 1 else (per_stage,)
      assert [int(k) for _, k in per_stage] == [2] * stages
      sums = np.zeros((1, DIM))
      for centroids, _ in per_stage:
        options = np.concatenate([np.zeros((1, DIM)), np.asarray(centroids)[:2]])
        sums = (sums[:, None] + options[None]).reshape(-1, DIM)
      sent = np.asarray(new_server.items - server.items)
      sent = sent[np.any(sent != 0, axis=1)]
      assert len(sent)
      dist = np.abs(sent[:, None] - sums[None, 1:]).max(-1).min(1)
      np.testing.assert_allclose(dist, 0.0, atol=1e-6)
    if feedback:
      np.testing.assert_allclose(new_server.items + residual(new_server.downlink_state),
                                 dense_server.items + residual(server.downlink_state),
                                 atol=1e-6)
      assert float(np.abs(residual(new_server.downlink_state)).max()) > 1e-4, "lossy downlink"
    else:
      assert float(np.abs(new_server.items - dense_server.items).max()) > 1e-4
    server = new_server


def test_downlink_max_k_bounds_the_downlink_alone():
  # --downlink_max_k rebuilds the downlink with its own action slots: it codes the
  # server's update exactly as a FedRAS compressor built with those slots does, while
  # the uplink keeps --max_k's. Scattered rows and a budget with room for 48 actions:
  # the 16-slot uplink stops at 16, the 48-slot downlink goes past it.
  n, d = 200, DIM
  rows = jax.random.normal(jax.random.key(3), (n, d))
  mask, key = jnp.ones(n, bool), jax.random.key(4)
  budget = jnp.int32(quantize.payload_bits(48, n, d))
  settings = dict(method="fedras", max_k=16, tau=0.95, tau_mode="fixed", value_bits=32)
  up, down = build_compressors(TrainConfig(downlink_max_k=48, **settings), n, d)

  def coded(comp):
    out = comp.encode(rows, mask, budget, key, comp.init(n, d), Context())
    return out.payload, comp.decode(out.payload)

  (up_payload, _), (down_payload, down_rows) = coded(up), coded(down)
  assert int(up_payload.num_actions) == 16
  assert 16 < int(down_payload.num_actions) <= 48
  reference = error_feedback(fedras(n, max_k=48, tau=0.95, tau_mode="fixed"))
  chex.assert_trees_all_close(down_rows, coded(reference)[1])
  # 0 (the default): the budget's K, past the uplink's bound. A payload ratio whose
  # nominal budget has room for 47-48 actions gives 48 slots: the same coding as above.
  ratio = int(budget) / dense_bits(n, d)
  _, auto = build_compressors(TrainConfig(payload_ratio=ratio, **settings), n, d)
  chex.assert_trees_all_close(coded(auto)[1], down_rows)
  with pytest.raises(ValueError, match="--downlink_max_k=-1 is invalid"):
    TrainConfig(downlink_max_k=-1).validate()
