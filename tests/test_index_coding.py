"""``index_coding="touched"``: a presence bitmap, then content for the sent rows only.

Every compressor's bits are checked against a Python-int re-derivation from what its
payload holds (K per stage, rank, entries) and from the sent rows counted in NumPy;
the budget's size is checked to be the largest that fits. One ``jit(vmap)`` per
compressor over ``BATCH`` clients with their own budgets.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedras_jax import quantize
from fedras_jax.compress import (Context, colr, embedding_kmeans, fedras, make_compressor,
                                 dense_fits, roundtrip, sparse_dense_bits, svd, topk)
from fedras_jax.compress.base import indexed_rows, with_overhead
from fedras_jax.config import TrainConfig
from fedras_jax.experiment import build_compressors

N, D, R, BATCH = 24, 6, 200, 6  # rows per client, width, catalog rows (the bitmap), clients
MAX_K = 16
COLR_RANK = 2

COMPS = {
    "fedras": fedras(R,
                     max_k=MAX_K,
                     tau=2.0,
                     tau_mode="fixed",
                     dense_fallback=False,
                     index_coding="touched"), "fedras_2stages": fedras(R,
                                                                       max_k=MAX_K,
                                                                       tau=2.0,
                                                                       tau_mode="fixed",
                                                                       stages=2,
                                                                       dense_fallback=False,
                                                                       index_coding="touched"),
    "fedras_catalog": fedras(R, max_k=MAX_K, tau=2.0, tau_mode="fixed", dense_fallback=False),
    "svd": svd(R, max_rank=D, index_coding="touched"), "topk": topk(R,
                                                                    max_entries=N * D,
                                                                    index_coding="touched"),
    "embedding_kmeans": embedding_kmeans(R, max_k=MAX_K, index_coding="touched"),
    "colr": colr(R, D, rank=COLR_RANK, index_coding="touched"),
}
KEYS = jax.random.split(jax.random.key(3), BATCH)
LIVE = (24, 12, 5, 2, 0, 24)  # leading masked rows per client
BUDGETS = (4_000, 2_500, 1_200, 10**6, 3_000, 150)  # the last is below the bitmap: nothing fits


def data(seed=0):
  """``[BATCH, N, D]`` rows (every third masked row all zero: masked but not sent) and
  ``[BATCH, N]`` masks; rows beyond the mask hold garbage."""
  rng = np.random.default_rng(seed)
  rows = rng.normal(size=(BATCH, N, D)).astype(np.float32)
  rows[:, ::3] = 0.0
  mask = np.arange(N)[None, :] < np.asarray(LIVE)[:, None]
  return rows, mask


@functools.lru_cache(maxsize=None)
def batched(name):

  def code(rows, mask, budget, key):
    out = roundtrip(COMPS[name],
                    rows,
                    mask,
                    budget,
                    key,
                    context=Context(base_rows=jnp.zeros_like(rows), shared_key=jax.random.key(5)))
    return out.payload, out.decoded

  return jax.jit(jax.vmap(code, in_axes=(0, 0, 0, 0)))


def call(name, budgets=BUDGETS, seed=0):
  rows, mask = data(seed)
  payload, decoded = batched(name)(jnp.asarray(rows), jnp.asarray(mask),
                                   jnp.asarray(budgets, jnp.int32), KEYS)
  return rows, mask, jax.device_get(payload), np.asarray(decoded)


def sent_rows(rows, mask):
  """``[BATCH]`` rows a client sends: masked, finite, nonzero (NumPy)."""
  return (mask & np.any(rows != 0, axis=2)).sum(axis=1)


def action_bits(k, t):
  """K actions over ``t`` rows, the bitmap excluded (NumPy-free Python ints)."""
  return k * D * 32 + t * int(k).bit_length()


def with_bitmap(content):
  return content + R if content > 0 else 0


def test_indexed_rows_and_overhead_by_hand():
  sent = jnp.array([True, False, True, True])
  assert [int(v) for v in indexed_rows(sent, 50, "catalog")] == [50, 0]
  assert [int(v) for v in indexed_rows(sent, 50, "touched")] == [3, 50]
  assert int(with_overhead(jnp.int32(0), 50)) == 0  # an empty payload needs no bitmap
  assert int(with_overhead(jnp.int32(7), 50)) == 57
  # FedRAS's dense fallback always sent a bitmap; for no rows it sends nothing.
  assert int(sparse_dense_bits(jnp.int32(2), 50, 6)) == 2 * 6 * 32 + 50
  assert int(sparse_dense_bits(jnp.int32(0), 50, 6)) == 0
  # Fits exactly at its size, not a bit below; no rows fit any budget >= 0.
  for rows, budget in ((2, 434), (2, 433), (0, 0), (0, -1), (3, 10**6)):
    want = rows * 6 * 32 + (50 if rows else 0) <= budget
    assert bool(dense_fits(jnp.int32(rows), 50, 6, 32, jnp.int32(budget))) == want, (rows, budget)
  # 1.1M rows of 64 floats are 2.25e9 bits: their int32 size wraps (to 0 here), and they
  # were sent dense within a budget of 1e6 bits.
  assert int(sparse_dense_bits(jnp.int32(1_100_000), 1_100_000, 64)) <= 0
  assert not bool(dense_fits(jnp.int32(1_100_000), 1_100_000, 64, 32, jnp.int32(10**6)))
  assert not bool(dense_fits(jnp.int32(1_100_000), 1_100_000, 64, 32, jnp.int32(2**31 - 1)))
  assert bool(dense_fits(jnp.int32(1_000), 1_100_000, 64, 32, jnp.int32(2**31 - 1)))
  with pytest.raises(ValueError, match="index_coding"):
    indexed_rows(sent, 50, "bitmap")


def test_fedras_touched_bits_and_largest_k():
  rows, mask, p, decoded = call("fedras")
  t = sent_rows(rows, mask)
  for c, budget in enumerate(BUDGETS):
    k = int(p.num_actions[c])
    assert int(p.bits[c]) == with_bitmap(action_bits(k, t[c])) <= budget, c
    # tau > 1: K is the budget's, unless the sent rows or the slots bound it first.
    fits_more = with_bitmap(action_bits(k + 1, t[c])) <= budget
    assert not fits_more or k == min(MAX_K, t[c]), c
  assert int(p.bits[-1]) == 0 and np.all(decoded[-1] == 0.0), "a budget below the bitmap"
  assert int(p.bits[4]) == 0, "a client with no sent row sends nothing"


def test_fedras_stages_share_one_bitmap():
  rows, mask, p, _ = call("fedras_2stages")
  t = sent_rows(rows, mask)
  for c, budget in enumerate(BUDGETS):
    ks = [int(a.num_actions[c]) for a in p.actions]
    content = sum(action_bits(k, t[c]) for k in ks)
    assert int(p.bits[c]) == with_bitmap(content) <= budget, (c, ks)
    if budget >= 2 * (R + action_bits(2, t[c])) and t[c] >= 4:
      assert min(ks) >= 1, "both stages send when the budget allows"


def test_touched_coding_fits_more_actions_than_catalog_coding():
  rows, mask, touched, dec_t = call("fedras")
  _, _, catalog, dec_c = call("fedras_catalog")
  t = sent_rows(rows, mask)
  for c in np.flatnonzero(t >= 2):
    assert int(touched.num_actions[c]) >= int(catalog.num_actions[c]), c
    # The catalog coding prices R indices: the same K must fit it by the formula too.
    assert int(catalog.bits[c]) == action_bits(int(catalog.num_actions[c]), R)
  assert np.any(np.asarray(touched.num_actions) > np.asarray(catalog.num_actions))
  target = np.where(mask[..., None], rows, 0.0)
  err_t = np.linalg.norm(dec_t - target, axis=(1, 2))
  err_c = np.linalg.norm(dec_c - target, axis=(1, 2))
  more = np.asarray(touched.num_actions) > np.asarray(catalog.num_actions)
  assert np.all(err_t[more] <= err_c[more] + 1e-5)


def test_svd_touched_bits_and_largest_rank():
  rows, mask, p, decoded = call("svd")
  t = sent_rows(rows, mask)
  for c, budget in enumerate(BUDGETS):
    r = int(p.rank[c])
    unit = (t[c] + 1 + D) * 32
    assert int(p.bits[c]) == with_bitmap(r * unit) <= budget, c
    assert with_bitmap((r + 1) * unit) > budget or r == min(D, t[c]), c
  target = np.where(mask[..., None], rows, 0.0)
  full = [c for c in range(BATCH) if int(p.rank[c]) == min(D, t[c]) and t[c] > 0]
  np.testing.assert_allclose(decoded[full], target[full], atol=1e-4)


def test_topk_touched_bits_and_largest_count():
  rows, mask, p, _ = call("topk")
  t = sent_rows(rows, mask)
  for c, budget in enumerate(BUDGETS):
    k = int(p.num_entries[c])
    unit = 32 + max(int(t[c]) * D - 1, 0).bit_length()  # ceil(log2(T * D))
    assert int(p.bits[c]) == with_bitmap(k * unit) <= budget, c
    nnz = int(np.count_nonzero(np.where(mask[c][:, None], rows[c], 0.0)))
    assert with_bitmap((k + 1) * unit) > budget or k == nnz, c


def test_embedding_kmeans_touched_bits():
  rows, mask, p, _ = call("embedding_kmeans")
  live = mask.sum(axis=1)  # it codes embeddings: every masked row is sent
  for c, budget in enumerate(BUDGETS):
    k = int(p.num_actions[c])
    assert int(p.bits[c]) == with_bitmap(action_bits(k, live[c])) <= budget, c
    k_budget = quantize.max_actions_for_budget(max(budget - R, 0), int(live[c]), D, max_k=MAX_K)
    # The largest K that fits, less the clusters left empty by duplicate rows (the zero
    # rows): at most one non-empty cluster per distinct row.
    distinct = len(np.unique(rows[c][mask[c]], axis=0))
    assert k == min(k_budget, distinct), (c, k, k_budget, distinct)


def test_colr_touched_counts_the_sent_rows_of_a_at_its_fixed_rank():
  rows, mask, p, _ = call("colr")
  t = sent_rows(rows, mask)
  for c in range(BATCH):
    assert int(p.bits[c]) == with_bitmap(int(t[c]) * COLR_RANK * 32), c


def test_catalog_coding_is_the_default_and_unchanged():
  _, _, p, _ = call("fedras_catalog")
  for c, budget in enumerate(BUDGETS):
    assert int(p.bits[c]) == action_bits(int(p.num_actions[c]), R) <= budget


def test_registry_and_round_wiring():
  svd_t = make_compressor("svd", 3706, 128, payload_ratio=1 / 32, index_coding="touched")
  assert svd_t.name == "svd"
  with pytest.raises(ValueError, match="index_coding"):
    make_compressor("fedras", R, D, payload_ratio=1 / 32, index_coding="rows")
  with pytest.raises(ValueError, match="--index_coding"):
    TrainConfig(index_coding="rows").validate()
  # The uplink takes the option, the downlink keeps the catalog coding: a client with one
  # sent row pays the bitmap on the uplink only.
  config = TrainConfig(method="svd", index_coding="touched", payload_ratio=1 / 4)
  up, down = build_compressors(config, R, D)
  one = jnp.zeros((4, D)).at[0].set(1.0)
  mask = jnp.array([True, False, False, False])
  up_bits = roundtrip(up, one, mask, 10**6, KEYS[0]).bits
  down_bits = roundtrip(down, one, mask, 10**6, KEYS[0]).bits
  assert int(up_bits) == R + 1 * (1 + 1 + D) * 32
  assert int(down_bits) == 1 * (R + 1 + D) * 32
