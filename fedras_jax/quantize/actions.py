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

Cost. The loop (:mod:`fedras_jax.quantize.encode_loop`) state is a named
``EncodeState``, the rows an ``EncodeRows``; ``refine`` and ``split_test`` are
module-level steps of ``encode_loop``. The live actions are a prefix of the slots, so
the loop runs in *width tiers* (``width_tiers``: 8, 64, ... slots): while
``K <= w`` every E-step, M-step and split test reads only ``w`` slots, not
``max_k`` (docs/design/quantizer_speed.md). A refinement is its own inner
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
angle as one global action (docs/design/quantizer.md).

The procedure is deterministic given the data; ``key`` is accepted for API
stability (and vmapped per client) but currently unused.
"""

import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from fedras_jax.quantize.batching import batched_as, check_vmap_strategy
from fedras_jax.quantize.bits import max_actions_for_budget, payload_bits, saturating_int32
from fedras_jax.quantize.encode_loop import EncodeRows, EncodeState, encode_loop, unit_rows
from fedras_jax.quantize.lloyd import count_arg, prepare_rows

NO_UPDATE = -1
"""Reserved index: the row carries no update and decodes to exactly zero."""

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
    split_tests: ``[]`` int32 number of split tests that split (each is
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
  split_tests: jax.Array
  lloyd_steps: jax.Array


def auto_tau(single_action_coherence):
  """Auto threshold ``sqrt((1 + c1) / 2) = cos(arccos(c1) / 2)``."""
  c1 = jnp.clip(jnp.asarray(single_action_coherence, jnp.float32), -1.0, 1.0)
  return jnp.sqrt((1.0 + c1) / 2.0)


def encode(grads,
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
    grads: ``[n, d]`` real floating gradient matrix, ``n, d >= 1`` (cast to
      float32; an integer, bool or complex array is refused). Values below
      float32's normal range (about 1e-38) count as zero on XLA:CPU, which
      flushes subnormals.
    key: PRNG key (accepted for API stability; the algorithm is deterministic).
    budget_bits: traced int, upper bound on ``payload.bits``; bit counts are
      int32, so a budget beyond int32 (a Python int, an int64 or float value)
      is saturated to int32's range, never wrapped (see
      :func:`~fedras_jax.quantize.bits.saturating_int32`).
    max_k: static number of action slots, an int >= 1.
    tau: traced float, fixed cosine threshold (``tau_mode="fixed"``); a NaN
      Python or NumPy number is a ``ValueError`` (a traced NaN compares false:
      no cluster is ever split).
    tau_mode: ``"fixed"`` or ``"auto"`` (static; auto ignores ``tau``).
    mask: optional ``[n]`` bool; False = the row has no update.
    num_index_rows: traced/int R, rows counted as carrying an index in the
      bit accounting (default ``n``); a negative Python or NumPy number is a
      ``ValueError``, a negative traced value counts as 0.
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
      (default): sequential when the default backend is CPU (faster there:
      docs/design/quantizer_speed.md), parallel otherwise. Centroids and coherence
      agree to float32 rounding (batched reductions may sum in another order), so
      indices, action counts and bits agree but for near ties (identical in the tests).
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

  ``encode`` is not differentiated: its array inputs pass through
  ``lax.stop_gradient``, so ``jax.grad`` of a function that calls it sees no
  gradient through the quantizer (the loops of the split tests and Lloyd steps
  have no reverse-mode rule). A straight-through estimator is therefore
  ``x + lax.stop_gradient(decode(encode(x, ...)) - x)``.
  """
  if tau_mode not in ("fixed", "auto"):
    raise ValueError(f"tau_mode must be 'fixed' or 'auto', got {tau_mode!r}")
  if value_bits not in (16, 32):
    raise ValueError(f"value_bits must be 16 or 32, got {value_bits}")
  if half_dtype not in _HALF:
    raise ValueError(f"half_dtype must be one of {sorted(_HALF)}, got {half_dtype!r}")
  check_vmap_strategy(vmap_strategy)
  max_k = count_arg("max_k", max_k)
  max_splits = None if max_splits is None else count_arg("max_splits", max_splits)
  # More than max_k - 1 splits per test are impossible: normalise (one compile).
  max_splits = max(1, max_k - 1) if max_splits is None else min(max_splits, max(1, max_k - 1))
  del key
  x = jnp.asarray(grads)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"grads must be a real floating array, got dtype {x.dtype}")
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f"grads must be a non-empty [n, d] matrix, got shape {x.shape}")
  n, d = x.shape
  mask = None if mask is None else jnp.asarray(mask)
  if mask is not None and mask.shape != (n,):
    raise ValueError(f"mask must be [n] = [{n}], got shape {list(mask.shape)}")
  if init_centroids is None and init_k is not None:
    raise ValueError("init_k needs init_centroids (the actions a warm start begins from)")
  if _is_number(num_index_rows) and num_index_rows < 0:
    raise ValueError(f"num_index_rows must be >= 0, got {num_index_rows}")
  if tau_mode == "fixed" and _is_number(tau) and math.isnan(tau):
    raise ValueError("tau is NaN")
  init = None if init_centroids is None else jnp.asarray(init_centroids)
  if init is not None and init.shape != (max_k, d):
    raise ValueError(f"init_centroids must be [max_k, d] = {[max_k, d]}, got shape "
                     f"{list(init.shape)}")
  return _encode_jit(x,
                     mask,
                     saturating_int32(budget_bits),
                     tau,
                     saturating_int32(n if num_index_rows is None else num_index_rows),
                     tol,
                     init,
                     init_k,
                     vmap_strategy=vmap_strategy,
                     static=_EncodeStatic(max_k, tau_mode, value_bits, max_iters, half_dtype,
                                          max_splits))


