"""Tests for fedras_jax.quantize (K-Means, bit accounting, actions, optax adapter).

Compiles dominate on XLA:CPU, so every jitted entry point is module-level with
fixed static arguments and shapes, shared across tests, and wrapped in
``chex.assert_max_traces(n=1)``: any retrace caused by a new k / budget / tau
/ mask value fails the test that triggered it.
"""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedras_jax import quantize as q
from fedras_jax.quantize.bits import saturating_int32

# ----------------------------------------------------------------------------
# Shared shapes and compiled functions.
# ----------------------------------------------------------------------------
KN, KD, KMAX = 240, 6, 8  # kmeans tests
EN, ED, EMAX = 200, 8, 8  # encode tests
KEY = jax.random.PRNGKey(0)


@jax.jit
@chex.assert_max_traces(n=1)
def km_init(x, w, c0, k):
  return q.kmeans(x, None, max_k=KMAX, k=k, weights=w, init_centroids=c0, max_iters=50, tol=0.0)


@jax.jit
@chex.assert_max_traces(n=1)
def km_pp(x, key, k):
  return q.kmeans(x, key, max_k=KMAX, k=k, max_iters=50)


lloyd_step = jax.jit(q.lloyd_step)


@jax.jit
@chex.assert_max_traces(n=1)
def enc_fixed(g, mask, budget, tau):
  return q.encode(g, KEY, budget_bits=budget, max_k=EMAX, tau=tau, mask=mask)


@jax.jit
@chex.assert_max_traces(n=1)
def enc_split1(g, mask, budget, tau):  # one split per test (enc_fixed: the default, all)
  return q.encode(g, KEY, budget_bits=budget, max_k=EMAX, tau=tau, mask=mask, max_splits=1)


@jax.jit
@chex.assert_max_traces(n=1)
def enc_split2(g, mask, budget, tau):
  return q.encode(g, KEY, budget_bits=budget, max_k=EMAX, tau=tau, mask=mask, max_splits=2)


@jax.jit
@chex.assert_max_traces(n=1)
def enc_auto(g, mask, budget):
  return q.encode(g, KEY, budget_bits=budget, max_k=EMAX, tau_mode="auto", mask=mask)


@jax.jit
@chex.assert_max_traces(n=1)
def enc_vmap(gs, keys, masks, budgets, taus):  # default strategy: lax.map on CPU
  f = lambda g, k, m, b, t: q.encode(g, k, budget_bits=b, max_k=EMAX, tau=t, mask=m)
  return jax.vmap(f)(gs, keys, masks, budgets, taus)


@jax.jit
@chex.assert_max_traces(n=1)
def enc_vmap_parallel(gs, keys, masks, budgets, taus):  # true lock-step batching
  f = lambda g, k, m, b, t: q.encode(
      g, k, budget_bits=b, max_k=EMAX, tau=t, mask=m, vmap_strategy="parallel")
  return jax.vmap(f)(gs, keys, masks, budgets, taus)


ALL = np.ones((EN,), bool)


# ----------------------------------------------------------------------------
# Independent NumPy float64 reference.
# ----------------------------------------------------------------------------
def np_lloyd(x, c0, w, max_iters=50):
  """Weighted Lloyd, float64, tol=0, scikit-learn stopping + farthest reseed."""
  x = np.asarray(x, np.float64)
  c = np.asarray(c0, np.float64).copy()
  w = np.asarray(w, np.float64)
  k = c.shape[0]
  old = np.full(x.shape[0], -1)
  iters = max_iters
  for i in range(max_iters):
    d2 = ((x[:, None, :] - c[None])**2).sum(-1)
    lab = d2.argmin(1)
    if i > 0 and np.array_equal(lab, old):
      iters = i + 1
      break
    new = c.copy()
    cw = np.array([w[lab == j].sum() for j in range(k)])
    for j in range(k):
      if cw[j] > 0:
        new[j] = (w[lab == j, None] * x[lab == j]).sum(0) / cw[j]
    empty = np.flatnonzero(cw == 0)
    if empty.size:
      md = d2[np.arange(len(x)), lab]
      order = np.argsort(-md, kind="stable")
      for r, j in enumerate(empty):
        if md[order[r]] > 0:
          new[j] = x[order[r]]
    shift = ((new - c)**2).sum()
    c, old = new, lab
    if shift <= 0:
      iters = i + 1
      break
  d2 = ((x[:, None, :] - c[None])**2).sum(-1)
  lab = d2.argmin(1)
  inertia = (w * d2[np.arange(len(x)), lab]).sum()
  return c, lab, inertia, iters


def blobs(rng, n, d, centers, scale=3.0, std=1.0):
  mu = rng.standard_normal((centers, d)) * scale
  lab = rng.integers(0, centers, n)
  return (mu[lab] + std * rng.standard_normal((n, d))).astype(np.float32)


def directions(rng, n, d, ndir, noise):
  """Rows along ``ndir`` random directions with random magnitudes + noise."""
  u = rng.standard_normal((ndir, d))
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  lab = rng.integers(0, ndir, n)
  mag = rng.uniform(0.5, 2.0, (n, 1))
  return (mag * u[lab] + noise * rng.standard_normal((n, d))).astype(np.float32)


# ----------------------------------------------------------------------------
# K-Means.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["all_live", "masked_and_inactive", "weighted"])
def test_kmeans_matches_numpy_reference(case):
  rng = np.random.default_rng(1)
  x = blobs(rng, KN, KD, centers=5, scale=2.0)
  w = np.ones(KN, np.float32)
  k = KMAX
  if case == "weighted":
    w = rng.uniform(0.2, 3.0, KN).astype(np.float32)
  c0 = x[rng.choice(KN, KMAX, replace=False)].copy()
  if case == "masked_and_inactive":
    k = 4
    dead = rng.choice(KN, 40, replace=False)
    w[dead] = 0.0
    x[dead[:20]] = 1e6  # garbage far away: must have no influence
    x[dead[20], 0] = np.nan
    x[dead[21], 1] = np.inf
    c0[k:] = 1e3  # garbage in inactive slots
    c0[:k] = x[np.setdiff1d(np.arange(KN), dead)[:k]]
  res = km_init(jnp.asarray(x), jnp.asarray(w), jnp.asarray(c0), k)
  live = w > 0
  c_ref, lab_ref, inertia_ref, it_ref = np_lloyd(x[live], c0[:k], w[live])
  np.testing.assert_array_equal(np.asarray(res.assignment)[live], lab_ref)
  np.testing.assert_allclose(np.asarray(res.centroids)[:k], c_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(res.inertia), inertia_ref, rtol=1e-5)
  assert int(res.iters) == it_ref
  assert np.all(np.asarray(res.centroids)[k:] == 0)
  np.testing.assert_array_equal(np.asarray(res.active), np.arange(KMAX) < k)
  if case == "masked_and_inactive":
    a = np.asarray(res.assignment)
    assert a[dead[20]] == -1 and a[dead[21]] == -1  # non-finite rows
    assert np.all((a[live] >= 0) & (a[live] < k))


