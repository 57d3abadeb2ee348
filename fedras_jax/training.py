"""A whole training run: data -> model -> jitted rounds -> evaluation -> files.

``TrainConfig`` holds every setting of a run (the experiment binaries build it from
flags); ``train(config)`` runs it and returns the summary.

The workdir holds the run:

* ``.lock``: held while a run uses the workdir (``workdir_lock``);
* ``config.json``: the config the run was started with;
* ``metrics.jsonl`` and ``metrics.csv``: one row per evaluation (JSON files are strict:
  a non-finite number, e.g. the loss of a diverged run, is ``null``; ``outputs.dumps``);
* ``checkpoints/round_NNNNNN.msgpack``: every ``checkpoint_every`` rounds and at the
  last round (the newest two are kept): server state, stacked client states, the
  round counter and the host-side totals, metrics rows so far and best row
  (see ``fedras_jax.checkpoint``);
* ``summary.json`` (final figures and the exact config) and ``final_params.msgpack``
  (users, items, dense of the final model; ``checkpoint.load_params`` reads it).

Re-running the same command resumes from the newest checkpoint; a round depends only
on (seed, round, state), so the resumed run is bit-identical to an uninterrupted one
(timing fields aside: ``TIMING_FIELDS``). The metrics files are rewritten from the
checkpoint's rows, so rows written after it are dropped, not duplicated. A workdir
holding a run with different flags is refused unless ``overwrite`` (which starts
over); flags in ``NON_RESULT_FIELDS`` do not change a run's numbers and may differ.
"""
import contextlib
import csv
import dataclasses
import io
import math
import pathlib
import sys
import time
from typing import Any, Callable, List, NamedTuple, Optional

import jax
import numpy as np
import optax

from fedras_jax import checkpoint as ckpt_lib
from fedras_jax import data as data_lib
from fedras_jax import distributed
from fedras_jax import outputs
from fedras_jax.compress import dense_bits, identity
from fedras_jax.compress.registry import COMPRESSORS, make_compressor
from fedras_jax.federated import (AGGREGATIONS, LocalHParams, RoundConfig, RoundHParams,
                                  client_data_from_split, init_states, make_round,
                                  plan_capacity)
from fedras_jax.federated.bandwidth import BANDWIDTHS, draw_bandwidth
from fedras_jax.federated.round import round_clients
from fedras_jax.metrics import PROTOCOLS, make_evaluate
from fedras_jax.models import MODELS, get_model
from fedras_jax.workdir_lock import WorkdirLock

DATASETS = ("ml-100k", "ml-1m", "ml-1m-raw", "lastfm-2k")
# The settings of --dataset=PATH (``TrainConfig.file_options``).
FILE_OPTION_FLAGS = ("data_columns", "min_rating", "min_user_interactions",
                     "min_item_interactions", "kcore")
METHODS = tuple(m for m in COMPRESSORS if m != "identity")
ON_NONFINITE = ("skip", "stop")

# Settings that cannot change a run's numbers: where files are, how much is printed,
# how often state is saved, whether data may be downloaded, and whether a round with
# non-finite client updates stops the run (if it does not stop, the numbers are those
# of "skip"), and whether local training is sharded over devices (the sharded round
# equals the single-device one; a run may resume on another number of devices). A workdir whose run differs from the flags only in these is the same run
# (resumed). Everything else, eval_every and num_lanes included, counts: eval_every
# decides the rows of metrics.jsonl and the windows their loss/actions average over,
# and num_lanes changes the packing of local training, hence the compiled program.
NON_RESULT_FIELDS = frozenset(
    {"data_dir", "workdir", "quiet", "overwrite", "checkpoint_every", "download",
     "on_nonfinite", "shard_clients"})
# Row fields that measure wall time (they differ between otherwise identical runs).
TIMING_FIELDS = ("seconds_per_round", "wall_seconds")

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
PARAMS_FILE = "final_params.msgpack"
RUN_FILES = ("metrics.jsonl", "metrics.csv", "summary.json", PARAMS_FILE, CONFIG_FILE)


class WorkdirError(ValueError):
  """The workdir holds a run this config must not touch."""