def _is_number(value) -> bool:
  """Whether ``value`` is a Python or NumPy scalar (checked eagerly; arrays are traced)."""
  return isinstance(value, (numbers.Real, np.generic)) and np.ndim(value) == 0


class _EncodeStatic(NamedTuple):
  """:func:`encode`'s static options, as :func:`_encode_impl` takes them by name."""
  max_k: int
  tau_mode: str
  value_bits: int
  max_iters: int
  half_dtype: str
  max_splits: int


@functools.partial(jax.jit, static_argnames=("vmap_strategy", "static"))
def _encode_jit(x, mask, budget_bits, tau, num_index_rows, tol, init_centroids, init_k, *,
                vmap_strategy, static: _EncodeStatic):
  """:func:`encode` after its checks: ``x`` ``[n, d]`` floating, the budget and
  ``num_index_rows`` int32, ``init_centroids`` None or ``[max_k, d]``."""
  n, d = x.shape
  m = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
  real = lambda v: lax.stop_gradient(jnp.asarray(v, jnp.float32))
  init = (jnp.zeros(
      (static.max_k, d), jnp.float32) if init_centroids is None else real(init_centroids))
  args = (real(x), m, budget_bits, real(tau), num_index_rows, real(tol), init,
          jnp.asarray(0 if init_k is None else init_k, jnp.int32))
  return batched_as(_encode_impl, vmap_strategy, **static._asdict())(*args)


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


def _encode_impl(x, m, budget_bits, tau, r_rows, tol, init_centroids, init_k, *, max_k, tau_mode,
                 value_bits, max_iters, half_dtype, max_splits):
  """Single-client encoder on sanitized arguments (see :func:`encode`)."""
  n, d = x.shape
  finite = jnp.all(jnp.isfinite(x), axis=1)
  x0 = jnp.where(finite[:, None], x, 0.0)
  live = m & finite & jnp.any(x0 != 0, axis=1)
  num_nonfinite = jnp.sum(m & ~finite).astype(jnp.int32)
  w = live.astype(jnp.float32)
  n_live = jnp.sum(live).astype(jnp.int32)

  r_rows = jnp.maximum(r_rows, 0)
  k_budget = max_actions_for_budget(budget_bits, r_rows, d, max_k=max_k, value_bits=value_bits)
  k_cap = jnp.minimum(k_budget, n_live)
  cluster = functools.partial(_cluster_live_rows,
                              x0,
                              live,
                              w,
                              n_live,
                              k_cap,
                              tau,
                              r_rows,
                              tol,
                              init_centroids,
                              init_k,
                              max_k=max_k,
                              tau_mode=tau_mode,
                              value_bits=value_bits,
                              max_iters=max_iters,
                              half_dtype=half_dtype,
                              max_splits=max_splits)

  def nothing_to_send():  # no budget for one action, or no live row: the empty payload
    return ActionPayload(centroids=jnp.zeros((max_k, d), jnp.float32),
                         indices=jnp.full((n,), NO_UPDATE, jnp.int32),
                         active=jnp.zeros((max_k,), bool),
                         num_actions=jnp.int32(0),
                         bits=jnp.int32(0),
                         coherence=jnp.zeros((max_k,), jnp.float32),
                         tau=jnp.asarray(1.0 if tau_mode == "auto" else tau, jnp.float32),
                         num_nonfinite=jnp.int32(0),
                         split_tests=jnp.int32(0),
                         lloyd_steps=jnp.int32(0))

  payload = lax.cond(k_cap > 0, cluster, nothing_to_send)
  return payload._replace(num_nonfinite=num_nonfinite)


