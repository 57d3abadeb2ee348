"""End to end: the training entry point on real ML-100K, files, and bad flags."""
import ctypes
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import re
import sys

import numpy as np
import pytest

from conftest import metrics_rows, train_binary

from fedras_jax.config import TrainConfig
from fedras_jax.data import TooFewCandidatesError
from fedras_jax.experiment import load_run_data
from fedras_jax.federated.bandwidth import draw_bandwidth
from fedras_jax.runtime import enable_compilation_cache
from fedras_jax.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = [
    "--method=uncompressed", "--rounds=2", "--eval_every=2", "--clients_per_round=8", "--dim=8"
]


def test_short_fedmf_run_beats_random_ranking(ml100k_path, tmp_path):
  config = TrainConfig(data_dir=str(ml100k_path.parents[1]),
                       method="uncompressed",
                       rounds=40,
                       eval_every=20,
                       workdir=str(tmp_path),
                       quiet=True)
  summary = train(config)
  # Random ranking of 1 positive among 100 candidates gives HR@10 = 0.10.
  assert summary["final"]["hr@10"] > 0.25
  # Full ranking (the default --eval_protocol=both): among ~1,600 items random gives
  # ~0.006, and it can never beat the sampled protocol's ranks.
  final = summary["final"]
  assert 0.03 < final["full_hr@10"] <= final["hr@10"]
  assert 0 < final["full_ndcg@10"] <= final["ndcg@10"]
  rows = metrics_rows(tmp_path)
  assert [r["round"] for r in rows] == [20, 40]
  assert all("full_hr@10" in r and "hr@10" in r for r in rows)
  assert "full_hr@10" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
  assert rows[1]["loss"] < rows[0]["loss"]
  assert (tmp_path / "metrics.csv").read_text().startswith("round,")
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["config"]["rounds"] == 40 and saved["final"]["round"] == 40
  # Uncompressed: every client uploads, and receives, the dense float32 item table.
  dense = 40 * 64 * 1682 * 64 * 32
  assert saved["final"]["bits_up_total"] == dense and saved["final"]["bits_down_total"] == dense
  assert saved["final"]["compression_up"] == saved["final"]["compression_down"] == 0


@pytest.mark.parametrize(
    "settings,message",
    [(dict(model="ncf", dim=3), "--dim=3 is invalid: must be at least 4 with --model=ncf"),
     (dict(bandwidth="lognormal",
           bandwidth_sigma=-1.0), "--bandwidth_sigma=-1.0 is invalid: must be finite and >= 0"),])
def test_settings_that_failed_late_are_refused_by_validate(settings, message):
  """Each of these used to pass validation and fail after loading the data with a bare
  exception (ZeroDivisionError in NeuMF's tower, numpy's 'scale < 0')."""
  with pytest.raises(ValueError, match=message):
    TrainConfig(**settings).validate()
  TrainConfig(**{**settings, **dict(dim=4, bandwidth_sigma=0.0)}).validate()


def test_a_bandwidth_that_rounds_to_zero_is_refused():
  # sigma 50: exp(N(0, 2500) - 1250) is 0 in float32 for nearly everyone, and the
  # round's simulated seconds were 0 / 0 (the progress line showed "sim nan").
  with pytest.raises(ValueError, match=r"--bandwidth=lognormal drew 0.0 bits per second for"):
    draw_bandwidth("lognormal", 100, 10**6, seed=0, payload_ratio=1 / 32, sigma=50.0)
  with pytest.raises(ValueError, match=r"--bandwidth=tiers drew 0.0 bits per second for 50 of"):
    draw_bandwidth("tiers", 100, 10**6, seed=0, tiers=(4, 1e300))
  bw = draw_bandwidth("lognormal", 100, 10**6, seed=0, payload_ratio=1 / 32, sigma=3.0)
  assert np.all(bw > 0) and bw.dtype == np.float32


def test_bandwidth_draws_follow_their_documented_laws():
  """uniform: the budget for everyone; tiers: users split evenly over dense / t; lognormal:
  mean the uniform value (the -sigma^2/2 shift), median exp(-sigma^2/2) below it."""
  dense, ratio = 10**6, 1 / 32
  bw = draw_bandwidth("uniform", 7, dense, seed=3, payload_ratio=ratio)
  np.testing.assert_array_equal(bw, np.full(7, np.float32(dense * ratio)))
  tiers = (4, 16, 32, 64)
  bw = draw_bandwidth("tiers", 103, dense, seed=3, tiers=tiers)
  counts = [int(np.sum(bw == np.float32(dense / t))) for t in tiers]
  assert sum(counts) == 103 and max(counts) - min(counts) <= 1, counts
  assert not np.array_equal(bw, draw_bandwidth("tiers", 103, dense, seed=4, tiers=tiers))
  sigma, n = 0.5, 200_000
  bw = draw_bandwidth("lognormal", n, dense, seed=3, payload_ratio=ratio, sigma=sigma).astype(float)
  # Standard errors: mean ~ sqrt(e^{s^2} - 1) / sqrt(n) ~ 0.12%; median ~ 0.14%.
  assert abs(bw.mean() / (dense * ratio) - 1) < 0.01
  assert abs(np.median(bw) / (dense * ratio * np.exp(-sigma**2 / 2)) - 1) < 0.01