class NonFiniteUpdateError(FloatingPointError):
  """``on_nonfinite="stop"`` and a round had clients with non-finite updates."""


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
  downlink_feedback: bool = True
  downlink_warm_start: bool = True
  max_k: int = 0
  tau: float = 0.9
  tau_mode: str = "auto"
  value_bits: int = 32
  bandwidth: str = "uniform"
  bandwidth_tiers: str = "4,16,32,64"
  bandwidth_sigma: float = 1.0
  fluctuation: float = 0.0
  compute_seconds: float = 0.0
  num_lanes: int = 8
  shard_clients: bool = False
  eval_every: int = 25
  seed: int = 0
  workdir: Optional[str] = None
  quiet: bool = False
  checkpoint_every: int = 50
  overwrite: bool = False
  download: bool = True
  on_nonfinite: str = "skip"
  validation: bool = False
  eval_protocol: str = "both"
  data_columns: str = ""
  min_rating: Optional[float] = None
  min_user_interactions: int = 0
  min_item_interactions: int = 0
  kcore: bool = False

  def validate(self):
    """Raises ``ValueError`` naming the first bad setting."""
    checks = [
        ("dataset", self.dataset in DATASETS or data_lib.is_path(self.dataset),
         f"one of {DATASETS} or a path to an interaction file (.inter, .csv, .tsv)"),
        ("model", self.model in MODELS, f"one of {sorted(MODELS)}"),
        ("aggregation", self.aggregation in AGGREGATIONS, f"one of {AGGREGATIONS}"),
        ("method", self.method in METHODS, f"one of {METHODS}"),
        ("bandwidth", self.bandwidth in BANDWIDTHS, f"one of {BANDWIDTHS}"),
        ("tau_mode", self.tau_mode in ("fixed", "auto"), "fixed or auto"),
        ("value_bits", self.value_bits in (16, 32), "16 or 32"),
        ("payload_ratio", 0 < self.payload_ratio <= 1, "in (0, 1]"),
        ("fluctuation", 0 <= self.fluctuation < 1, "in [0, 1)"),
        ("max_k", self.max_k >= 0, "non-negative (0: from the budget)"),
        ("bandwidth_tiers", _tiers_ok(self.bandwidth_tiers),
         "comma-separated finite positive numbers"),
        ("neg_ratio", self.neg_ratio >= 0, "non-negative"),
        ("init_scale", self.init_scale > 0, "positive"),
        ("checkpoint_every", self.checkpoint_every >= 0, "non-negative (0: off)"),
        ("on_nonfinite", self.on_nonfinite in ON_NONFINITE, f"one of {ON_NONFINITE}"),
        ("seed", 0 <= self.seed < 2**32, "an integer in [0, 2^32)"),
        ("eval_protocol", self.eval_protocol in PROTOCOLS, f"one of {PROTOCOLS}"),
    ]
    for name in ("dim", "rounds", "clients_per_round", "local_epochs", "batch_size",
                 "num_lanes", "eval_every"):
      checks.append((name, getattr(self, name) > 0, "positive"))
    for name in ("user_lr", "item_lr", "dense_lr", "weight_decay", "server_lr",
                 "compute_seconds"):  # a negative step or duration has no meaning here
      value = getattr(self, name)
      checks.append((name, math.isfinite(value) and value >= 0, "finite and >= 0"))
    for name in ("init_scale", "tau", "bandwidth_sigma"):
      checks.append((name, math.isfinite(getattr(self, name)), "finite"))
    for name, ok, want in checks:
      if not ok:
        raise ValueError(f"--{name}={getattr(self, name)!r} is invalid: must be {want}")
    if self.dataset in DATASETS:
      for name in FILE_OPTION_FLAGS:
        if getattr(self, name) != getattr(TrainConfig, name):
          raise ValueError(f"--{name}={getattr(self, name)!r} applies to --dataset=PATH "
                           f"only, not to --dataset={self.dataset}")
    self.file_options().check()
    return self

  def file_options(self):
    """How ``--dataset=PATH`` is read (see ``fedras_jax.data.userfile``)."""
    return data_lib.FileOptions(
        columns=self.data_columns, min_rating=self.min_rating,
        min_user_interactions=self.min_user_interactions,
        min_item_interactions=self.min_item_interactions, kcore=self.kcore)


def dataset_label(dataset: str) -> str:
  """A dataset's short name: its name, or a file's name without the suffix."""
  return pathlib.Path(dataset).stem if data_lib.is_path(dataset) else dataset


def _tiers_ok(text: str) -> bool:
  try:
    return all(math.isfinite(float(t)) and float(t) > 0 for t in text.split(","))
  except ValueError:
    return False