@pytest.mark.parametrize("strategy", ["sequential", "parallel"])
def test_vmapped_kmeans_equals_one_call_each(strategy):
  rng = np.random.default_rng(41)
  xs = np.stack([blobs(rng, KN, KD, centers=3 + i, scale=2.0) for i in range(3)])
  ws = rng.uniform(0.2, 2.0, (3, KN)).astype(np.float32)
  ks = jnp.array([2, 5, KMAX], jnp.int32)
  keys = jax.random.split(KEY, 3)
  batched = jax.jit(
      jax.vmap(lambda x, key, k, w: q.kmeans(
          x, key, max_k=KMAX, k=k, weights=w, max_iters=30, vmap_strategy=strategy)))(
              jnp.asarray(xs), keys, ks, jnp.asarray(ws))
  for i in range(3):
    one = q.kmeans(jnp.asarray(xs[i]),
                   keys[i],
                   max_k=KMAX,
                   k=ks[i],
                   weights=jnp.asarray(ws[i]),
                   max_iters=30)
    np.testing.assert_array_equal(np.asarray(batched.assignment[i]), np.asarray(one.assignment))
    np.testing.assert_allclose(np.asarray(batched.centroids[i]),
                               np.asarray(one.centroids),
                               rtol=1e-5,
                               atol=1e-5)
    assert int(batched.iters[i]) == int(one.iters)


def test_kmeans_inertia_never_increases():
  rng = np.random.default_rng(2)
  x = jnp.asarray(blobs(rng, KN, KD, centers=6, scale=1.5))
  c = jnp.asarray(np.asarray(x)[:KMAX])  # poor init: first rows
  active = jnp.arange(KMAX) < 6
  hist = []
  for _ in range(15):
    c, _, inertia = lloyd_step(x, c, active)
    hist.append(float(inertia))
  hist = np.array(hist)
  assert np.all(np.diff(hist) <= 1e-6 * hist[:-1]), hist
  assert hist[-1] < hist[0]


def test_kmeans_reseeds_empty_cluster_at_farthest_point():
  rng = np.random.default_rng(3)
  x = blobs(rng, KN, KD, centers=3)
  c0 = x[:KMAX].copy()
  c0[2] = 1e3  # far from everything: empty after the first E-step
  res = km_init(jnp.asarray(x), jnp.ones(KN), jnp.asarray(c0), 5)
  counts = np.bincount(np.asarray(res.assignment), minlength=KMAX)
  assert np.all(counts[:5] > 0) and np.all(counts[5:] == 0)
  c_ref, lab_ref, _, _ = np_lloyd(x, c0[:5], np.ones(KN))
  np.testing.assert_array_equal(np.asarray(res.assignment), lab_ref)


def test_blocked_distance_path_matches_direct(monkeypatch):
  from fedras_jax.quantize import lloyd

  rng = np.random.default_rng(18)
  x = jnp.asarray(rng.standard_normal((300, KD)), jnp.float32)
  c = jnp.asarray(rng.standard_normal((KMAX, KD)), jnp.float32)
  active = jnp.arange(KMAX) < 5
  a_direct = lloyd.nearest_centroid(x, c, active)
  monkeypatch.setattr(lloyd, "_DIRECT_MAX", 0)
  monkeypatch.setattr(lloyd, "_BLOCK", 64)  # 300 rows -> 5 blocks, 20 padded rows
  a_block = lloyd.nearest_centroid(x, c, active)
  np.testing.assert_array_equal(np.asarray(a_block), np.asarray(a_direct))
  ref = ((np.asarray(x)[:, None] - np.asarray(c)[None, :5])**2).sum(-1).argmin(1)
  np.testing.assert_array_equal(np.asarray(a_direct), ref)


def test_kmeans_plusplus_finds_separated_blobs():
  rng = np.random.default_rng(4)
  mu = np.eye(KD)[:5] * 50.0
  lab = rng.integers(0, 5, KN)
  x = (mu[lab] + 0.1 * rng.standard_normal((KN, KD))).astype(np.float32)
  res = km_pp(jnp.asarray(x), jax.random.PRNGKey(7), 5)
  a = np.asarray(res.assignment)
  # one cluster per blob (a perfect partition up to relabelling)
  assert len({(i, j) for i, j in zip(lab, a)}) == len(set(a.tolist())) == 5
  assert float(res.inertia) < KN * KD * 0.1**2 * 2
  res2 = km_pp(jnp.asarray(x), jax.random.PRNGKey(8), 3)  # new k: no retrace
  assert np.asarray(res2.active).sum() == 3


# ----------------------------------------------------------------------------
# Bit accounting.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("k,r,d,vb,expected", [(0, 100, 64, 32, 0), (1, 10, 4, 32, 128 + 10 * 1),
                                               (2, 10, 4, 32, 256 + 10 * 2),
                                               (3, 10, 4, 32, 384 + 10 * 2),
                                               (4, 10, 4, 32, 512 + 10 * 3),
                                               (7, 5, 2, 16, 224 + 5 * 3),
                                               (8, 5, 2, 16, 256 + 5 * 4),
                                               (255, 1000, 64, 32, 255 * 64 * 32 + 1000 * 8),
                                               (256, 1000, 64, 32, 256 * 64 * 32 + 1000 * 9),],
                        )
def test_payload_bits_hand_computed(k, r, d, vb, expected):
  assert q.payload_bits(k, r, d, vb) == expected
  assert int(jax.jit(q.payload_bits, static_argnums=(2, 3))(jnp.int32(k), jnp.int32(r), d,
                                                            vb)) == expected


def test_int32_index_convention():
  assert q.payload_bits_int32_indices(2, 10, 4) == 256 + 320
  assert q.payload_bits_int32_indices(0, 10, 4) == 0
  assert int(q.payload_bits_int32_indices(jnp.int32(3), 7, 4, 16)) == 3 * 4 * 16 + 7 * 32
  assert q.compression_rate(0, 10, 4) == 1.0
  np.testing.assert_allclose(float(q.compression_rate(jnp.int32(640), 10, 4)), 0.5)


def test_max_actions_for_budget_is_largest_fitting_k():
  max_k, r, d = 16, 50, 8

  @jax.jit
  def traced(budgets, rows):
    return jax.vmap(lambda b, rr: q.max_actions_for_budget(b, rr, d, max_k=max_k))(budgets, rows)

  cases = [(b, rr) for b in list(range(0, 5000, 37)) + [10**6] for rr in (0, 1, r, 300)]
  got = np.asarray(traced(jnp.array([c[0] for c in cases]), jnp.array([c[1] for c in cases])))
  for (b, rr), g in zip(cases, got):
    brute = max([k for k in range(max_k + 1) if q.payload_bits(k, rr, d) <= b])
    assert g == brute == q.max_actions_for_budget(b, rr, d, max_k=max_k), (b, rr)


