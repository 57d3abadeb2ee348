"""A whole training run: data -> model -> jitted rounds -> evaluation -> files.

``TrainConfig`` holds every setting of a run (the experiment binaries build it from
flags); ``train(config)`` runs it and returns the summary. The workdir receives
``metrics.jsonl`` and ``metrics.csv`` (one row per evaluation) and ``summary.json``
(final figures and the exact config).
"""
import csv
import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedras_jax import data as data_lib
from fedras_jax import quantize
from fedras_jax.compress import dense_bits, fedras, identity
from fedras_jax.federated import (AGGREGATIONS, LocalHParams, RoundConfig, RoundHParams,
                                  client_data_from_split, init_states, make_round,
                                  plan_capacity)
from fedras_jax.federated.bandwidth import BANDWIDTHS, draw_bandwidth
from fedras_jax.metrics import make_evaluate
from fedras_jax.models import MODELS, get_model

DATASETS = ("ml-100k", "ml-1m", "ml-1m-raw", "lastfm-2k")
METHODS = ("fedras", "uncompressed")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every setting of a run (defaults: FedRAS-compressed FedMF on ML-100K)."""
  dataset: str = "ml-100k"
  data_dir: Optional[str] = None
  model: str = "mf"
  dim: int = 64
  init_scale: float = 0.01
  rounds: int = 300
  clients_per_round: int = 64
  local_epochs: int = 2
  batch_size: int = 64
  neg_ratio: int = 4
  user_lr: float = 1.0
  item_lr: float = 8.0
  dense_lr: float = 0.1
  weight_decay: float = 0.0
  server_lr: float = 1.0
  aggregation: str = "inverse_frequency"
  method: str = "fedras"
  payload_ratio: float = 1 / 32
  downlink_compression: bool = True
  max_k: int = 0
  tau: float = 0.9
  tau_mode: str = "auto"
  value_bits: int = 32
  bandwidth: str = "uniform"
  bandwidth_tiers: str = "4,16,32,64"
  bandwidth_sigma: float = 1.0
  fluctuation: float = 0.0
  compute_seconds: float = 0.0
  num_lanes: int = 16
  eval_every: int = 25
  seed: int = 0
  workdir: Optional[str] = None
  quiet: bool = False

  def validate(self):
    """Raises ``ValueError`` naming the first bad setting."""
    checks = [
        ("dataset", self.dataset in DATASETS, f"one of {DATASETS}"),
        ("model", self.model in MODELS, f"one of {sorted(MODELS)}"),
        ("aggregation", self.aggregation in AGGREGATIONS, f"one of {AGGREGATIONS}"),
        ("method", self.method in METHODS, f"one of {METHODS}"),
        ("bandwidth", self.bandwidth in BANDWIDTHS, f"one of {BANDWIDTHS}"),
        ("tau_mode", self.tau_mode in ("fixed", "auto"), "fixed or auto"),
        ("value_bits", self.value_bits in (16, 32), "16 or 32"),
        ("payload_ratio", 0 < self.payload_ratio <= 1, "in (0, 1]"),
        ("fluctuation", 0 <= self.fluctuation < 1, "in [0, 1)"),
        ("max_k", self.max_k >= 0, "non-negative (0: from the budget)"),
        ("bandwidth_tiers", _tiers_ok(self.bandwidth_tiers), "comma-separated positive numbers"),
        ("neg_ratio", self.neg_ratio >= 0, "non-negative"),
        ("init_scale", self.init_scale > 0, "positive"),
    ]
    for name in ("dim", "rounds", "clients_per_round", "local_epochs", "batch_size",
                 "num_lanes", "eval_every"):
      checks.append((name, getattr(self, name) > 0, "positive"))
    for name in ("user_lr", "item_lr", "dense_lr", "weight_decay", "server_lr", "init_scale",
                 "tau", "bandwidth_sigma", "compute_seconds"):
      checks.append((name, math.isfinite(getattr(self, name)), "finite"))
    for name, ok, want in checks:
      if not ok:
        raise ValueError(f"--{name}={getattr(self, name)!r} is invalid: must be {want}")
    return self


def _tiers_ok(text: str) -> bool:
  try:
    return all(float(t) > 0 for t in text.split(","))
  except ValueError:
    return False


def build_compressors(config: TrainConfig, num_items: int, item_dim: int):
  """``(uplink, downlink)`` compressors of ``config.method``."""
  if config.method == "uncompressed":
    return identity(num_items), identity(num_items)
  max_k = config.max_k
  if max_k == 0:  # the largest K the payload ratio allows, in multiples of 16, at most 128
    budget = config.payload_ratio * dense_bits(num_items, item_dim)
    k = int(quantize.max_actions_for_budget(int(budget), num_items, item_dim, max_k=4096,
                                            value_bits=config.value_bits))
    max_k = min(128, max(16, -(-k // 16) * 16))
  up = fedras(num_items, max_k=max_k, tau=config.tau, tau_mode=config.tau_mode,
              value_bits=config.value_bits)
  down = up if config.downlink_compression else identity(num_items)
  return up, down


def build_model(config: TrainConfig):
  if config.model == "mf":
    return get_model("mf", dim=config.dim, init_scale=config.init_scale)
  # NeuMF: GMF branch of dim/4 and MLP branch of dim (defaults 16 and 64).
  return get_model("ncf", gmf_dim=max(1, config.dim // 4), mlp_dim=config.dim,
                   layers=(2 * config.dim, config.dim, config.dim // 2, config.dim // 4),
                   init_scale=config.init_scale)


class _Writer:
  """Appends evaluation rows to metrics.jsonl and metrics.csv in the workdir."""

  def __init__(self, workdir: Optional[str]):
    self.dir = pathlib.Path(workdir) if workdir else None
    if self.dir:
      self.dir.mkdir(parents=True, exist_ok=True)
      for name in ("metrics.jsonl", "metrics.csv"):
        (self.dir / name).unlink(missing_ok=True)
    self.fields = None

  def write(self, row: dict):
    if not self.dir:
      return
    with open(self.dir / "metrics.jsonl", "a") as f:
      f.write(json.dumps(row) + "\n")
    new = self.fields is None
    self.fields = self.fields or list(row)
    with open(self.dir / "metrics.csv", "a", newline="") as f:
      writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
      if new:
        writer.writeheader()
      writer.writerow(row)

  def summary(self, summary: dict):
    if not self.dir:
      return
    tmp = self.dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, self.dir / "summary.json")


def train(config: TrainConfig, log: Callable[[str], None] = print) -> dict:
  """Runs ``config`` to the end; returns the summary (also written to the workdir)."""
  config.validate()
  say = (lambda *_: None) if config.quiet else log
  split = data_lib.load_dataset(config.dataset, config.data_dir, seed=config.seed)
  if config.clients_per_round > split.num_users:
    raise ValueError(f"--clients_per_round={config.clients_per_round} exceeds the number of "
                     f"users of {config.dataset} ({split.num_users})")
  say(f"{config.dataset}: {split.num_users} users, {split.num_items} items, "
      f"{len(split.train_items)} training interactions")
  model = build_model(config)
  capacity = plan_capacity(
      split.num_train_per_user, np.diff(split.seen_indptr), split.num_items, seed=config.seed,
      rounds=config.rounds, clients_per_round=config.clients_per_round,
      local_epochs=config.local_epochs, batch_size=config.batch_size,
      neg_ratio=config.neg_ratio, num_lanes=config.num_lanes)
  round_config = RoundConfig(
      clients_per_round=config.clients_per_round, local_epochs=config.local_epochs,
      batch_size=config.batch_size, neg_ratio=config.neg_ratio, num_lanes=config.num_lanes,
      aggregation=config.aggregation, **capacity._asdict())
  server_opt = optax.sgd(config.server_lr)
  dense_round_bits = dense_bits(split.num_items, model.item_dim)
  bandwidth = draw_bandwidth(
      config.bandwidth, split.num_users, dense_round_bits, seed=config.seed,
      payload_ratio=1.0 if config.method == "uncompressed" and config.bandwidth == "uniform"
      else config.payload_ratio,
      tiers=[float(t) for t in config.bandwidth_tiers.split(",")], sigma=config.bandwidth_sigma)
  server, clients = init_states(model, split.num_users, split.num_items, server_opt,
                                seed=config.seed, bandwidth=bandwidth)
  uplink, downlink = build_compressors(config, split.num_items, model.item_dim)
  round_fn = jax.jit(make_round(model, client_data_from_split(split), round_config, server_opt,
                                uplink=uplink, downlink=downlink), donate_argnums=(0, 1))
  hp = RoundHParams(
      local=LocalHParams(user_lr=config.user_lr, item_lr=config.item_lr,
                         dense_lr=config.dense_lr, weight_decay=config.weight_decay),
      fluctuation=config.fluctuation, compute_seconds=config.compute_seconds,
      downlink_budget_bits=float(config.payload_ratio * dense_round_bits))
  evaluate = make_evaluate(model, split.test_item, split.test_negatives)
  writer = _Writer(config.workdir)

  totals = dict(bits_up=0, bits_down=0, sim_seconds=0.0, skipped=0, info_loss=0.0)
  window = dict(actions=[], error_up=[], error_down=[])
  best, row, loss_sum, loss_rounds = None, None, 0.0, 0
  start = time.time()
  t0 = time.time()
  server, clients, metrics = round_fn(server, clients, hp)
  metrics = jax.device_get(metrics)
  compile_seconds = time.time() - t0
  train_seconds = 0.0
  for r in range(1, config.rounds + 1):
    if r > 1:
      t0 = time.time()
      server, clients, metrics = round_fn(server, clients, hp)
      metrics = jax.device_get(metrics)
      train_seconds += time.time() - t0
    totals["bits_up"] += int(np.sum(metrics.bits_up, dtype=np.int64))
    totals["bits_down"] += int(metrics.bits_down) * config.clients_per_round
    totals["sim_seconds"] += float(metrics.sim_seconds)
    totals["skipped"] += int(metrics.skipped)
    totals["info_loss"] += float(metrics.info_loss)
    window["actions"].append(metrics.num_actions)
    window["error_up"].append(float(np.mean(metrics.error_up)))
    window["error_down"].append(float(metrics.error_down))
    loss_sum += float(np.mean(metrics.loss))
    loss_rounds += 1
    if not np.isfinite(metrics.loss).all() and totals["skipped"] == 0:
      raise FloatingPointError(f"round {r}: non-finite training loss")
    if r % config.eval_every == 0 or r == config.rounds:
      scores = {k: float(v) for k, v in evaluate(clients.users, server.items, server.dense).items()}
      per_round = train_seconds / max(r - 1, 1)
      row = dict(round=r, **scores, loss=loss_sum / loss_rounds,
                 bits_up_total=totals["bits_up"], bits_down_total=totals["bits_down"],
                 compression_up=1.0 - float(np.mean(metrics.bits_up)) / dense_round_bits,
                 compression_down=1.0 - float(metrics.bits_down) / dense_round_bits,
                 bits_up_mean=float(np.mean(metrics.bits_up)),
                 bits_up_max=int(np.max(metrics.bits_up)),
                 actions_mean=float(np.mean(window["actions"])),
                 actions_min=int(np.min(window["actions"])),
                 actions_max=int(np.max(window["actions"])),
                 error_up=float(np.mean(window["error_up"])),
                 error_down=float(np.mean(window["error_down"])),
                 info_loss_total=totals["info_loss"],
                 sim_seconds=totals["sim_seconds"], skipped_clients=totals["skipped"],
                 seconds_per_round=per_round, wall_seconds=time.time() - start)
      loss_sum, loss_rounds = 0.0, 0
      window = {k: [] for k in window}
      writer.write(row)
      if best is None or row["hr@10"] > best["hr@10"]:
        best = row
      eta = per_round * (config.rounds - r)
      say(f"round {r:5d}/{config.rounds}  HR@10 {row['hr@10']:.4f}  NDCG@10 {row['ndcg@10']:.4f}"
          f"  loss {row['loss']:.4f}  {1 / max(per_round, 1e-9):.1f} rounds/s  ETA {eta:.0f}s"
          f"  up {totals['bits_up'] / 8e6:.1f} MB  K {row['actions_mean']:.1f}"
          f"  sim {totals['sim_seconds']:.0f}s")
  summary = dict(final=row, best=best, compile_seconds=compile_seconds,
                 train_seconds=train_seconds,
                 client_updates_per_second=config.clients_per_round * (config.rounds - 1)
                 / max(train_seconds, 1e-9),
                 capacity=capacity._asdict(), config=dataclasses.asdict(config))
  writer.summary(summary)
  say(f"done: HR@10 {row['hr@10']:.4f}  NDCG@10 {row['ndcg@10']:.4f}  "
      f"(compile {compile_seconds:.1f}s, {train_seconds:.1f}s training)")
  return summary
