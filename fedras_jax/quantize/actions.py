"""Gradients as actions: adaptive-K encode/decode of a gradient matrix.

A client's gradient matrix ``G`` ``[n, d]`` is sent as ``K`` action vectors
(centroids ``[K, d]``) plus one index per row. ``K`` grows from 1 by splitting
clusters whose members are not directionally coherent (cosine split test),
and never beyond what the bit budget allows.

Algorithm of :func:`encode` (all jittable, vmappable; static ``max_k``):

1. *Live rows*: ``mask & all(isfinite(row)) & any(row != 0)``. Masked,
   non-finite and all-zero rows get the reserved code :data:`NO_UPDATE`
   (-1) and decode to exactly 0 (all-zero rows therefore round-trip
   exactly). Non-finite rows that were not masked are counted in
   ``payload.num_nonfinite``.
2. The live rows are scaled by an exact power of two so the largest magnitude
   is in [0.5, 1) (K-Means is scale-equivariant; this only prevents f32
   under/overflow of squared distances for tiny or huge gradients).
3. Budget: ``k_cap = min(max_actions_for_budget(budget_bits, R, d), #live)``
   with ``R = num_index_rows`` (default ``n``).
4. Start with one action, the mean of the live rows. Per-cluster coherence is
   the mean cosine similarity between members and their centroid.
5. While ``K < k_cap`` and some cluster with >= 2 members has coherence
   ``< tau`` (the *split test*): split the ``s = min(S, k_cap - K, #such
   clusters)`` least coherent of them (``S = max_splits``, see below) and
   refine all ``K + s`` centroids with weighted Lloyd (same steps and
   stopping rule as :func:`~fedras_jax.quantize.lloyd.kmeans`, at most
   ``max_iters`` per refinement). A split bisects the cluster along the
   principal direction of its members' unit vectors (power iteration started
   from the member least aligned with the centroid); the two halves' means
   become the two new centroids. (Seeding the new centroid *at* the least
   aligned member, the simpler rule, mostly produces singleton clusters in
   high dimension.) Clusters are disjoint, so the ``s`` bisections of one
   test are independent and run as one batched pass over the rows.
6. Compact: non-empty live clusters move to slots ``0..K-1`` (``active`` is
   a prefix); indices are remapped; ``bits = payload_bits(K, R, d)``.
   With ``value_bits=16`` the centroids are rounded (after clipping to the
   format's finite range) to bfloat16 / float16.

Steps 4-5 run as one flat ``lax.while_loop`` whose every step is either one
Lloyd step or one split test, so batched clients do not wait for each
other's inner loops.

Splits per test (``max_splits``, static): ``S = 1`` is the classic one
split per test: every new action is followed by a full Lloyd refinement, so
reaching ``K`` actions costs ``K - 1`` refinements. ``S = None`` (the
default) splits every incoherent cluster at once, up to the budget's
``k_cap``: ``K`` at most doubles per test, so about ``log2(K) + 1``
refinements. Measured on CPU at ``[10^4, 64]`` (50 noisy directions, budget
``K = 45``, ``max_k = 48``): 44 -> 6 refinements, 485 -> 111 Lloyd steps,
1.5 s -> 0.33 s per call (4-5x over noise levels), relative reconstruction
error within 0.5% of ``S = 1`` (either sign). The trade-offs: a cluster is
split before the refinement has had the chance to make it coherent, so when
the budget does *not* bind, ``S > 1`` can end with a few more (still
coherent) actions, i.e. more bits, than ``S = 1`` (not seen at that size
with 20-30 directions and a budget for 48); when the budget binds, the last
test spends the remaining actions on the least coherent clusters of that
test rather than re-ranking after each split; and the batched bisection of all chosen
clusters (segment sums over the rows) costs a few Lloyd steps, which under
``vmap_strategy="parallel"`` (``lax.cond`` becomes a select) is paid on
every loop step, not only at split tests (still a net win in the CPU
measurements: 4 x ``[2500, 64]``, ``K = 20``, 3.3 s -> 2.3 s). ``S = 1``
reproduces the one-split-per-test results exactly.

``tau_mode="auto"`` replaces ``tau`` by ``cos(theta_1 / 2) =
sqrt((1 + c_1) / 2)``, where ``c_1`` is the coherence of the single-action
start (``theta_1 = arccos c_1`` is the mean angle between a row and the
client's mean gradient): every action must be at least twice as tight in
angle as one global action. See DESIGN_NOTES.md.

The procedure is deterministic given the data; ``key`` is accepted for API
stability (and vmapped per client) but currently unused.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fedras_jax.quantize.bits import max_actions_for_budget, payload_bits
from fedras_jax.quantize.lloyd import _m_step, _nearest_prepared, _prepare

__all__ = [
    "NO_UPDATE",
    "ActionPayload",
    "encode",
    "decode",
    "cluster_coherence",
    "auto_tau",
]

NO_UPDATE = -1
"""Reserved index: the row carries no update and decodes to exactly zero."""


class ActionPayload(NamedTuple):
    """What a client uploads (all shapes static for a given ``n, d, max_k``).

    Attributes:
      centroids: ``[max_k, d]`` float32 action vectors; slots ``>= num_actions``
        are zero. With ``value_bits=16`` the values are exactly representable
        in the 16-bit format.
      indices: ``[n]`` int32 action of each row, or :data:`NO_UPDATE` (-1).
      active: ``[max_k]`` bool, ``arange(max_k) < num_actions``.
      num_actions: ``[]`` int32 K.
      bits: ``[]`` int32 exact payload size, ``payload_bits(K, R, d, value_bits)``.
      coherence: ``[max_k]`` float32 mean member/centroid cosine of each action
        (0 for inactive slots). Extra field (diagnostics).
      tau: ``[]`` float32 threshold actually used (the auto value in auto mode).
        Extra field.
      num_nonfinite: ``[]`` int32 number of unmasked rows dropped because they
        contained NaN/inf. Extra field.
      num_rounds: ``[]`` int32 number of split tests that split (each is
        followed by one Lloyd refinement). Extra field (diagnostics).
      lloyd_steps: ``[]`` int32 total Lloyd (E+M) steps over all
        refinements. Extra field (diagnostics).
    """

    centroids: jax.Array
    indices: jax.Array
    active: jax.Array
    num_actions: jax.Array
    bits: jax.Array
    coherence: jax.Array
    tau: jax.Array
    num_nonfinite: jax.Array
    num_rounds: jax.Array
    lloyd_steps: jax.Array


def _unit_rows(v):
    """Rows scaled to unit norm (zero rows stay zero); safe for tiny magnitudes."""
    s = jnp.max(jnp.abs(v), axis=-1, keepdims=True)
    v = v / jnp.where(s > 0, s, 1.0)
    nrm = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True))
    return v / jnp.where(nrm > 0, nrm, 1.0)


def cluster_coherence(x, centroids, assignment, weights):
    """Mean cosine similarity between members and their centroid.

    Args:
      x: ``[n, d]``; centroids: ``[max_k, d]``; assignment: ``[n]`` int32
        (negative = no cluster); weights: ``[n]`` (0 = not a member).

    Returns:
      ``(coherence [max_k], member_weight [max_k], row_cos [n])``. Empty
      clusters have coherence 1 (vacuously coherent); zero rows/centroids have
      cosine 0.
    """
    return _coherence_unit(_unit_rows(x), centroids, assignment, weights)


def _coherence_unit(xu, centroids, assignment, weights):
    """:func:`cluster_coherence` with precomputed unit rows ``xu`` [n, d]."""
    max_k = centroids.shape[0]
    a = jnp.clip(assignment, 0, max_k - 1)
    w = jnp.where(assignment >= 0, weights, 0.0)
    cos = jnp.sum(xu * _unit_rows(centroids)[a], axis=1)
    s = jax.ops.segment_sum(w * cos, a, num_segments=max_k)
    cnt = jax.ops.segment_sum(w, a, num_segments=max_k)
    coh = jnp.where(cnt > 0, s / jnp.maximum(cnt, 1e-30), 1.0)
    return coh, cnt, cos


def auto_tau(single_action_coherence):
    """Auto threshold ``sqrt((1 + c1) / 2) = cos(arccos(c1) / 2)``."""
    c1 = jnp.clip(jnp.asarray(single_action_coherence, jnp.float32), -1.0, 1.0)
    return jnp.sqrt((1.0 + c1) / 2.0)


_POWER_ITERS = 8  # power-iteration steps of the split direction
_HALF = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}


_VMAP_STRATEGIES = ("auto", "sequential", "parallel")


@functools.partial(
    jax.jit,
    static_argnames=("max_k", "tau_mode", "value_bits", "max_iters", "half_dtype", "vmap_strategy",
                     "max_splits"),
)
def encode(
    grads,
    key,
    *,
    budget_bits,
    max_k: int,
    tau=0.7,
    tau_mode: str = "fixed",
    mask=None,
    num_index_rows=None,
    value_bits: int = 32,
    max_iters: int = 25,
    tol=1e-4,
    half_dtype: str = "bfloat16",
    vmap_strategy: str = "auto",
    max_splits: int | None = None,
) -> ActionPayload:
    """Compress ``grads`` ``[n, d]`` into at most ``max_k`` actions within a bit budget.

    Args:
      grads: ``[n, d]`` gradient matrix (cast to float32).
      key: PRNG key (accepted for API stability; the algorithm is deterministic).
      budget_bits: traced int, upper bound on ``payload.bits``.
      max_k: static number of action slots.
      tau: traced float, fixed cosine threshold (``tau_mode="fixed"``).
      tau_mode: ``"fixed"`` or ``"auto"`` (static; auto ignores ``tau``).
      mask: optional ``[n]`` bool; False = the row has no update.
      num_index_rows: traced/int R, rows counted as carrying an index in the
        bit accounting (default ``n``).
      value_bits: static, 32 or 16 (16: centroids rounded to ``half_dtype``).
      max_iters: static Lloyd iteration bound per refinement.
      tol: traced relative Lloyd tolerance (see :func:`kmeans`).
      half_dtype: static, ``"bfloat16"`` (default; f32 exponent range) or
        ``"float16"`` (more mantissa; tiny values flush to 0, values beyond
        65504 are clipped).
      vmap_strategy: static; what ``jax.vmap(encode)`` compiles to.
        ``"parallel"``: ordinary batching (all clients in lock-step through
        the while loop: every step costs the split test *and* a Lloyd step for
        everyone, and the loop runs until the slowest client is done).
        ``"sequential"``: a ``lax.map`` over the batch inside the same
        program (each client exits its loop early). ``"auto"`` (default):
        sequential when the default backend is CPU (2-3x faster there, see
        DESIGN_NOTES.md), parallel otherwise. Results are identical. Note:
        the batching rule is a ``jax.custom_batching`` rule, so ``encode`` is
        not reverse-mode differentiable (it is piecewise constant anyway).
      max_splits: static; at most this many clusters are split per split test
        (the least coherent ones below ``tau``, never beyond the budget's
        ``k_cap``). ``None`` (default): no limit, every incoherent cluster is
        split at once (~``log2(K)`` Lloyd refinements instead of ``K - 1``).
        ``1``: one split per test (slowest for large K; exactly the results
        of the one-split-per-test encoder). See the module docstring for the
        trade-off.

    Returns:
      :class:`ActionPayload`.
    """
    if tau_mode not in ("fixed", "auto"):
        raise ValueError(f"tau_mode must be 'fixed' or 'auto', got {tau_mode!r}")
    if value_bits not in (16, 32):
        raise ValueError(f"value_bits must be 16 or 32, got {value_bits}")
    if vmap_strategy not in _VMAP_STRATEGIES:
        raise ValueError(f"vmap_strategy must be one of {_VMAP_STRATEGIES}, got {vmap_strategy!r}")
    if max_splits is not None and (not isinstance(max_splits, int) or max_splits < 1):
        raise ValueError(f"max_splits must be None or an int >= 1, got {max_splits!r}")
    # More than max_k - 1 splits per test are impossible: normalise (one compile).
    max_splits = max(1, max_k - 1) if max_splits is None else min(max_splits, max(1, max_k - 1))
    del key
    x = jnp.asarray(grads, jnp.float32)
    n = x.shape[0]
    m = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
    r_rows = jnp.asarray(n if num_index_rows is None else num_index_rows, jnp.int32)
    args = (
        x,
        m,
        jnp.asarray(budget_bits, jnp.int32),
        jnp.asarray(tau, jnp.float32),
        r_rows,
        jnp.asarray(tol, jnp.float32),
    )
    static = dict(max_k=max_k, tau_mode=tau_mode, value_bits=value_bits,
                  max_iters=max_iters, half_dtype=half_dtype, max_splits=max_splits)
    if vmap_strategy == "auto":
        vmap_strategy = "sequential" if jax.default_backend() == "cpu" else "parallel"
    if vmap_strategy == "parallel":
        return _encode_impl(*args, **static)
    return _sequential_core(**static)(*args)


@functools.lru_cache(maxsize=None)
def _sequential_core(**static):
    """``_encode_impl`` with a batching rule that loops (``lax.map``) over the batch."""
    return jax.custom_batching.sequential_vmap(functools.partial(_encode_impl, **static))


def _encode_impl(x, m, budget_bits, tau, r_rows, tol, *, max_k, tau_mode, value_bits,
                 max_iters, half_dtype, max_splits):
    """Single-client encoder on sanitized arguments (see :func:`encode`)."""
    n, d = x.shape
    finite = jnp.all(jnp.isfinite(x), axis=1)
    x0 = jnp.where(finite[:, None], x, 0.0)
    live = m & finite & jnp.any(x0 != 0, axis=1)
    num_nonfinite = jnp.sum(m & ~finite).astype(jnp.int32)
    w = live.astype(jnp.float32)
    n_live = jnp.sum(live).astype(jnp.int32)

    # Exact power-of-two rescaling (largest |value| in [0.5, 1)).
    amax = jnp.max(jnp.where(live[:, None], jnp.abs(x0), 0.0))
    _, expo = jnp.frexp(jnp.where(amax > 0, amax, 1.0))
    xs = jnp.where(live[:, None], jnp.ldexp(x0, -expo), 0.0)

    k_budget = max_actions_for_budget(budget_bits, r_rows, d, max_k=max_k, value_bits=value_bits)
    k_cap = jnp.minimum(k_budget, n_live)

    # One action: the mean of the live rows (the exact Lloyd fixed point for K=1).
    mean = jnp.sum(xs * w[:, None], axis=0) / jnp.maximum(n_live, 1).astype(jnp.float32)
    c = jnp.zeros((max_k, d), jnp.float32).at[0].set(mean)
    a = jnp.where(live, 0, -1).astype(jnp.int32)
    xu = _unit_rows(xs)
    coh, cnt, cos = _coherence_unit(xu, c, a, w)
    if tau_mode == "auto":
        tau_eff = auto_tau(coh[0])
    else:
        tau_eff = tau
    slots = jnp.arange(max_k)
    xc = jnp.where(live[:, None], xs - mean, 0.0)  # centred copy for distances
    prep = _prepare(xc, max_k)
    wx = w[:, None] * xs
    wsum = jnp.maximum(jnp.sum(w), 1e-30)
    var = jnp.sum(w[:, None] * xc**2, axis=0) / wsum
    tol_abs = tol * jnp.mean(var)

    def _bisect(c, a, cos, j, k):
        """Split cluster j along the principal direction of its unit rows.

        The power iteration starts from the deviation of the member least
        aligned with the centroid (deterministic). The two halves' means
        replace slot j and fill slot k. Falls back to seeding slot k at the
        least aligned member if one half is empty.
        """
        mem = live & (a == j)
        mw = mem.astype(jnp.float32)
        cnt_j = jnp.maximum(jnp.sum(mw), 1.0)
        ubar = jnp.sum(xu * mw[:, None], axis=0) / cnt_j
        dev = (xu - ubar) * mw[:, None]
        seed = jnp.argmin(jnp.where(mem, cos, jnp.inf))

        def power(_, v):
            v = dev.T @ (dev @ v)
            return v / jnp.maximum(jnp.sqrt(jnp.sum(v * v)), 1e-30)

        v = lax.fori_loop(0, _POWER_ITERS, power, dev[seed])
        side = mem & (dev @ v > 0)
        other = mem & ~side
        n_pos, n_neg = jnp.sum(side), jnp.sum(other)
        m_pos = jnp.sum(xs * side[:, None], axis=0) / jnp.maximum(n_pos, 1)
        m_neg = jnp.sum(xs * other[:, None], axis=0) / jnp.maximum(n_neg, 1)
        ok = (n_pos > 0) & (n_neg > 0)
        return jnp.where(ok, c.at[j].set(m_neg).at[k].set(m_pos), c.at[k].set(xs[seed]))

    rows = jnp.arange(n, dtype=jnp.int32)

    def _bisect_many(c, a, cos, sel, new_slot):
        """:func:`_bisect` of every cluster ``j`` with ``sel[j]`` at once.

        The second half of cluster ``j`` fills slot ``new_slot[j]`` (distinct
        free slots). Clusters are disjoint, so this equals ``_bisect`` applied
        one cluster after the other (up to float summation order): per-cluster
        sums are segment sums over the rows, per-row quantities gather their
        cluster's vector.
        """
        a_c = jnp.clip(a, 0, max_k - 1)
        mem = live & (a >= 0) & sel[a_c]
        mw = mem.astype(jnp.float32)
        cnt_j = jnp.maximum(jax.ops.segment_sum(mw, a_c, num_segments=max_k), 1.0)
        ubar = jax.ops.segment_sum(xu * mw[:, None], a_c, num_segments=max_k) / cnt_j[:, None]
        dev = (xu - ubar[a_c]) * mw[:, None]
        # Seed of cluster j: its first member with the smallest cosine (= argmin).
        min_cos = jax.ops.segment_min(jnp.where(mem, cos, jnp.inf), a_c, num_segments=max_k)
        is_min = mem & (cos == min_cos[a_c])
        seed = jax.ops.segment_min(jnp.where(is_min, rows, n), a_c, num_segments=max_k)
        seed = jnp.clip(seed, 0, n - 1)

        def power(_, v):
            t = jnp.sum(dev * v[a_c], axis=1)
            v = jax.ops.segment_sum(dev * t[:, None], a_c, num_segments=max_k)
            return v / jnp.maximum(jnp.sqrt(jnp.sum(v * v, axis=1, keepdims=True)), 1e-30)

        v = lax.fori_loop(0, _POWER_ITERS, power, dev[seed])
        side = mem & (jnp.sum(dev * v[a_c], axis=1) > 0)
        other = mem & ~side
        sums = jax.ops.segment_sum(
            jnp.concatenate([xs * side[:, None], xs * other[:, None],
                             side[:, None].astype(jnp.float32),
                             other[:, None].astype(jnp.float32)], axis=1),
            a_c, num_segments=max_k)
        n_pos, n_neg = sums[:, 2 * d], sums[:, 2 * d + 1]
        m_pos = sums[:, :d] / jnp.maximum(n_pos, 1.0)[:, None]
        m_neg = sums[:, d:2 * d] / jnp.maximum(n_neg, 1.0)[:, None]
        ok = ((n_pos > 0) & (n_neg > 0))[:, None]
        first = jnp.where(sel[:, None] & ok, m_neg, c)
        second = jnp.where(ok, m_pos, xs[seed])
        return first.at[jnp.where(sel, new_slot, max_k)].set(second, mode="drop")

    # One flat loop; every step is either one Lloyd step (E+M) of the current
    # refinement or, once it has converged, the split test (+ a split). Under
    # vmap, clients thus only wait for the client with the most *total* steps,
    # not for the slowest refinement of every split round.
    def step(s):
        c, prev, k, it, shift, _, coh, cnt, rounds, steps = s
        active = slots < k
        a = _nearest_prepared(prep, c - mean, active)
        a = jnp.where(live, a, -1)
        strict = (it > 0) & ~jnp.any((a != prev) & live)
        converged = (it == 0) & (k == 1) | strict | (it > 0) & (shift <= tol_abs) | (it >= max_iters)

        def refine(_):  # one more Lloyd M-step
            c_m = _m_step(xs, w, wx, c, active, jnp.clip(a, 0), max_k)
            return (c_m, k, it + 1, jnp.sum((c_m - c) ** 2), jnp.bool_(False), coh, cnt,
                    rounds, steps + 1)

        def split_test(_):  # refinement converged: test (c, a), maybe split
            coh_, cnt_, cos = _coherence_unit(xu, c, a, w)
            cand = (slots < k) & (cnt_ >= 1.5) & (coh_ < tau_eff)
            split = (k < k_cap) & jnp.any(cand)
            if max_splits == 1:  # the one-split-per-test path, kept bit-exact
                worst = jnp.argmin(jnp.where(cand, coh_, jnp.inf))
                c_s = jnp.where(split, _bisect(c, a, cos, worst, k), c)
                num = split.astype(jnp.int32)
            else:
                # The num least coherent candidates (stable ranking: ties -> lowest slot).
                num = jnp.minimum(jnp.minimum(jnp.sum(cand, dtype=jnp.int32), k_cap - k),
                                  max_splits)
                num = jnp.where(split, num, 0)
                order = jnp.argsort(jnp.where(cand, coh_, jnp.inf), stable=True)
                rank = jnp.zeros((max_k,), jnp.int32).at[order].set(slots.astype(jnp.int32))
                sel = cand & (rank < num)
                c_s = jnp.where(split, _bisect_many(c, a, cos, sel, k + rank), c)
            return (c_s, k + num, jnp.int32(0), jnp.float32(jnp.inf), ~split, coh_, cnt_,
                    rounds + split.astype(jnp.int32), steps)

        c, k, it, shift, done, coh, cnt, rounds, steps = lax.cond(
            converged, split_test, refine, None)
        return c, a, k, it, shift, done, coh, cnt, rounds, steps

    init = (c, a, jnp.int32(1), jnp.int32(0), jnp.float32(jnp.inf), jnp.bool_(False), coh, cnt,
            jnp.int32(0), jnp.int32(0))
    # On exit c is unchanged by the last (converged, no split) step, so
    # (c, a, coh, cnt) are consistent.
    c, a, k, _, _, _, coh, cnt, rounds, steps = lax.while_loop(lambda s: ~s[5], step, init)
    # Compact non-empty live clusters into a prefix of the slots.
    keep = (slots < k) & (cnt > 0) & (k_cap > 0)
    new_pos = jnp.cumsum(keep.astype(jnp.int32)) - 1
    dest = jnp.where(keep, new_pos, max_k)  # max_k = dropped
    num_actions = jnp.sum(keep).astype(jnp.int32)
    cents = jnp.zeros((max_k, d), jnp.float32).at[dest].set(jnp.ldexp(c, expo), mode="drop")
    coh_out = jnp.zeros((max_k,), jnp.float32).at[dest].set(coh, mode="drop")
    a_c = jnp.clip(a, 0, max_k - 1)
    indices = jnp.where(live & (a >= 0) & keep[a_c], new_pos[a_c], NO_UPDATE).astype(jnp.int32)
    if value_bits == 16:
        big = float(jnp.finfo(_HALF[half_dtype]).max)
        cents = jnp.clip(cents, -big, big).astype(_HALF[half_dtype]).astype(jnp.float32)
    bits = payload_bits(num_actions, r_rows, d, value_bits).astype(jnp.int32)
    return ActionPayload(
        centroids=cents,
        indices=indices,
        active=slots < num_actions,
        num_actions=num_actions,
        bits=bits,
        coherence=coh_out,
        tau=tau_eff,
        num_nonfinite=num_nonfinite,
        num_rounds=rounds,
        lloyd_steps=steps,
    )


@jax.jit
def decode(payload: ActionPayload) -> jax.Array:
    """Rebuild the ``[n, d]`` float32 update: row i = ``centroids[indices[i]]``.

    Rows with :data:`NO_UPDATE` decode to exactly 0.
    """
    idx = payload.indices
    rows = payload.centroids[jnp.clip(idx, 0, payload.centroids.shape[0] - 1)]
    return jnp.where((idx >= 0)[:, None], rows, 0.0).astype(jnp.float32)
