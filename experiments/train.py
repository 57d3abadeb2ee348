"""Trains a federated recommender and reports HR@10 / NDCG@10.

    python -m experiments.train                      # FedMF on ML-100K, defaults
    python -m experiments.train --flagfile=configs/ml100k_mf.flags --workdir=/tmp/run
    python -m experiments.train --dataset=ratings.csv --data_columns=user,item,rating,timestamp

Without --workdir a run writes to runs/<dataset>-<model>-<method>-<UTC time>/ under the
current directory (printed at the start and in the final line); --workdir=none writes no
files. The run checkpoints every --checkpoint_every rounds, every --checkpoint_minutes of
wall time and at its last round; with --workdir given, running the same command again
resumes it from the newest checkpoint (bit-identical to an uninterrupted run; without
--workdir each command starts a new run in a new time-stamped folder). A workdir holding a
run with other flags is refused unless --overwrite. Errors (bad flags, missing or
malformed data, a refused or locked workdir, a full disk, --on_nonfinite=stop) are printed
as one line ``error: ...`` with exit status 1. A workdir is locked while a run uses it: a
second run on it is refused.
"""
import dataclasses
import os
import time

from absl import flags

from fedras_jax import distributed
from fedras_jax import flags as flag_lib
from fedras_jax.config import TrainConfig, dataset_label
from fedras_jax.runtime import enable_compilation_cache, tune_host_allocator
from fedras_jax.training import train

flag_lib.define_train_flags()
FLAGS = flags.FLAGS


def default_workdir(config: TrainConfig, now=None):
  """``config.workdir``; unset: ``runs/<dataset>-<model>-<method>-<UTC time>``; "none": None."""
  if config.workdir is not None:
    return None if config.workdir.lower() == "none" else config.workdir
  stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
  return os.path.join("runs", f"{dataset_label(config.dataset)}-{config.model}-"
                      f"{config.method}-{stamp}")


def main(argv):
  del argv
  tune_host_allocator()
  enable_compilation_cache(FLAGS.compilation_cache)
  config = flag_lib.config_from_flags(TrainConfig)
  config = dataclasses.replace(config, workdir=default_workdir(config)).validate()
  distributed.initialize(flag_lib.config_from_flags(distributed.ProcessGroup))
  try:
    train(config)
  except KeyboardInterrupt:
    if FLAGS.workdir is not None or config.workdir is None:
      raise
    # The same command would start a new time-stamped workdir, not resume this one.
    raise KeyboardInterrupt(
        f"its workdir is {config.workdir}: add --workdir={config.workdir} to the same "
        "command to resume it") from None


if __name__ == "__main__":
  flag_lib.run_main(main)
