"""End to end: the training entry point on real ML-100K, files, and bad flags."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from fedras_jax.training import TrainConfig, train


def test_short_fedmf_run_beats_random_ranking(ml100k_path, tmp_path):
  config = TrainConfig(data_dir=str(ml100k_path.parents[1]), method="uncompressed", rounds=40,
                       eval_every=20,
                       workdir=str(tmp_path), quiet=True)
  summary = train(config)
  # Random ranking of 1 positive among 100 candidates gives HR@10 = 0.10.
  assert summary["final"]["hr@10"] > 0.25
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == [20, 40]
  assert rows[1]["loss"] < rows[0]["loss"]
  assert (tmp_path / "metrics.csv").read_text().startswith("round,")
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["config"]["rounds"] == 40 and saved["final"]["round"] == 40
  # Uncompressed: every client uploads the dense float32 item table.
  assert saved["final"]["bits_up_total"] == 40 * 64 * 1682 * 64 * 32


@pytest.mark.parametrize("flag,message", [
    ("--dataset=nope", "--dataset='nope' is invalid"),
    ("--rounds=0", "--rounds=0 is invalid"),
    ("--aggregation=median", "--aggregation='median' is invalid"),
    ("--item_lr=-1", "--item_lr=-1.0 is invalid: must be finite and >= 0"),
    ("--compute_seconds=-1", "--compute_seconds=-1.0 is invalid: must be finite and >= 0"),
])
def test_bad_flags_fail_fast_naming_the_flag(flag, message):
  proc = subprocess.run([sys.executable, "-m", "experiments.train", flag], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0
  assert message in proc.stderr.strip().splitlines()[-1]


def test_clients_per_round_above_users_is_refused(ml100k_path):
  with pytest.raises(ValueError, match="--clients_per_round=5000 exceeds"):
    train(TrainConfig(data_dir=str(ml100k_path.parents[1]), clients_per_round=5000, quiet=True))


def _cache_entries(path):
  return sorted(p.name for p in path.rglob("*") if p.is_file())


def test_compilation_cache_is_filled_then_reused(ml100k_path, tmp_path):
  cache = tmp_path / "cache"
  flags = [f"--data_dir={ml100k_path.parents[1]}", "--method=uncompressed", "--rounds=2",
           "--eval_every=2", "--clients_per_round=8", "--dim=8", "--quiet"]
  # Store every program, however fast it compiled: on a busy machine a program near the
  # default 0.5 s threshold could be stored by one run and not by the other.
  every_program = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

  def run(*extra, env=None):
    return subprocess.run([sys.executable, "-m", "experiments.train", *flags, *extra],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **every_program, **(env or {})))

  proc = run(f"--compilation_cache={cache}")
  assert proc.returncode == 0, proc.stderr
  first = _cache_entries(cache)
  assert first  # the round (and the evaluation) were stored
  proc = run(f"--compilation_cache={cache}")
  assert proc.returncode == 0, proc.stderr
  assert _cache_entries(cache) == first  # every program was found: nothing new stored
  # The environment's directory is the default; --compilation_cache=none turns it off.
  env_cache = tmp_path / "env_cache"
  proc = run(env={"FEDRAS_COMPILATION_CACHE": str(env_cache)})
  assert proc.returncode == 0, proc.stderr
  assert _cache_entries(env_cache)
  shutil.rmtree(env_cache)
  proc = run("--compilation_cache=none", env={"FEDRAS_COMPILATION_CACHE": str(env_cache)})
  assert proc.returncode == 0, proc.stderr
  assert not env_cache.exists()