def _cluster_live_rows(x0, live, w, n_live, k_cap, tau, r_rows, tol, init_centroids, init_k, *,
                       max_k, tau_mode, value_bits, max_iters, half_dtype, max_splits):
  """The payload of ``k_cap >= 1`` actions at most for the live rows of ``x0``."""
  rows, expo = _encode_rows(x0, live, w, n_live, k_cap, tau, tol, max_k=max_k, tau_mode=tau_mode)
  state = _initial_state(rows, expo, init_centroids, init_k)
  # On exit the centroids are unchanged by the last (converged, no split) step,
  # so (centroids, assignment, coherence, count) are consistent.
  state = encode_loop(rows, state, max_iters=max_iters, max_splits=max_splits)
  return _compact(rows, state, expo, r_rows, value_bits=value_bits, half_dtype=half_dtype)


def _encode_rows(x0, live, w, n_live, k_cap, tau, tol, *, max_k, tau_mode):
  """``(EncodeRows, expo)``: the live rows of ``x0`` ``[n, d]`` scaled by ``2**-expo``
  (largest ``|value|`` in ``[0.5, 1)``, exact), their unit rows, centred copy,
  split threshold and Lloyd tolerance."""
  amax = jnp.max(jnp.where(live[:, None], jnp.abs(x0), 0.0))
  _, expo = jnp.frexp(jnp.where(amax > 0, amax, 1.0))
  xs = jnp.where(live[:, None], _times_power_of_two(x0, -expo), 0.0)
  mean = jnp.sum(xs, axis=0) / jnp.maximum(n_live, 1).astype(jnp.float32)
  xu = unit_rows(xs)
  # Coherence of the single action: mean over live rows of xu_i . unit(mean).
  coh1 = jnp.dot(jnp.sum(xu, axis=0), unit_rows(mean)) / jnp.maximum(n_live, 1)
  tau_eff = auto_tau(coh1) if tau_mode == "auto" else tau
  xc = jnp.where(live[:, None], xs - mean, 0.0)  # centred copy for distances
  var = jnp.sum(w[:, None] * xc**2, axis=0) / jnp.maximum(jnp.sum(w), 1e-30)
  rows = EncodeRows(xs=xs,
                    xu=xu,
                    centred=prepare_rows(xc, max_k),
                    mean=mean,
                    live=live,
                    weight=w,
                    k_cap=k_cap,
                    tau=jnp.asarray(tau_eff, jnp.float32),
                    tol_abs=tol * jnp.mean(var))
  return rows, expo


def _initial_state(rows: EncodeRows, expo, init_centroids, init_k) -> EncodeState:
  """One action, the mean of the live rows (the exact Lloyd fixed point for K=1), or,
  warm (``min(init_k, k_cap) > 1``), the given actions scaled like the rows, refined
  before the first split test. A warm start of one action is the cold start: the
  refinement of one action is its mean, whatever it started from."""
  max_k, d = init_centroids.shape
  c = jnp.zeros((max_k, d), jnp.float32).at[0].set(rows.mean)
  a = jnp.where(rows.live, 0, -1).astype(jnp.int32)
  warm = (init_k > 0) & (jnp.clip(init_k, 1, rows.k_cap) > 1)
  k0 = jnp.where(warm, jnp.clip(init_k, 1, rows.k_cap), 1)
  c_warm = jnp.where(
      (jnp.arange(max_k) < k0)[:, None],
      _times_power_of_two(jnp.where(jnp.isfinite(init_centroids), init_centroids, 0.0), -expo), 0.0)
  c = jnp.where(warm, c_warm, c)
  return EncodeState(centroids=c,
                     assignment=a,
                     k=k0,
                     iters=jnp.int32(0),
                     shift=jnp.float32(jnp.inf),
                     done=jnp.bool_(False),
                     coherence=jnp.ones((max_k,), jnp.float32),
                     count=jnp.zeros((max_k,), jnp.float32),
                     split_tests=jnp.int32(0),
                     lloyd_steps=jnp.int32(0))