_ALLOCATOR_PROBE = """
import ctypes, sys
from fedras_jax.runtime import tune_host_allocator
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in
              "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
  assert tune_host_allocator()
p = libc.malloc(64 << 20)
ctypes.memset(p, 1, 64 << 20)
libc.free(p)
print(libc.mallinfo2().arena >> 20)
"""


def test_the_host_allocator_keeps_freed_memory():
  """After ``tune_host_allocator`` a freed 64 MiB block stays in the heap for reuse (the
  setting's point); glibc's default returns it. The trim threshold once arrived as 0
  (an untyped ctypes call wrapped 2^34 to a C int), which trims at every free."""
  try:
    if not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
      pytest.skip("glibc without mallinfo2 (< 2.33)")
  except OSError:
    pytest.skip("no glibc")
  # glibc's defaults: no allocator settings from the environment.
  env = {
      k: v
      for k, v in os.environ.items()
      if k != "FEDRAS_NO_MALLOC_TUNING" and not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))
  }
  arena = {
      mode: int(
          subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE, mode],
                         env=env,
                         capture_output=True,
                         text=True,
                         check=True).stdout) for mode in ("default", "tuned")
  }
  assert arena["tuned"] >= 64 and arena["default"] < 64, arena


def test_clients_per_round_above_users_is_refused(ml100k_path):
  with pytest.raises(ValueError, match="--clients_per_round=5000 exceeds"):
    train(TrainConfig(data_dir=str(ml100k_path.parents[1]), clients_per_round=5000, quiet=True))


def _cache_entries(path):
  return sorted(p.name for p in path.rglob("*") if p.is_file())


