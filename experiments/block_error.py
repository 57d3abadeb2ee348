"""Per-block view of the FedRAS uplink on a model whose item row has several blocks.

NeuMF's item row is ``[GMF (dim/4) | MLP (dim)]``. From each checkpoint of a run (a
``checkpoints/round_*.msgpack`` of ``experiments/train.py`` with the same flags), this
re-runs the round's local training on the saved state and reports, per block, the
clients' gradient (update) norms and the relative quantization error of the FedRAS
uplink, for the compressor as configured (``--method``, ``--payload_ratio``) and for
variants that treat the blocks separately:

* ``joint``: the compressor as it is (one codebook over the whole row);
* ``scaled``: each block divided by its per-client RMS before clustering, multiplied
  back after (the scales cost 32 bits each);
* ``separate``: each block clustered on its own, the budget split by block width;
* ``fixed_k``: one codebook, ``fedras_fixed_k`` (always the budget's K: no split test);
* ``sub_blocks``: the row cut into ``--sub_blocks`` equal column blocks, each clustered on
  its own with its width's share of the budget (product quantization: each row sends one
  index per block; the centroids hold the same values as one codebook's);
* ``svd``, ``topk``: those baselines' uplinks at the same budgets, for comparison;
* ``downlink``: the server's update of that round (its item step plus the residual the
  checkpoint's error feedback holds) coded by the run's downlink (``downlink``, from the
  checkpoint's compressor state) and, on the same matrix at the same budget, by SVD
  (``downlink_svd``): relative errors ``||decoded - update|| / ||update||``.

For ``joint`` and ``fixed_k`` it also reports ``*_magnitude_share``: the share of the
squared error that is the rows' lengths rather than their directions
(``magnitude_shares``; docs/design/row_gains.md). For ``joint``, ``fixed_k``, ``svd`` and
``topk`` it reports ``*_aggregate``: the relative error of the server's per-item aggregate
of the decoded rows against that of the clients' rows (``aggregate_relative_error``), the
error the server's step sees: the per-client errors weigh each client alike, while the
aggregate weighs them by the rows they send (docs/design/residual_stages.md).

    python -m experiments.block_error --flagfile=configs/ml100k_ncf.flags \
        --data_dir=/work/data --ckpt_dir=/work/runs/ncf14/fedras/checkpoints
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from fedras_jax import checkpoint as ckpt_lib
from fedras_jax import flags as flag_lib
from fedras_jax import outputs
from fedras_jax.compress.registry import make_compressor
from fedras_jax.compress.roundtrip import roundtrip, roundtrip_clients
from fedras_jax.config import TrainConfig
from fedras_jax.experiment import build_simulation, load_run_data
from fedras_jax.federated.aggregation import aggregate_item_updates
from fedras_jax.federated.round import relative_error
from fedras_jax.federated.state import DOWNLINK, round_key
from fedras_jax.quantize import auto_tau
from fedras_jax.runtime import enable_compilation_cache

flag_lib.define_train_flags()

_CKPT = flags.DEFINE_string("ckpt_dir", None, "checkpoints/ of a run with the same flags")
_OUT = flags.DEFINE_string("out", None, "also write the rows as JSON lines here")
VARIANTS = ("joint", "scaled", "separate", "fixed_k", "sub_blocks", "svd", "topk", "downlink")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), "what to measure")
_SUB_BLOCKS = flags.DEFINE_integer("sub_blocks", 4, "column blocks of the sub_blocks variant")
_STAGES = flags.DEFINE_integer(
    "stages", None, "residual stages of the measured FedRAS uplinks (default: the run's "
    "--action_stages, which the checkpoints' state follows)")


def block_relative_errors(decoded, rows, client, blocks, num_clients):
  """``[B + 1, M]``: per client, ``||decoded_b - rows_b|| / ||rows_b||`` over its slot
  rows for each column block ``(start, stop)`` of ``blocks``, then for the whole row.

  Args:
    decoded, rows: ``[S, d]`` flat slot rows; client: ``[S]`` the client of each slot.
  """

  rel = lambda cols: relative_error(decoded[:, cols], rows[:, cols], client, num_clients)
  return jnp.stack([rel(slice(a, b)) for a, b in blocks] + [rel(slice(None))])


def aggregate_relative_error(decoded, rows, items, touched, num_items, num_clients, rule):
  """``[]``: ``||A(decoded) - A(rows)|| / ||A(rows)||`` with ``A`` the server's per-item
  aggregation (``aggregate_item_updates`` by ``rule``) of ``[S, d]`` slot rows, ``items
  [S]`` their item ids, ``touched [S]`` the real ones."""
  agg = lambda x: aggregate_item_updates(
      x, items, touched, num_items=num_items, num_clients=num_clients, rule=rule)[0]
  true = agg(rows)
  return jnp.linalg.norm(agg(decoded) - true) / jnp.maximum(jnp.linalg.norm(true), 1e-30)


def magnitude_shares(decoded, rows, client, num_clients):
  """``[M]``: per client, the share of the squared error ``sum |t - a|^2`` over its slot
  rows that is the rows' lengths, ``sum (|t| - |a|)^2`` (the rest, ``2 |t||a| (1 - cos)``,
  is their directions); ``decoded``/``rows``: ``[S, d]``, client: ``[S]``."""
  length = jnp.square(jnp.linalg.norm(rows, axis=1) - jnp.linalg.norm(decoded, axis=1))
  total = jnp.sum(jnp.square(rows - decoded), axis=1)
  length = jax.ops.segment_sum(length, client, num_segments=num_clients)
  total = jax.ops.segment_sum(total, client, num_segments=num_clients)
  return length / jnp.maximum(total, 1e-30)


def main(argv):
  del argv
  config = flag_lib.config_from_flags(TrainConfig).validate()
  # Checked before the data is loaded.
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    raise ValueError(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
  if _SUB_BLOCKS.value < 1:
    raise ValueError(f"--sub_blocks={_SUB_BLOCKS.value}: must be at least 1")
  if _STAGES.value is not None and _STAGES.value < 1:
    raise ValueError(f"--stages={_STAGES.value}: must be at least 1")
  flag_lib.refuse_process_group("block_error")
  if not _CKPT.value:
    raise ValueError("--ckpt_dir is required: the checkpoints/ of a run with the same flags")
  checkpoints = ckpt_lib.list_checkpoints(pathlib.Path(_CKPT.value))
  if not checkpoints:
    raise ValueError(f"--ckpt_dir={_CKPT.value}: no checkpoints there")
  enable_compilation_cache(flags.FLAGS.compilation_cache)
  split, _, _ = load_run_data(config)
  sim = build_simulation(config, split)
  gmf = max(1, config.dim // 4) if config.model == "ncf" else sim.model.item_dim
  d = sim.model.item_dim
  blocks = [(0, gmf), (gmf, d)] if gmf < d else [(0, d)]
  m = config.clients_per_round
  stages = sim.round_fn.stages
  local_fn = jax.jit(stages.local)
  buckets = sim.round_config.client_buckets

  def comp(width, ratio, method=config.method):
    return make_compressor(method,
                           split.num_items,
                           width,
                           payload_ratio=ratio,
                           max_k=config.max_k,
                           tau=config.tau,
                           tau_mode=config.tau_mode,
                           value_bits=config.value_bits,
                           stages=_STAGES.value or config.action_stages,
                           index_coding=config.index_coding)

  full = comp(d, config.payload_ratio)
  fixed = comp(d, config.payload_ratio, "fedras_fixed_k")
  baselines = {name: comp(d, config.payload_ratio, name) for name in ("svd", "topk")}
  parts = [comp(b - a, config.payload_ratio) for a, b in blocks]
  sub_blocks, subs = [], []  # the sub_blocks variant's column blocks and compressors
  if "sub_blocks" in _VARIANTS.value:
    if d % _SUB_BLOCKS.value:
      raise ValueError(f"--sub_blocks={_SUB_BLOCKS.value} does not divide the row width {d}")
    width = d // _SUB_BLOCKS.value
    sub_blocks = [(a, a + width) for a in range(0, d, width)]
    subs = [comp(width, config.payload_ratio)] * len(sub_blocks)

  def per_client(x, client):  # [S] -> [M]
    return jax.ops.segment_sum(x, client, num_segments=m)

  def block_errors(decoded, rows, client):
    return block_relative_errors(decoded, rows, client, blocks, m)

  def magnitude_share(decoded, rows, client):
    return magnitude_shares(decoded, rows, client, m)

  def aggregate_error(decoded, local):
    return aggregate_relative_error(decoded, local.deltas, local.items_of_slot, local.slot_ok,
                                    split.num_items, m, config.aggregation)

  def clustered_apart(local, col_blocks, compressors):
    """Each column block ``(start, stop)`` through its own compressor with its width's
    share of the client's budget: the blocks' errors (``[B + 1, M]``) and K (``[C, M]``)."""
    rows = local.deltas
    decoded, ks = [], []
    for (a, b), c in zip(col_blocks, compressors):
      up = roundtrip_clients(c,
                             rows[:, a:b],
                             local.layout.offset,
                             local.plans.num_slots, (local.budget * (b - a)) // d,
                             local.up_keys,
                             buckets=buckets)
      decoded.append(up.decoded)
      ks.append(up.num_actions)
    return block_errors(jnp.concatenate(decoded, axis=1), rows, local.layout.client), jnp.stack(ks)

  @jax.jit
  def measure(local):
    rows, client = local.deltas, local.layout.client
    args = (local.layout.offset, local.plans.num_slots)
    res = {}
    counts = per_client(jnp.any(rows != 0, axis=1).astype(jnp.float32), client)
    norms = jnp.stack([
        jnp.sqrt(per_client(jnp.sum(jnp.square(rows[:, a:b]), 1), client)) for a, b in blocks
    ])  # [B, M]
    res["norm"] = norms
    res["rms"] = norms / jnp.sqrt(jnp.array([b - a for a, b in blocks], jnp.float32))[:, None]
    res["rows"] = counts
    # The auto split threshold sqrt((1 + c1) / 2), c1: mean cosine of a row to its
    # client's mean row (the single-action start of the split test).
    live = jnp.any(rows != 0, axis=1)
    mean = jax.ops.segment_sum(rows, client, num_segments=m)[client]
    unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=1, keepdims=True), 1e-30)
    cos = jnp.where(live, jnp.sum(unit(rows) * unit(mean), axis=1), 0.0)
    res["auto_tau"] = auto_tau(per_client(cos, client) / jnp.maximum(counts, 1.0))
    for name, comp in (("joint", full), ("fixed_k", fixed)):
      if name in _VARIANTS.value:
        up = roundtrip_clients(comp, rows, *args, local.budget, local.up_keys, buckets=buckets)
        res[name] = block_errors(up.decoded, rows, client)
        res[f"{name}_k"] = up.num_actions
        res[f"{name}_magnitude_share"] = magnitude_share(up.decoded, rows, client)
        res[f"{name}_aggregate"] = aggregate_error(up.decoded, local)
    for name, baseline in baselines.items():
      if name in _VARIANTS.value:
        up = roundtrip_clients(baseline, rows, *args, local.budget, local.up_keys, buckets=buckets)
        res[name] = block_errors(up.decoded, rows, client)
        res[f"{name}_aggregate"] = aggregate_error(up.decoded, local)
    if "scaled" in _VARIANTS.value:
      scale = res["rms"].T[client]  # [S, B]
      cols = jnp.concatenate(
          [jnp.repeat(scale[:, i:i + 1], b - a, axis=1) for i, (a, b) in enumerate(blocks)], axis=1)
      cols = jnp.where(cols > 0, cols, 1.0)
      up = roundtrip_clients(full,
                             rows / cols,
                             *args,
                             local.budget - 32 * len(blocks),
                             local.up_keys,
                             buckets=buckets)
      res["scaled"] = block_errors(up.decoded * cols, rows, client)
      res["scaled_k"] = up.num_actions
    if "separate" in _VARIANTS.value:
      res["separate"], res["separate_k"] = clustered_apart(local, blocks, parts)
    if "sub_blocks" in _VARIANTS.value:
      res["sub_blocks"], res["sub_blocks_k"] = clustered_apart(local, sub_blocks, subs)
    return res

  @jax.jit
  def downlink_errors(server, local):
    up = stages.uplink(server, sim.hp, local)
    agg = stages.aggregate(server, local, up)
    budget = jnp.int32(int(sim.hp.downlink_budget_bits))
    key = jax.random.fold_in(round_key(server.key, server.round), DOWNLINK)
    down = roundtrip(sim.downlink,
                     agg.item_step,
                     agg.counts > 0,
                     budget,
                     key,
                     state=server.downlink_state)
    rel = lambda x: jnp.linalg.norm(x - down.target) / jnp.maximum(jnp.linalg.norm(down.target),
                                                                   1e-30)
    svd = roundtrip(baselines["svd"], down.target, jnp.any(down.target != 0, axis=1), budget, key)
    return {"downlink": rel(down.decoded), "downlink_svd": rel(svd.decoded)}

  template = (sim.server, sim.clients)
  out = open(_OUT.value, "w") if _OUT.value else None
  for round_index, path in checkpoints:
    (server, clients), _ = ckpt_lib.tree_from_bytes(path.read_bytes(), template, where=str(path))
    local = local_fn(server, clients, sim.hp)
    res = measure(local)
    if "downlink" in _VARIANTS.value:
      res.update(downlink_errors(server, local))
    row = {"round": round_index, "blocks": blocks}
    for k, v in jax.device_get(res).items():
      v = np.asarray(v, np.float64)
      row[k] = (np.mean(v, axis=-1) if v.ndim else v).round(4).tolist()
    line = outputs.dumps(row)  # strict JSON: a diverged round's NaN as null
    print(line, flush=True)
    if out:
      out.write(line + "\n")
  if out:
    out.close()


if __name__ == "__main__":
  flag_lib.run_main(main)
