"""``TrainConfig``: every setting of a run, with its help text and group.

Each field is declared with ``setting(group, default, help)``: the experiment binaries
define one absl flag per field from this metadata (``flags.define_flags``), so a setting,
its flag and its help never drift apart. The groups (``GROUPS``) say what a setting is
about: the data, the model, the federated simulation, the compression, or the run
itself (evaluation, files, printing).

The config is one flat dataclass with grouped fields rather than one dataclass per
group: a field's name is at once its flag (``--item_lr``), its key in a workdir's
recorded ``config.json`` (what a resume compares against) and its name in a sweep or
search grid (``--tune=item_lr=...``). Nesting would rename every one of them (or make
two names for each) without changing what a run is; ``settings_of(group)`` lists a
group's fields.
"""
import dataclasses
import math
import pathlib
from typing import Optional

from fedras_jax import data as data_lib
from fedras_jax.compress.base import INDEX_CODINGS
from fedras_jax.compress.registry import COMPRESSORS
from fedras_jax.federated import AGGREGATIONS, TRAIN_NEGATIVES
from fedras_jax.federated.bandwidth import BANDWIDTHS
from fedras_jax.metrics import PROTOCOLS
from fedras_jax.models import MODELS

GROUPS = ("data", "model", "federated", "compression", "run")
DATASETS = tuple(data_lib.DATASETS)  # the named datasets
# The settings of --dataset=PATH (``TrainConfig.file_options``).
FILE_OPTION_FLAGS = ("data_columns", "data_header", "min_rating", "min_user_interactions",
                     "min_item_interactions", "kcore")
METHODS = tuple(m for m in COMPRESSORS if m != "identity")
ON_NONFINITE = ("skip", "stop")
SERVER_LR_SCHEDULES = ("constant", "cosine", "linear")

# Settings that cannot change a run's numbers: where files are, how much is printed,
# how often state is saved, whether data may be downloaded, whether a round with
# non-finite client updates stops the run (if it does not stop, the numbers are those
# of "skip"), and whether local training is sharded over devices (the sharded round
# equals the single-device one up to float rounding, which FedRAS's K-Means can carry on:
# docs/multihost.md; a run may resume on another number of devices). A
# workdir whose run differs from the flags only in these is the same run (resumed).
# Everything else, eval_every and num_lanes included, counts: eval_every decides the
# rows of metrics.jsonl and the windows their loss/actions average over, and num_lanes
# changes the packing of local training, hence the compiled program.
NON_RESULT_FIELDS = frozenset({
    "data_dir", "workdir", "quiet", "overwrite", "checkpoint_every", "checkpoint_minutes",
    "download", "on_nonfinite", "shard_clients"
})


def settings_of(group: str) -> tuple:
  """The names of ``TrainConfig``'s fields in ``group`` (one of ``GROUPS``), in order."""
  if group not in GROUPS:
    raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
  return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["group"] == group)