def test_budgets_past_int32_saturate_and_never_wrap():
  g = jax.random.normal(jax.random.PRNGKey(3), (16, 4))
  # Hand count at max_k 4: 4 * 4 * 32 centroid bits + 16 rows * 3 index bits = 560. Under
  # jit an int64 past int32 wrapped (2**31 + 1000 to a negative budget, 2**32 + 5000 to 5000).
  for budget in (np.int64(2**31), np.int64(2**31 + 1000), np.int64(2**33), 2**40, 3e9,
                 jnp.float32(np.inf), jnp.float16(np.inf)):
    p = q.encode(g, KEY, budget_bits=budget, max_k=4)
    assert (int(p.num_actions), int(p.bits)) == (4, 560), budget
  # Budgets near -2**31 once made budget - centroid bits wrap to a large positive number.
  for budget in (np.int64(-2**40), -3e9, -np.inf, jnp.int32(-2**31), -2**31 + 100, np.nan):
    assert int(q.encode(g, KEY, budget_bits=budget, max_k=4).bits) == 0, budget
    assert int(q.max_actions_for_budget(saturating_int32(budget), 16, 4, max_k=4)) == 0
  assert int(saturating_int32(np.int64(2**40))) == 2**31 - 1
  assert int(saturating_int32(-2**40)) == -2**31
  assert int(saturating_int32(3e9)) == 2**31 - 1  # exact in float64
  assert int(saturating_int32(jnp.float32(1e12))) == 2**31 - 128  # float32's largest below
  assert int(jax.jit(saturating_int32)(jnp.float16(-np.inf))) == -2**31
  # A uint32 past int32's max was cast as it was, wrapping 3e9 to a negative budget.
  for saturate in (saturating_int32, jax.jit(saturating_int32)):
    assert int(saturate(jnp.uint32(3_000_000_000))) == 2**31 - 1
    assert int(saturate(jnp.uint32(560))) == 560
  p = q.encode(g, KEY, budget_bits=jnp.uint32(3_000_000_000), max_k=4)
  assert (int(p.num_actions), int(p.bits)) == (4, 560)
  # R * index bits past int32: the Python-int count (exact) says one action fits; the traced
  # test used to overflow to K = 4 with negative bits.
  budget, rows = 2**30 + 300, 2**30
  assert q.max_actions_for_budget(budget, rows, 4, max_k=4) == 1
  assert int(q.max_actions_for_budget(jnp.int32(budget), jnp.int32(rows), 4, max_k=4)) == 1
  p = q.encode(g, KEY, budget_bits=budget, max_k=4, num_index_rows=rows)
  assert int(p.num_actions) == 1 and 0 < int(p.bits) == 4 * 32 + rows <= budget
  # Float budgets past int32 in the public helper: a Python float raised OverflowError and a
  # NumPy float32 wrapped to K = 0; both saturate now, as an int budget of 2**31 - 1 gives.
  assert q.max_actions_for_budget(2**31 - 1, 16, 4, max_k=4) == 4
  for budget in (1e10, np.float32(1e10), np.float64(3e9), jnp.float32(1e10)):
    assert int(q.max_actions_for_budget(budget, 16, 4, max_k=4)) == 4, budget


def test_negative_index_rows_and_nan_tau():
  g = jax.random.normal(jax.random.PRNGKey(3), (16, 4))
  # Negative R once made bits negative (every K "fitting": K = 4); a concrete one is refused,
  # a traced one counts as 0 rows: 300 bits fit K = 2 centroids of 4 * 32 bits, not 3.
  for bad in (-1, np.int64(-1000)):
    with pytest.raises(ValueError, match="num_index_rows must be >= 0"):
      q.encode(g, KEY, budget_bits=560, max_k=4, num_index_rows=bad)
    assert q.max_actions_for_budget(300, int(bad), 4, max_k=4) == 2
  traced = jax.jit(lambda r: q.encode(g, KEY, budget_bits=300, max_k=4, num_index_rows=r))
  neg, zero = traced(jnp.int32(-1000)), q.encode(g, KEY, budget_bits=300, max_k=4, num_index_rows=0)
  assert int(neg.num_actions) == int(zero.num_actions) == 2
  assert int(neg.bits) == int(zero.bits) == 2 * 4 * 32
  np.testing.assert_array_equal(np.asarray(neg.indices), np.asarray(zero.indices))
  for tau in (float("nan"), np.float32(np.nan)):
    with pytest.raises(ValueError, match="tau is NaN"):
      q.encode(g, KEY, budget_bits=560, max_k=4, tau=tau)
  q.encode(g, KEY, budget_bits=560, max_k=4, tau=float("nan"), tau_mode="auto")  # ignored


def test_decode_of_a_batch_names_vmap():
  gs = jax.random.normal(jax.random.PRNGKey(4), (3, 16, 4))
  ps = jax.vmap(lambda x: q.encode(x, KEY, budget_bits=600, max_k=4))(gs)
  with pytest.raises(ValueError, match=r"jax.vmap\(decode\)"):
    q.decode(ps)
  for i, rows in enumerate(np.asarray(jax.vmap(q.decode)(ps))):
    one = jax.tree.map(lambda leaf, i=i: leaf[i], ps)
    np.testing.assert_array_equal(
        rows,
        np.asarray(one.centroids)[np.asarray(one.indices)] *
        (np.asarray(one.indices) >= 0)[:, None])


# ----------------------------------------------------------------------------
# Encode / decode.
# ----------------------------------------------------------------------------
def _min_coherence(p, g):
  """The least coherence (mean member/centroid cosine) over the actions of two or more
  rows, recomputed in float64 from the rows ``g`` and the payload's indices and
  centroids (not the encoder's own ``coherence`` output); 1 if no action has two rows.
  Checks that the reported coherence agrees."""
  g, idx = np.asarray(g, np.float64), np.asarray(p.indices)
  cent = np.asarray(p.centroids, np.float64)
  live = idx >= 0
  cos = np.einsum("nd,nd->n", g[live], cent[idx[live]]) / (
      np.linalg.norm(g[live], axis=1) * np.linalg.norm(cent[idx[live]], axis=1))
  k = int(p.num_actions)
  cnt = np.bincount(idx[live], minlength=k)
  coh = np.bincount(idx[live], weights=cos, minlength=k) / np.maximum(cnt, 1)
  np.testing.assert_allclose(np.asarray(p.coherence)[:k][cnt > 0], coh[cnt > 0], atol=1e-4)
  return coh[cnt >= 2].min() if np.any(cnt >= 2) else 1.0


