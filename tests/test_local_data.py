"""Local example construction: unseen-item ranks, slots, negatives, shuffles."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedras_jax.data import synthetic as synthetic_data
from fedras_jax.federated import (ClientPlan, LocalHParams, client_data_from_split, client_plan,
                                  client_update, local_data, minibatch, slot_item, unseen_item)
from fedras_jax.models import get_model

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


def test_train_negatives_avoid_every_seen_item_or_only_the_training_positives():
  # 12 users of 20 items, a validation and a test item each.
  split = synthetic_data.synthetic_split(12,
                                         20,
                                         num_valid=1,
                                         num_test_negatives=3,
                                         min_interactions=4,
                                         max_interactions=8,
                                         seed=5)
  fn = jax.jit(jax.vmap(unseen_item, in_axes=(None, 0, 0)))
  for train_negatives in ("unseen", "untrained"):
    data = client_data_from_split(split, train_negatives)
    for u in range(split.num_users):
      train = split.train_items[split.train_indptr[u]:split.train_indptr[u + 1]]
      held_out = {int(split.test_item[u]), int(split.valid_item[u])}
      avoided = split.user_seen_items(u) if train_negatives == "unseen" else train
      drawable = np.setdiff1d(np.arange(20), avoided)  # the NumPy reference
      assert int(data.num_seen[u]) == len(avoided)
      got = np.asarray(fn(data, jnp.full(len(drawable), u), jnp.arange(len(drawable))))
      np.testing.assert_array_equal(got, drawable)
      drawn = set(got.tolist())
      if train_negatives == "untrained":  # held-out items can be negatives
        assert held_out <= drawn
      else:
        assert not held_out & drawn
      assert not set(train.tolist()) & drawn
  with pytest.raises(ValueError, match="train_negatives must be one of"):
    client_data_from_split(split, "seen")


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


def test_the_shuffle_is_a_permutation_up_to_the_size_limit():
  """At the largest allowed client (``MAX_LOCAL_INDEX`` minus a batch of examples) and the
  largest multiplier of the prime table, each epoch's int32 affine shuffle still visits
  every example once; one positive more and ``client_sizes`` refuses the user."""
  batch = 64
  n = local_data.MAX_LOCAL_INDEX - batch
  num_pos = n // 5  # neg_ratio 4; every negative its own slot, so slot == example
  i32 = lambda v: jnp.asarray(v, jnp.int32)
  plan = ClientPlan(user=i32(0),
                    num_pos=i32(num_pos),
                    num_unseen=i32(n),
                    num_neg_slots=i32(4 * num_pos),
                    num_slots=i32(5 * num_pos),
                    num_examples=i32(5 * num_pos),
                    steps_per_epoch=i32(-(-5 * num_pos // batch)),
                    num_steps=i32(-(-5 * num_pos // batch)),
                    neg_offset=i32(0),
                    neg_stride=i32(1),
                    perm_mult=i32([int(local_data._PRIMES.max())]),
                    perm_shift=i32([5 * num_pos - 1]))
  slots, _, valid = jax.jit(jax.vmap(lambda s: minibatch(plan, s, batch)))(jnp.arange(
      int(plan.steps_per_epoch)))
  visited = np.asarray(slots)[np.asarray(valid)]
  np.testing.assert_array_equal(np.sort(visited), np.arange(5 * num_pos))
  local_data.client_sizes([num_pos], [num_pos], 10**6, neg_ratio=4, epochs=1, batch_size=batch)
  with pytest.raises(ValueError, match=r"user index 1 \(of 1 such users\) has .* --neg_ratio=4"):
    local_data.client_sizes([1, num_pos + 1], [1, 1],
                            10**6,
                            neg_ratio=4,
                            epochs=1,
                            batch_size=batch)


def test_client_update_is_sgd_on_the_weighted_bce_of_mf(synthetic, plans):
  """``client_update`` (MF, weight decay on, user and item steps differ) against a float64
  NumPy loop written from the objective: per minibatch, the mean over valid examples of
  BCE(user . row, label) plus wd/2 |user|^2 and wd/2 |row|^2 per valid example's row;
  one SGD step on the user row and on the batch's rows (a slot drawn twice gets both
  steps' updates). The packed round is checked against ``client_update`` in
  tests/test_round.py; this checks the step itself."""
  dim, wd, user_lr, item_lr = 6, 0.05, 0.3, 1.7
  model = get_model("mf", dim=dim)
  rng = np.random.default_rng(0)
  table = rng.normal(0, 0.5, (synthetic.num_items, dim)).astype(np.float32)
  hp = LocalHParams(user_lr=user_lr, item_lr=item_lr, weight_decay=wd)
  u = 3
  plan = jax.tree.map(lambda x: x[u], plans)
  user0 = rng.normal(0, 0.5, dim).astype(np.float32)
  max_slots = int(plan.num_slots) + 5
  out = jax.jit(lambda t, r: client_update(
      model, hp, synthetic.data, plan, t, {}, r, max_slots=max_slots, batch_size=BATCH))(
          jnp.asarray(table), jnp.asarray(user0))

  items = np.asarray(slot_item(synthetic.data, plan, jnp.arange(max_slots)))
  user, deltas = user0.astype(np.float64), np.zeros((max_slots, dim))
  for step in range(int(plan.num_steps)):
    local, labels, valid = (np.asarray(x) for x in minibatch(plan, jnp.int32(step), BATCH))
    w = valid.astype(np.float64)
    rows = table[items[local]].astype(np.float64) + deltas[local]
    prob = 1.0 / (1.0 + np.exp(-(rows @ user)))
    r = (prob - labels) * w / max(w.sum(), 1.0)  # d loss / d logit
    g_user = rows.T @ r + wd * float(valid.any()) * user
    g_rows = r[:, None] * user[None, :] + wd * w[:, None] * rows
    user = user - user_lr * g_user
    np.add.at(deltas, local, -item_lr * g_rows)
  assert int(plan.num_steps) > 2 and np.abs(deltas).max() > 1e-2  # it trained
  np.testing.assert_allclose(np.asarray(out.user), user, rtol=1e-4, atol=1e-5)
  live = np.asarray(out.mask)
  np.testing.assert_allclose(np.asarray(out.deltas)[live], deltas[live], rtol=1e-4, atol=1e-5)
  assert not np.asarray(out.deltas)[~live].any()
