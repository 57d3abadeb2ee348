"""Compressors by name, with static bounds derived from the payload ratio.

``make_compressor(name, num_items, item_dim, payload_ratio=...)`` builds one
compressor for a ``[num_items, item_dim]`` item table from the factory registered
under ``name`` (``COMPRESSORS``; ``register`` adds one: a factory
``(num_items, item_dim, Bounds) -> Compressor``). The static bounds (buffer
sizes) come from the nominal budget ``payload_ratio * dense_bits(num_items,
item_dim)`` (what a uniform-bandwidth client gets; larger budgets are capped by
them, and the reported bits are then below the budget):

* fedras, fedras_fixed_k, embedding_kmeans: ``max_k`` (when 0) is the budget's K
  (``quantize.max_actions_for_budget``) rounded up to a multiple of 16, in
  ``[16, 128]`` (``auto_max_k``); the downlink's (``auto_downlink_max_k``) the same
  rounded K past 128 while its ``[num_items, K]`` distances stay under 2**23 entries.
* topk: ``max_entries`` = the budget's entry count rounded up to a multiple of 64,
  at least 64 and at most ``num_items * item_dim``; topk_int32 the same with every index counted as
  32 bits (the papers' accounting, for comparisons with published figures).
* svd: ``max_rank`` = the budget's rank rounded up to a multiple of 8, in
  ``[1, item_dim]`` (the SVD's cost does not depend on it).
* colr: the fixed ``rank``: the largest whose ``A [num_items, r]`` fits the nominal
  budget (``floor(payload_ratio * item_dim * 32 / value_bits)``), in ``[1, item_dim]``.

``index_coding="touched"`` (``base.indexed_rows``, docs/design/index_coding.md) lets a
client's payload address only the rows it sends, so more fits its budget: svd's
``max_rank`` is then ``item_dim`` and topk's ``max_entries`` counts the shortest index
(one row: ``ceil(log2(item_dim))`` bits); fedras's and embedding_kmeans's slots keep the
rule above (per stage, the cap of 128 rarely binds); colr's rank does not change.
"""
import warnings
from typing import Callable, Dict, NamedTuple

from fedras_jax import quantize
from fedras_jax.compress.base import (Compressor, check_index_coding, dense_bits, identity,
                                      round_up)
from fedras_jax.compress.colr import colr, colr_bits
from fedras_jax.compress.embedding_kmeans import embedding_kmeans
from fedras_jax.compress.fedras import fedras
from fedras_jax.compress.svd import svd, svd_bits
from fedras_jax.compress.topk import topk, topk_bits

FIXED_K_TAU = 2.0  # > 1: no cluster is ever coherent enough, so K is always the budget's
DOWNLINK_MAX_DISTANCES = 2**23  # auto_downlink_max_k: one clustering's [items, K] distances


def nominal_budget_bits(num_items: int, item_dim: int, payload_ratio: float) -> int:
  """``payload_ratio * dense_bits(num_items, item_dim)`` as an int (floor)."""
  return int(payload_ratio * dense_bits(num_items, item_dim))


def auto_max_k(num_items: int,
               item_dim: int,
               payload_ratio: float,
               value_bits: int = 32,
               cap: int = 128) -> int:
  """The budget's K rounded up to a multiple of 16, in ``[16, cap]``."""
  k = int(
      quantize.max_actions_for_budget(nominal_budget_bits(num_items, item_dim, payload_ratio),
                                      num_items,
                                      item_dim,
                                      max_k=cap,
                                      value_bits=value_bits))
  return min(cap, max(16, round_up(k, 16)))