def _single_action_coherence(g):
  m = g.mean(0)
  cos = g @ m / (np.linalg.norm(g, axis=1) * np.linalg.norm(m))
  return cos.mean()


def test_cluster_coherence_against_numpy():
  rng = np.random.default_rng(8)
  x = rng.standard_normal((12, 5)) * np.exp(rng.uniform(-30, 30, (12, 1)))  # spread scales
  x[3] = 0.0  # a zero row: cosine 0
  c = rng.standard_normal((4, 5))
  a = np.array([0, 0, 1, 1, 1, 0, -1, 1, 0, 0, 1, -1])  # cluster 2 and 3 empty
  w = rng.uniform(0.5, 2.0, 12)
  w[9] = 0.0  # not a member
  coh, cnt, cos = q.cluster_coherence(jnp.asarray(x, jnp.float32), jnp.asarray(c, jnp.float32),
                                      jnp.asarray(a, jnp.int32), jnp.asarray(w, jnp.float32))
  nx = np.linalg.norm(x, axis=1)
  ref_cos = np.array([
      x[i] @ c[max(a[i], 0)] / (nx[i] * np.linalg.norm(c[max(a[i], 0)])) if nx[i] > 0 else 0.0
      for i in range(12)
  ])
  member = np.where(a >= 0, w, 0.0)
  ref_cnt = np.array([member[a == j].sum() for j in range(4)])
  ref_coh = np.array([
      (member * ref_cos)[a == j].sum() / ref_cnt[j] if ref_cnt[j] > 0 else 1.0 for j in range(4)
  ])
  np.testing.assert_allclose(cos, ref_cos, atol=1e-5)
  np.testing.assert_allclose(cnt, ref_cnt, rtol=1e-6)
  np.testing.assert_allclose(coh, ref_coh, atol=1e-5)
  assert np.all(np.asarray(coh)[2:] == 1.0)  # empty clusters are vacuously coherent


@pytest.mark.parametrize("budget", [456, 900, 1500, 2200, 2848, 100000])
def test_split_respects_budget_and_improves_coherence(budget):
  rng = np.random.default_rng(5)
  g = rng.standard_normal((EN, ED)).astype(np.float32)  # incoherent
  tau = 0.8
  p = enc_fixed(jnp.asarray(g), ALL, budget, tau)
  k = int(p.num_actions)
  k_cap = q.max_actions_for_budget(budget, EN, ED, max_k=EMAX)
  assert 1 <= k <= k_cap
  assert int(p.bits) == q.payload_bits(k, EN, ED) <= budget
  np.testing.assert_array_equal(np.asarray(p.active), np.arange(EMAX) < k)
  assert np.all(np.asarray(p.centroids)[k:] == 0)
  idx = np.asarray(p.indices)
  assert idx.min() >= 0 and idx.max() < k
  # Stopped either because every cluster passes the test or the budget ran out.
  assert k == k_cap or _min_coherence(p, g) >= tau - 1e-5
  if k > 1:
    assert _min_coherence(p, g) > _single_action_coherence(g)


@pytest.mark.parametrize("mode", ["fixed", "auto"])
def test_coherent_data_uses_fewer_actions(mode):
  rng = np.random.default_rng(6)
  g = jnp.asarray(directions(rng, EN, ED, ndir=3, noise=0.02))
  budget = 100000  # allows EMAX actions
  p = enc_fixed(g, ALL, budget, 0.95) if mode == "fixed" else enc_auto(g, ALL, budget)
  assert int(p.num_actions) == 3 < EMAX
  assert _min_coherence(p, g) >= float(p.tau) - 1e-5
  if mode == "auto":
    c1 = _single_action_coherence(np.asarray(g))
    np.testing.assert_allclose(float(p.tau), np.sqrt((1 + c1) / 2), rtol=1e-5)
    # incoherent data under auto mode still splits (up to the budget)
    p2 = enc_auto(jnp.asarray(rng.standard_normal((EN, ED)), jnp.float32), ALL, budget)
    assert int(p2.num_actions) > 3


def test_zero_budget_gives_empty_payload():
  g = jnp.asarray(np.random.default_rng(7).standard_normal((EN, ED)), jnp.float32)
  cost_k1 = q.payload_bits(1, EN, ED)
  for budget in (0, cost_k1 - 1):
    p = enc_fixed(g, ALL, budget, 0.8)
    assert int(p.num_actions) == 0 and int(p.bits) == 0
    assert np.all(np.asarray(p.indices) == q.NO_UPDATE)
    assert not np.any(np.asarray(p.active))
    assert np.all(np.asarray(q.decode(p)) == 0)
  p = enc_fixed(g, ALL, cost_k1, 0.8)
  assert int(p.num_actions) == 1 and int(p.bits) == cost_k1


def test_reconstruction_error_falls_with_budget():
  rng = np.random.default_rng(8)
  g = rng.standard_normal((EN, ED)).astype(np.float32)
  errs = []
  for k in range(1, EMAX + 1):
    budget = q.payload_bits(k, EN, ED)
    p = enc_fixed(jnp.asarray(g), ALL, budget, 2.0)  # tau > 1: always split
    assert int(p.num_actions) == k
    errs.append(np.linalg.norm(np.asarray(q.decode(p)) - g) / np.linalg.norm(g))
  assert np.all(np.diff(errs) <= 1e-6), errs
  assert errs[-1] < 0.8 * errs[0]


def test_exact_when_actions_cover_distinct_rows():
  rng = np.random.default_rng(9)
  distinct = rng.standard_normal((5, ED)).astype(np.float32)
  g = distinct[rng.integers(0, 5, EN)]
  g[:7] = 0.0  # zero rows: reserved code, still exact
  p = enc_fixed(jnp.asarray(g), ALL, 10**6, 0.999)
  assert int(p.num_actions) == 5
  np.testing.assert_allclose(np.asarray(q.decode(p)), g, rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(p.indices)[:7] == q.NO_UPDATE)


def test_mask_rows_are_inert_and_reserved():
  rng = np.random.default_rng(10)
  g = directions(rng, EN, ED, ndir=4, noise=0.3)
  mask = rng.random(EN) < 0.6
  g2 = g.copy()
  g2[~mask] = rng.standard_normal(((~mask).sum(), ED)) * 100  # garbage in masked rows
  p1 = enc_fixed(jnp.asarray(g), mask, 1500, 0.9)
  p2 = enc_fixed(jnp.asarray(g2), mask, 1500, 0.9)
  for a, b in zip(p1, p2):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.all(np.asarray(p1.indices)[~mask] == q.NO_UPDATE)
  assert np.all(np.asarray(q.decode(p1))[~mask] == 0)