def test_compilation_cache_is_filled_then_reused(ml100k_path, tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  flags = [
      f"--data_dir={ml100k_path.parents[1]}", "--method=uncompressed", "--rounds=2",
      "--eval_every=2", "--clients_per_round=8", "--dim=8", "--quiet", "--workdir=none"
  ]
  # Store every program, however fast it compiled: on a busy machine a program near the
  # default 0.5 s threshold could be stored by one run and not by the other.
  every_program = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

  def run(*extra, env=None):
    return subprocess.run([sys.executable, "-m", "experiments.train", *flags, *extra],
                          capture_output=True,
                          text=True,
                          timeout=300,
                          env=dict(os.environ, **every_program, **(env or {})))

  proc = run(f"--compilation_cache={cache}")
  assert proc.returncode == 0, proc.stderr
  first = _cache_entries(cache)
  assert first  # the round (and the evaluation) were stored
  proc = run(f"--compilation_cache={cache}")
  assert proc.returncode == 0, proc.stderr
  assert _cache_entries(cache) == first  # every program was found: nothing new stored
  # The environment's directory is the default; --compilation_cache=none (the flag's
  # value goes to enable_compilation_cache, as above) turns it off.
  env_cache = tmp_path / "env_cache"
  proc = run(env={"FEDRAS_COMPILATION_CACHE": str(env_cache)})
  assert proc.returncode == 0, proc.stderr
  assert _cache_entries(env_cache)
  shutil.rmtree(env_cache)
  monkeypatch.setenv("FEDRAS_COMPILATION_CACHE", str(env_cache))
  assert enable_compilation_cache("none") is None and not env_cache.exists()


def test_a_run_without_workdir_leaves_files_and_quiet_prints_the_final_line(ml100k_path, tmp_path):
  proc = train_binary(f"--data_dir={ml100k_path.parents[1]}", "--quiet", *SMALL, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  (line,) = proc.stdout.splitlines()
  assert line.startswith("done: HR@10 ") and " full HR@10 " in line
  (run,) = (tmp_path / "runs").iterdir()
  assert re.fullmatch(r"ml-100k-mf-uncompressed-\d{8}-\d{6}", run.name)
  assert line.endswith(f"files in {os.path.join('runs', run.name)})")
  summary = json.loads((run / "summary.json").read_text())
  assert summary["final"]["round"] == 2 and (run / "metrics.csv").exists()
  # Not quiet: where the files go is said before the first round too.
  proc = train_binary(f"--data_dir={ml100k_path.parents[1]}",
                      *SMALL,
                      "--workdir=none",
                      cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "writing to" not in proc.stdout and len(list((tmp_path / "runs").iterdir())) == 1
  assert proc.stdout.splitlines()[-1].startswith("done: ")


def test_own_csv_file_trains(ml100k_path, tmp_path):
  """The acceptance command of issue #15 on ML-100K exported as a headerless CSV (that
  the CSV and a RecBole .inter copy give ML-100K's split: test_userfile.py)."""
  raw = ml100k_path.read_text()
  csv_path = tmp_path / "ratings.csv"
  csv_path.write_text(raw.replace("\t", ","))
  proc = train_binary(f"--dataset={csv_path}", "--data_columns=user,item,rating,timestamp",
                      "--min_user_interactions=5", f"--data_dir={tmp_path / 'dd'}",
                      f"--workdir={tmp_path / 'run'}", *SMALL)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(f"{csv_path}: 943 users, 1682 items, 99057 training")
  assert proc.stdout.splitlines()[1] == f"writing to {tmp_path / 'run'}"
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["final"]["round"] == 2
  # A malformed line: one line naming file and line; nothing cached from it.
  bad = tmp_path / "bad.csv"
  bad.write_text("1,2,5,10\n1,3,5,11\n1,x4,5\n")
  proc = train_binary(f"--dataset={bad}", "--data_columns=user,item,rating,timestamp",
                      f"--data_dir={tmp_path / 'dd2'}", *SMALL)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:3: expected 4 fields")
  assert not (tmp_path / "dd2").exists()


def test_a_small_catalogue_samples_fewer_negatives_or_ranks_every_item(tmp_path, caplog):
  """20 users (ids 101-120) with 8 of 30 items each: 99 negatives cannot be drawn (one
  error line naming a user by its id and both ways out); 20 can, none of them an item the
  user touched, for test and validation; full ranking needs none."""
  rng = np.random.default_rng(0)
  pairs = [(101 + u, int(i)) for u in range(20) for i in rng.choice(30, 8, replace=False)]
  path = tmp_path / "small.csv"
  path.write_text("user,item,timestamp\n"
                  + "".join(f"{u},{i},{t}\n" for t, (u, i) in enumerate(pairs)))
  # Users and items are numbered by sorted id (interactions.from_raw_ids).
  item_index = {i: n for n, i in enumerate(sorted({i for _, i in pairs}))}
  touched = [set() for _ in range(20)]
  for u, i in pairs:
    touched[u - 101].add(item_index[i])
  config = TrainConfig(dataset=str(path), data_dir=str(tmp_path / "dd"))
  with pytest.raises(TooFewCandidatesError,
                     match=r"user 0 \(raw id 101\) interacted with 8 "
                     r"of 30 items, leaving 22 < 99 candidates.*--test_negatives.*"
                     r"--eval_protocol=full --test_negatives=0"):
    load_run_data(config)
  for validation in (False, True):
    split, items, negatives = load_run_data(
        dataclasses.replace(config, test_negatives=20, validation=validation))
    assert negatives.shape == (20, 20)
  # Below 10 negatives HR@10 is 1 for any model: said (for the sampled protocol only).
  assert "HR@10 is 1" not in caplog.text
  with caplog.at_level("WARNING"):
    load_run_data(dataclasses.replace(config, test_negatives=9, eval_protocol="both"))
    assert "--test_negatives=9: the sampled protocol ranks each test item among 10 " in caplog.text
    caplog.clear()
    load_run_data(dataclasses.replace(config, test_negatives=9, eval_protocol="full"))
    assert "HR@10 is 1" not in caplog.text
    assert split.num_items == len(item_index)
    for row, seen in zip(negatives.tolist(), touched):
      assert len(set(row)) == 20 and not set(row) & seen
  with pytest.raises(ValueError, match="--test_negatives=0 is invalid: must be at least 1"):
    dataclasses.replace(config, test_negatives=0).validate()
  with pytest.raises(ValueError, match="--test_negatives=50 is invalid: must be 99 with"):
    TrainConfig(dataset="ml-1m", test_negatives=50).validate()
  proc = train_binary(f"--dataset={path}", f"--data_dir={tmp_path / 'dd'}", "--workdir=none",
                      "--eval_protocol=full", "--test_negatives=0", *SMALL)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines()[-1].startswith("done: full HR@10 ")


@pytest.mark.parametrize(
    "flag,message", [("--dataset=/nonexistent/r.csv", "--dataset=/nonexistent/r.csv: no such file"),
                     ("--min_rating=4", "--min_rating=4.0 applies to --dataset=PATH only"),
                     ("--eval_protocol=all", "--eval_protocol='all' is invalid"),])
def test_bad_data_flags_are_one_line_errors(flag, message, tmp_path):
  proc = train_binary(flag, f"--data_dir={tmp_path}", "--nodownload", cwd=tmp_path)
  assert proc.returncode != 0
  assert message in proc.stderr.strip().splitlines()[-1]
