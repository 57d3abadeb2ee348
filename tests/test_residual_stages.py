"""FedRAS's residual stages (``fedras(stages=S)``, ``--action_stages``): each row is sent as
a sum of ``S`` actions, stage ``s`` clustering what the stages before it left."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedras_jax import quantize
from fedras_jax.compress import Context, fedras, roundtrip
from fedras_jax.config import TrainConfig
from fedras_jax.experiment import build_compressors

D = 6


def sums_of_two_codebooks():
  """``[18, 6]`` rows ``a_i + b_j``: three large directions ``a`` (norms 10, 20, 40 on
  columns 0-2) plus three small ones ``b`` (norm 1 on columns 3-5), every pair twice."""
  a = np.diag([10.0, 20.0, 40.0])
  rows = [np.concatenate([a[i], np.eye(3)[j]]) for i in range(3) for j in range(3)]
  return jnp.asarray(np.array(rows * 2, np.float32))


def code(comp, rows, budget):
  return roundtrip(comp,
                   rows,
                   jnp.ones(len(rows), bool),
                   jnp.int32(budget),
                   jax.random.key(0),
                   context=Context())


def test_two_stages_of_three_actions_code_nine_distinct_sums_exactly():
  # Each stage's share of the budget buys exactly three actions (four do not fit).
  # Stage 1 can only find the three large directions (centroids a_i + mean_j b_j); what
  # it leaves, b_j - mean(b), is three points, which stage 2's three actions hold
  # exactly. One stage with the same budget has 6 actions for 9 distinct rows: lossy.
  rows = sums_of_two_codebooks()
  n = len(rows)
  share = quantize.payload_bits(3, n, D)
  assert quantize.max_actions_for_budget(share, n, D, max_k=8) == 3
  staged = code(fedras(n, max_k=8, tau=2.0, tau_mode="fixed", stages=2), rows, 2 * share)
  np.testing.assert_allclose(staged.decoded, rows, atol=1e-5)
  assert [int(a.num_actions) for a in staged.payload.actions] == [3, 3]
  assert int(staged.num_actions) == 6
  assert int(staged.bits) == 2 * share
  one = code(fedras(n, max_k=8, tau=2.0, tau_mode="fixed"), rows, 2 * share)
  assert int(one.num_actions) == quantize.max_actions_for_budget(2 * share, n, D, max_k=8) == 6
  assert float(jnp.linalg.norm(one.decoded - rows)) > 0.5


def test_staged_bits_are_the_stages_sum_and_never_exceed_the_budget():
  # Three stages (two are the other tests' case): each stage's share is of what is left.
  stages = 3
  rows = jax.random.normal(jax.random.key(1), (40, D))
  comp = fedras(40, max_k=16, tau=0.9, tau_mode="fixed", dense_fallback=False, stages=stages)
  for budget in (0, 3_000, 9_000, 30_000):
    out = code(comp, rows, budget)
    ks = [int(a.num_actions) for a in out.payload.actions]
    assert len(ks) == stages
    assert int(out.bits) == sum(quantize.payload_bits(k, 40, D) for k in ks) <= budget
    assert int(out.num_actions) == sum(ks)
    # Stage s has remaining // (stages - s) bits: the first never more than its share.
    assert quantize.payload_bits(ks[0], 40, D) <= budget // stages
  comp_of = lambda s: fedras(
      40, max_k=16, tau=2.0, tau_mode="fixed", dense_fallback=False, stages=s)
  err = lambda s: float(jnp.linalg.norm(code(comp_of(s), rows, 4_000).decoded - rows))
  assert err(1) > err(2) > 0.0  # random rows: the second stage codes part of the rest


def test_a_later_stage_that_cannot_afford_two_actions_leaves_its_share_to_the_next():
  # What stage 0 leaves has mean ~0, so a later stage of one action sent a centroid of
  # rounding noise: four stages of one action each coded no better than one action.
  rows = jax.random.normal(jax.random.key(3), (40, D))
  one, two = quantize.payload_bits(1, 40, D), quantize.payload_bits(2, 40, D)  # 232, 464
  budget = 4 * one + 50
  comp = fedras(40, max_k=16, tau=2.0, tau_mode="fixed", dense_fallback=False, stages=4)
  out = code(comp, rows, budget)
  # Shares: 244 (one action), then 248 and 373 of the 746 left (below two actions: none),
  # then all 746 (three actions: 3 * 6 * 32 + 40 * 2 = 656).
  assert [int(a.num_actions) for a in out.payload.actions] == [1, 0, 0, 3]
  assert int(out.bits) == one + quantize.payload_bits(3, 40, D) <= budget and two > 373
  single = code(fedras(40, max_k=16, tau=2.0, tau_mode="fixed", dense_fallback=False), rows, one)
  error = lambda r: float(jnp.linalg.norm(r.decoded - rows))
  assert error(out) < 0.95 * error(single)


def test_rows_that_fit_the_whole_budget_go_dense_with_any_stages():
  # 5 live rows as values: 5 * 6 * 32 + 40 presence bits = 1000, within the budget but
  # beyond half of it: the fallback is tested once, against the whole budget.
  rows = jnp.zeros((40, D)).at[:5].set(jax.random.normal(jax.random.key(2), (5, D)))
  out = code(fedras(40, max_k=8, stages=2), rows, 1000)
  assert bool(out.payload.is_dense) and int(out.bits) == 1000 and int(out.num_actions) == 0
  np.testing.assert_array_equal(out.decoded, rows)


def test_action_stages_builds_staged_uplink_and_downlink():
  up, down = build_compressors(
      TrainConfig(method="fedras", action_stages=2, max_k=8, tau=2.0, tau_mode="fixed"), 40, D)
  rows = jax.random.normal(jax.random.key(3), (40, D))
  for comp in (up, down):
    state = comp.init(40, D)
    out = comp.encode(rows, jnp.ones(40, bool), jnp.int32(5_000), jax.random.key(0), state,
                      Context())
    assert len(out.payload.actions) == 2
  with pytest.raises(ValueError, match="--action_stages=0 is invalid"):
    TrainConfig(action_stages=0).validate()
  with pytest.raises(ValueError, match="stages must be an int >= 1"):
    fedras(40, max_k=8, stages=0)