def test_nonfinite_rows_are_dropped_and_counted():
  rng = np.random.default_rng(11)
  g = directions(rng, EN, ED, ndir=4, noise=0.3)
  bad = np.array([3, 50, 51, 199])
  g_bad = g.copy()
  g_bad[3, 0] = np.nan
  g_bad[50] = np.inf
  g_bad[51, 2] = -np.inf
  g_bad[199] = np.nan
  mask = ALL.copy()
  mask[199] = False  # masked NaN row: not counted
  p = enc_fixed(jnp.asarray(g_bad), mask, 1500, 0.9)
  assert int(p.num_nonfinite) == 3
  assert np.all(np.asarray(p.indices)[bad] == q.NO_UPDATE)
  dec = np.asarray(q.decode(p))
  assert np.all(np.isfinite(dec)) and np.all(dec[bad] == 0)
  assert np.all(np.isfinite(np.asarray(p.centroids)))
  # identical to encoding with those rows masked out
  m2 = ALL.copy()
  m2[bad] = False
  p_ref = enc_fixed(jnp.asarray(g), m2, 1500, 0.9)
  np.testing.assert_array_equal(np.asarray(p.indices), np.asarray(p_ref.indices))
  np.testing.assert_array_equal(np.asarray(p.centroids), np.asarray(p_ref.centroids))
  # an all-NaN matrix gives the empty payload
  p_nan = enc_fixed(jnp.asarray(np.full((EN, ED), np.nan, np.float32)), ALL, 1500, 0.9)
  assert int(p_nan.num_actions) == 0 and int(p_nan.bits) == 0
  assert int(p_nan.num_nonfinite) == EN
  assert np.all(np.asarray(q.decode(p_nan)) == 0)


def test_tiny_and_huge_gradients_are_scale_equivariant():
  rng = np.random.default_rng(12)
  g = directions(rng, EN, ED, ndir=5, noise=0.3)
  p = enc_fixed(jnp.asarray(g), ALL, 1500, 0.9)
  for s in (2.0**-100, 2.0**90):
    ps = enc_fixed(jnp.asarray(g * np.float32(s)), ALL, 1500, 0.9)
    np.testing.assert_array_equal(np.asarray(ps.indices), np.asarray(p.indices))
    np.testing.assert_allclose(np.asarray(ps.centroids), np.asarray(p.centroids) * s, rtol=1e-6)


@pytest.mark.parametrize("batched", [enc_vmap, enc_vmap_parallel], ids=["auto", "parallel"])
def test_vmap_equals_loop_without_retrace(batched):
  rng = np.random.default_rng(13)
  b = 4
  gs = np.stack([directions(rng, EN, ED, ndir=2 + i, noise=0.2 * i) for i in range(b)])
  masks = rng.random((b, EN)) < 0.8
  keys = jax.random.split(KEY, b)
  for budgets, taus in [([456, 1100, 2000, 100000], [0.9, 0.8, 0.95, 0.7]),
                        ([3000, 700, 0, 1800], [0.5, 0.99, 0.9, 0.85])]:
    pb = batched(jnp.asarray(gs), keys, jnp.asarray(masks), jnp.array(budgets), jnp.array(taus))
    for i in range(b):
      pi = enc_fixed(jnp.asarray(gs[i]), masks[i], budgets[i], taus[i])
      np.testing.assert_array_equal(np.asarray(pb.indices[i]), np.asarray(pi.indices))
      np.testing.assert_allclose(np.asarray(pb.centroids[i]),
                                 np.asarray(pi.centroids),
                                 rtol=1e-5,
                                 atol=1e-6)
      assert int(pb.bits[i]) == int(pi.bits) <= budgets[i]
      assert int(pb.num_actions[i]) == int(pi.num_actions)


def test_value_bits_16_rounds_centroids_and_counts_16_bits():
  rng = np.random.default_rng(14)
  g = jnp.asarray(rng.standard_normal((64, 4)), jnp.float32)
  budget = q.payload_bits(3, 64, 4, 16)
  p = q.encode(g, KEY, budget_bits=budget, max_k=4, tau=2.0, value_bits=16)
  assert int(p.num_actions) == 3 and int(p.bits) == budget  # 3 fits at 16 bits
  assert q.max_actions_for_budget(budget, 64, 4, max_k=4, value_bits=32) < 3
  c = np.asarray(p.centroids)
  np.testing.assert_array_equal(c,
                                np.asarray(jnp.asarray(c).astype(jnp.bfloat16).astype(jnp.float32)))


def test_compact_clusters_by_hand():
  cents = jnp.arange(8.0).reshape(4, 2)
  coh = jnp.array([0.1, 0.2, 0.3, 0.4])
  keep = jnp.array([False, True, False, True])
  assignment = jnp.array([3, 1, 0, -1, 3, 2])
  live = jnp.array([True, True, True, True, False, True])
  (c, h), idx, k = q.compact_clusters((cents, coh), assignment, keep, live)
  np.testing.assert_array_equal(c, [[2, 3], [6, 7], [0, 0], [0, 0]])
  np.testing.assert_array_equal(h, np.float32([0.2, 0.4, 0, 0]))
  # Row 2's and row 5's clusters were dropped, row 3 has none, row 4 is not live.
  np.testing.assert_array_equal(idx, [1, 0, -1, -1, -1, -1])
  assert int(k) == 2


def test_round_values_by_hand():
  x = jnp.array([1 + 2**-10, 1 + 2**-6, 7e4, -np.inf, 3.0], jnp.float32)
  # bfloat16 keeps 8 significant bits, float16 11; both clip to their finite range.
  bf = float(jnp.finfo(jnp.bfloat16).max)
  np.testing.assert_array_equal(q.round_values(x, 16), [1.0, 1 + 2**-6, 70144.0, -bf, 3.0])
  np.testing.assert_array_equal(q.round_values(x, 16, "float16"),
                                [1 + 2**-10, 1 + 2**-6, 65504.0, -65504.0, 3.0])
  np.testing.assert_array_equal(q.round_values(x, 32), x)


def test_no_retrace_across_values():
  # Every shared function was compiled once; calling again with new values must not retrace.
  g = jnp.asarray(np.random.default_rng(15).standard_normal((EN, ED)), jnp.float32)
  for budget, tau in itertools.product((500, 2000), (0.3, 0.9)):
    enc_fixed(g, np.random.default_rng(budget).random(EN) < 0.7, budget, tau)
    enc_auto(g, ALL, budget)
    enc_split1(g, ALL, budget, tau)
    enc_split2(g, ALL, budget, tau)
  x = jnp.asarray(np.random.default_rng(16).standard_normal((KN, KD)), jnp.float32)
  for k in (1, 3, KMAX):
    km_init(x, jnp.ones(KN), x[:KMAX], k)


# ----------------------------------------------------------------------------
# Splits per split test (max_splits). The default (every incoherent cluster at
# once) is what enc_fixed / enc_vmap* above already exercise, vmap included.
# ----------------------------------------------------------------------------
SPLITS = {"S=1": enc_split1, "S=2": enc_split2, "S=all": enc_fixed}


