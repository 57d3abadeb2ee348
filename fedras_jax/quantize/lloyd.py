"""Weighted Lloyd K-Means with a static slot buffer and a traced cluster count.

Everything here is jittable and vmappable. The number of centroid *slots*
(``max_k``) is static; the number of *live* clusters ``k`` is a traced int, so
changing ``k`` never recompiles. Centroids live in a ``[max_k, d]`` buffer with
an ``active`` ``[max_k]`` mask; inactive slots have +inf distance and are never
chosen.

Shapes: ``x`` is ``[n, d]`` float32, ``weights`` ``[n]`` float32 (>= 0; a 0
weight means the row has exactly no influence on the fit), centroids
``[max_k, d]``.

Conventions
-----------
* E-step: exact ``argmin_j ||c_j||^2 - 2 x.c_j`` (the matmul form; the
  per-row ``||x||^2`` is dropped), ties -> lowest slot, on data centred at its
  weighted mean (less cancellation, as scikit-learn does). Scores are laid
  out ``[max_k, n]`` and reduced by a pairwise tree of elementwise passes
  (:func:`_argmin_rows`), faster on XLA:CPU than ``lax.argmin``. When
  ``n * max_k > 2**21`` the rows are blocked once (outside the Lloyd loop;
  blocks of 4096 rows) so the score block of one ``lax.map`` step stays in
  cache, the ``[max_k, n]`` matrix is never materialised and little is padded.
* Inertia and the re-seeding distances use the direct ``||x - c_a||^2``.
* ``tol`` is relative, as in scikit-learn: Lloyd stops when the total squared
  centroid shift is ``<= tol * mean_j Var_w[x[:, j]]`` (weighted variance over
  rows with positive weight), or when no assignment of a positively weighted
  row changes (strict convergence), or after ``max_iters`` M-steps.
* Empty live clusters are re-seeded at the points farthest from their
  centroids (j-th empty cluster -> j-th farthest positively weighted row).
* Rows that are not finite are treated as weight 0 and get assignment -1.
  Rows with weight 0 (but finite) are assigned to their nearest centroid but do
  not influence the fit, the stopping test or the re-seeding.
"""

import functools
import math
import numbers
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from fedras_jax.quantize.batching import batched_as, check_vmap_strategy

_BLOCK = 4096  # rows per distance block (large problems only)
_DIRECT_MAX = 1 << 21  # n * max_k up to this: one [max_k, n] score block (8 MiB)


class KMeansResult(NamedTuple):
  """Result of :func:`kmeans`.

  Attributes:
    centroids: ``[max_k, d]`` float32; inactive slots are zero.
    assignment: ``[n]`` int32 slot of each row (-1 for non-finite rows).
    active: ``[max_k]`` bool, True for the ``k`` live slots.
    inertia: ``[]`` float32, ``sum_i w_i ||x_i - c_{a_i}||^2``.
    iters: ``[]`` int32, number of Lloyd M-steps performed.
  """

  centroids: jax.Array
  assignment: jax.Array
  active: jax.Array
  inertia: jax.Array
  iters: jax.Array


class PreparedRows(NamedTuple):
  """Rows laid out once for repeated E-steps (see :func:`prepare_rows`).

  Attributes:
    x: ``[n, d]`` the rows.
    blocks: ``[n_pad / _BLOCK, _BLOCK, d]`` zero-padded row blocks, or None when
      the rows are scored in one piece.
  """

  x: jax.Array
  blocks: Optional[jax.Array]


