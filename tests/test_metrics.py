"""HR@K / NDCG@K against hand-computed cases."""
import jax.numpy as jnp
import numpy as np

from fedras_jax.metrics import hit_and_ndcg, make_evaluate, rank_of_positive
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