@pytest.mark.parametrize("splits", ["S=2", "S=all"])
def test_multi_split_respects_budget_and_stops_coherent(splits):
  enc = SPLITS[splits]
  rng = np.random.default_rng(20)
  cases = [(rng.standard_normal((EN, ED)).astype(np.float32), 0.8),
           (directions(rng, EN, ED, ndir=5, noise=0.1), 0.95)]
  mask = rng.random(EN) < 0.85
  for g, tau in cases:
    g_garbage = g.copy()
    g_garbage[~mask] = 100 * rng.standard_normal(((~mask).sum(), ED))
    for budget in (0, 456, 900, 1500, 2200, 100000):
      p = enc(jnp.asarray(g), mask, budget, tau)
      k = int(p.num_actions)
      k_cap = q.max_actions_for_budget(budget, EN, ED, max_k=EMAX)
      assert min(1, k_cap) <= k <= k_cap
      assert int(p.bits) == q.payload_bits(k, EN, ED) <= budget
      np.testing.assert_array_equal(np.asarray(p.active), np.arange(EMAX) < k)
      assert np.all(np.asarray(p.centroids)[k:] == 0)
      idx = np.asarray(p.indices)
      assert np.all(idx[~mask] == q.NO_UPDATE)
      if k:
        assert idx[mask].min() >= 0 and idx[mask].max() < k
      # Stopped either because every cluster passes the test or the budget ran out.
      assert k == k_cap or _min_coherence(p, g) >= tau - 1e-5
      # Never more split tests than one split per test needs.
      p1 = enc_split1(jnp.asarray(g), mask, budget, tau)
      assert int(p.split_tests) <= int(p1.split_tests)
      # Masked rows are inert.
      for a, b in zip(p, enc(jnp.asarray(g_garbage), mask, budget, tau)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def np_encode(g, k_cap, tau, *, max_splits, max_iters=25, tol=1e-4, power_iters=None):
  """Float64 NumPy re-implementation of ``encode`` (fixed tau, all rows live).

  Returns ``(indices [n], num_split_tests_that_split)``. Written from the
  algorithm in ``quantize.actions`` (refinement, split test, bisection), not
  from its code; assumes no cluster empties (well-separated test data).
  """
  from fedras_jax.quantize import encode_loop

  power_iters = encode_loop._POWER_ITERS if power_iters is None else power_iters
  x = np.asarray(g, np.float64)
  n = len(x)
  xu = x / np.linalg.norm(x, axis=1, keepdims=True)
  var = ((x - x.mean(0))**2).mean(0)
  tol_abs = tol * var.mean()

  def unit(v):
    nrm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(nrm > 0, nrm, 1.0)

  c, k, a, tests = [x.mean(0)], 1, np.zeros(n, int), 0
  while True:
    it, shift, prev = 0, np.inf, a
    while True:  # refinement
      cc = np.array(c[:k])
      d2 = ((x[:, None] - cc[None])**2).sum(-1)
      a_new = d2.argmin(1)
      strict = it > 0 and np.array_equal(a_new, prev)
      if (it == 0 and k == 1) or strict or (it > 0 and shift <= tol_abs) or it >= max_iters:
        a = a_new
        break
      new = np.array([x[a_new == j].mean(0) for j in range(k)])
      shift = ((new - cc)**2).sum()
      c, prev, it = list(new), a_new, it + 1
    cos = np.sum(xu * unit(np.array(c))[a], axis=1)
    cnt = np.bincount(a, minlength=k)
    coh = np.array([cos[a == j].mean() if cnt[j] else 1.0 for j in range(k)])
    cand = (cnt >= 2) & (coh < tau)
    if k >= k_cap or not cand.any():
      return a, tests
    num = min(int(cand.sum()), k_cap - k, max_splits)
    chosen = np.argsort(np.where(cand, coh, np.inf), kind="stable")[:num]
    c = c + [None] * num
    for r, j in enumerate(chosen):
      mem = np.flatnonzero(a == j)
      ubar = xu[mem].mean(0)
      dev = xu[mem] - ubar
      seed = mem[np.argmin(cos[mem])]
      v = xu[seed] - ubar
      for _ in range(power_iters):
        v = dev.T @ (dev @ v)
        v /= np.linalg.norm(v)
      side = dev @ v > 0
      c[j], c[k + r] = x[mem[~side]].mean(0), x[mem[side]].mean(0)
    k += num
    tests += 1


@pytest.mark.parametrize("splits", ["S=1", "S=all"])
def test_encode_matches_numpy_reference(splits):
  # Well-separated data (7 noisy directions), budget for 5 actions: the
  # partition is robust to float32 noise, so the indices must agree exactly.
  rng = np.random.default_rng(27)
  g = directions(rng, EN, ED, ndir=7, noise=0.05)
  budget = q.payload_bits(5, EN, ED)
  p = SPLITS[splits](jnp.asarray(g), ALL, budget, 0.99)
  ref, tests = np_encode(g, 5, 0.99, max_splits=1 if splits == "S=1" else EMAX)
  np.testing.assert_array_equal(np.asarray(p.indices), ref)
  assert int(p.num_actions) == 5 and int(p.bits) == budget
  assert int(p.split_tests) == tests == (4 if splits == "S=1" else 3)  # 1-2-3-4-5 / 1-2-4-5


def test_multi_split_reaches_k_cap_in_fewer_rounds():
  g = jnp.asarray(np.random.default_rng(21).standard_normal((EN, ED)), jnp.float32)
  # tau > 1: every cluster fails the test, so K grows to the cap.
  for cap, rounds in [
      (EMAX, {"S=1": 7, "S=2": 4, "S=all": 3}),  # 1-2-4-8, 1-2-4-6-8
      (6, {"S=1": 5, "S=2": 3, "S=all": 3})
  ]:  # 1-2-4-6
    budget = q.payload_bits(cap, EN, ED)
    ps = {name: enc(g, ALL, budget, 2.0) for name, enc in SPLITS.items()}
    for name, p in ps.items():
      assert int(p.num_actions) == cap and int(p.bits) == budget, name
      assert int(p.split_tests) == rounds[name], (name, int(p.split_tests))
    assert int(ps["S=all"].lloyd_steps) < int(ps["S=1"].lloyd_steps)


def test_multi_split_reconstruction_error_close_to_single_split():
  for seed in (19, 21):
    g = directions(np.random.default_rng(seed), EN, ED, ndir=12, noise=0.2)
    for k in (4, 6, EMAX):
      budget = q.payload_bits(k, EN, ED)
      err = {}
      for name, enc in SPLITS.items():
        p = enc(jnp.asarray(g), ALL, budget, 2.0)
        assert int(p.num_actions) == k
        err[name] = np.linalg.norm(np.asarray(q.decode(p)) - g) / np.linalg.norm(g)
      assert err["S=all"] <= 1.1 * err["S=1"], (seed, k, err)
      assert err["S=2"] <= 1.1 * err["S=1"], (seed, k, err)


@jax.jit
@chex.assert_max_traces(n=1)
def enc_warm(g, budget, tau, c0, k0):
  return q.encode(g,
                  KEY,
                  budget_bits=budget,
                  max_k=EMAX,
                  tau=tau,
                  init_centroids=c0,
                  init_k=k0,
                  max_iters=50)


def test_warm_start():
  rng = np.random.default_rng(31)
  g = jnp.asarray(directions(rng, EN, ED, ndir=12, noise=0.3))
  budget = q.payload_bits(6, EN, ED)
  cold = enc_fixed(g, ALL, budget, 2.0)  # tau > 1: K grows to the budget's 6
  err = lambda p: float(jnp.linalg.norm(q.decode(p) - g) / jnp.linalg.norm(g))
  # init_k = 0 is the cold start, whatever the centroids.
  p0 = enc_warm(g, budget, 2.0, jnp.full((EMAX, ED), 7.0, jnp.float32), jnp.int32(0))
  np.testing.assert_array_equal(np.asarray(p0.indices), np.asarray(cold.indices))
  # From its own actions: no split test splits (the budget is spent), and Lloyd from
  # there never worsens the reconstruction.
  pw = enc_warm(g, budget, 2.0, cold.centroids, cold.num_actions)
  assert int(pw.num_actions) == 6 and int(pw.split_tests) == 0 and int(pw.bits) == budget
  assert err(pw) <= err(cold) * (1 + 1e-6)
  # More actions than the budget allows: only the first k_cap are used; fewer: the
  # split tests go on from there (same budget, same K).
  p4 = enc_warm(g, q.payload_bits(4, EN, ED), 2.0, cold.centroids, cold.num_actions)
  assert int(p4.num_actions) == 4 and int(p4.split_tests) == 0
  p2 = enc_warm(g, budget, 2.0, cold.centroids, jnp.int32(2))
  assert int(p2.num_actions) == 6 and int(p2.split_tests) >= 1
  # One action (given, or all the budget allows) is the mean of the rows, as cold: the
  # given action is not sent unrefined.
  budget1 = q.payload_bits(1, EN, ED)
  cold1 = enc_fixed(g, ALL, budget1, 2.0)
  stale = jnp.full((EMAX, ED), 7.0, jnp.float32)
  for k0 in (1, 5):
    p1 = enc_warm(g, budget1, 2.0, stale, jnp.int32(k0))
    assert int(p1.num_actions) == 1, k0
    np.testing.assert_allclose(p1.centroids[0], np.asarray(g, np.float64).mean(0), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(p1.centroids), np.asarray(cold1.centroids))
  # Warm centroids are in the units of g: scaling g and them alike changes nothing.
  ps = enc_warm(g * 2.0**-60, budget, 2.0, cold.centroids * 2.0**-60, cold.num_actions)
  np.testing.assert_array_equal(np.asarray(ps.indices), np.asarray(pw.indices))


def test_static_options_are_validated():
  g = jnp.zeros((4, 2), jnp.float32)
  for bad in (0, -1, 1.5):
    with pytest.raises(ValueError, match="max_splits"):
      q.encode(g, KEY, budget_bits=1000, max_k=2, max_splits=bad)
  # Was a bare KeyError from the dtype table.
  with pytest.raises(ValueError, match="half_dtype must be one of .*, got 'float8'"):
    q.encode(g, KEY, budget_bits=1000, max_k=2, value_bits=16, half_dtype="float8")
  for bad in (0, 8.0, True):
    with pytest.raises(ValueError, match="max_k must be an int >= 1"):
      q.encode(g, KEY, budget_bits=1000, max_k=bad)
  assert int(
      q.encode(g + 1, KEY, budget_bits=1000, max_k=np.int64(2),
               max_splits=np.int64(1)).num_actions) == 1
  # Integer, bool and complex arrays were cast silently; shapes failed deep inside.
  for bad in (jnp.arange(8).reshape(4, 2), g > 0, g.astype(jnp.complex64)):
    with pytest.raises(TypeError, match="real floating array, got dtype"):
      q.encode(bad, KEY, budget_bits=1000, max_k=2)
  for bad in (g[0], g[None], jnp.zeros((0, 2))):
    with pytest.raises(ValueError, match=r"non-empty \[n, d\] matrix"):
      q.encode(bad, KEY, budget_bits=1000, max_k=2)
  with pytest.raises(ValueError, match=r"init_centroids must be \[max_k, d\] = \[2, 2\]"):
    q.encode(g, KEY, budget_bits=1000, max_k=2, init_centroids=jnp.zeros((3, 2)), init_k=1)
  with pytest.raises(ValueError, match="init_k needs init_centroids"):
    q.encode(g, KEY, budget_bits=1000, max_k=2, init_k=3)
  # A [1] mask broadcast over every row (all sent or none); [n, 1] failed deep inside.
  for bad in (jnp.ones(1, bool), jnp.ones((4, 1), bool)):
    with pytest.raises(ValueError, match=r"mask must be \[n\] = \[4\], got shape"):
      q.encode(g, KEY, budget_bits=1000, max_k=2, mask=bad)
  # kmeans: max_k 0 was a math domain error; a [1] weights vector broadcast silently.
  for bad in (0, -1, 2.0):
    with pytest.raises(ValueError, match="max_k must be an int >= 1"):
      q.kmeans(g, KEY, max_k=bad)
  with pytest.raises(ValueError, match=r"weights must be \[n\] = \[4\], got shape \[1\]"):
    q.kmeans(g, KEY, max_k=2, weights=jnp.ones(1))
  # A nested list is an array like any other (jnp.shape of it failed under jit).
  listed = jax.jit(lambda c: q.encode(g + c[0][0],
                                      KEY,
                                      budget_bits=1000,
                                      max_k=2,
                                      init_centroids=[[c[0][0], c[0][1]], [c[1][0], c[1][1]]],
                                      init_k=1))(jnp.ones((2, 2)))
  assert int(listed.num_actions) == 1


def test_gradients_flow_around_encode_straight_through():
  # The shapes and options of the saturation test above: one compiled encoder.
  g = jax.random.normal(jax.random.PRNGKey(4), (16, 4))
  quantized = lambda x: q.decode(q.encode(x, KEY, budget_bits=400, max_k=4))
  # Straight through: d/dx sum(x + sg(Q(x) - x)) = 1 everywhere; the value is sum(Q(x)).
  ste = lambda x: jnp.sum(x + jax.lax.stop_gradient(quantized(x) - x))
  value, grad = jax.value_and_grad(ste)(g)
  np.testing.assert_allclose(value, float(jnp.sum(quantized(g))), rtol=1e-6)
  np.testing.assert_array_equal(grad, np.ones_like(g))
  # Through the quantizer itself there is no gradient (was an error from the loops).
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(quantized(x)))(g), 0.0)