def build_compressors(config: TrainConfig, num_items: int, item_dim: int):
  """``(uplink, downlink)`` compressors of ``config.method`` (see ``compress.registry``)."""
  up = make_compressor(config.method, num_items, item_dim, payload_ratio=config.payload_ratio,
                       max_k=config.max_k, tau=config.tau, tau_mode=config.tau_mode,
                       value_bits=config.value_bits)
  down = up if config.downlink_compression else identity(num_items)
  return up, down


def build_round_config(config: TrainConfig, split, seeds) -> RoundConfig:
  """The static round shape fitting every round of ``config`` for all ``seeds``."""
  capacity = plan_capacity(
      split.num_train_per_user, np.diff(split.seen_indptr), split.num_items, seed=list(seeds),
      rounds=config.rounds, clients_per_round=config.clients_per_round,
      local_epochs=config.local_epochs, batch_size=config.batch_size,
      neg_ratio=config.neg_ratio, num_lanes=config.num_lanes)
  return RoundConfig(
      clients_per_round=config.clients_per_round, local_epochs=config.local_epochs,
      batch_size=config.batch_size, neg_ratio=config.neg_ratio, num_lanes=config.num_lanes,
      aggregation=config.aggregation, downlink_feedback=config.downlink_feedback,
      downlink_warm_start=config.downlink_warm_start,
      **capacity._asdict())


def build_bandwidth(config: TrainConfig, num_users: int, dense_round_bits: int):
  """``[num_users]`` bandwidths of ``config`` (uncompressed + uniform: the dense size)."""
  ratio = (1.0 if config.method == "uncompressed" and config.bandwidth == "uniform"
           else config.payload_ratio)
  return draw_bandwidth(config.bandwidth, num_users, dense_round_bits, seed=config.seed,
                        payload_ratio=ratio,
                        tiers=[float(t) for t in config.bandwidth_tiers.split(",")],
                        sigma=config.bandwidth_sigma)


def round_hparams(config: TrainConfig, dense_round_bits: int) -> RoundHParams:
  """The traced round hyper-parameters of ``config``."""
  return RoundHParams(
      local=LocalHParams(user_lr=config.user_lr, item_lr=config.item_lr,
                         dense_lr=config.dense_lr, weight_decay=config.weight_decay),
      fluctuation=config.fluctuation, compute_seconds=config.compute_seconds,
      downlink_budget_bits=float(config.payload_ratio * dense_round_bits))


class Simulation(NamedTuple):
  """Everything a run of ``config`` on a split steps through (see ``build_simulation``):
  the model, static round shape, server optimizer, compressors, the pure (unjitted)
  ``round_fn`` (``round_fn.stages``: its ``RoundStages``), its hyper-parameters and the
  initial server and client states."""
  model: Any
  round_config: RoundConfig
  server_opt: Any
  uplink: Any
  downlink: Any
  round_fn: Callable
  hp: RoundHParams
  server: Any
  clients: Any
  dense_round_bits: int


def build_simulation(config: TrainConfig, split, *, round_config: RoundConfig = None,
                     mesh=None) -> Simulation:
  """Model, round and initial states of ``config`` on ``split`` (one place for train,
  the benchmarks and anything else that steps rounds). ``round_config``: the static
  round shape if already planned (default ``build_round_config`` for ``config.seed``);
  ``mesh``: devices to shard local training over (see ``make_round``)."""
  model = build_model(config)
  round_config = round_config or build_round_config(config, split, seeds=[config.seed])
  server_opt = optax.sgd(config.server_lr)
  dense_round_bits = dense_bits(split.num_items, model.item_dim)
  bandwidth = build_bandwidth(config, split.num_users, dense_round_bits)
  uplink, downlink = build_compressors(config, split.num_items, model.item_dim)
  server, clients = init_states(model, split.num_users, split.num_items, server_opt,
                                seed=config.seed, bandwidth=bandwidth, downlink=downlink)
  round_fn = make_round(model, client_data_from_split(split), round_config, server_opt,
                        uplink=uplink, downlink=downlink, mesh=mesh)
  return Simulation(model=model, round_config=round_config, server_opt=server_opt,
                    uplink=uplink, downlink=downlink, round_fn=round_fn,
                    hp=round_hparams(config, dense_round_bits), server=server, clients=clients,
                    dense_round_bits=dense_round_bits)


