"""HR@K / NDCG@K against hand-computed cases and, for full ranking, a NumPy oracle."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedras_jax.metrics import (hit_and_ndcg, make_evaluate, make_full_ranks, make_sampled_ranks,
                                rank_of_positive)
from fedras_jax.models import get_model


def test_ranks_count_ties_against_the_model_and_skip_ignored():
  pos = jnp.array([0.5, 1.0, 0.0])
  neg = jnp.array([[0.1, 0.9, 0.5], [0.0, -1.0, 2.0], [0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(rank_of_positive(pos, neg), [2, 1, 3])
  ignore = jnp.array([[False, True, False], [False] * 3, [True, True, False]])
  np.testing.assert_array_equal(rank_of_positive(pos, neg, ignore), [1, 1, 1])


def test_hit_and_ndcg_hand_computed():
  ranks = jnp.array([0, 1, 4, 9, 10, 50])
  m = hit_and_ndcg(ranks, ks=(5, 10))
  np.testing.assert_allclose(m["hr@5"], 3 / 6)
  np.testing.assert_allclose(m["hr@10"], 4 / 6)
  ndcg10 = (1 / np.log2(2) + 1 / np.log2(3) + 1 / np.log2(6) + 1 / np.log2(11)) / 6
  np.testing.assert_allclose(m["ndcg@10"], ndcg10, rtol=1e-6)
  np.testing.assert_allclose(m["ndcg@5"], (1 + 1 / np.log2(3) + 1 / np.log2(6)) / 6, rtol=1e-6)


def test_evaluate_scores_candidates_with_the_model():
  # MF with 2-d embeddings: user 0 prefers item 1, user 1 prefers item 3; 3 users, chunk 2.
  model = get_model("mf", dim=2)
  users = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  items = jnp.array([[0.0, 0.0], [2.0, 0.0], [0.5, 0.5], [0.0, 3.0]])
  test_items = np.array([1, 2, 3])
  negatives = np.array([[0, 2, 3], [0, 1, 3], [0, 1, 3]])  # user 2's list holds its own item
  evaluate = make_evaluate(model, test_items, negatives, ks=(1, 2), chunk=2)
  m = evaluate(users, items, {})
  # ranks: user0 -> 0; user1 (0.5 vs 0, 0, 3) -> 1; user2 (3 vs 0, 2, [itself]) -> 0
  np.testing.assert_allclose(m["hr@1"], 2 / 3)
  np.testing.assert_allclose(m["ndcg@2"], (1 + 1 / np.log2(3) + 1) / 3, rtol=1e-6)
  # The full ranking needs the training CSR: a ValueError naming what is missing.
  with pytest.raises(ValueError,
                     match="'both' ranks the whole catalogue and needs "
                     "train_indptr, train_items, num_items"):
    make_evaluate(model, test_items, negatives, protocol="both")
  with pytest.raises(ValueError, match="needs num_items"):
    make_evaluate(model,
                  test_items,
                  negatives,
                  protocol="full",
                  train_indptr=[0, 1, 2, 3],
                  train_items=[0, 0, 0])


# ------------------------------------------------------------ full ranking --


def _full_ranks_oracle(users, items, targets, train):
  """NumPy float64: per user, items j not in train[u], j != target, scoring >= target."""
  scores = np.asarray(users, np.float64) @ np.asarray(items, np.float64).T
  ranks = []
  for u, t in enumerate(targets):
    others = np.ones(items.shape[0], bool)
    others[train[u]] = False
    others[t] = False
    ranks.append(int(np.sum(scores[u, others] >= scores[u, t])))
  return np.asarray(ranks)


def _oracle_metrics(ranks, ks):
  out = {}
  for k in ks:
    hit = ranks < k
    out[f"full_hr@{k}"] = hit.mean()
    out[f"full_ndcg@{k}"] = np.where(hit, 1 / np.log2(ranks + 2.0), 0.0).mean()
  return out


def _tied_problem(seed=0, num_users=11, num_items=37, dim=3):
  """Embeddings on a grid of halves (float32 dot products are exact, so ties are
  exact ties), training lists of 0..9 items, a target and a held-out item outside them."""
  rng = np.random.default_rng(seed)
  users = rng.integers(-2, 3, (num_users, dim)) / 2
  items = rng.integers(-2, 3, (num_items, dim)) / 2
  train, targets, held = [], [], []
  for _ in range(num_users):
    picked = rng.permutation(num_items)
    n = int(rng.integers(0, 10))
    train.append(np.sort(picked[:n]))
    targets.append(int(picked[n]))
    held.append(int(picked[n + 1]))  # another held-out positive: stays a candidate
  indptr = np.r_[0, np.cumsum([len(t) for t in train])]
  return users, items, np.asarray(targets), train, indptr, np.concatenate(train), held


@pytest.mark.parametrize("blocks", [dict(user_batch=4, item_chunk=8), {}])
def test_full_ranks_equal_a_float64_oracle_with_ties_and_exclusions(blocks):
  users, items, targets, train, indptr, flat, held = _tied_problem()
  model = get_model("mf", dim=3)
  ranks = jax.jit(make_full_ranks(model, targets, indptr, flat, len(items),
                                  **blocks))(jnp.asarray(users, jnp.float32),
                                             jnp.asarray(items, jnp.float32), {})
  expected = _full_ranks_oracle(users, items, targets, train)
  np.testing.assert_array_equal(ranks, expected)
  # The case is not trivial: ties with the target, and training items that would
  # have beaten it if they were not excluded.
  scores = users @ items.T
  assert any((scores[u] == scores[u, t]).sum() > 1 for u, t in enumerate(targets))
  assert any((scores[u, train[u]] >= scores[u, t]).any() for u, t in enumerate(targets))
  evaluate = make_evaluate(model,
                           targets,
                           np.asarray(held)[:, None],
                           ks=(1, 5, 10),
                           protocol="both",
                           train_indptr=indptr,
                           train_items=flat,
                           num_items=len(items))
  m = evaluate(jnp.asarray(users, jnp.float32), jnp.asarray(items, jnp.float32), {})
  for key, value in _oracle_metrics(expected, (1, 5, 10)).items():
    np.testing.assert_allclose(m[key], value, rtol=1e-6)
  assert "hr@10" in m and "ndcg@1" in m  # the sampled metrics sit next to them


def test_full_ranking_of_a_constant_model_is_the_worst_rank():
  users, items, targets, train, indptr, flat, _ = _tied_problem(seed=1)
  model = get_model("mf", dim=3)
  ranks = make_full_ranks(model, targets, indptr, flat, len(items), user_batch=3,
                          item_chunk=16)(jnp.zeros((11, 3)), jnp.zeros((37, 3)), {})
  # Every item outside the training list (and the target) ties with the target.
  np.testing.assert_array_equal(ranks, [37 - 1 - len(t) for t in train])


@pytest.mark.parametrize("blocks", [dict(user_batch=16, item_chunk=64), {}])
def test_identical_item_rows_tie_with_the_positive_under_float_rounding(blocks):
  # Every item row is the same 64 random floats, so every item ties with the positive
  # exactly, whatever the rounding of the dot product, if all are scored alike. The
  # positive was scored alone ([1, d]): it rounded apart from its block's ties, and rank 0
  # (a hit) came out for about half the users.
  rng = np.random.default_rng(4)
  users = jnp.asarray(rng.normal(size=(96, 64)), jnp.float32)
  items = jnp.tile(jnp.asarray(rng.normal(size=(1, 64)), jnp.float32), (400, 1))
  targets = rng.integers(0, 400, 96)
  no_train = np.zeros(97, np.int64)
  ranks = make_full_ranks(get_model("mf", dim=64), targets, no_train, np.zeros(0, np.int64), 400,
                          **blocks)(users, items, {})
  np.testing.assert_array_equal(ranks, np.full(96, 399))


def test_a_nan_positive_is_a_miss_in_both_protocols():
  model = get_model("mf", dim=2)
  users = jnp.array([[1.0, 0.0], [jnp.nan, 0.0]])
  items = jnp.array([[0.0, 0.0], [2.0, 0.0], [0.5, 0.5], [0.0, 3.0]])
  evaluate = make_evaluate(model,
                           np.array([1, 1]),
                           np.array([[0, 2], [0, 2]]),
                           ks=(1,),
                           protocol="both",
                           train_indptr=np.array([0, 1, 2]),
                           train_items=np.array([3, 3]),
                           num_items=4)
  m = evaluate(users, items, {})
  np.testing.assert_allclose([m["hr@1"], m["full_hr@1"]], [0.5, 0.5])


def test_full_ranks_of_neumf_equal_ranking_all_scores_at_once():
  users, items, targets, train, indptr, flat, _ = _tied_problem(seed=2, num_items=300)
  model = get_model("ncf", gmf_dim=2, mlp_dim=4, layers=(8, 4), init_scale=0.5)
  params = model.init(jax.random.key(0), 11, 300)
  ranks = make_full_ranks(model, targets, indptr, flat, 300, user_batch=4,
                          item_chunk=128)(params.users, params.items, params.dense)
  for u, t in enumerate(targets):
    s = np.asarray(model.score(params.users[u], params.items, params.dense), np.float64)
    others = np.ones(300, bool)
    others[train[u]] = False
    others[t] = False
    assert ranks[u] == np.sum(s[others] >= s[t])


def test_full_rank_is_never_better_than_the_sampled_rank():
  # The sampled negatives are items the user never interacted with, a subset of the
  # full protocol's candidates: per user, full rank >= sampled rank.
  users, items, targets, train, indptr, flat, held = _tied_problem(seed=3, num_items=200)
  rng = np.random.default_rng(3)
  negatives = np.stack([
      rng.choice(np.setdiff1d(np.arange(200), np.r_[train[u], t, held[u]]), 20, replace=False)
      for u, t in enumerate(targets)
  ])
  model = get_model("mf", dim=3)
  u32, i32 = jnp.asarray(users, jnp.float32), jnp.asarray(items, jnp.float32)
  full = make_full_ranks(model, targets, indptr, flat, 200, user_batch=5, item_chunk=64)(u32, i32,
                                                                                         {})
  sampled = make_sampled_ranks(model, targets, negatives, chunk=4)(u32, i32, {})
  assert (np.asarray(full) >= np.asarray(sampled)).all()
  assert (np.asarray(full) > np.asarray(sampled)).any()
