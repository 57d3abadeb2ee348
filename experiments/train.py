"""Trains a federated recommender and reports HR@10 / NDCG@10.

    python -m experiments.train                      # FedMF on ML-100K, defaults
    python -m experiments.train --flagfile=configs/ml100k_mf.flags --workdir=/tmp/run
    python -m experiments.train --dataset=ratings.csv --data_columns=user,item,rating,timestamp

Without --workdir a run writes to runs/<dataset>-<model>-<method>-<UTC time>/ under the
current directory (printed at the start and in the final line); --workdir=none writes
no files. The run checkpoints every --checkpoint_every rounds; running the same
command again resumes it from the newest checkpoint (bit-identical to an uninterrupted
run). A workdir holding a run with other flags is refused unless --overwrite. Errors
(bad flags, missing or malformed data, a refused or locked workdir, a full disk,
--on_nonfinite=stop) are printed as one line ``error: ...`` with exit status 1. A
workdir is locked while a run uses it: a second run on it is refused.
"""
import dataclasses
import os
import time

from absl import app, flags

from fedras_jax import distributed
from fedras_jax import flags as flag_lib
from fedras_jax.runtime import enable_compilation_cache, tune_host_allocator
from fedras_jax.training import TrainConfig, dataset_label, train

HELP = {
    "dataset": "ml-100k | ml-1m (standard NCF split) | ml-1m-raw | lastfm-2k | a path to an "
               "interaction file (RecBole .inter, CSV or TSV; see --data_columns)",
    "data_columns": "--dataset=PATH without a header: the columns in order, e.g. "
                    "user,item,rating,timestamp (other names: ignored columns); with a header "
                    "the columns are found by name",
    "min_rating": "--dataset=PATH: keep rows with rating >= this as interactions (default: "
                  "every row is one)",
    "min_user_interactions": "--dataset=PATH: drop users with fewer interactions (0: keep all)",
    "min_item_interactions": "--dataset=PATH: drop items with fewer interactions (0: keep all)",
    "kcore": "--dataset=PATH: repeat the two filters until both hold (a k-core); default: "
             "one pass, both counted on the unfiltered data",
    "eval_protocol": "sampled (the positive among 99 sampled negatives) | full (among every "
                     "item not in the user's training data) | both",
    "data_dir": "where datasets live (default $FEDRAS_DATA or ~/.cache/fedras_jax)",
    "model": "mf | ncf",
    "dim": "embedding size (NCF: MLP embedding size; GMF gets dim/4)",
    "rounds": "federated rounds",
    "clients_per_round": "clients sampled per round (uniform, without replacement)",
    "local_epochs": "local epochs per round",
    "batch_size": "local minibatch size",
    "neg_ratio": "training negatives per positive, re-drawn every round",
    "user_lr": "local SGD step of the private user embedding",
    "item_lr": "local SGD step of item embeddings",
    "dense_lr": "local SGD step of dense weights (NCF)",
    "weight_decay": "L2 coefficient on the parameters a step touches",
    "server_lr": "server SGD step applied to the aggregated update",
    "aggregation": "inverse_frequency (FedRAS) | fedavg",
    "method": "fedras (action sharing) | fedras_fixed_k | uncompressed | topk | svd | colr | "
              "embedding_kmeans",
    "payload_ratio": "payload budget as a fraction of the dense float32 item table (1/32 = 0.03125)",
    "downlink_compression": "compress the server's update too (--nodownlink_compression: dense)",
    "downlink_feedback": "server keeps what its lossy downlink did not send and sends it later "
                         "(error feedback; --nodownlink_feedback: drop it)",
    "downlink_warm_start": "FedRAS downlink: start each round's clustering from the last "
                           "round's actions (--nodownlink_warm_start: from one action)",
    "max_k": "static bound on actions per payload (0: from the payload ratio, at most 128)",
    "tau": "cosine threshold of the split test when --tau_mode=fixed (> 1: always use the budget's K)",
    "tau_mode": "fixed | auto (threshold from the data, see BUILD.md)",
    "value_bits": "bits per centroid value: 32 or 16",
    "bandwidth": "uniform | tiers | lognormal client bandwidths (bits per simulated second)",
    "bandwidth_tiers": "tiers as divisors of the dense payload, e.g. 4,16,32,64",
    "bandwidth_sigma": "log-normal sigma",
    "fluctuation": "per-round bandwidth fluctuation f: budget x (1 + U(-f, f))",
    "compute_seconds": "simulated local compute seconds per round",
    "validation": "hold out one more interaction per user and score on it, with its own "
                  "negatives (for tuning; never the test items)",
    "num_lanes": "lanes of packed local training (speed only; results do not change)",
    "shard_clients": "shard local training over every device (of every process); on whenever "
                     "the run spans several processes; --num_lanes must be a multiple of the "
                     "device count",
    "eval_every": "evaluate every N rounds (and at the end)",
    "seed": "seed of sampling, negatives and initialisation",
    "workdir": "the run's directory (default runs/<dataset>-<model>-<method>-<time>; none: no "
               "files): config.json, metrics.jsonl/csv, checkpoints/, summary.json, "
               "final_params.msgpack; rerunning the same command resumes the run",
    "quiet": "print only the final line",
    "checkpoint_every": "save a checkpoint every N rounds and at the end (0: never; needs --workdir)",
    "overwrite": "replace the run in --workdir (default: resume it; refuse if its flags differ)",
    "download": "fetch missing data files (--nodownload: fail at once, saying where to put them)",
    "on_nonfinite": "skip (drop clients whose update is non-finite, count and log them) | stop "
                    "(fail naming the round and the clients)",
    "init_scale": "std of the normal initialisation of embeddings",
}
flag_lib.define_flags(TrainConfig, HELP)
flag_lib.define_flags(distributed.ProcessGroup, {
    "coordinator": "multi-process runs: HOST:PORT of process 0 (give every process the same), "
                   "or 'auto' to let JAX detect the cluster (Cloud TPU, SLURM, Open MPI); "
                   "empty: one process. See docs/multihost.md",
    "num_processes": "with --coordinator=HOST:PORT: how many processes the run has",
    "process_id": "with --coordinator=HOST:PORT: this process' index, 0 .. num_processes-1; "
                  "process 0 writes the logs and the workdir",
    "initialization_timeout": "seconds to wait for every process to join",
})
_CACHE = flags.DEFINE_string(
    "compilation_cache", None,
    "directory of JAX's persistent compilation cache: a rerun with the same shapes loads its "
    "compiled round instead of compiling it (default $FEDRAS_COMPILATION_CACHE or "
    "~/.cache/fedras_jax/compilation_cache; none: off)")


def default_workdir(config: TrainConfig, now=None):
  """``config.workdir``; unset: ``runs/<dataset>-<model>-<method>-<UTC time>``; "none": None."""
  if config.workdir is not None:
    return None if config.workdir.lower() == "none" else config.workdir
  stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
  return os.path.join("runs", f"{dataset_label(config.dataset)}-{config.model}-"
                      f"{config.method}-{stamp}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  tune_host_allocator()
  enable_compilation_cache(_CACHE.value)
  config = flag_lib.config_from_flags(TrainConfig)
  config = dataclasses.replace(config, workdir=default_workdir(config)).validate()
  distributed.initialize(flag_lib.config_from_flags(distributed.ProcessGroup))
  train(config)


if __name__ == "__main__":
  flag_lib.run_main(main)