def round_values(values, value_bits: int, half_dtype: str = "bfloat16"):
  """What a receiver gets from float ``values`` sent at ``value_bits``: 32, as they are;
  16, rounded to ``half_dtype`` ("bfloat16" or "float16"), clipped to its finite range
  (float32 out either way)."""
  if value_bits == 16:
    big = float(jnp.finfo(_HALF[half_dtype]).max)
    return jnp.clip(values, -big, big).astype(_HALF[half_dtype]).astype(jnp.float32)
  return values


def compact_clusters(per_cluster, assignment, keep, live):
  """Moves the kept clusters to a prefix of the slots and remaps the rows' indices.

  Args:
    per_cluster: a tuple of ``[max_k, ...]`` arrays (centroids, coherences, ...).
    assignment: ``[n]`` int32 cluster of each row (negative: none); keep: ``[max_k]``
      bool, the clusters kept; live: ``[n]`` bool, the rows that may carry an index.
  Returns:
    ``(compacted, indices, num_actions)``: ``per_cluster`` with kept cluster ``j`` in slot
    ``sum(keep[:j])`` and zeros past ``num_actions`` (``[]`` int32); ``indices [n]``
    int32, each live row's new slot or ``NO_UPDATE`` where its cluster was dropped.
  """
  max_k = keep.shape[0]
  new_pos = jnp.cumsum(keep.astype(jnp.int32)) - 1
  dest = jnp.where(keep, new_pos, max_k)  # max_k = dropped
  compacted = tuple(jnp.zeros_like(v).at[dest].set(v, mode="drop") for v in per_cluster)
  a_c = jnp.clip(assignment, 0, max_k - 1)
  sent = live & (assignment >= 0) & keep[a_c]
  indices = jnp.where(sent, new_pos[a_c], NO_UPDATE).astype(jnp.int32)
  return compacted, indices, jnp.sum(keep, dtype=jnp.int32)


def _compact(rows: EncodeRows, state: EncodeState, expo, r_rows, *, value_bits,
             half_dtype) -> ActionPayload:
  """The payload of the loop's final ``state``: non-empty live clusters moved to a
  prefix of the slots and scaled back, indices remapped, bits counted."""
  max_k, d = state.centroids.shape
  slots = jnp.arange(max_k)
  keep = (slots < state.k) & (state.count > 0)
  (cents, coh_out), indices, num_actions = compact_clusters(
      (_times_power_of_two(state.centroids, expo).astype(jnp.float32), state.coherence),
      state.assignment, keep, rows.live)
  cents = round_values(cents, value_bits, half_dtype)
  bits = payload_bits(num_actions, r_rows, d, value_bits).astype(jnp.int32)
  return ActionPayload(centroids=cents,
                       indices=indices,
                       active=slots < num_actions,
                       num_actions=num_actions,
                       bits=bits,
                       coherence=coh_out,
                       tau=rows.tau,
                       num_nonfinite=jnp.int32(0),
                       split_tests=state.split_tests,
                       lloyd_steps=state.lloyd_steps,
                      )


@jax.jit
def decode(payload: ActionPayload) -> jax.Array:
  """Rebuild the ``[n, d]`` float32 update: row i = ``centroids[indices[i]]``.

  Rows with :data:`NO_UPDATE` decode to exactly 0. One payload (``indices [n]``,
  ``centroids [max_k, d]``); a batch of them (``vmap(encode)``'s) takes
  ``jax.vmap(decode)``.
  """
  if payload.indices.ndim != 1 or payload.centroids.ndim != 2:
    raise ValueError(f"decode takes one payload (indices [n], centroids [max_k, d]), got indices "
                     f"{list(payload.indices.shape)} and centroids "
                     f"{list(payload.centroids.shape)}: decode a batch with jax.vmap(decode)")
  idx = payload.indices
  rows = payload.centroids[jnp.clip(idx, 0, payload.centroids.shape[0] - 1)]
  return jnp.where((idx >= 0)[:, None], rows, 0.0).astype(jnp.float32)
