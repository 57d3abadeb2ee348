"""Local example construction: unseen-item ranks, slots, negatives, shuffles."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedras_jax.federated import client_plan, minibatch, slot_item, unseen_item

EPOCHS, BATCH, RATIO = 2, 4, 2


@pytest.fixture(scope="module")
def plans(synthetic):
  users = jnp.arange(synthetic.num_users)
  keys = jax.random.split(jax.random.key(3), synthetic.num_users)
  return jax.jit(
      jax.vmap(lambda u, k: client_plan(
          synthetic.data, u, k, neg_ratio=RATIO, epochs=EPOCHS, batch_size=BATCH)))(users, keys)


def test_unseen_item_matches_numpy(synthetic):
  fn = jax.jit(jax.vmap(lambda u, r: unseen_item(synthetic.data, u, r)))
  for u in range(synthetic.num_users):
    unseen = np.setdiff1d(np.arange(synthetic.num_items), synthetic.seen[u])
    ranks = np.arange(len(unseen))
    got = fn(jnp.full(len(ranks), u), jnp.asarray(ranks))
    np.testing.assert_array_equal(np.asarray(got), unseen)


def test_slots_hold_positives_then_distinct_unseen_negatives(synthetic, plans):
  fn = jax.jit(lambda plan: slot_item(synthetic.data, plan, jnp.arange(64)))
  for u in range(synthetic.num_users):
    plan = jax.tree.map(lambda x: x[u], plans)
    items = np.asarray(fn(plan))
    n_pos, n_slots = int(plan.num_pos), int(plan.num_slots)
    unseen = synthetic.num_items - len(synthetic.seen[u])
    assert n_slots == n_pos + min(RATIO * n_pos, unseen)
    np.testing.assert_array_equal(items[:n_pos], synthetic.train[u])
    negatives = items[n_pos:n_slots]
    assert len(set(negatives.tolist())) == len(negatives), "negative slots repeat an item"
    assert not set(negatives.tolist()) & set(synthetic.seen[u].tolist())


def test_each_example_once_per_epoch(synthetic, plans):
  fn = jax.jit(jax.vmap(minibatch, (None, 0, None)), static_argnums=2)
  for u in range(synthetic.num_users):
    plan = jax.tree.map(lambda x: x[u], plans)
    slots, labels, valid = fn(plan, jnp.arange(int(plan.num_steps) + 2), BATCH)
    slots, labels, valid = map(np.asarray, (slots, labels, valid))
    assert not valid[int(plan.num_steps):].any(), "steps past the end must be no-ops"
    used = slots[valid]
    n_pos, n_neg_slots = int(plan.num_pos), int(plan.num_neg_slots)
    assert valid.sum() == EPOCHS * int(plan.num_examples)
    np.testing.assert_array_equal(np.bincount(used, minlength=n_pos)[:n_pos], EPOCHS)
    np.testing.assert_array_equal(labels[valid], used < n_pos)
    # Negative example q uses slot n_pos + q mod n_neg_slots.
    q = np.arange(RATIO * n_pos)
    expected = EPOCHS * np.bincount(q % n_neg_slots, minlength=n_neg_slots)
    np.testing.assert_array_equal(np.bincount(used[used >= n_pos] - n_pos, minlength=n_neg_slots),
                                  expected)
