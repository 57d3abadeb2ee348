"""The encoder's loop: its named state and module-level steps.

:func:`~fedras_jax.quantize.actions.encode` prepares one client's rows as
:class:`EncodeRows`, starts an :class:`EncodeState` with one action, and runs
:func:`encode_loop`: alternating :func:`refine` (weighted Lloyd steps on the live
actions) and :func:`split_test` (bisect the least coherent clusters,
:func:`bisect_clusters`) until a split test splits nothing. The live actions are a
prefix of the slots, so the loop runs in width tiers (:func:`width_tiers`). Every
function here is pure, jittable and works on one client; ``encode`` vmaps them.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fedras_jax.quantize.lloyd import PreparedRows, assign, update_centroids

_POWER_ITERS = 1  # power-iteration steps of a split direction
_TIER_GROWTH = 8  # width of each tier of live slots over the previous one


def unit_rows(v):
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
  return _coherence_unit(unit_rows(x), centroids, assignment, weights)


def _coherence_unit(xu, centroids, assignment, weights):
  """:func:`cluster_coherence` with precomputed unit rows ``xu`` [n, d]."""
  max_k = centroids.shape[0]
  a = jnp.clip(assignment, 0, max_k - 1)
  w = jnp.where(assignment >= 0, weights, 0.0)
  cos = row_dot(xu, unit_rows(centroids), a)
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
  ubar = jax.ops.segment_sum(rows.xu * mw[:, None], a_c, num_segments=w) / jnp.maximum(cnt,
                                                                                       1.0)[:, None]
  # Seed of cluster j: its first member with the smallest cosine (= argmin).
  min_cos = jax.ops.segment_min(jnp.where(mem, cos, jnp.inf), a_c, num_segments=w)
  is_min = mem & (cos == min_cos[a_c])
  seed = jax.ops.segment_min(jnp.where(is_min, jnp.arange(n, dtype=jnp.int32), n),
                             a_c,
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
  return centroids.at[:w].set(first).at[jnp.where(selected, new_slot, max_k)].set(second,
                                                                                  mode="drop")


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
    shift = jnp.sum((c_new - c)**2)
    a_next = e_step(c_new)
    s = s._replace(centroids=s.centroids.at[:width].set(c_new),
                   iters=s.iters + 1,
                   shift=shift,
                   lloyd_steps=s.lloyd_steps + 1)
    return s, a_next, converged(s.iters, shift, a_next, a)

  a = e_step(state.centroids[:width])
  init = (state, a, converged(state.iters, state.shift, a, state.assignment))
  state, a, _ = lax.while_loop(lambda carry: ~carry[2], body, init)
  return state._replace(assignment=a)


def split_test(rows: EncodeRows, state: EncodeState, *, width: int, max_splits: int) -> EncodeState:
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
  num = jnp.minimum(jnp.minimum(jnp.sum(cand, dtype=jnp.int32), rows.k_cap - state.k), max_splits)
  num = jnp.where(split, num, 0)
  order = jnp.argsort(jnp.where(cand, coh, jnp.inf), stable=True)
  rank = jnp.zeros((width,), jnp.int32).at[order].set(slots.astype(jnp.int32))
  selected = cand & (rank < num)
  c = lax.cond(split,
               lambda: bisect_clusters(rows, state.centroids, a, cos, selected, state.k + rank),
               lambda: state.centroids)
  return state._replace(centroids=c,
                        k=state.k + num,
                        iters=jnp.int32(0),
                        shift=jnp.float32(jnp.inf),
                        done=~split,
                        coherence=_pad_slots(coh, max_k, 1.0),
                        count=_pad_slots(cnt, max_k, 0.0),
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