# Seed offset of the validation negatives: never the test negatives' draw.
_VALID_NEGATIVES_SEED = 7_919


def run_mesh(config: TrainConfig):
  """The ``("clients",)`` mesh over every global device that local training is sharded
  over (with ``config.shard_clients`` or when the run spans several processes), else
  None."""
  if not (config.shard_clients or jax.process_count() > 1):
    return None
  mesh = distributed.client_mesh()
  if config.num_lanes % mesh.size:
    raise ValueError(f"--num_lanes={config.num_lanes} is invalid: sharding clients over "
                     f"{mesh.size} devices needs a multiple of {mesh.size}")
  return mesh


def load_run_data(config: TrainConfig):
  """``(split, eval_items [U], eval_negatives [U, 99])`` of ``config``.

  With ``config.validation`` one more interaction per user (the latest before the
  test one) is held out of training and is what runs are scored on, against 99
  negatives of their own draw: tuning never sees the test items. Otherwise runs
  are scored on the test items and their saved negatives.
  """
  split = data_lib.load_dataset(
      config.dataset, config.data_dir, seed=config.seed, num_valid=int(config.validation),
      download=config.download,
      file_options=None if config.dataset in DATASETS else config.file_options())
  if not config.validation:
    return split, split.test_item, split.test_negatives
  negatives = data_lib.sample_negatives(
      split.seen_indptr, split.seen_items, split.num_items, split.test_negatives.shape[1],
      seed=config.seed + _VALID_NEGATIVES_SEED, name=config.dataset)
  return split, split.valid_item, negatives