def prepare_rows(x, max_k: int) -> PreparedRows:
  """Blocks the rows once (outside a Lloyd loop) when ``n * max_k`` is large."""
  n, d = x.shape
  if n * max_k <= _DIRECT_MAX or n <= _BLOCK:
    return PreparedRows(x, None)
  n_pad = -(-n // _BLOCK) * _BLOCK
  return PreparedRows(x, jnp.pad(x, ((0, n_pad - n), (0, 0))).reshape(-1, _BLOCK, d))


def _argmin_rows(scores):
  """``argmin`` over axis 0 of ``scores [k, n]`` (ties -> lowest index), ``[n]`` int32.

  A pairwise tree over adjacent slots (slot ``2j`` against ``2j + 1``, then the
  winners of ``4j..4j+1`` against ``4j+2..4j+3``, ...): every level is one
  elementwise pass that XLA:CPU vectorises, where ``lax.argmin`` lowers to a
  variadic reduction slower than the matmul that feeds it (docs/design/quantizer.md). The left operand
  of every comparison covers the lower slots, and it wins ties.
  """
  k = scores.shape[0]
  idx = lax.broadcasted_iota(jnp.int32, scores.shape, 0)
  while k > 1:
    if k % 2:  # pad with a slot that never wins
      scores = jnp.concatenate([scores, jnp.full_like(scores[:1], jnp.inf)])
      idx = jnp.concatenate([idx, jnp.full_like(idx[:1], k)])
      k += 1
    lo, hi = scores[0::2], scores[1::2]
    take = hi < lo
    scores = jnp.where(take, hi, lo)
    idx = jnp.where(take, idx[1::2], idx[0::2])
    k //= 2
  return idx[0]


def assign(prep: PreparedRows, centroids, active):
  """Exact nearest active centroid of every prepared row (ties -> lowest slot).

  Args:
    prep: :func:`prepare_rows` of ``x [n, d]``.
    centroids: ``[w, d]``; active: ``[w]`` bool (at least one True).

  Returns:
    ``[n]`` int32 slot of each row.
  """
  c = jnp.where(active[:, None], centroids, 0.0)
  # ||x||^2 is constant per row and dropped; +inf marks inactive slots.
  c_sq = jnp.where(active, jnp.sum(c * c, axis=1), jnp.inf)

  def block(xb):  # [b, d] -> [b]
    return _argmin_rows(c_sq[:, None] - 2.0 * jnp.dot(c, xb.T))

  if prep.blocks is None:
    return block(prep.x)
  n = prep.x.shape[0]
  return lax.map(block, prep.blocks).reshape(-1)[:n]


def nearest_centroid(x, centroids, active):
  """Nearest active centroid of every row (exact argmin, ties -> lowest slot).

  Args:
    x: ``[n, d]`` float32 (finite).
    centroids: ``[max_k, d]`` float32.
    active: ``[max_k]`` bool (at least one True).

  Returns:
    ``[n]`` int32 assignment.
  """
  return assign(prepare_rows(x, centroids.shape[0]), centroids, active)


def gather_rows(centroids, assignment):
  """``centroids[assignment]`` ``[n, d]``, exactly (``assignment`` in range).

  XLA:CPU gathers rows slowly; for few slots a one-hot matmul is several
  times faster and still exact (one product by 1.0, the rest by 0.0).
  """
  max_k = centroids.shape[0]
  if max_k <= 64:
    return jnp.dot(jax.nn.one_hot(assignment, max_k, dtype=centroids.dtype),
                   centroids,
                   precision=lax.Precision.HIGHEST)
  return centroids[assignment]


def _row_sq_dist(x, centroids, assignment):
  """``||x_i - c_{a_i}||^2`` (direct form, no cancellation). ``[n]``."""
  return jnp.sum((x - gather_rows(centroids, assignment))**2, axis=1)


def _sanitize(x, weights):
  x = jnp.asarray(x, jnp.float32)
  n = x.shape[0]
  finite = jnp.all(jnp.isfinite(x), axis=1)
  w = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  w = jnp.where(finite & (w > 0), w, 0.0)
  x = jnp.where(finite[:, None], x, 0.0)
  return x, w, finite


def update_centroids(x, w, wx, centroids, active, assignment, max_k):
  """The M-step: weighted means, and farthest-point re-seeding of empty live clusters.

  Args:
    x: ``[n, d]`` rows; w: ``[n]`` weights; wx: ``w[:, None] * x``;
    centroids: ``[max_k, d]`` the centroids ``assignment`` was computed with;
    active: ``[max_k]`` bool; assignment: ``[n]`` int32 in ``[0, max_k)``;
    max_k: static slot count.

  Returns:
    ``[max_k, d]`` new centroids (inactive slots zero).
  """
  n = x.shape[0]
  sums = jax.ops.segment_sum(wx, assignment, num_segments=max_k)
  cnt = jax.ops.segment_sum(w, assignment, num_segments=max_k)
  new = jnp.where((cnt > 0)[:, None], sums / jnp.maximum(cnt, 1e-30)[:, None], centroids)
  empty = active & (cnt <= 0)

  def reseed(new):
    kk = min(max_k, n)
    score = jnp.where(w > 0, _row_sq_dist(x, centroids, assignment), -jnp.inf)
    vals, idx = lax.top_k(score, kk)
    rank = jnp.cumsum(empty.astype(jnp.int32)) - 1
    rank_c = jnp.clip(rank, 0, kk - 1)
    ok = empty & (rank < kk) & (vals[rank_c] > 0)
    return jnp.where(ok[:, None], x[idx[rank_c]], new)

  new = lax.cond(jnp.any(empty), reseed, lambda v: v, new)
  return jnp.where(active[:, None], new, 0.0)


def lloyd_step(x, centroids, active, weights=None):
  """One Lloyd iteration (E-step then M-step), exposed for tests/inspection.

  Args:
    x: ``[n, d]``; centroids: ``[max_k, d]``; active: ``[max_k]`` bool;
    weights: optional ``[n]``.

  Returns:
    ``(new_centroids [max_k, d], assignment [n] int32, inertia)`` where
    ``assignment``/``inertia`` are those of the *input* centroids.
  """
  x, w, _ = _sanitize(x, weights)
  max_k = centroids.shape[0]
  c = jnp.where(active[:, None], jnp.asarray(centroids, jnp.float32), 0.0)
  a = nearest_centroid(x, c, active)
  inertia = jnp.sum(w * _row_sq_dist(x, c, a))
  new = update_centroids(x, w, w[:, None] * x, c, active, a, max_k)
  return new, a, inertia


def _sample_index(key, mass, num):
  """``num`` indices drawn with probability proportional to ``mass`` [n]."""
  cdf = jnp.cumsum(mass)
  r = jax.random.uniform(key, (num,), jnp.float32) * cdf[-1]
  idx = jnp.searchsorted(cdf, r, side="right")
  return jnp.clip(idx, 0, mass.shape[0] - 1).astype(jnp.int32)


def count_arg(name: str, value) -> int:
  """``value`` as a Python int >= 1 (a NumPy integer too); a ValueError naming ``name``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  return int(value)


@functools.partial(jax.jit, static_argnames=("max_k",))
def kmeans_plusplus(x, key, *, max_k: int, k=None, weights=None):
  """Greedy k-means++ seeding (scikit-learn's variant) into a slot buffer.

  The first centre is drawn proportionally to the weights; each further one
  is the best (lowest resulting potential) of ``2 + floor(ln k)`` candidates
  drawn proportionally to ``w * D^2``. ``k`` is traced: slots ``>= k`` are
  left inactive (zero), and the number of local trials follows the traced
  ``k`` (candidates beyond it are masked out of a static buffer of
  ``2 + floor(ln max_k)``). If all remaining mass is zero (fewer distinct
  points than ``k``), candidates are drawn proportionally to the weights.

  Args:
    x: ``[n, d]``; key: PRNG key; max_k: static slot count; k: traced int in
      ``[1, max_k]`` (default ``max_k``); weights: optional ``[n]``.

  Returns:
    ``(centroids [max_k, d], active [max_k] bool)``.
  """
  x, w, _ = _sanitize(x, weights)
  n, d = x.shape
  k = jnp.clip(jnp.asarray(max_k if k is None else k, jnp.int32), 1, max_k)
  t_max = 2 + int(math.log(max_k))
  n_trials = 2 + jnp.floor(jnp.log(k.astype(jnp.float32))).astype(jnp.int32)
  x_sq = jnp.sum(x * x, axis=1)

  def sq_to(rows):  # rows [t, d] -> [t, n]
    r_sq = jnp.sum(rows * rows, axis=1)
    return jnp.maximum(r_sq[:, None] + x_sq[None, :] - 2.0 * rows @ x.T, 0.0)

  key, sub = jax.random.split(key)
  first = _sample_index(sub, w, 1)[0]
  cents = jnp.zeros((max_k, d), jnp.float32).at[0].set(x[first])
  closest = sq_to(x[first][None])[0]

  def body(c, carry):
    cents, closest, key = carry
    key, sub = jax.random.split(key)
    mass = w * closest
    mass = jnp.where(jnp.sum(mass) > 0, mass, w)
    cand = _sample_index(sub, mass, t_max)
    new_closest = jnp.minimum(closest[None, :], sq_to(x[cand]))  # [t, n]
    pot = new_closest @ w
    pot = jnp.where(jnp.arange(t_max) < n_trials, pot, jnp.inf)
    best = jnp.argmin(pot)
    live = c < k
    cents = cents.at[c].set(jnp.where(live, x[cand[best]], 0.0))
    closest = jnp.where(live, new_closest[best], closest)
    return cents, closest, key

  cents, _, _ = lax.fori_loop(1, max_k, body, (cents, closest, key))
  active = jnp.arange(max_k) < k
  return cents, active


@functools.partial(jax.jit, static_argnames=("max_k", "max_iters", "vmap_strategy"))
def kmeans(x,
           key,
           *,
           max_k: int,
           k=None,
           weights=None,
           init_centroids=None,
           max_iters: int = 50,
           tol=1e-4,
           vmap_strategy: str = "auto",
          ) -> KMeansResult:
  """Weighted Lloyd K-Means with ``k`` (traced) live clusters out of ``max_k``.

  Args:
    x: ``[n, d]`` float32 data.
    key: PRNG key (used only by k-means++ seeding; may be None with
      ``init_centroids``).
    max_k: static number of centroid slots.
    k: traced int in ``[1, max_k]`` (clipped), number of live clusters;
      default ``max_k``.
    weights: optional ``[n]`` float32 >= 0; 0 = the row has no influence (with
      every weight 0 there is nothing to fit: the centroids are the seeding's
      or ``init_centroids``, and the inertia is 0).
    init_centroids: optional ``[max_k, d]``; slots ``< k`` are used as the
      initial centroids (k-means++ is bypassed).
    max_iters: static bound on the number of Lloyd M-steps.
    tol: traced relative tolerance on the total squared centroid shift
      (scaled by the mean per-feature weighted variance, as in scikit-learn).
    vmap_strategy: static; what ``jax.vmap(kmeans)`` compiles to, as for
      ``encode``: ``"sequential"`` (a ``lax.map`` over the batch: each problem
      stops at its own convergence), ``"parallel"`` (lock-step batching), or
      ``"auto"`` (sequential on CPU, parallel elsewhere). Centroids agree to float32
      rounding (batched reductions may sum in another order), so assignments and
      iteration counts agree but for near ties (identical in the tests).

  Returns:
    :class:`KMeansResult`.
  """
  check_vmap_strategy(vmap_strategy)
  count_arg("max_k", max_k)
  x = jnp.asarray(x, jnp.float32)
  n, d = x.shape
  weights = None if weights is None else jnp.asarray(weights, jnp.float32)
  if weights is not None and weights.shape != (n,):
    raise ValueError(f"weights must be [n] = [{n}], got shape {list(weights.shape)}")
  if key is None:
    if init_centroids is None:
      raise ValueError("kmeans needs a key for k-means++ seeding (or init_centroids)")
    key = jax.random.key(0)  # unused
  elif not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(jnp.asarray(key))  # a raw uint32 key
  args = (x, key, jnp.asarray(max_k if k is None else k, jnp.int32), jnp.ones(
      (n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32),
          jnp.zeros((max_k, d), jnp.float32) if init_centroids is None else jnp.asarray(
              init_centroids, jnp.float32), jnp.asarray(tol, jnp.float32))
  return batched_as(_kmeans_impl,
                    vmap_strategy,
                    max_k=max_k,
                    max_iters=max_iters,
                    unit_weights=weights is None,
                    seeded=init_centroids is None)(*args)


def _kmeans_impl(x, key, k, weights, init_centroids, tol, *, max_k, max_iters, unit_weights,
                 seeded):
  """:func:`kmeans` on array arguments (``unit_weights``: ``weights`` is all ones and
  only finiteness weighs; ``seeded``: k-means++ from ``key``, else ``init_centroids``)."""
  # Few [n, d] temporaries (each costs a pass and fresh pages): masks and
  # moments are reductions; only the centred copy is materialised.
  n, d = x.shape
  finite = jnp.all(jnp.isfinite(x), axis=1)
  if unit_weights:
    w = finite.astype(jnp.float32)
  else:
    w = jnp.where(finite & (weights > 0), weights, 0.0)
  k = jnp.clip(k, 1, max_k)
  active = jnp.arange(max_k) < k
  # Work on data centred at the weighted mean (as scikit-learn does): the
  # matmul-form distances lose less precision; results are shifted back.
  wsum = jnp.maximum(jnp.sum(w), 1e-30)
  mean = jnp.sum(jnp.where(w[:, None] > 0, x, 0.0) * w[:, None], axis=0) / wsum
  x = jnp.where(finite[:, None], x - mean, 0.0)
  if seeded:
    c0, _ = kmeans_plusplus(x, key, max_k=max_k, k=k, weights=w)
  else:
    c0 = init_centroids - mean
  c0 = jnp.where(active[:, None], c0, 0.0)

  prep = prepare_rows(x, max_k)
  # Unit weights: non-finite rows are already zero in x, so x is w * x.
  wx = x if unit_weights else w[:, None] * x
  pos = w > 0
  var = jnp.sum(w[:, None] * x**2, axis=0) / wsum
  tol_abs = jnp.asarray(tol, jnp.float32) * jnp.mean(var)

  def cond(s):
    _, _, it, done = s
    return (~done) & (it < max_iters)

  def body(s):
    c, prev, it, _ = s
    a = assign(prep, c, active)
    strict = (it > 0) & ~jnp.any((a != prev) & pos)
    c_new = update_centroids(x, w, wx, c, active, a, max_k)
    shift = jnp.sum((c_new - c)**2)
    c_out = jnp.where(strict, c, c_new)
    done = strict | (shift <= tol_abs)
    return c_out, a, it + 1, done

  init = (c0, jnp.full((n,), -1, jnp.int32), jnp.int32(0), jnp.bool_(False))
  c, _, iters, _ = lax.while_loop(cond, body, init)
  a = assign(prep, c, active)
  inertia = jnp.sum(w * _row_sq_dist(x, c, a))
  a = jnp.where(finite, a, -1)
  c = jnp.where(active[:, None], c + mean, 0.0)
  return KMeansResult(c, a, active, inertia, iters)
