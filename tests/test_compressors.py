"""TopK, SVD and embedding clustering behind the compressor contract.

Every test shares a few compiled functions per compressor: ``BATCH`` clients of
``[N, D]`` rows (``jit(vmap(encode -> decode))``, each client its own traced budget)
and one single-client ``jit``.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedras_jax import quantize
from fedras_jax.compress import (COMPRESSORS, Context, colr, embedding_kmeans, make_compressor,
                                 roundtrip, roundtrip_clients, svd, svd_bits, topk, topk_bits)
from fedras_jax.compress import registry

N, D, R, BATCH = 24, 6, 40, 8  # rows per client, width, catalog rows, clients per call
MAX_K = 16
ENTRY_BITS = 32 + 8  # a value + ceil(log2(R * D)) = ceil(log2(240)) = 8
RANK_BITS = (R + 1 + D) * 32

COMPS = {
    "topk": topk(R, max_entries=N * D), "topk_threshold": topk(R,
                                                               max_entries=N * D,
                                                               method="threshold"),
    "svd": svd(R, max_rank=D), "svd_lapack": svd(R, max_rank=D, method="lapack"),
    "embedding_kmeans": embedding_kmeans(R, max_k=MAX_K),
}


def code(comp, rows, mask, budget, key):
  """``(payload, decoded)`` of one matrix; base rows zero (embedding_kmeans codes ``rows``)."""
  out = roundtrip(comp, rows, mask, budget, key, context=Context(base_rows=jnp.zeros_like(rows)))
  return out.payload, out.decoded


@functools.lru_cache(maxsize=None)
def batched(name):
  return jax.jit(jax.vmap(functools.partial(code, COMPS[name])))


@functools.lru_cache(maxsize=None)
def single(name):
  return jax.jit(lambda rows, mask, budget, key: code(COMPS[name], rows, mask, budget, key)[1])


def size(name, payload):
  """The size parameter the payload was priced by: k, r or K."""
  if name.startswith("topk"):
    return payload.num_entries
  if name.startswith("svd"):
    return payload.rank
  return payload.num_actions


def data(seed=0, live=(24, 20, 16, 12, 24, 8, 3, 0)):
  """``[BATCH, N, D]`` rows, ``[BATCH, N]`` masks with ``live`` leading rows; rows
  beyond the mask hold garbage (they must not matter)."""
  rng = np.random.default_rng(seed)
  rows = rng.normal(size=(BATCH, N, D)).astype(np.float32)
  mask = np.arange(N)[None, :] < np.asarray(live)[:, None]
  return rows, mask


def clustered(seed=0, distinct=5):
  """Rows drawn from ``distinct`` points per client (each of them present)."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(BATCH, distinct, D)).astype(np.float32)
  pick = np.concatenate(
      [np.tile(np.arange(distinct), (BATCH, 1)),
       rng.integers(0, distinct, (BATCH, N - distinct))],
      axis=1)
  return np.take_along_axis(centers, pick[..., None], axis=1), np.ones((BATCH, N), bool)


KEYS = jax.random.split(jax.random.key(7), BATCH)


def call(name, rows, mask, budgets):
  payload, decoded = batched(name)(jnp.asarray(rows), jnp.asarray(mask),
                                   jnp.asarray(budgets, jnp.int32), KEYS)
  return jax.device_get(payload), np.asarray(decoded)


def rel_err(decoded, rows, mask):
  target = np.where(mask[..., None], rows, 0.0)
  return (np.linalg.norm((decoded - target).reshape(len(rows), -1), axis=1)
          / np.maximum(np.linalg.norm(target.reshape(len(rows), -1), axis=1), 1e-30))


