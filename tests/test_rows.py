"""Row gathers/scatters: plain semantics, and the same results under vmap's custom rule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedras_jax.federated.rows import add_rows, set_rows, take_rows

P, N, D = 3, 7, 2
RNG = np.random.default_rng(0)
TABLES = RNG.normal(size=(P, N, D)).astype(np.float32)
IDX = np.array([[0, 6, 7, -1, 3], [2, 2, 9, 5, 0], [6, 1, 1, 4, 8]], np.int32)  # some out of range
VALUES = RNG.normal(size=(P, 5, D)).astype(np.float32)


def reference(op, table, idx, values):
  """NumPy: clamp for reads, drop out-of-range writes (duplicates: adds accumulate)."""
  table = np.array(table, np.float64)
  if op == "take":
    return table[np.clip(idx, 0, N - 1)]
  for i, v in zip(idx, values):
    if 0 <= i < N:
      table[i] = table[i] + v if op == "add" else v
  return table


@pytest.mark.parametrize("batched", [(True, True, True), (True, False, True), (False, True, True),
                                     (True, True, False)])
def test_add_rows_under_vmap_equals_a_loop(batched):
  args = (TABLES, IDX, VALUES)
  axes = tuple(0 if b else None for b in batched)
  pick = lambda a, b, p: a[p] if b else a[0]
  out = jax.jit(jax.vmap(add_rows, in_axes=axes,
                         axis_size=P))(*(a if b else a[0] for a, b in zip(args, batched)))
  for p in range(P):
    want = reference("add", *(pick(a, b, p) for a, b in zip(args, batched)))
    np.testing.assert_allclose(out[p], want, rtol=1e-6)


def test_set_rows_and_take_rows_under_vmap_equal_a_loop():
  idx = np.array([[0, 6, 7, -1, 3], [2, 4, 9, 5, 0], [6, 1, 3, 4, 8]], np.int32)  # no duplicates
  out = jax.jit(jax.vmap(set_rows))(TABLES, idx, VALUES)
  taken = jax.jit(jax.vmap(take_rows))(TABLES, IDX)
  shared = jax.jit(jax.vmap(take_rows, in_axes=(None, 0)))(TABLES[0], IDX)
  for p in range(P):
    np.testing.assert_allclose(out[p], reference("set", TABLES[p], idx[p], VALUES[p]))
    np.testing.assert_array_equal(taken[p], reference("take", TABLES[p], IDX[p], None))
    np.testing.assert_array_equal(shared[p], reference("take", TABLES[0], IDX[p], None))


def test_unbatched_calls_and_nested_vmap():
  np.testing.assert_allclose(add_rows(jnp.asarray(TABLES[0]), IDX[0], VALUES[0]),
                             reference("add", TABLES[0], IDX[0], VALUES[0]),
                             rtol=1e-6)
  nested = jax.vmap(jax.vmap(add_rows))(jnp.stack([TABLES, TABLES]), jnp.stack([IDX, IDX]),
                                        jnp.stack([VALUES, -VALUES]))
  for p in range(P):
    np.testing.assert_allclose(nested[1, p],
                               reference("add", TABLES[p], IDX[p], -VALUES[p]),
                               rtol=1e-6)
  loss = jax.vmap(add_rows)(jnp.zeros((P, 4)), jnp.array([[0, 4], [3, 3], [1, -2]]), jnp.ones(
      (P, 2)))
  np.testing.assert_array_equal(loss, [[1, 0, 0, 0], [0, 0, 0, 2], [0, 1, 0, 0]])