def auto_downlink_max_k(num_items: int,
                        item_dim: int,
                        payload_ratio: float,
                        value_bits: int = 32) -> int:
  """The downlink's action slots: the budget's K rounded up to a multiple of 16, at most
  ``num_items`` and with the clustering's ``[num_items, K]`` distances at most
  ``DOWNLINK_MAX_DISTANCES`` entries, but never fewer than the uplink's ``auto_max_k``.

  The downlink is one clustering of the server's ``[num_items, item_dim]`` update a round
  (not one per client, as the uplink's), so its bound can follow the budget past the
  uplink's 128 where the catalogue is small enough.
  """
  cap = min(num_items, DOWNLINK_MAX_DISTANCES // num_items // 16 * 16)
  return max(auto_max_k(num_items, item_dim, payload_ratio, value_bits),
             auto_max_k(num_items, item_dim, payload_ratio, value_bits, cap=cap))


def auto_max_entries(num_items: int,
                     item_dim: int,
                     payload_ratio: float,
                     value_bits: int = 32,
                     int32_indices: bool = False,
                     index_coding: str = "catalog") -> int:
  """The budget's TopK entry count rounded up to a multiple of 64, at least 64, at most
  ``n * d`` (``index_coding="touched"``: with the index of a single row's entries)."""
  budget = nominal_budget_bits(num_items, item_dim, payload_ratio)
  index_rows = 1 if index_coding == "touched" else num_items
  k = budget // topk_bits(1, index_rows, item_dim, int32_indices, value_bits=value_bits)
  return max(1, min(num_items * item_dim, max(64, round_up(k, 64))))


def auto_max_rank(num_items: int, item_dim: int, payload_ratio: float, value_bits: int = 32) -> int:
  """The budget's SVD rank rounded up to a multiple of 8, in ``[1, item_dim]``."""
  budget = nominal_budget_bits(num_items, item_dim, payload_ratio)
  r = budget // svd_bits(1, num_items, item_dim, value_bits)
  return max(1, min(item_dim, round_up(max(r, 1), 8)))


def colr_rank(num_items: int, item_dim: int, payload_ratio: float, value_bits: int = 32) -> int:
  """The largest CoLR rank whose payload fits the nominal budget, in ``[1, item_dim]``.

  Below one rank's bits (``payload_ratio < value_bits / (32 * item_dim)``) the rank is
  still 1: CoLR then sends more than the budget (its bits are counted as sent), and a
  warning says so."""
  budget = nominal_budget_bits(num_items, item_dim, payload_ratio)
  rank = budget // colr_bits(1, num_items, value_bits)
  if rank < 1:
    warnings.warn(
        f"colr at payload ratio {payload_ratio:g} (item_dim {item_dim}, {value_bits}-bit "
        f"values): one rank costs {colr_bits(1, num_items, value_bits)} bits, over the "
        f"budget's {budget}; it sends rank 1 anyway",
        stacklevel=2)
  return max(1, min(item_dim, rank))


class Bounds(NamedTuple):
  """What ``make_compressor`` hands a factory besides the table shape.

  payload_ratio: the nominal budget as a fraction of the dense float32 table (> 0);
  max_k: action slots (0: auto); tau, tau_mode: FedRAS's split test; value_bits:
  32 or 16 bits per sent value; stages: FedRAS's residual stages (``compress.fedras``);
  index_coding: how a payload addresses its rows (``base.indexed_rows``).
  """
  payload_ratio: float
  max_k: int = 0
  tau: float = 0.9
  tau_mode: str = "auto"
  value_bits: int = 32
  stages: int = 1
  index_coding: str = "catalog"


def _action_slots(num_items: int, item_dim: int, bounds: Bounds) -> int:
  """``bounds.max_k``, or the auto rule when it is 0."""
  return bounds.max_k or auto_max_k(num_items, item_dim, bounds.payload_ratio, bounds.value_bits)


def _uncompressed(num_items: int, item_dim: int, bounds: Bounds) -> Compressor:
  del item_dim, bounds
  return identity(num_items)


def _fedras(num_items: int, item_dim: int, bounds: Bounds) -> Compressor:
  return fedras(num_items,
                max_k=_action_slots(num_items, item_dim, bounds),
                tau=bounds.tau,
                tau_mode=bounds.tau_mode,
                value_bits=bounds.value_bits,
                stages=bounds.stages,
                index_coding=bounds.index_coding)


def _fedras_fixed_k(num_items: int, item_dim: int, bounds: Bounds) -> Compressor:
  return fedras(num_items,
                max_k=_action_slots(num_items, item_dim, bounds),
                tau=FIXED_K_TAU,
                tau_mode="fixed",
                value_bits=bounds.value_bits,
                stages=bounds.stages,
                index_coding=bounds.index_coding)._replace(name="fedras_fixed_k")


def _embedding_kmeans(num_items: int, item_dim: int, bounds: Bounds) -> Compressor:
  return embedding_kmeans(num_items,
                          max_k=_action_slots(num_items, item_dim, bounds),
                          value_bits=bounds.value_bits,
                          index_coding=bounds.index_coding)


def _colr(num_items: int, item_dim: int, bounds: Bounds) -> Compressor:
  return colr(num_items,
              item_dim,
              value_bits=bounds.value_bits,
              rank=colr_rank(num_items, item_dim, bounds.payload_ratio, bounds.value_bits),
              index_coding=bounds.index_coding)


def _topk(num_items: int, item_dim: int, bounds: Bounds, int32_indices: bool = False) -> Compressor:
  return topk(num_items,
              value_bits=bounds.value_bits,
              int32_indices=int32_indices,
              index_coding=bounds.index_coding,
              max_entries=auto_max_entries(num_items, item_dim, bounds.payload_ratio,
                                           bounds.value_bits, int32_indices, bounds.index_coding))


def _topk_int32(num_items: int, item_dim: int, bounds: Bounds) -> Compressor:
  return _topk(num_items, item_dim, bounds, int32_indices=True)


def _svd(num_items: int, item_dim: int, bounds: Bounds) -> Compressor:
  max_rank = (item_dim if bounds.index_coding == "touched" else auto_max_rank(
      num_items, item_dim, bounds.payload_ratio, bounds.value_bits))
  return svd(num_items,
             value_bits=bounds.value_bits,
             max_rank=max_rank,
             index_coding=bounds.index_coding)


# name -> factory(num_items, item_dim, Bounds) -> Compressor; ``register`` adds to it.
COMPRESSORS: Dict[str, Callable[[int, int, Bounds], Compressor]] = {
    "uncompressed": _uncompressed, "identity": _uncompressed, "fedras": _fedras,
    "fedras_fixed_k": _fedras_fixed_k, "topk": _topk, "topk_int32": _topk_int32, "svd": _svd,
    "colr": _colr, "embedding_kmeans": _embedding_kmeans
}

LOSSLESS = ("uncompressed", "identity")  # need no payload ratio


def register(name: str, factory: Callable[[int, int, Bounds], Compressor]):
  """Makes ``make_compressor(name, ...)`` build ``factory(num_items, item_dim, bounds)``.

  Raises ``ValueError`` if ``name`` is taken.
  """
  if name in COMPRESSORS:
    raise ValueError(f"compressor {name!r} is already registered")
  COMPRESSORS[name] = factory


def make_compressor(name: str,
                    num_items: int,
                    item_dim: int,
                    *,
                    payload_ratio: float,
                    max_k: int = 0,
                    tau: float = 0.9,
                    tau_mode: str = "auto",
                    value_bits: int = 32,
                    stages: int = 1,
                    index_coding: str = "catalog") -> Compressor:
  """The compressor ``name`` (a key of ``COMPRESSORS``) for a ``[num_items, item_dim]`` table.

  Args:
    payload_ratio: nominal budget as a fraction of the dense float32 table; sets the
      static bounds (module docstring). The per-client budget itself is traced.
    max_k: action slots of fedras / fedras_fixed_k / embedding_kmeans (0: auto).
    tau, tau_mode: FedRAS's split test (ignored by the others; fedras_fixed_k uses
      ``tau=2.0, tau_mode="fixed"``).
    value_bits: 32 or 16 bits per sent value (ignored by uncompressed).
    stages: residual stages of fedras / fedras_fixed_k (ignored by the others).
    index_coding: ``"catalog"`` or ``"touched"``: how a payload addresses its rows
      (``base.indexed_rows``; ignored by uncompressed).
  """
  check_index_coding(index_coding)
  if name not in COMPRESSORS:
    raise ValueError(f"unknown compressor {name!r}; choose one of {tuple(COMPRESSORS)}")
  if name not in LOSSLESS and not 0 < payload_ratio:
    raise ValueError(f"payload_ratio must be positive, got {payload_ratio}")
  return COMPRESSORS[name](num_items, item_dim,
                           Bounds(payload_ratio=payload_ratio,
                                  max_k=max_k,
                                  tau=tau,
                                  tau_mode=tau_mode,
                                  value_bits=value_bits,
                                  stages=stages,
                                  index_coding=index_coding))