# ----------------------------------------------------------------------------
# Optax adapter.
# ----------------------------------------------------------------------------
def test_optax_adapter_trains_and_passes_1d_leaves():
  rng = np.random.default_rng(17)
  n_items, dim, batch = 40, 8, 32
  true_emb = jnp.asarray(rng.standard_normal((n_items, dim)), jnp.float32)
  true_w = jnp.asarray(rng.standard_normal(dim), jnp.float32)
  params = {
      "emb": jnp.asarray(0.1 * rng.standard_normal((n_items, dim)), jnp.float32),
      "w": jnp.asarray(true_w + 0.5 * rng.standard_normal(dim), jnp.float32), "b": jnp.zeros(
          (), jnp.float32),
  }

  def loss_fn(p, idx):
    y = true_emb[idx] @ true_w + 1.0
    return jnp.mean((p["emb"][idx] @ p["w"] + p["b"] - y)**2)

  quant = q.actions_quantizer(payload_ratio=0.5, max_k=8, tau=0.9)
  tx = optax.chain(quant, optax.sgd(0.05))
  plain = optax.sgd(0.05)

  @jax.jit
  def step(p, s, idx):
    loss, g = jax.value_and_grad(loss_fn)(p, idx)
    u, s = tx.update(g, s, p)
    u_plain, _ = plain.update(g, plain.init(p), p)
    return optax.apply_updates(p, u), s, loss, u, u_plain, g

  state = tx.init(params)
  losses = []
  for t in range(40):
    idx = jnp.asarray(rng.integers(0, n_items, batch))
    params, state, loss, u, u_plain, g = step(params, state, idx)
    losses.append(float(loss))
    # 1-D / scalar leaves: exactly the plain-SGD update
    np.testing.assert_array_equal(np.asarray(u["w"]), np.asarray(u_plain["w"]))
    np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(u_plain["b"]))
    # untouched embedding rows stay exactly zero
    untouched = np.ones(n_items, bool)
    untouched[np.asarray(idx)] = False
    assert np.all(np.asarray(u["emb"])[untouched] == 0)
    assert 0 < int(state[0].bits) <= int(0.5 * n_items * dim * 32)
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
  assert not np.array_equal(np.asarray(state[0].key), np.asarray(tx.init(params)[0].key))
  assert int(state[0].num_nonfinite) == 0