def setting(group: str, default, help_text: str):
  """A ``TrainConfig`` field: its default, its group (one of ``GROUPS``) and the help
  text of its flag."""
  assert group in GROUPS, group
  return dataclasses.field(default=default, metadata=dict(group=group, help=help_text))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every setting of a run (defaults: FedRAS-compressed FedMF on ML-100K)."""
  dataset: str = setting(
      "data", "ml-100k",
      "ml-100k | ml-1m (standard NCF split) | ml-1m-raw | lastfm-2k | a path to an interaction "
      "file (RecBole .inter, CSV or TSV; see --data_columns)")
  data_dir: Optional[str] = setting(
      "data", None, "where datasets live (default $FEDRAS_DATA or ~/.cache/fedras_jax)")
  model: str = setting("model", "mf", "mf | ncf")
  dim: int = setting("model", 64, "embedding size (NCF: MLP embedding size; GMF gets dim/4)")
  init_scale: float = setting("model", 0.01, "std of the normal initialisation of embeddings")
  rounds: int = setting("federated", 300, "federated rounds")
  clients_per_round: int = setting("federated", 64,
                                   "clients sampled per round (uniform, without replacement)")
  local_epochs: int = setting("federated", 2, "local epochs per round")
  batch_size: int = setting("federated", 64, "local minibatch size")
  neg_ratio: int = setting("federated", 4, "training negatives per positive, re-drawn every round")
  train_negatives: str = setting(
      "data", "unseen",
      "where training negatives come from: unseen (items the user never interacted with, its "
      "held-out validation/test items excluded: PFedRec's protocol) | untrained (items outside "
      "its training positives, so a held-out item can be a negative: NCF's original code)")
  user_lr: float = setting("federated", 1.0, "local SGD step of the private user embedding")
  item_lr: float = setting("federated", 8.0, "local SGD step of item embeddings")
  dense_lr: float = setting("federated", 0.1, "local SGD step of dense weights (NCF)")
  weight_decay: float = setting("federated", 0.0, "L2 coefficient on the parameters a step touches")
  server_lr: float = setting("federated", 1.0, "server SGD step applied to the aggregated update")
  server_lr_schedule: str = setting(
      "federated", "constant",
      "constant | cosine | linear: the server step decays over --rounds from --server_lr to "
      "--server_lr x --server_lr_end (docs/design/round.md)")
  server_lr_end: float = setting(
      "federated", 0.0, "a decaying --server_lr_schedule's final step as a fraction of "
      "--server_lr, in [0, 1]")
  aggregation: str = setting("federated", "inverse_frequency",
                             "inverse_frequency (FedRAS) | fedavg")
  method: str = setting(
      "compression", "fedras",
      "fedras (action sharing) | fedras_fixed_k | uncompressed | topk | topk_int32 (TopK with "
      "32-bit indices counted, the papers' accounting) | svd | colr | embedding_kmeans")
  payload_ratio: float = setting(
      "compression", 1 / 32,
      "payload budget as a fraction of the dense float32 item table (1/32 = 0.03125)")
  downlink_compression: bool = setting(
      "compression", True, "compress the server's update too (--nodownlink_compression: dense)")
  downlink_feedback: bool = setting(
      "compression", True,
      "server keeps what its lossy downlink did not send and sends it later (error feedback; "
      "--nodownlink_feedback: drop it)")
  downlink_warm_start: bool = setting(
      "compression", True,
      "FedRAS downlink: start each round's clustering from the last round's actions "
      "(--nodownlink_warm_start: from one action)")
  max_k: int = setting(
      "compression", 0,
      "static bound on actions per payload (0: from the payload ratio, at most 128)")
  downlink_max_k: int = setting(
      "compression", 0,
      "static bound on the downlink's actions (0: the budget's K rounded up to 16 while items "
      "x K <= 2**23, at least the uplink's; the downlink is one clustering a round, not one "
      "per client)")
  tau: float = setting(
      "compression", 0.9,
      "cosine threshold of the split test when --tau_mode=fixed (> 1: always use the budget's "
      "K)")
  tau_mode: str = setting("compression", "auto",
                          "fixed | auto (threshold from the data, see docs/design/quantizer.md)")
  value_bits: int = setting("compression", 32, "bits per centroid value: 32 or 16")
  action_stages: int = setting(
      "compression", 1, "FedRAS: send each row as a sum of this many actions, each stage "
      "clustering what the stages before left (residual K-Means, docs/design/residual_stages.md)")
  index_coding: str = setting(
      "compression", "catalog",
      "how an uplink payload addresses its rows: catalog (every catalog item carries an index "
      "or a row, a 'no update' code if unsent) | touched (a bitmap of the sent items, then "
      "content for those only; docs/design/index_coding.md); the downlink codes the catalog")
  gain_bits: int = setting(
      "compression", 0, "bits of a gain sent per nonzero decoded row, restoring its "
      "magnitude (gain-shape coding, compress.row_gains; 0: none, else 3-16)")
  bandwidth: str = setting(
      "federated", "uniform",
      "uniform | tiers | lognormal client bandwidths (bits per simulated second)")
  bandwidth_tiers: str = setting("federated", "4,16,32,64",
                                 "tiers as divisors of the dense payload, e.g. 4,16,32,64")
  bandwidth_sigma: float = setting("federated", 1.0, "log-normal sigma")
  fluctuation: float = setting("federated", 0.0,
                               "per-round bandwidth fluctuation f: budget x (1 + U(-f, f))")
  compute_seconds: float = setting("federated", 0.0, "simulated local compute seconds per round")
  num_lanes: int = setting("run", 8,
                           "lanes of packed local training (speed only; results do not change)")
  shard_clients: bool = setting(
      "run", False,
      "shard local training over every device (of every process); on whenever the run spans "
      "several processes; --num_lanes must be a multiple of the device count")
  eval_every: int = setting("run", 25, "evaluate every N rounds (and at the end)")
  seed: int = setting("federated", 0, "seed of sampling, negatives and initialisation")
  workdir: Optional[str] = setting(
      "run", None,
      "the run's directory: config.json, metrics.jsonl/csv, checkpoints/, summary.json, "
      "final_params.msgpack; rerunning a command with the same --workdir resumes its work. "
      "train: default runs/<dataset>-<model>-<method>-<UTC time> (a new one each time), none "
      "for no files; sweep: no files unless given; compare: ignored (<outdir>/<run name>)")
  quiet: bool = setting("run", False, "print only the final line")
  checkpoint_every: int = setting(
      "run", 50,
      "save a checkpoint every N rounds and at the end (0: never by rounds; needs --workdir)")
  checkpoint_minutes: float = setting(
      "run", 10.0, "also save a checkpoint after any round that ends M minutes or more after "
      "the last save, so slow rounds lose minutes, not --checkpoint_every rounds (0: never by "
      "time)")
  overwrite: bool = setting(
      "run", False, "replace the run in --workdir (default: resume it; refuse if its flags differ)")
  download: bool = setting(
      "data", True,
      "fetch missing data files (--nodownload: fail at once, saying where to put them)")
  on_nonfinite: str = setting(
      "run", "skip",
      "skip (drop clients whose update is non-finite, count and log them; stop after 3 rounds "
      "in a row that dropped every client) | stop (fail naming the round and the clients)")
  validation: bool = setting(
      "data", False,
      "hold out one more interaction per user and score on it, with its own negatives (for "
      "tuning; never the test items)")
  eval_protocol: str = setting(
      "run", "both",
      "sampled (the positive among --test_negatives sampled negatives) | full (among every item "
      "not in the user's training data) | both")
  test_negatives: int = setting(
      "data", 99, "items sampled per user as the sampled protocol's negatives (99: the NCF "
      "protocol; 0 with --eval_protocol=full, which ranks every item and needs none; below 10, "
      "HR@10 is 1 whatever the model, with a warning)")
  data_columns: str = setting(
      "data", "",
      "--dataset=PATH without a header: the columns in order, e.g. user,item,rating,timestamp "
      "(other names: ignored columns); with a header the columns are found by name")
  data_header: bool = setting(
      "data", False,
      "--dataset=PATH: the first line is a header even if it names no known column (skipped; "
      "--data_columns names the columns)")
  min_rating: Optional[float] = setting(
      "data", None,
      "--dataset=PATH: keep rows with rating >= this as interactions (default: every row is "
      "one)")
  min_user_interactions: int = setting(
      "data", 0, "--dataset=PATH: drop users with fewer interactions (0: keep all)")
  min_item_interactions: int = setting(
      "data", 0, "--dataset=PATH: drop items with fewer interactions (0: keep all)")
  kcore: bool = setting(
      "data", False,
      "--dataset=PATH: repeat the two filters until both hold (a k-core); default: one pass, "
      "both counted on the unfiltered data")

  def validate(self):
    """Raises ``ValueError`` naming the first bad setting."""
    checks = [("dataset", self.dataset in DATASETS or data_lib.is_path(self.dataset),
               f"one of {DATASETS} or a path to an interaction file (.inter, .csv, .tsv)"),
              ("model", self.model in MODELS, f"one of {sorted(MODELS)}"),
              ("aggregation", self.aggregation in AGGREGATIONS, f"one of {AGGREGATIONS}"),
              ("method", self.method in METHODS, f"one of {METHODS}"),
              ("bandwidth", self.bandwidth in BANDWIDTHS, f"one of {BANDWIDTHS}"),
              ("tau_mode", self.tau_mode in ("fixed", "auto"), "fixed or auto"),
              ("value_bits", self.value_bits in (16, 32), "16 or 32"),
              ("action_stages", self.action_stages >= 1, "at least 1"),
              ("index_coding", self.index_coding in INDEX_CODINGS, f"one of {INDEX_CODINGS}"),
              ("gain_bits", self.gain_bits == 0 or 3 <= self.gain_bits <= 16, "0 or 3 to 16"),
              ("payload_ratio", 0 < self.payload_ratio <= 1, "in (0, 1]"),
              ("fluctuation", 0 <= self.fluctuation < 1, "in [0, 1)"),
              ("max_k", self.max_k >= 0, "non-negative (0: from the budget)"),
              ("downlink_max_k", self.downlink_max_k >= 0, "non-negative (0: from the budget)"),
              ("bandwidth_tiers", _tiers_ok(self.bandwidth_tiers),
               "comma-separated finite positive numbers"),
              ("neg_ratio", self.neg_ratio >= 0, "non-negative"),
              ("train_negatives", self.train_negatives
               in TRAIN_NEGATIVES, f"one of {TRAIN_NEGATIVES}"),
              ("init_scale", self.init_scale > 0, "positive"),
              ("checkpoint_every", self.checkpoint_every >= 0, "non-negative (0: off)"),
              ("on_nonfinite", self.on_nonfinite in ON_NONFINITE, f"one of {ON_NONFINITE}"),
              ("server_lr_schedule", self.server_lr_schedule
               in SERVER_LR_SCHEDULES, f"one of {SERVER_LR_SCHEDULES}"),
              ("server_lr_end", 0 <= self.server_lr_end <= 1, "in [0, 1]"),
              ("seed", 0 <= self.seed < 2**32, "an integer in [0, 2^32)"),
              ("workdir", self.workdir is None
               or self.workdir.strip() != "", "a directory, or none (no files)"),
              ("eval_protocol", self.eval_protocol in PROTOCOLS, f"one of {PROTOCOLS}"),
              ("test_negatives", self.test_negatives >= (0 if self.eval_protocol == "full" else 1),
               "at least 1 (0 only with --eval_protocol=full)"),]
    for name in ("dim", "rounds", "clients_per_round", "local_epochs", "batch_size", "num_lanes",
                 "eval_every"):
      checks.append((name, getattr(self, name) > 0, "positive"))
    for name in ("user_lr", "item_lr", "dense_lr", "weight_decay", "server_lr", "compute_seconds",
                 "checkpoint_minutes"):  # a negative step or duration has no meaning here
      value = getattr(self, name)
      checks.append((name, math.isfinite(value) and value >= 0, "finite and >= 0"))
    for name in ("init_scale", "tau"):
      checks.append((name, math.isfinite(getattr(self, name)), "finite"))
    checks.append(("bandwidth_sigma", math.isfinite(self.bandwidth_sigma)
                   and self.bandwidth_sigma >= 0, "finite and >= 0"))
    # NeuMF's tower ends in dim / 4 units (models.ncf_for_run).
    checks.append(("dim", self.model != "ncf" or self.dim >= 4, "at least 4 with --model=ncf"))
    checks.append(
        ("test_negatives", self.dataset != "ml-1m"
         or self.test_negatives == 99, "99 with --dataset=ml-1m (the NCF split's negatives file)"))
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
    return data_lib.FileOptions(columns=self.data_columns,
                                header=self.data_header,
                                min_rating=self.min_rating,
                                min_user_interactions=self.min_user_interactions,
                                min_item_interactions=self.min_item_interactions,
                                kcore=self.kcore)


def same_dataset(a, b) -> bool:
  """Whether ``--dataset`` values ``a`` and ``b`` name one dataset: equal, or two paths to
  one file (``data/r.csv``, ``./data/r.csv`` and its absolute path)."""
  if a == b:
    return True
  paths = [isinstance(x, str) and x not in DATASETS and data_lib.is_path(x) for x in (a, b)]
  resolve = lambda x: pathlib.Path(x).expanduser().resolve()
  return all(paths) and resolve(a) == resolve(b)


def dataset_label(dataset: str) -> str:
  """A dataset's short name: its name, or a file's name without the suffix."""
  return pathlib.Path(dataset).stem if data_lib.is_path(dataset) else dataset


def _tiers_ok(text: str) -> bool:
  try:
    return all(math.isfinite(float(t)) and float(t) > 0 for t in text.split(","))
  except ValueError:
    return False