def build_model(config: TrainConfig):
  if config.model == "mf":
    return get_model("mf", dim=config.dim, init_scale=config.init_scale)
  # NeuMF: GMF branch of dim/4 and MLP branch of dim (defaults 16 and 64).
  return get_model("ncf", gmf_dim=max(1, config.dim // 4), mlp_dim=config.dim,
                   layers=(2 * config.dim, config.dim, config.dim // 2, config.dim // 4),
                   init_scale=config.init_scale)


class _Writer:
  """Writes evaluation rows to metrics.jsonl and metrics.csv in the workdir.

  Starts the files over from ``rows`` (the rows a resumed run already has; none for
  a fresh run), written atomically, then appends one row per ``write``.
  """

  def __init__(self, workdir: Optional[str], rows=()):
    self.dir = pathlib.Path(workdir) if workdir else None
    self.fields = list(rows[0]) if rows else None
    if not self.dir:
      return
    self.dir.mkdir(parents=True, exist_ok=True)
    if not rows:
      for name in ("metrics.jsonl", "metrics.csv"):
        (self.dir / name).unlink(missing_ok=True)
      return
    outputs.write_atomic(self.dir / "metrics.jsonl",
                         "".join(outputs.dumps(r) + "\n" for r in rows).encode())
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, self.fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    outputs.write_atomic(self.dir / "metrics.csv", text.getvalue().encode())

  def write(self, row: dict):
    if not self.dir:
      return
    path = self.dir / "metrics.jsonl"
    with outputs.naming(path), open(path, "a") as f:
      f.write(outputs.dumps(row) + "\n")
    new = self.fields is None
    self.fields = self.fields or list(row)
    path = self.dir / "metrics.csv"
    with outputs.naming(path), open(path, "a", newline="") as f:
      writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
      if new:
        writer.writeheader()
      writer.writerow(row)

  def summary(self, summary: dict):
    if self.dir:
      outputs.write_json(self.dir / "summary.json", summary)


# ------------------------------------------------------------------ workdir --

def recorded_config(workdir) -> Optional[dict]:
  """The config of the run held in ``workdir`` (``config.json``, else the one in
  ``summary.json``), or None if it holds none."""
  workdir = pathlib.Path(workdir)
  for name, get in ((CONFIG_FILE, lambda d: d),
                    ("summary.json", lambda d: d.get("config") if isinstance(d, dict) else d)):
    path = workdir / name
    if path.exists():
      remedy = "use --overwrite to start over"
      try:
        recorded = get(outputs.read_json(path, remedy))
      except ValueError as e:
        raise WorkdirError(str(e)) from None
      if not isinstance(recorded, dict):
        raise WorkdirError(f"{path} holds no config; {remedy}")
      return recorded
  return None


def config_differences(recorded: dict, config: TrainConfig) -> List[str]:
  """``["--name (workdir X, now Y)", ...]`` for the result-affecting settings of
  ``config`` that differ from ``recorded`` (a field it lacks: its default)."""
  out = []
  for field in dataclasses.fields(config):
    if field.name in NON_RESULT_FIELDS:
      continue
    old, new = recorded.get(field.name, field.default), getattr(config, field.name)
    if old != new:
      out.append(f"--{field.name} (workdir {old!r}, now {new!r})")
  return out


def _refuse(workdir, diffs: List[str]):
  raise WorkdirError(
      f"--workdir={workdir} holds a run with different flags: {', '.join(diffs)}; rerun "
      "with its flags to resume it, or add --overwrite to replace it")


def clear_run(workdir):
  """Removes the files of a run from ``workdir`` (other files are left alone)."""
  workdir = pathlib.Path(workdir)
  for name in RUN_FILES:
    (workdir / name).unlink(missing_ok=True)
  ckpt_dir = workdir / CHECKPOINT_DIR
  for _, path in ckpt_lib.list_checkpoints(ckpt_dir):
    path.unlink(missing_ok=True)
  if ckpt_dir.is_dir():
    for tmp in ckpt_dir.glob(".round_*.tmp"):
      tmp.unlink(missing_ok=True)
    try:
      ckpt_dir.rmdir()
    except OSError:  # not empty: someone else's files
      pass


def _prepare_workdir(config: TrainConfig) -> bool:
  """Checks (or clears, with ``overwrite``) the workdir; True if it may be resumed."""
  workdir = pathlib.Path(config.workdir)
  if config.overwrite:
    clear_run(workdir)
    return False
  recorded = recorded_config(workdir)
  if recorded is not None:
    diffs = config_differences(recorded, config)
    if diffs:
      _refuse(config.workdir, diffs)
  return True


# --------------------------------------------------------------------- run --

def _fresh_host(config: TrainConfig) -> dict:
  """Host-side state of a run (checkpointed as JSON next to the arrays)."""
  return dict(config=dataclasses.asdict(config),
              totals=dict(bits_up=0, bits_down=0, sim_seconds=0.0, skipped=0, info_loss=0.0),
              window=dict(actions=[], error_up=[], error_down=[]), loss_sum=0.0,
              loss_rounds=0, rows=[], best=None, train_seconds=0.0, timed_rounds=0,
              compile_seconds=None, wall_seconds=0.0)


def _skipped_users(sampled, rows_before, rows_after, loss, count: int):
  """Sorted user ids of the ``count`` clients the round dropped, or None if they
  cannot be told apart. A dropped client keeps its user row bit for bit (a trained
  one moves); fallback: the clients whose training loss is non-finite."""
  sampled = np.asarray(sampled)
  m = len(sampled)
  same = np.all(np.asarray(rows_before).view(np.uint8).reshape(m, -1)
                == np.asarray(rows_after).view(np.uint8).reshape(m, -1), axis=1)
  for mask in (same, ~np.isfinite(np.asarray(loss))):
    if int(mask.sum()) == count:
      return sorted(int(u) for u in sampled[mask])
  return None


def train(config: TrainConfig, log: Callable[[str], None] = print) -> dict:
  """Runs ``config`` to the end (resuming the run in its workdir if there is one);
  returns the summary (also written to the workdir).

  In a multi-process run (see ``fedras_jax.distributed``) every process calls this
  with the same config; local training is sharded over every global device, and
  only process 0 logs, holds the workdir and writes files (its summary is the run's).

  The workdir is locked for the whole run (``workdir_lock``, by process 0): another
  run on it raises ``WorkdirLockError`` before anything in it is read or changed.
  """
  config.validate()
  with contextlib.ExitStack() as hold:
    return _run(config, log, hold)


def _run(config: TrainConfig, log: Callable[[str], None], hold: contextlib.ExitStack) -> dict:
  """``train`` of a validated ``config``; process 0 enters the workdir's lock into
  ``hold`` (released when ``train`` returns) before it reads or changes the workdir."""
  writes = distributed.is_writer()

  def say(msg: str):
    if not config.quiet and writes:
      log(msg)
      if log is print:
        sys.stdout.flush()

  workdir = pathlib.Path(config.workdir) if config.workdir else None
  split, eval_items, eval_negatives = load_run_data(config)
  if config.clients_per_round > split.num_users:
    raise ValueError(f"--clients_per_round={config.clients_per_round} exceeds the number of "
                     f"users of {config.dataset} ({split.num_users})")
  say(f"{config.dataset}: {split.num_users} users, {split.num_items} items, "
      f"{len(split.train_items)} training interactions")
  mesh = run_mesh(config)
  if workdir:
    say(f"writing to {workdir}")
  sim = build_simulation(config, split, mesh=mesh)
  model, round_config = sim.model, sim.round_config
  dense_round_bits, hp = sim.dense_round_bits, sim.hp
  round_fn = distributed.jit(sim.round_fn, mesh, donate_argnums=(0, 1))
  evaluate = make_evaluate(model, eval_items, eval_negatives, protocol=config.eval_protocol,
                           train_indptr=split.train_indptr, train_items=split.train_items,
                           num_items=split.num_items)
  primary = primary_metric(config)
  m = config.clients_per_round
  # The user rows of the clients a round will sample (to name the ones it drops).
  rows_to_sample = distributed.jit(
      lambda key, r, users: users[round_clients(key, r, split.num_users, m)], mesh)

  def resume():  # the workdir is process 0's alone
    host, start_round, state = _fresh_host(config), 0, (sim.server, sim.clients)
    if workdir:
      hold.enter_context(WorkdirLock(config.workdir, warn=log))
    if workdir and _prepare_workdir(config):
      found = ckpt_lib.restore_latest(workdir / CHECKPOINT_DIR, state, warn=log)
      if found is not None:
        start_round, state, host, path = found
        diffs = config_differences(host["config"], config)
        if diffs:
          _refuse(config.workdir, diffs)
        if int(state[0].round) != start_round:
          raise ckpt_lib.CheckpointError(f"{path}: server round {int(state[0].round)} != "
                                         f"{start_round}")
        host["config"] = dataclasses.asdict(config)
        say(f"resuming from round {start_round} of {config.rounds} ({path})")
    return host, (np.int32(start_round), state)

  host, (start_round, (server, clients)) = distributed.on_writer(
      resume, (np.int32(0), (sim.server, sim.clients)))
  start_round, host = int(start_round), host or _fresh_host(config)
  if mesh is not None:
    server, clients = distributed.replicate((server, clients), mesh)
  writer = _Writer(config.workdir if writes else None, host["rows"])
  if workdir and writes:
    outputs.write_json(workdir / CONFIG_FILE, dataclasses.asdict(config))

  totals, window = host["totals"], host["window"]
  wall_before, start = host["wall_seconds"], time.time()
  compile_seconds = None
  for r in range(start_round + 1, config.rounds + 1):
    rows_before = rows_to_sample(server.key, server.round, clients.users)
    t0 = time.time()
    server, clients, metrics = round_fn(server, clients, hp)
    metrics = jax.device_get(metrics)
    if compile_seconds is None:  # the first round of this process compiles
      compile_seconds = time.time() - t0
    else:
      host["train_seconds"] += time.time() - t0
      host["timed_rounds"] += 1
    skipped = int(metrics.skipped)
    totals["bits_up"] += int(np.sum(metrics.bits_up, dtype=np.int64))
    totals["bits_down"] += int(metrics.bits_down) * m
    totals["sim_seconds"] += float(metrics.sim_seconds)
    totals["skipped"] += skipped
    totals["info_loss"] += float(metrics.info_loss)
    window["actions"].append(np.asarray(metrics.num_actions).tolist())
    window["error_up"].append(float(np.mean(metrics.error_up)))
    window["error_down"].append(float(metrics.error_down))
    host["loss_sum"] += float(np.mean(metrics.loss))
    host["loss_rounds"] += 1
    if skipped:
      ids = _skipped_users(metrics.sampled, rows_before,
                           np.asarray(clients.users)[np.asarray(metrics.sampled)],
                           metrics.loss, skipped)
      what = (f"round {r}: {skipped} of {m} sampled clients sent a non-finite update "
              + (f"(user ids {ids})" if ids is not None
                 else f"(among user ids {sorted(int(u) for u in metrics.sampled)})"))
      if config.on_nonfinite == "stop":
        raise NonFiniteUpdateError(f"{what}; stopped (--on_nonfinite=stop)")
      say(f"{what}; skipped them")
    elif not np.isfinite(metrics.loss).all():
      raise FloatingPointError(f"round {r}: non-finite training loss")
    if r % config.eval_every == 0 or r == config.rounds:
      scores = {k: float(v) for k, v in evaluate(clients.users, server.items, server.dense).items()}
      per_round = host["train_seconds"] / host["timed_rounds"] if host["timed_rounds"] else 0.0
      actions = np.asarray(window["actions"], np.int32)
      row = dict(round=r, **scores, loss=host["loss_sum"] / host["loss_rounds"],
                 bits_up_total=totals["bits_up"], bits_down_total=totals["bits_down"],
                 compression_up=1.0 - float(np.mean(metrics.bits_up)) / dense_round_bits,
                 compression_down=1.0 - float(metrics.bits_down) / dense_round_bits,
                 bits_up_mean=float(np.mean(metrics.bits_up)),
                 bits_up_max=int(np.max(metrics.bits_up)),
                 actions_mean=float(np.mean(actions)),
                 actions_min=int(np.min(actions)),
                 actions_max=int(np.max(actions)),
                 error_up=float(np.mean(window["error_up"])),
                 error_down=float(np.mean(window["error_down"])),
                 info_loss_total=totals["info_loss"],
                 sim_seconds=totals["sim_seconds"], skipped_clients=totals["skipped"],
                 seconds_per_round=per_round,
                 wall_seconds=wall_before + time.time() - start)
      host["loss_sum"], host["loss_rounds"] = 0.0, 0
      for values in window.values():
        values.clear()
      host["rows"].append(row)
      writer.write(row)
      if host["best"] is None or row[primary] > host["best"][primary]:
        host["best"] = row
      eta = per_round * (config.rounds - r)
      speed = f"{1 / per_round:.1f} rounds/s" if per_round > 0 else "- rounds/s"
      say(f"round {r:5d}/{config.rounds}  {scores_text(row)}  loss {row['loss']:.4f}  {speed}"
          f"  ETA {eta:.0f}s  up {totals['bits_up'] / 8e6:.1f} MB"
          f"  down {totals['bits_down'] / 8e6:.1f} MB  K {row['actions_mean']:.1f}"
          f"  sim {totals['sim_seconds']:.0f}s")
    if workdir and writes and config.checkpoint_every and (r % config.checkpoint_every == 0
                                                or r == config.rounds):
      host["wall_seconds"] = wall_before + time.time() - start
      if host["compile_seconds"] is None:
        host["compile_seconds"] = compile_seconds
      ckpt_lib.save(workdir / CHECKPOINT_DIR, r, (server, clients), host)

  row, best = host["rows"][-1], host["best"]
  if workdir and writes:
    ckpt_lib.save_params(workdir / PARAMS_FILE,
                         dict(users=clients.users, items=server.items, dense=server.dense))
  compile_seconds = compile_seconds if compile_seconds is not None else host["compile_seconds"]
  summary = dict(final=row, best=best, compile_seconds=compile_seconds,
                 train_seconds=host["train_seconds"],
                 client_updates_per_second=m * host["timed_rounds"]
                 / max(host["train_seconds"], 1e-9),
                 capacity=dict(slot_capacity=round_config.slot_capacity,
                               client_buckets=round_config.client_buckets,
                               max_lane_steps=round_config.max_lane_steps),
                 config=dataclasses.asdict(config),
                 resumed_from_round=start_round or None)
  writer.summary(summary)
  if writes:  # the final line, printed also with --quiet
    where = f", files in {config.workdir}" if config.workdir else ""
    log(f"done: {scores_text(row)}  (compile {compile_seconds or 0.0:.1f}s, "
        f"{host['train_seconds']:.1f}s training{where})")
    if log is print:
      sys.stdout.flush()
  return summary


def primary_metric(config: TrainConfig) -> str:
  """The metric a run's best row is chosen by: sampled HR@10, full-ranking HR@10
  when only that is computed."""
  return "full_hr@10" if config.eval_protocol == "full" else "hr@10"


def scores_text(row: dict) -> str:
  """``HR@10 x  NDCG@10 y  full HR@10 z  NDCG@10 w`` (the protocols ``row`` has)."""
  parts = []
  for prefix, label in (("", ""), ("full_", "full ")):
    if f"{prefix}hr@10" in row:
      parts.append(f"{label}HR@10 {row[prefix + 'hr@10']:.4f}  "
                   f"NDCG@10 {row[prefix + 'ndcg@10']:.4f}")
  return "  ".join(parts)