def expected_size(name, budget, mask):
  n_live = int(mask.sum())
  if name.startswith("topk"):
    return min(budget // ENTRY_BITS, N * D, n_live * D)
  if name.startswith("svd"):
    return min(budget // RANK_BITS, D, n_live)
  return min(quantize.max_actions_for_budget(int(budget), R, D, max_k=MAX_K), n_live)


def formula_bits(name, k):
  if name.startswith("topk"):
    return k * ENTRY_BITS
  if name.startswith("svd"):
    return k * RANK_BITS
  return k * D * 32 + R * int(k).bit_length()


BUDGETS = [0, 39, 40, 3_000, 3_272, 4_000, 5_760, 10**6]


@pytest.mark.parametrize("name", list(COMPS))
def test_bits_follow_the_formula_and_never_exceed_the_budget(name):
  rows, mask = data()
  payload, decoded = call(name, rows, mask, BUDGETS)
  for c, budget in enumerate(BUDGETS):
    k = int(size(name, payload)[c])
    assert k == expected_size(name, budget, mask[c]), (c, budget)
    assert int(payload.bits[c]) == formula_bits(name, k)
    assert int(payload.bits[c]) <= budget
  assert np.all(decoded[~mask] == 0.0), "masked rows decode to zero"


def test_bit_formulas_by_hand():
  assert topk_bits(10, R, D) == 10 * (32 + 8)
  assert topk_bits(10, R, D, int32_indices=True) == 10 * 64
  assert topk_bits(3, 1682, 64) == 3 * (32 + 17)  # 1682 * 64 = 107648 < 2**17
  assert topk_bits(3, 1, 1) == 3 * 32  # a single entry needs no index
  assert topk_bits(2, 4, 4, value_bits=16) == 2 * (16 + 4)
  assert int(topk_bits(jnp.int32(5), R, D)) == 200
  assert svd_bits(2, R, D) == 2 * (R + 1 + D) * 32
  assert int(svd_bits(jnp.int32(2), R, D, value_bits=16)) == 2 * (R + 1 + D) * 16


def test_payloads_past_the_int32_bit_counts_are_refused():
  # 2**20 rows of 64 floats are 2**31 bits, one past the largest int32; one row fewer fits.
  rows, mask = jnp.zeros((2, 64)), jnp.ones((2,), bool)
  identity = registry.make_compressor("identity", 2**20, 64, payload_ratio=1.0)
  with pytest.raises(ValueError, match="a dense payload of 2,147,483,648 bits does not fit"):
    identity.encode(rows, mask, jnp.int32(0), KEYS[0], identity.init(2, 64), Context())
  fits = registry.make_compressor("identity", 2**20 - 1, 64, payload_ratio=1.0)
  coded = fits.encode(rows, mask, jnp.int32(0), KEYS[0], fits.init(2, 64), Context())
  assert int(coded.payload.bits) == (2**20 - 1) * 64 * 32
  with pytest.raises(ValueError, match="CoLR's payload of 2,147,483,648 bits"):
    colr(2**21, 64, rank=32)


@pytest.mark.parametrize("name", list(COMPS))
def test_masked_rows_do_not_matter(name):
  rows, mask = data(seed=1)
  clean = np.where(mask[..., None], rows, 0.0)
  _, decoded = call(name, rows, mask, BUDGETS)
  _, decoded_clean = call(name, clean, mask, BUDGETS)
  np.testing.assert_array_equal(decoded, decoded_clean)
  assert np.all(decoded[~mask] == 0.0)


@pytest.mark.parametrize("name", list(COMPS))
def test_vmap_with_per_client_budgets_equals_a_loop(name):
  rows, mask = data(seed=2)
  budgets = [3_000, 500, 10**6, 1_200, 2_000, 40_000, 7_000, 5_000]
  payload, decoded = call(name, rows, mask, budgets)
  assert len(set(np.asarray(size(name, payload)).tolist())) >= 3, "budgets set the size"
  for c in range(BATCH):
    one = single(name)(rows[c], mask[c], jnp.int32(budgets[c]), KEYS[c])
    np.testing.assert_allclose(decoded[c], one, rtol=1e-6, atol=1e-6)


def test_topk_keeps_the_largest_entries_and_is_exact_with_every_entry():
  rows, mask = data(seed=3, live=(24,) * BATCH)
  budgets = [k * ENTRY_BITS for k in (0, 1, 5, 20, 50, 100, 143, 144)]
  errs = []
  for name in ("topk", "topk_threshold"):
    payload, decoded = call(name, rows, mask, budgets)
    for c, k in enumerate((0, 1, 5, 20, 50, 100, 143, 144)):
      kept = decoded[c] != 0
      assert kept.sum() == k
      # Exact values at the kept entries, none smaller than a dropped one.
      np.testing.assert_array_equal(decoded[c][kept], rows[c][kept])
      if 0 < k < N * D:
        assert np.abs(rows[c][kept]).min() >= np.abs(rows[c][~kept]).max()
    np.testing.assert_array_equal(decoded[-1], rows[-1])  # k = n * d: exact
    errs.append(rel_err(decoded, rows, mask))
  assert np.all(np.diff(errs[0]) <= 0) and errs[0][-1] == 0.0
  np.testing.assert_array_equal(errs[0], errs[1])


def test_topk_int32_counts_32_bit_indices():
  """The registry's ``topk_int32``: k = budget // (32 + 32), the k largest entries."""
  comp = make_compressor("topk_int32", R, D, payload_ratio=1.0)
  assert comp.name == "topk_int32"
  rows, mask = data(seed=6, live=(24,) * BATCH)
  ks = (0, 1, 2, 5, 20, 50, 100, 128)  # 128: the static bound at ratio 1
  budgets = [k * 64 + 63 for k in ks]  # one bit short of k + 1 entries
  code_all = jax.jit(jax.vmap(functools.partial(code, comp)))
  payload, decoded = jax.device_get(
      code_all(jnp.asarray(rows), jnp.asarray(mask), jnp.asarray(budgets, jnp.int32), KEYS))
  np.testing.assert_array_equal(payload.num_entries, ks)
  np.testing.assert_array_equal(payload.bits, [k * 64 for k in ks])
  # The same entries as the packed-index TopK given the same count.
  _, packed = call("topk", rows, mask, [k * ENTRY_BITS for k in ks])
  np.testing.assert_array_equal(np.asarray(decoded), packed)


def test_topk_methods_agree_on_ties():
  rng = np.random.default_rng(4)
  rows = rng.integers(-3, 4, (BATCH, N, D)).astype(np.float32)  # many equal magnitudes
  mask = np.ones((BATCH, N), bool)
  budgets = [k * ENTRY_BITS for k in (1, 7, 30, 31, 50, 77, 100, 130)]
  p_sort, d_sort = call("topk", rows, mask, budgets)
  p_bisect, d_bisect = call("topk_threshold", rows, mask, budgets)
  np.testing.assert_array_equal(d_sort, d_bisect)
  np.testing.assert_array_equal(p_sort.bits, p_bisect.bits)


def test_svd_is_exact_at_full_rank_and_error_falls_with_the_rank():
  rows, mask = data(seed=5, live=(24,) * BATCH)
  ranks = (0, 1, 2, 3, 4, 5, 6, 6)
  budgets = [r * RANK_BITS for r in ranks]
  for name in ("svd", "svd_lapack"):
    payload, decoded = call(name, rows, mask, budgets)
    np.testing.assert_array_equal(payload.rank, ranks)
    np.testing.assert_allclose(decoded[-1], rows[-1], atol=1e-5)
  # All clients share one matrix: the error is the optimal rank-r error.
  same = np.broadcast_to(rows[:1], rows.shape)
  s = np.linalg.svd(rows[0].astype(np.float64), compute_uv=False)
  optimal = [np.sqrt(np.sum(s[r:]**2) / np.sum(s**2)) for r in ranks]
  for name in ("svd", "svd_lapack"):
    _, decoded = call(name, same, mask, budgets)
    np.testing.assert_allclose(rel_err(decoded, same, mask), optimal, atol=1e-5)


def test_svd_rank_is_capped_by_the_live_rows_and_the_numerical_rank():
  rng = np.random.default_rng(6)
  low = (rng.normal(size=(BATCH, N, 2)) @ rng.normal(size=(BATCH, 2, D))).astype(np.float32)
  live = (24, 24, 24, 24, 3, 2, 1, 0)
  mask = np.arange(N)[None, :] < np.asarray(live)[:, None]
  budgets = [10**6] * BATCH
  for name, rank_of_low in (("svd", None), ("svd_lapack", 2)):
    payload, decoded = call(name, low, mask, budgets)
    np.testing.assert_array_equal(payload.rank[4:], [2, 2, 1, 0])
    if rank_of_low:  # the Gram route may keep near-null components (exact anyway)
      np.testing.assert_array_equal(payload.rank[:4], rank_of_low)
    np.testing.assert_array_equal(payload.bits, payload.rank * RANK_BITS)
    np.testing.assert_allclose(decoded, np.where(mask[..., None], low, 0.0), atol=1e-5)


def test_embedding_kmeans_is_exact_with_a_centroid_per_distinct_row():
  rows, mask = clustered(distinct=5)
  ks = (0, 1, 2, 3, 4, 5, 8, 16)
  budgets = [quantize.payload_bits(k, R, D) for k in ks]
  payload, decoded = call("embedding_kmeans", rows, mask, budgets)
  # K beyond the 5 distinct rows leaves clusters empty: they are not sent.
  np.testing.assert_array_equal(payload.num_actions, [min(k, 5) for k in ks])
  np.testing.assert_array_equal(payload.bits, [quantize.payload_bits(min(k, 5), R, D) for k in ks])
  for c in range(5, BATCH):
    np.testing.assert_allclose(decoded[c], rows[c], atol=1e-6)
  assert not payload.inner.sent[0].any() and np.all(decoded[0] == 0.0)
  assert payload.inner.sent[1:].all()


def test_embedding_kmeans_error_falls_as_the_budget_grows():
  rows, mask = data(seed=8, live=(24,) * BATCH)
  rows = np.broadcast_to(rows[:1], rows.shape)  # one matrix, growing budgets
  ks = (1, 2, 3, 4, 6, 8, 12, 16)
  _, decoded = call("embedding_kmeans", rows, mask, [quantize.payload_bits(k, R, D) for k in ks])
  err = rel_err(decoded, rows, mask)
  assert np.all(np.diff(err) <= 1e-6), err


def test_embedding_kmeans_roundtrip_clients_returns_updates():
  comp = COMPS["embedding_kmeans"]
  rng = np.random.default_rng(9)
  num_slots = np.array([10, 7, 5], np.int32)
  offset = np.r_[0, np.cumsum(num_slots)[:-1]].astype(np.int32)
  capacity = 32
  table = rng.normal(size=(4, D)).astype(np.float32)  # 4 distinct embeddings
  items = rng.integers(0, 4, capacity)
  base = table[items]
  update = np.zeros((capacity, D), np.float32)
  update[:num_slots.sum()] = 0.01 * table[items[:num_slots.sum()]]  # same item, same update

  def pad(x):  # the first client's slots, padded to 16 rows: one matrix for roundtrip
    return np.pad(x[:10], ((0, 6), (0, 0)))

  @jax.jit
  def run(budgets):
    clients = roundtrip_clients(comp,
                                jnp.asarray(update),
                                jnp.asarray(offset),
                                jnp.asarray(num_slots),
                                budgets,
                                KEYS[:3],
                                buckets=((3, 16),),
                                context=Context(base_rows=jnp.asarray(base)))
    one = roundtrip(comp,
                    jnp.asarray(pad(update)),
                    jnp.arange(16) < 10,
                    budgets[0],
                    KEYS[0],
                    context=Context(base_rows=jnp.asarray(pad(base))))
    return clients, one

  big = quantize.payload_bits(4, R, D)
  out, one = run(jnp.array([big, big, 0], jnp.int32))
  decoded = np.asarray(out.decoded)
  np.testing.assert_allclose(decoded[:17], update[:17], atol=1e-6)
  assert np.all(decoded[17:22] == 0.0), "no budget: no update (not -base)"
  assert np.all(decoded[22:] == 0.0), "slots beyond the clients stay zero"
  assert np.all(np.asarray(out.bits) <= [big, big, 0]) and int(out.bits[2]) == 0
  np.testing.assert_array_equal(out.num_actions[2], 0)
  np.testing.assert_allclose(one.decoded[:10], decoded[:10], atol=1e-6)
  assert np.all(np.asarray(one.decoded[10:]) == 0.0)
  # One action: the client's rows collapse to their mean embedding.
  out, one = run(jnp.full((3,), quantize.payload_bits(1, R, D), jnp.int32))
  new = base[:10] + update[:10]
  np.testing.assert_allclose(np.asarray(out.decoded)[:10], new.mean(axis=0) - base[:10], atol=1e-5)
  np.testing.assert_allclose(one.decoded[:10], new.mean(axis=0) - base[:10], atol=1e-5)


def test_on_embeddings_needs_base_rows():
  comp = COMPS["embedding_kmeans"]
  with pytest.raises(ValueError, match="base_rows"):
    roundtrip(comp, jnp.zeros((4, D)), jnp.ones(4, bool), jnp.int32(100), KEYS[0])
  with pytest.raises(ValueError, match="base_rows"):
    roundtrip_clients(comp,
                      jnp.zeros((8, D)),
                      jnp.zeros(1, jnp.int32),
                      jnp.ones(1, jnp.int32),
                      jnp.ones(1, jnp.int32),
                      KEYS[:1],
                      buckets=((1, 8),))


def test_registry_builds_every_compressor_with_budget_derived_bounds():
  for name in COMPRESSORS:
    comp = make_compressor(name, 1682, 64, payload_ratio=1 / 32)
    assert comp.name == {"uncompressed": "identity"}.get(name, name)
    assert (comp.item_projection(KEYS[0]) is None) == (name != "colr")
  with pytest.raises(ValueError, match="unknown compressor"):
    make_compressor("zip", 10, 4, payload_ratio=0.5)
  budget = int(1682 * 64 * 32 / 32)  # 107,648 bits
  k = quantize.max_actions_for_budget(budget, 1682, 64, max_k=4096)  # 45
  assert registry.auto_max_k(1682, 64, 1 / 32) == min(128, max(16, -(-k // 16) * 16)) == 48
  assert registry.auto_max_k(1682, 64, 1.0) == 128
  # The downlink's: no 128 bound. ML-1M NeuMF rows (3706 x 80) at 16 bits, 1/8: 1,185,920
  # bits; K = 897 takes 897*80*16 + 3706*10 = 1,185,220, K = 898 1,186,500 -> 912.
  assert registry.auto_downlink_max_k(3706, 80, 1 / 8, value_bits=16) == 912
  assert registry.auto_downlink_max_k(1682, 64, 1 / 32) == 48  # as the uplink's under 128
  # Bounded by the rows (1682 x 64 dense: K 1672 -> 1680 <= 1682) and by the distances'
  # 2**23 entries (10^4 items: 838 -> 832), never below the uplink's (10^5 items: 80 -> 128;
  # 40 items: 39 -> 48).
  assert registry.auto_downlink_max_k(1682, 64, 1.0) == 1680
  assert registry.auto_downlink_max_k(40, 64, 1.0) == registry.auto_max_k(40, 64, 1.0) == 48
  assert registry.auto_downlink_max_k(10_000, 64, 1 / 4, value_bits=16) == 832
  assert registry.auto_downlink_max_k(100_000, 64, 1 / 4) == 128
  assert registry.auto_max_entries(1682, 64, 1 / 32) == 2240  # 107648 // 49 = 2196 -> 2240
  # 32-bit indices: 107648 // 64 = 1682 -> 1728.
  assert registry.auto_max_entries(1682, 64, 1 / 32, int32_indices=True) == 1728
  assert registry.auto_max_entries(10, 4, 1.0) == 40  # capped at n * d
  assert registry.auto_max_rank(1682, 64, 1 / 32) == 8  # rank 1 -> 8
  assert registry.auto_max_rank(1682, 64, 1.0) == 64


def test_registry_fixed_k_always_uses_the_budgets_k():
  fixed = make_compressor("fedras_fixed_k", R, D, payload_ratio=1.0, max_k=8)
  # tau_mode="fixed" like fedras_fixed_k: both share one compiled quantizer (eager calls).
  adaptive = make_compressor("fedras", R, D, payload_ratio=1.0, max_k=8, tau=0.9, tau_mode="fixed")
  rng = np.random.default_rng(10)
  # Two tight clusters: the adaptive split test stops at 2 actions, fixed K does not.
  rows = np.concatenate([np.ones((12, D)), -np.ones((12, D))]) + 0.1 * rng.normal(size=(N, D))
  rows = jnp.asarray(rows, jnp.float32)
  budget = jnp.int32(quantize.payload_bits(8, R, D))  # below the dense fallback's size
  ones = jnp.ones(N, bool)
  p_fixed, _ = code(fixed, rows, ones, budget, KEYS[0])
  p_adaptive, _ = code(adaptive, rows, ones, budget, KEYS[0])
  assert int(p_fixed.num_actions) == 8 and fixed.name == "fedras_fixed_k"
  assert int(p_adaptive.num_actions) == 2


def test_half_precision_values_are_priced_at_16_bits():
  rows, mask = data(seed=11)
  rows, mask = jnp.asarray(rows[0]), jnp.asarray(mask[0])
  budget = jnp.int32(10**6)
  p, _ = code(topk(R, max_entries=N * D, value_bits=16), rows, mask, budget, KEYS[0])
  assert int(p.bits) == N * D * (16 + 8)
  p, _ = code(svd(R, max_rank=D, value_bits=16), rows, mask, budget, KEYS[0])
  assert int(p.bits) == D * (R + 1 + D) * 16
  for leaf in (p.u, p.s, p.vt):
    np.testing.assert_array_equal(leaf, np.asarray(leaf.astype(jnp.bfloat16), np.float32))


def test_an_exact_compressor_skips_the_client_pass_with_the_same_result():
  """``identity`` (``exact``) through ``roundtrip_clients``' shortcut equals the general
  per-client path, and returns each client's own rows and the dense table's bits."""
  rng = np.random.default_rng(4)
  num_slots = np.array([9, 0, 6, 4], np.int32)
  offset = np.r_[0, np.cumsum(num_slots)[:-1]].astype(np.int32)
  capacity = 24  # slots 19.. belong to no client
  flat = jnp.asarray(rng.normal(size=(capacity, D)).astype(np.float32))
  exact = registry.make_compressor("identity", R, D, payload_ratio=1.0)
  assert exact.exact

  def clients(comp):
    return jax.jit(lambda: roundtrip_clients(comp,
                                             flat,
                                             jnp.asarray(offset),
                                             jnp.asarray(num_slots),
                                             jnp.full((4,), 7, jnp.int32),
                                             KEYS[:4],
                                             buckets=((2, 16), (2, 8)),
                                             context=Context(base_rows=flat)))()

  short, general = clients(exact), clients(exact._replace(exact=False))
  for a, b in zip(short[:3], general[:3]):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(short.decoded[:19], flat[:19])
  assert np.all(np.asarray(short.decoded[19:]) == 0.0)
  np.testing.assert_array_equal(short.bits, [R * D * 32] * 4)
  np.testing.assert_array_equal(short.num_actions, [-1] * 4)