def test_optax_adapter_counts_nonfinite_rows():
  # A NaN or inf row is sent as no update (zero); the state counts them over the selected
  # leaves (3 here: rows 1 and 5 of "a", row 0 of "b"; "c" is 1-D, passed through).
  rng = np.random.default_rng(5)
  a = rng.standard_normal((8, 4)).astype(np.float32)
  a[1, 2], a[5, 0] = np.nan, np.inf
  b = rng.standard_normal((6, 4)).astype(np.float32)
  b[0, :] = np.nan
  grads = {"a": jnp.asarray(a), "b": jnp.asarray(b), "c": jnp.full((3,), jnp.nan)}
  tx = q.actions_quantizer(budget_bits=10**6, max_k=4, tau=0.9)
  updates, state = jax.jit(tx.update)(grads, tx.init(grads))
  assert int(state.num_nonfinite) == 3
  for name, rows in (("a", [1, 5]), ("b", [0])):
    u = np.asarray(updates[name])
    assert np.all(u[rows] == 0) and np.all(np.isfinite(u)), name
  assert np.all(np.isnan(np.asarray(updates["c"])))


def test_optax_adapter_forwards_its_options(monkeypatch):
  from fedras_jax.quantize import optax_adapter

  seen = []

  def spy(u, key, **kw):  # reuse a compiled encoder instead of compiling encode again
    seen.append(kw)
    return enc_split1(u, ALL, kw["budget_bits"], kw["tau"])

  monkeypatch.setattr(optax_adapter, "encode", spy)
  g = {"emb": jnp.asarray(np.random.default_rng(23).standard_normal((EN, ED)), jnp.float32)}
  budget = q.payload_bits(EMAX, EN, ED)
  options = dict(max_k=EMAX, tau=2.0, tau_mode="fixed", value_bits=16, max_iters=7, max_splits=1)
  tx = q.actions_quantizer(budget, **options)
  u, s = tx.update(g, tx.init(g))
  # Every option reaches encode as given (the payload is the spy's, at value_bits 32).
  assert seen == [dict(budget_bits=budget, **options)]
  p = enc_split1(g["emb"], ALL, budget, 2.0)
  np.testing.assert_array_equal(np.asarray(u["emb"]), np.asarray(q.decode(p)))
  assert int(s.bits) == int(p.bits)


def test_optax_adapter_schedules_the_payload_ratio_under_inject_hyperparams():
  """The module docstring's recipe: a traced ratio gives the budget of the same Python
  ratio (floor(ratio * n * d * 32)); a ratio below one action's cost sends nothing. A
  threshold above any coherence (tau 1.5) splits every cluster up to the budget's K."""
  static = ("leaf_filter", "max_k", "tau_mode", "value_bits", "max_iters", "max_splits")
  tx = optax.inject_hyperparams(q.actions_quantizer, static_args=static)(payload_ratio=0.25,
                                                                         max_k=4,
                                                                         tau=1.5)
  g = {"emb": jax.random.normal(jax.random.PRNGKey(5), (16, 4)), "b": jnp.ones((4,))}
  update = jax.jit(tx.update)
  state = tx.init(g)
  # 512 bits: at most 3 actions (3*128 + 16*2 = 416 bits); 245 bits: 1 action (128 + 16).
  for ratio, budget, max_actions in ((0.25, 512, 3), (0.12, 245, 1)):
    state.hyperparams["payload_ratio"] = jnp.asarray(ratio)
    u, after = update(g, state)
    plain = q.actions_quantizer(payload_ratio=ratio, max_k=4, tau=1.5)
    u_plain, plain_state = plain.update(g, plain.init(g))
    bits = int(after.inner_state.bits)
    assert bits == int(plain_state.bits)
    np.testing.assert_array_equal(np.asarray(u["emb"]), np.asarray(u_plain["emb"]))
    k = len(np.unique(np.asarray(u["emb"]), axis=0))  # every row is sent: one row per action
    assert k == max_actions and bits == k * 4 * 32 + 16 * int(np.ceil(np.log2(k + 1)))
    assert bits <= budget
  state.hyperparams["payload_ratio"] = jnp.asarray(0.01)  # 20 bits < one action (128 + 16)
  u, after = update(g, state)
  assert int(after.inner_state.bits) == 0 and not np.any(np.asarray(u["emb"]))
