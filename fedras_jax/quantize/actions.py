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
5. Alternate, until a split test splits nothing: a *refinement* (weighted
   Lloyd steps on the live actions, same steps and stopping rule as
   :func:`~fedras_jax.quantize.lloyd.kmeans`, at most ``max_iters`` M-steps)
   and a *split test*: if ``K < k_cap`` and some cluster with >= 2 members has
   coherence ``< tau``, split the ``s = min(S, k_cap - K, #such clusters)``
   least coherent of them (``S = max_splits``). A split bisects the cluster
   along the principal direction of its members' unit vectors (power
   iteration started from the member least aligned with the centroid); the
   two halves' means become the two new centroids. (Seeding the new centroid
   *at* the least aligned member, the simpler rule, mostly produces singleton
   clusters in high dimension.) Clusters are disjoint, so the ``s``
   bisections of one test run as one pass of segment sums over the rows.
6. Compact: non-empty live clusters move to slots ``0..K-1`` (``active`` is
   a prefix); indices are remapped; ``bits = payload_bits(K, R, d)``.
   With ``value_bits=16`` the centroids are rounded (after clipping to the
   format's finite range) to bfloat16 / float16.

Cost. The loop state is a named :class:`EncodeState`, the rows an
:class:`EncodeRows`; :func:`refine` and :func:`split_test` are module-level
steps of :func:`encode_loop`. The live actions are a prefix of the slots, so
the loop runs in *width tiers* (:func:`width_tiers`: 8, 64, ... slots): while
``K <= w`` every E-step, M-step and split test reads only ``w`` slots (a FedRAS
round 22% faster than at ``max_k`` throughout). A refinement is its own inner
``lax.while_loop`` (no ``lax.cond`` choosing between a Lloyd step and a split
test at every step: on XLA:CPU a conditional with a large branch slowed the
other branch's steps several-fold). ``max_iters`` bounds each refinement; a
bisection already puts the two halves near a fixed point, and the FedRAS
compressor uses 2 (``compress.fedras``; measured in
docs/design/quantizer_speed.md).

Splits per test (``max_splits``, static): ``S = 1`` is the classic one
split per test: every new action is followed by a refinement, so reaching
``K`` actions costs ``K - 1`` refinements. ``S = None`` (the default) splits
every incoherent cluster at once, up to the budget's ``k_cap``: ``K`` at most
doubles per test, so about ``log2(K) + 1`` refinements when many clusters are
incoherent. The trade-offs: a cluster is split before the refinement has had
the chance to make it coherent, so when the budget does *not* bind, ``S > 1``
can end with a few more (still coherent) actions, i.e. more bits, than
``S = 1``; when the budget binds, the last test spends the remaining actions
on the least coherent clusters of that test rather than re-ranking after each
split.

``tau_mode="auto"`` replaces ``tau`` by ``cos(theta_1 / 2) =
sqrt((1 + c_1) / 2)``, where ``c_1`` is the coherence of the single-action
start (``theta_1 = arccos c_1`` is the mean angle between a row and the
client's mean gradient): every action must be at least twice as tight in
angle as one global action (BUILD.md, the quantizer's design notes).

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
from fedras_jax.quantize.lloyd import (PreparedRows, assign, batched_as,
                                      check_vmap_strategy, prepare_rows, update_centroids)

__all__ = [
    "NO_UPDATE",
    "ActionPayload",
    "encode",
    "decode",
    "cluster_coherence",
    "auto_tau",
    "EncodeRows",
    "EncodeState",
    "bisect_clusters",
    "encode_loop",
    "refine",
    "row_dot",
    "split_test",
    "width_tiers",
]

NO_UPDATE = -1
"""Reserved index: the row carries no update and decodes to exactly zero."""

_POWER_ITERS = 1  # power-iteration steps of a split direction
_TIER_GROWTH = 8  # width of each tier of live slots over the previous one
_HALF = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}


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
      tau: ``[]`` float32 threshold actually used (the auto value in auto mode;
        1 in auto mode when no row was clustered). Extra field.
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
    cos = row_dot(xu, _unit_rows(centroids), a)
    s = jax.ops.segment_sum(w * cos, a, num_segments=max_k)
    cnt = jax.ops.segment_sum(w, a, num_segments=max_k)
    coh = jnp.where(cnt > 0, s / jnp.maximum(cnt, 1e-30), 1.0)
    return coh, cnt, cos


def row_dot(x, vectors, assignment):
    """``x_i . vectors[assignment_i]`` for every row, ``[n]``.

    Args:
      x: ``[n, d]``; vectors: ``[w, d]``; assignment: ``[n]`` int32 in ``[0, w)``.
    """
    return jnp.sum(x * vectors[assignment], axis=1)


def auto_tau(single_action_coherence):
    """Auto threshold ``sqrt((1 + c1) / 2) = cos(arccos(c1) / 2)``."""
    c1 = jnp.clip(jnp.asarray(single_action_coherence, jnp.float32), -1.0, 1.0)
    return jnp.sqrt((1.0 + c1) / 2.0)


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
    init_centroids=None,
    init_k=None,
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
      max_iters: static bound on the Lloyd M-steps of each refinement (one
        after every split test).
      tol: traced relative Lloyd tolerance (see :func:`kmeans`).
      half_dtype: static, ``"bfloat16"`` (default; f32 exponent range) or
        ``"float16"`` (more mantissa; tiny values flush to 0, values beyond
        65504 are clipped).
      vmap_strategy: static; what ``jax.vmap(encode)`` compiles to.
        ``"parallel"``: ordinary batching (all clients in lock-step through
        the loops: each refinement and the outer loop run until the slowest
        client is done, and a bisection is computed for every client at every
        split test). ``"sequential"``: a ``lax.map`` over the batch inside the
        same program (each client exits its loops early). ``"auto"``
        (default): sequential when the default backend is CPU (2.5x faster
        there, BUILD.md), parallel otherwise. Results are identical. Note:
        the batching rule is a ``jax.custom_batching`` rule, so ``encode`` is
        not reverse-mode differentiable (it is piecewise constant anyway).
      max_splits: static; at most this many clusters are split per split test
        (the least coherent ones below ``tau``, never beyond the budget's
        ``k_cap``). ``None`` (default): no limit, every incoherent cluster is
        split at once (~``log2(K)`` Lloyd refinements instead of ``K - 1``).
        ``1``: one split per test (slowest for large K). See the module
        docstring for the trade-off.
      init_centroids, init_k: optional warm start: ``[max_k, d]`` actions (in
        the units of ``grads``, e.g. a previous payload's ``centroids``) and a
        traced int; when ``init_k > 0`` the first ``min(init_k, k_cap)`` of them
        replace the single-action start and are refined before the first split
        test (so a sender whose matrix changes slowly, like a server's update
        from round to round, skips the growth from one action). ``init_k = 0``
        (or None): the cold start.

    Returns:
      :class:`ActionPayload`.
    """
    if tau_mode not in ("fixed", "auto"):
        raise ValueError(f"tau_mode must be 'fixed' or 'auto', got {tau_mode!r}")
    if value_bits not in (16, 32):
        raise ValueError(f"value_bits must be 16 or 32, got {value_bits}")
    check_vmap_strategy(vmap_strategy)
    if max_splits is not None and (not isinstance(max_splits, int) or max_splits < 1):
        raise ValueError(f"max_splits must be None or an int >= 1, got {max_splits!r}")
    # More than max_k - 1 splits per test are impossible: normalise (one compile).
    max_splits = max(1, max_k - 1) if max_splits is None else min(max_splits, max(1, max_k - 1))
    del key
    x = jnp.asarray(grads, jnp.float32)
    n = x.shape[0]
    m = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
    r_rows = jnp.asarray(n if num_index_rows is None else num_index_rows, jnp.int32)
    d = x.shape[1]
    args = (
        x,
        m,
        jnp.asarray(budget_bits, jnp.int32),
        jnp.asarray(tau, jnp.float32),
        r_rows,
        jnp.asarray(tol, jnp.float32),
        jnp.zeros((max_k, d), jnp.float32) if init_centroids is None
        else jnp.asarray(init_centroids, jnp.float32),
        jnp.asarray(0 if init_k is None else init_k, jnp.int32),
    )
    return batched_as(_encode_impl, vmap_strategy, max_k=max_k, tau_mode=tau_mode,
                      value_bits=value_bits, max_iters=max_iters, half_dtype=half_dtype,
                      max_splits=max_splits)(*args)


def width_tiers(max_k: int) -> tuple:
    """Static slot widths ``(8, 64, ..., max_k)`` the encoder's loop runs at.

    While a client has ``K <= w`` live actions, its E-steps, M-steps, split tests
    and bisections only touch the first ``w`` slots, so the cost of a step follows
    the live ``K`` (to within a factor 8), not ``max_k``. One split test at most
    doubles ``K``, so it never skips a tier's successor.
    """
    widths, w = [], _TIER_GROWTH
    while w < max_k:
        widths.append(w)
        w *= _TIER_GROWTH
    return tuple(widths) + (max_k,)


def _pad_slots(v, max_k: int, fill):
    """``[w]`` -> ``[max_k]``, slots ``>= w`` set to ``fill``."""
    return jnp.concatenate([v, jnp.full((max_k - v.shape[0],), fill, v.dtype)])


class EncodeRows(NamedTuple):
    """One client's rows as the encoder's loop reads them (fixed during the loop).

    Attributes:
      xs: ``[n, d]`` live rows scaled by a power of two (zero elsewhere).
      xu: ``[n, d]`` unit rows of ``xs``.
      centred: :class:`~fedras_jax.quantize.lloyd.PreparedRows` of ``xs - mean``
        (zero elsewhere), what distances are computed on.
      mean: ``[d]`` mean of the live scaled rows.
      live: ``[n]`` bool; weight: ``[n]`` float32, ``live`` as 0/1.
      k_cap: ``[]`` int32 most actions the budget allows (and at most ``#live``).
      tau: ``[]`` float32 split threshold in use.
      tol_abs: ``[]`` float32 absolute Lloyd tolerance on the squared shift.
    """

    xs: jax.Array
    xu: jax.Array
    centred: PreparedRows
    mean: jax.Array
    live: jax.Array
    weight: jax.Array
    k_cap: jax.Array
    tau: jax.Array
    tol_abs: jax.Array


class EncodeState(NamedTuple):
    """The encoder's loop state (one client).

    Attributes:
      centroids: ``[max_k, d]`` actions in the scaled space; slots ``>= k`` are
        unused.
      assignment: ``[n]`` int32 action of each live row (-1 elsewhere) under the
        centroids of the previous step.
      k: ``[]`` int32 live actions (a prefix of the slots).
      iters: ``[]`` int32 Lloyd steps of the current refinement.
      shift: ``[]`` float32 squared centroid shift of the last Lloyd step.
      done: ``[]`` bool, the last split test split nothing.
      coherence, count: ``[max_k]`` float32 per-action coherence and member count
        at the last split test.
      split_tests: ``[]`` int32 split tests that split.
      lloyd_steps: ``[]`` int32 Lloyd (E+M) steps over all refinements.
    """

    centroids: jax.Array
    assignment: jax.Array
    k: jax.Array
    iters: jax.Array
    shift: jax.Array
    done: jax.Array
    coherence: jax.Array
    count: jax.Array
    split_tests: jax.Array
    lloyd_steps: jax.Array


def _times_power_of_two(x, e):
    """``x * 2**e`` for a traced scalar int ``e`` in ``[-252, 254]``, exact wherever
    the result is a normal float32 (the scaling of the rows and back).

    As two scalar factors, each a normal float32 power of two, so the ``[n, d]``
    pass is two multiplies (``jnp.ldexp`` lowers to a per-element ``pow``, which
    XLA:CPU then recomputes in every fusion that reads it).
    """
    e = jnp.asarray(e, jnp.int32)
    half = e // 2
    f1 = jnp.ldexp(jnp.float32(1.0), half)
    f2 = jnp.ldexp(jnp.float32(1.0), e - half)
    return (x * f1) * f2


def bisect_clusters(rows: EncodeRows, centroids, assignment, cos, selected, new_slot):
    """Splits every cluster ``j`` with ``selected[j]`` along its principal direction.

    The principal direction of a cluster's unit rows (members' deviations from
    their mean unit row) comes from power iteration started at the deviation of
    its least aligned member (deterministic); members on the positive side form
    the new cluster. The two halves' means replace slot ``j`` and fill slot
    ``new_slot[j]``; if one half is empty, slot ``new_slot[j]`` is seeded at the
    least aligned member instead. Clusters are disjoint, so all are split at once:
    per-cluster sums are segment sums over the rows, and a row's projection on its
    cluster's direction is :func:`row_dot` (no ``[n, d]`` gather).

    Args:
      rows: the client's :class:`EncodeRows`.
      centroids: ``[max_k, d]``; assignment: ``[n]`` int32 (< ``w``, -1 = none);
      cos: ``[n]`` cosine of each row to its centroid; selected: ``[w]`` bool;
      new_slot: ``[w]`` int32 distinct free slots (read where selected).

    Returns:
      ``[max_k, d]`` centroids with the selected clusters split.
    """
    w = selected.shape[0]
    n = rows.xs.shape[0]
    a_c = jnp.clip(assignment, 0, w - 1)
    mem = rows.live & (assignment >= 0) & selected[a_c]
    mw = mem.astype(jnp.float32)
    cnt = jax.ops.segment_sum(mw, a_c, num_segments=w)
    ubar = jax.ops.segment_sum(rows.xu * mw[:, None], a_c, num_segments=w) / jnp.maximum(
        cnt, 1.0)[:, None]
    # Seed of cluster j: its first member with the smallest cosine (= argmin).
    min_cos = jax.ops.segment_min(jnp.where(mem, cos, jnp.inf), a_c, num_segments=w)
    is_min = mem & (cos == min_cos[a_c])
    seed = jax.ops.segment_min(jnp.where(is_min, jnp.arange(n, dtype=jnp.int32), n), a_c,
                               num_segments=w)
    seed = jnp.clip(seed, 0, n - 1)

    def projection(v):  # [w, d] -> [n]: (xu_i - ubar_j) . v_j for members of j, else 0
        return (row_dot(rows.xu, v, a_c) - jnp.sum(ubar * v, axis=1)[a_c]) * mw

    def power(_, v):  # v_j <- sum over members of dev_i (dev_i . v_j), normalised
        t = projection(v)
        v = (jax.ops.segment_sum(rows.xu * t[:, None], a_c, num_segments=w)
             - ubar * jax.ops.segment_sum(t, a_c, num_segments=w)[:, None])
        return v / jnp.maximum(jnp.sqrt(jnp.sum(v * v, axis=1, keepdims=True)), 1e-30)

    v = lax.fori_loop(0, _POWER_ITERS, power, rows.xu[seed] - ubar)
    side = mem & (projection(v) > 0)
    # Both halves in one segment sum: cluster j's positive side is segment w + j.
    half = a_c + w * side.astype(jnp.int32)
    sums = jax.ops.segment_sum(rows.xs * mw[:, None], half, num_segments=2 * w)
    counts = jax.ops.segment_sum(mw, half, num_segments=2 * w)
    n_neg, n_pos = counts[:w], counts[w:]
    m_neg = sums[:w] / jnp.maximum(n_neg, 1.0)[:, None]
    m_pos = sums[w:] / jnp.maximum(n_pos, 1.0)[:, None]
    ok = ((n_pos > 0) & (n_neg > 0))[:, None]
    first = jnp.where(selected[:, None] & ok, m_neg, centroids[:w])
    second = jnp.where(ok, m_pos, rows.xs[seed])
    max_k = centroids.shape[0]
    return centroids.at[:w].set(first).at[jnp.where(selected, new_slot, max_k)].set(
        second, mode="drop")


def refine(rows: EncodeRows, state: EncodeState, *, width: int, max_iters: int) -> EncodeState:
    """Lloyd steps on the live actions (slots ``< width``) until the refinement converges.

    An E-step, then M-step + E-step pairs until converged: no live row changed its
    assignment (strict), the last squared centroid shift was within ``tol_abs``, or
    ``max_iters`` M-steps were made (or right after a split test left a single
    action: the mean is already the fixed point). Returns the state with the
    assignment of its final centroids.
    """
    active = jnp.arange(width) < state.k

    def e_step(c):
        return jnp.where(rows.live, assign(rows.centred, c - rows.mean, active), -1)

    def converged(it, shift, a_new, a_old):
        strict = (it > 0) & ~jnp.any((a_new != a_old) & rows.live)
        return (((it == 0) & (state.k == 1)) | strict | ((it > 0) & (shift <= rows.tol_abs))
                | (it >= max_iters))

    def body(carry):
        s, a, _ = carry
        c = s.centroids[:width]
        c_new = update_centroids(rows.xs, rows.weight, rows.xs, c, active, jnp.clip(a, 0), width)
        shift = jnp.sum((c_new - c) ** 2)
        a_next = e_step(c_new)
        s = s._replace(centroids=s.centroids.at[:width].set(c_new), iters=s.iters + 1,
                       shift=shift, lloyd_steps=s.lloyd_steps + 1)
        return s, a_next, converged(s.iters, shift, a_next, a)

    a = e_step(state.centroids[:width])
    init = (state, a, converged(state.iters, state.shift, a, state.assignment))
    state, a, _ = lax.while_loop(lambda carry: ~carry[2], body, init)
    return state._replace(assignment=a)


def split_test(rows: EncodeRows, state: EncodeState, *, width: int,
               max_splits: int) -> EncodeState:
    """Tests every action's coherence under the current assignment, splits the worst.

    Splits the ``min(max_splits, k_cap - K, #incoherent)`` least coherent actions
    with >= 2 members and coherence ``< tau`` (stable: ties -> lowest slot), or
    marks the state done when there are none (or no budget is left). Reads slots
    ``< width``; the new halves fill slots ``K ..``, below ``2 * width``.
    """
    max_k = state.centroids.shape[0]
    slots = jnp.arange(width)
    a = state.assignment
    coh, cnt, cos = _coherence_unit(rows.xu, state.centroids[:width], a, rows.weight)
    cand = (slots < state.k) & (cnt >= 1.5) & (coh < rows.tau)
    split = (state.k < rows.k_cap) & jnp.any(cand)
    num = jnp.minimum(jnp.minimum(jnp.sum(cand, dtype=jnp.int32), rows.k_cap - state.k),
                      max_splits)
    num = jnp.where(split, num, 0)
    order = jnp.argsort(jnp.where(cand, coh, jnp.inf), stable=True)
    rank = jnp.zeros((width,), jnp.int32).at[order].set(slots.astype(jnp.int32))
    selected = cand & (rank < num)
    c = lax.cond(split,
                 lambda: bisect_clusters(rows, state.centroids, a, cos, selected, state.k + rank),
                 lambda: state.centroids)
    return state._replace(
        centroids=c, k=state.k + num, iters=jnp.int32(0), shift=jnp.float32(jnp.inf),
        done=~split, coherence=_pad_slots(coh, max_k, 1.0), count=_pad_slots(cnt, max_k, 0.0),
        split_tests=state.split_tests + split.astype(jnp.int32))


def encode_loop(rows: EncodeRows, state: EncodeState, *, max_iters: int,
                max_splits: int) -> EncodeState:
    """Alternates :func:`refine` and :func:`split_test` until a test splits nothing.

    One ``lax.while_loop`` per width tier (:func:`width_tiers`): a client stays in
    a tier's loop while its live actions fit the tier's width, and every step of
    the tier reads and writes only that many slots.
    """
    for width in width_tiers(state.centroids.shape[0]):
        def stage(s, width=width):
            s = refine(rows, s, width=width, max_iters=max_iters)
            return split_test(rows, s, width=width, max_splits=max_splits)

        state = lax.while_loop(lambda s, w=width: ~s.done & (s.k <= w), stage, state)
    return state


def _encode_impl(x, m, budget_bits, tau, r_rows, tol, init_centroids, init_k, *, max_k,
                 tau_mode, value_bits, max_iters, half_dtype, max_splits):
    """Single-client encoder on sanitized arguments (see :func:`encode`)."""
    n, d = x.shape
    finite = jnp.all(jnp.isfinite(x), axis=1)
    x0 = jnp.where(finite[:, None], x, 0.0)
    live = m & finite & jnp.any(x0 != 0, axis=1)
    num_nonfinite = jnp.sum(m & ~finite).astype(jnp.int32)
    w = live.astype(jnp.float32)
    n_live = jnp.sum(live).astype(jnp.int32)

    k_budget = max_actions_for_budget(budget_bits, r_rows, d, max_k=max_k, value_bits=value_bits)
    k_cap = jnp.minimum(k_budget, n_live)
    cluster = functools.partial(
        _cluster_live_rows, x0, live, w, n_live, k_cap, tau, r_rows, tol, init_centroids,
        init_k, max_k=max_k,
        tau_mode=tau_mode, value_bits=value_bits, max_iters=max_iters, half_dtype=half_dtype,
        max_splits=max_splits)

    def nothing_to_send():  # no budget for one action, or no live row: the empty payload
        return ActionPayload(
            centroids=jnp.zeros((max_k, d), jnp.float32),
            indices=jnp.full((n,), NO_UPDATE, jnp.int32), active=jnp.zeros((max_k,), bool),
            num_actions=jnp.int32(0), bits=jnp.int32(0), coherence=jnp.zeros((max_k,), jnp.float32),
            tau=jnp.asarray(1.0 if tau_mode == "auto" else tau, jnp.float32),
            num_nonfinite=jnp.int32(0), num_rounds=jnp.int32(0), lloyd_steps=jnp.int32(0))

    payload = lax.cond(k_cap > 0, cluster, nothing_to_send)
    return payload._replace(num_nonfinite=num_nonfinite)


def _cluster_live_rows(x0, live, w, n_live, k_cap, tau, r_rows, tol, init_centroids, init_k,
                       *, max_k, tau_mode, value_bits, max_iters, half_dtype, max_splits):
    """The payload of ``k_cap >= 1`` actions at most for the live rows of ``x0``."""
    n, d = x0.shape
    # Exact power-of-two rescaling (largest |value| in [0.5, 1)).
    amax = jnp.max(jnp.where(live[:, None], jnp.abs(x0), 0.0))
    _, expo = jnp.frexp(jnp.where(amax > 0, amax, 1.0))
    xs = jnp.where(live[:, None], _times_power_of_two(x0, -expo), 0.0)

    # One action: the mean of the live rows (the exact Lloyd fixed point for K=1).
    mean = jnp.sum(xs, axis=0) / jnp.maximum(n_live, 1).astype(jnp.float32)
    c = jnp.zeros((max_k, d), jnp.float32).at[0].set(mean)
    a = jnp.where(live, 0, -1).astype(jnp.int32)
    xu = _unit_rows(xs)
    # Coherence of the single action: mean over live rows of xu_i . unit(mean).
    coh1 = jnp.dot(jnp.sum(xu, axis=0), _unit_rows(mean)) / jnp.maximum(n_live, 1)
    tau_eff = auto_tau(coh1) if tau_mode == "auto" else tau
    xc = jnp.where(live[:, None], xs - mean, 0.0)  # centred copy for distances
    var = jnp.sum(w[:, None] * xc**2, axis=0) / jnp.maximum(jnp.sum(w), 1e-30)
    rows = EncodeRows(xs=xs, xu=xu, centred=prepare_rows(xc, max_k), mean=mean, live=live,
                      weight=w, k_cap=k_cap, tau=jnp.asarray(tau_eff, jnp.float32),
                      tol_abs=tol * jnp.mean(var))
    # Warm start: the given actions (scaled like the rows), refined before the first test.
    warm = init_k > 0
    k0 = jnp.where(warm, jnp.clip(init_k, 1, k_cap), 1)
    c_warm = jnp.where((jnp.arange(max_k) < k0)[:, None],
                       _times_power_of_two(jnp.where(jnp.isfinite(init_centroids),
                                                     init_centroids, 0.0), -expo), 0.0)
    c = jnp.where(warm, c_warm, c)
    state = EncodeState(centroids=c, assignment=a, k=k0, iters=jnp.int32(0),
                        shift=jnp.float32(jnp.inf), done=jnp.bool_(False),
                        coherence=jnp.ones((max_k,), jnp.float32),
                        count=jnp.zeros((max_k,), jnp.float32),
                        split_tests=jnp.int32(0), lloyd_steps=jnp.int32(0))
    # On exit the centroids are unchanged by the last (converged, no split) step,
    # so (centroids, assignment, coherence, count) are consistent.
    state = encode_loop(rows, state, max_iters=max_iters, max_splits=max_splits)

    # Compact non-empty live clusters into a prefix of the slots.
    slots = jnp.arange(max_k)
    keep = (slots < state.k) & (state.count > 0)
    new_pos = jnp.cumsum(keep.astype(jnp.int32)) - 1
    dest = jnp.where(keep, new_pos, max_k)  # max_k = dropped
    num_actions = jnp.sum(keep).astype(jnp.int32)
    cents = jnp.zeros((max_k, d), jnp.float32).at[dest].set(
        _times_power_of_two(state.centroids, expo), mode="drop")
    coh_out = jnp.zeros((max_k,), jnp.float32).at[dest].set(state.coherence, mode="drop")
    a = state.assignment
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
        tau=rows.tau,
        num_nonfinite=jnp.int32(0),
        num_rounds=state.split_tests,
        lloyd_steps=state.lloyd_steps,
    )


@jax.jit
def decode(payload: ActionPayload) -> jax.Array:
    """Rebuild the ``[n, d]`` float32 update: row i = ``centroids[indices[i]]``.

    Rows with :data:`NO_UPDATE` decode to exactly 0.
    """
    idx = payload.indices
    rows = payload.centroids[jnp.clip(idx, 0, payload.centroids.shape[0] - 1)]
    return jnp.where((idx >= 0)[:, None], rows, 0.0).astype(jnp.float32)
