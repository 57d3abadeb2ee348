"""CoLR: the shared basis, the payload, A-parameterised SGD and the round."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedras_jax.compress import (Context, colr, colr_basis, colr_bits, error_feedback, identity,
                                 make_compressor, roundtrip)
from fedras_jax.compress import registry
from fedras_jax.federated import (LocalHParams, init_states, local_step, make_round,
                                  round_basis_key)
from fedras_jax.models import bce_loss, get_model

from test_round import HP, config

N, D, R = 40, 8, 30  # rows, width, catalog rows
KEY = jax.random.key(3)


def code(comp, rows, mask, budget):
  """One matrix's roundtrip in the basis of the shared key ``KEY``."""
  return roundtrip(comp, rows, mask, budget, KEY, context=Context(shared_key=KEY))


@pytest.mark.parametrize("rank", [1, 3, D])
def test_basis_rows_are_orthogonal_with_norm_sqrt_d_over_r(rank):
  b = np.asarray(colr_basis(KEY, rank, D), np.float64)
  np.testing.assert_allclose(b @ b.T, (D / rank) * np.eye(rank), atol=1e-5)
  np.testing.assert_array_equal(b, colr_basis(KEY, rank, D))  # a function of the key
  assert not np.allclose(b, colr_basis(jax.random.key(4), rank, D))


def test_bad_rank_is_refused():
  with pytest.raises(ValueError, match="rank"):
    colr(R, D, rank=D + 1)
  with pytest.raises(ValueError, match="rank"):
    colr(R, D, rank=0)


@pytest.mark.parametrize("rank", [2, 5, D])
def test_decode_is_the_projection_onto_the_basis(rank):
  comp = colr(R, D, rank=rank)
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(N, D)).astype(np.float32)
  mask = np.arange(N) < 33
  out = jax.jit(lambda r, m: code(comp, r, m, jnp.int32(0)))(rows, mask)
  b = np.asarray(colr_basis(KEY, rank, D), np.float64)
  q = b.T / np.sqrt(D / rank)  # orthonormal columns
  want = np.where(mask[:, None], rows @ q @ q.T, 0.0)  # float64 projection
  np.testing.assert_allclose(out.decoded, want, atol=1e-5)
  assert int(out.bits) == R * rank * 32 == colr_bits(rank, R)
  # Rows already in the subspace (what the round trains) come back exactly.
  inside = (rng.normal(size=(N, rank)) @ b).astype(np.float32)
  np.testing.assert_allclose(code(comp, inside, np.ones(N, bool), 0).decoded, inside, atol=1e-5)


def test_error_falls_with_the_rank():
  rows = jnp.asarray(np.random.default_rng(1).normal(size=(400, D)), jnp.float32)
  errors = []
  for rank in (1, 2, 4, 6, D):
    comp = colr(R, D, rank=rank)
    decoded = code(comp, rows, jnp.ones(400, bool), 0).decoded
    errors.append(float(jnp.linalg.norm(decoded - rows) / jnp.linalg.norm(rows)))
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 1e-5


def test_vmap_equals_a_loop():
  comp = colr(R, D, rank=3)
  rows = jnp.asarray(np.random.default_rng(2).normal(size=(4, N, D)), jnp.float32)
  mask = jnp.arange(N)[None, :] < jnp.array([[40], [10], [0], [25]])
  budgets = jnp.array([0, 10, 10**6, 5], jnp.int32)
  batched = jax.vmap(lambda r, m, b: code(comp, r, m, b).decoded)(rows, mask, budgets)
  for c in range(4):
    np.testing.assert_allclose(batched[c],
                               code(comp, rows[c], mask[c], budgets[c]).decoded,
                               atol=1e-6)


def test_registry_rank_fits_the_nominal_budget():
  assert registry.colr_rank(1682, 64, 1 / 32) == 2
  assert registry.colr_rank(1682, 64, 1 / 2) == 32
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a rank that fits says nothing
    assert registry.colr_rank(1682, 64, 1 / 64) == 1  # 1682 * 64 * 32 / 64 bits: rank 1 exactly
  # 1682 * 64 * 32 / 128 = 26912 bits, below one rank's 1682 * 32 = 53824: still rank 1, said
  with pytest.warns(UserWarning, match="one rank costs 53824 bits, over the budget's 26912"):
    assert registry.colr_rank(1682, 64, 1 / 128) == 1
  comp = make_compressor("colr", 1682, 64, payload_ratio=1 / 32)
  b = colr_basis(KEY, 2, 64)
  np.testing.assert_array_equal(comp.item_projection(KEY), b.T @ b)


def test_projected_row_step_equals_an_sgd_step_on_a():
  # CoLR trains A with rows = Q + A B. One SGD step on A, through autodiff, must
  # move the rows exactly as local_step with item_projection = B^T B does.
  model = get_model("mf", dim=D)
  rng = np.random.default_rng(4)
  user = jnp.asarray(rng.normal(size=D), jnp.float32)
  q = jnp.asarray(rng.normal(size=(6, D)), jnp.float32)
  labels = jnp.array([1, 0, 0, 1, 0, 0], bool)
  valid = jnp.array([1, 1, 1, 1, 1, 0], bool)
  b = colr_basis(KEY, 3, D)
  a0 = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32) * 0.1
  lr = 0.7

  def loss_a(a):
    return bce_loss(model.score(user, q + a @ b, {}), labels, valid.astype(jnp.float32))

  a1 = a0 - lr * jax.grad(loss_a)(a0)
  hp = LocalHParams(user_lr=0.0, item_lr=lr, item_projection=b.T @ b)
  _, row_updates, _, _ = local_step(model, hp, user, q + a0 @ b, {}, labels, valid)
  np.testing.assert_allclose(row_updates, (a1 - a0) @ b, atol=1e-6)


def _run(synthetic, uplink, rounds=2):
  model = get_model("mf", dim=D)
  downlink = error_feedback(uplink)
  server, clients = init_states(model,
                                synthetic.num_users,
                                synthetic.num_items,
                                optax.sgd(1.0),
                                seed=0,
                                downlink=downlink)
  round_fn = jax.jit(
      make_round(model, synthetic.data, config(synthetic), uplink=uplink, downlink=downlink))
  history = [server]
  for _ in range(rounds):
    server, clients, metrics = round_fn(server, clients, HP)
    history.append(server)
  return history, clients, metrics


def test_full_rank_round_equals_the_uncompressed_round(synthetic):
  full, clients_full, _ = _run(synthetic, colr(synthetic.num_items, D, rank=D))
  plain, clients_plain, _ = _run(synthetic, identity(synthetic.num_items))
  np.testing.assert_allclose(full[-1].items, plain[-1].items, atol=1e-5)
  np.testing.assert_allclose(clients_full.users, clients_plain.users, atol=1e-5)


def test_low_rank_round_updates_lie_in_the_rounds_basis(synthetic):
  rank = 3
  history, _, metrics = _run(synthetic, colr(synthetic.num_items, D, rank=rank))
  assert np.all(np.asarray(metrics.error_up) < 1e-5), "client updates were in the subspace"
  assert np.all(np.asarray(metrics.bits_up) == colr_bits(rank, synthetic.num_items))
  for r, (before, after) in enumerate(zip(history, history[1:])):
    b = np.asarray(colr_basis(round_basis_key(before.key, r), rank, D), np.float64)
    proj = b.T @ b / (D / rank)
    step = np.asarray(after.items - before.items, np.float64)
    assert np.abs(step).max() > 1e-4
    np.testing.assert_allclose(step @ proj, step, atol=1e-6)
