"""Trains a federated recommender and reports HR@10 / NDCG@10.

    python -m experiments.train                      # FedMF on ML-100K, defaults
    python -m experiments.train --flagfile=configs/ml100k_mf.flags --workdir=/tmp/run
"""
import sys

from absl import app

from fedras_jax import flags as flag_lib
from fedras_jax.runtime import tune_host_allocator
from fedras_jax.training import TrainConfig, train

HELP = {
    "dataset": "ml-100k | ml-1m (standard NCF split) | ml-1m-raw | lastfm-2k",
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
    "num_lanes": "lanes of packed local training (speed only; results do not change)",
    "eval_every": "evaluate every N rounds (and at the end)",
    "seed": "seed of sampling, negatives and initialisation",
    "workdir": "where metrics.jsonl, metrics.csv and summary.json go",
    "quiet": "print only the final line",
    "init_scale": "std of the normal initialisation of embeddings",
}
flag_lib.define_flags(TrainConfig, HELP)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  tune_host_allocator()
  try:
    config = flag_lib.config_from_flags(TrainConfig).validate()
    train(config)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
