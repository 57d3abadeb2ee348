"""Runs that survive: kill + resume, determinism, workdir safety, bad input, plots.

All runs are small (ML-100K, uncompressed FedMF, 16 clients, dim 16, <= 30 rounds):
their cost is mostly XLA compilation (~8 s a run on 2 cores).
"""
import dataclasses
import itertools
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import flip_middle, metrics_rows, poison_users, train_binary

from experiments import compare
from fedras_jax import checkpoint, experiment, training
from fedras_jax import config as config_lib
from fedras_jax.config import TrainConfig
from fedras_jax.federated import round_clients
from fedras_jax.training import DEAD_ROUNDS, NonFiniteUpdateError, train
from fedras_jax import workdir as workdir_lib
from fedras_jax.workdir import TIMING_FIELDS, WorkdirError

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN = dict(method="uncompressed",
           rounds=30,
           clients_per_round=16,
           dim=16,
           eval_every=5,
           checkpoint_every=10)
TINY = dict(method="uncompressed", rounds=4, clients_per_round=16, dim=16, eval_every=2)
ML100K_USERS = 943

# The binary, stalled after writing the row of round 15 (past the checkpoint of round
# 10) so that the test can SIGKILL it mid-run at a known point.
STALLING_BINARY = """
import time
from absl import app
from fedras_jax import workdir
from experiments import train as binary
write = workdir.MetricsWriter.write
def stalling_write(self, row):
  write(self, row)
  if row["round"] == 15:
    time.sleep(600)
workdir.MetricsWriter.write = stalling_write
app.run(binary.main)
"""


def _flags(data_dir, workdir, **settings):
  return [f"--data_dir={data_dir}", f"--workdir={workdir}"
         ] + [f"--{k}={v}" for k, v in settings.items()]


def _cached_env(cache_dir):
  """Environment sharing a persistent XLA compilation cache between processes (the
  killed and the resumed run load the reference run's executable instead of
  recompiling it; compiling afresh is covered by the determinism test)."""
  return dict(os.environ,
              FEDRAS_COMPILATION_CACHE=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _untimed(row):
  return {k: v for k, v in row.items() if k not in TIMING_FIELDS}


def _config(data_dir, **settings):
  return TrainConfig(data_dir=str(data_dir), quiet=True, **settings)


@pytest.fixture(scope="module")
def data_dir(ml100k_path):
  return ml100k_path.parents[1]


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory, xla_cache):
  """An uninterrupted run of the binary (its workdir; treat it as read-only)."""
  workdir = tmp_path_factory.mktemp("reference")
  proc = train_binary(*_flags(data_dir, workdir, **RUN), env=_cached_env(xla_cache))
  assert proc.returncode == 0, proc.stderr
  (workdir / "stdout.log").write_text(proc.stdout)
  return workdir


def _copy(workdir, tmp_path):
  return pathlib.Path(shutil.copytree(workdir, tmp_path / "run"))


def test_killed_run_resumes_to_the_uninterrupted_result(data_dir, reference, tmp_path, xla_cache):
  workdir = tmp_path / "run"
  flags = _flags(data_dir, workdir, **RUN)
  with open(tmp_path / "killed.log", "w") as log:
    proc = subprocess.Popen([sys.executable, "-c", STALLING_BINARY, *flags],
                            cwd=REPO,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            env=_cached_env(xla_cache))
    try:
      deadline = time.time() + 240
      while True:
        saved = [r for r, _ in checkpoint.list_checkpoints(workdir / "checkpoints")]
        metrics = workdir / "metrics.jsonl"
        written = metrics.read_text() if metrics.exists() else ""
        if saved and max(saved) >= 10 and '"round": 15,' in written:
          break
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
      proc.send_signal(signal.SIGKILL)
    finally:
      proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert [r["round"] for r in metrics_rows(workdir)] == [5, 10, 15]  # 15 is past the checkpoint
  assert not (workdir / "summary.json").exists()

  resumed = train_binary(*flags, env=_cached_env(xla_cache))  # the same command again
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from round 10 of 30" in resumed.stdout

  # No duplicated or lost rows, every number equal to the uninterrupted run's.
  rows, want = metrics_rows(workdir), metrics_rows(reference)
  assert [r["round"] for r in rows] == [5, 10, 15, 20, 25, 30]
  assert [_untimed(r) for r in rows] == [_untimed(r) for r in want]
  csv_rows = (workdir / "metrics.csv").read_text().splitlines()
  assert len(csv_rows) == 7 and csv_rows[0].startswith("round,")
  summary = json.loads((workdir / "summary.json").read_text())
  expected = json.loads((reference / "summary.json").read_text())
  assert _untimed(summary["final"]) == _untimed(expected["final"])
  assert _untimed(summary["best"]) == _untimed(expected["best"])
  assert summary["resumed_from_round"] == 10 and expected["resumed_from_round"] is None
  # Timed rounds: all but the first of each process, carried through the checkpoint
  # (rounds 2-10 of the killed run, 12-30 of the resumed one; 2-30 uninterrupted).
  m = summary["config"]["clients_per_round"]
  for run, timed in ((summary, 9 + 19), (expected, 29)):
    assert round(run["client_updates_per_second"] * run["train_seconds"] / m) == timed
  # The final model, bit for bit.
  assert (workdir / "final_params.msgpack").read_bytes() == \
      (reference / "final_params.msgpack").read_bytes()
  params = checkpoint.load_params(workdir / "final_params.msgpack")
  assert params["users"].shape == (ML100K_USERS, 16) and params["items"].shape == (1682, 16)


def test_progress_lines_are_plain_lines(reference):
  out = (reference / "stdout.log").read_text()
  assert "\r" not in out
  lines = [l for l in out.splitlines() if l.startswith("round")]
  assert len(lines) == 6
  assert re.match(
      r"round +30/30  HR@10 0\.\d{4}  NDCG@10 0\.\d{4}  "
      r"full HR@10 0\.\d{4}  NDCG@10 0\.\d{4}  loss \d\.\d{4}  "
      r"[\d.]+ rounds/s  ETA \d+s  up [\d.]+ MB  down [\d.]+ MB", lines[-1])


def test_the_eta_counts_the_rounds_and_the_evaluations_left():
  config = TrainConfig(rounds=1000, eval_every=50)
  row = {
      "round": 400, "hr@10": 0.5, "ndcg@10": 0.3, "loss": 0.1, "seconds_per_round": 0.5,
      "actions_mean": 4.0
  }
  host = dict(totals=dict(bits_up=0, bits_down=0, sim_seconds=0.0),
              eval_seconds=10.0,
              evaluations=2)
  # 600 rounds of 0.5 s and 12 evaluations (rounds 450 to 1,000) of 5 s.
  assert " ETA 360s " in training._progress_line(config, row, host)
  row["round"] = 990  # 6 rounds and one evaluation left, the last round's
  assert " ETA 8s " in training._progress_line(dataclasses.replace(config, rounds=996), row, host)
  # K: the mean actions, none for a method without actions (-1; it printed "K -1.0").
  assert "  K 4.0  sim 0s" in training._progress_line(config, row, host)
  row["actions_mean"] = -1.0
  line = training._progress_line(config, row, host)
  assert " K " not in line and line.endswith("down 0.0 MB  sim 0s")


def test_same_flags_and_seed_give_identical_metrics(data_dir, reference, tmp_path):
  # train() in this process against the binary's run of the same flags (another
  # process, another compilation): every metric and the final model bit for bit.
  lines = []
  summary = train(TrainConfig(data_dir=str(data_dir), workdir=str(tmp_path), **RUN),
                  log=lines.append)
  expected = json.loads((reference / "summary.json").read_text())
  for key in ("final", "best"):
    assert _untimed(summary[key]) == _untimed(expected[key])
  assert summary["config"] == dict(expected["config"], workdir=str(tmp_path))
  assert [_untimed(r) for r in metrics_rows(tmp_path)
         ] == [_untimed(r) for r in metrics_rows(reference)]
  assert (tmp_path / "final_params.msgpack").read_bytes() == \
      (reference / "final_params.msgpack").read_bytes()
  assert not any("\r" in l or "\n" in l for l in lines)
  assert [l.split("/")[0] for l in lines if l.startswith("round")
         ] == [f"round {r:5d}" for r in (5, 10, 15, 20, 25, 30)]


def test_rerunning_a_finished_run_resumes_it_without_training(data_dir, reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  before = (workdir / "metrics.jsonl").read_text()
  # data_dir, quiet and checkpoint_every do not count as different flags.
  summary = train(_config(data_dir, workdir=str(workdir), **dict(RUN, checkpoint_every=7)))
  assert summary["resumed_from_round"] == 30
  assert (workdir / "metrics.jsonl").read_text() == before
  expected = json.loads((reference / "summary.json").read_text())
  assert summary["final"] == expected["final"]


def test_a_damaged_config_json_names_the_remedy_that_keeps_the_checkpoints(
    data_dir, reference, tmp_path):
  """Its only remedy was --overwrite, which deletes the checkpoints; they record the flags,
  so deleting the file resumes the run."""
  workdir = _copy(reference, tmp_path)
  (workdir / "config.json").write_text('{"rou')
  with pytest.raises(WorkdirError, match="delete it to resume from the checkpoints, or use"):
    train(_config(data_dir, workdir=str(workdir), **RUN))
  (workdir / "config.json").unlink()
  summary = train(_config(data_dir, workdir=str(workdir), **RUN))
  assert summary["resumed_from_round"] == 30


def test_a_run_on_changed_data_is_refused_not_resumed(ml100k_path, tmp_path, monkeypatch):
  """The same flags on an edited ratings file (or a --data_dir without ML-1M's negatives
  file) resumed the run on the new split, silently mixing the two."""
  ratings = tmp_path / "ratings.tsv"
  shutil.copy(ml100k_path, ratings)
  config = TrainConfig(dataset=str(ratings),
                       data_columns="user,item,rating,timestamp",
                       data_dir=str(tmp_path / "data"),
                       workdir=str(tmp_path / "run"),
                       quiet=True,
                       **dict(TINY, rounds=2))
  first = train(config)
  assert first["data_sha256"] == experiment.run_data_sha256(config)
  assert train(config)["resumed_from_round"] == 2  # the same data: resumed
  # Other spellings of the file's path are the same --dataset (they were refused).
  monkeypatch.chdir(tmp_path)
  for spelling in (f"{tmp_path}/./ratings.tsv", "ratings.tsv"):
    assert train(dataclasses.replace(config, dataset=spelling))["resumed_from_round"] == 2
  assert not config_lib.same_dataset("ratings.tsv", "other/ratings.tsv")
  assert not config_lib.same_dataset("ml-100k", "ml-1m")
  (tmp_path / "ml-100k").write_text("")  # a file named as a built-in dataset is not it
  assert not config_lib.same_dataset("ml-100k", "./ml-100k")
  # So are two spellings of one list of bandwidth tiers; other tiers still differ.
  recorded = dict(dataclasses.asdict(config), bandwidth_tiers="4,16,32,64")
  tiers = lambda text: dataclasses.replace(config, bandwidth_tiers=text)
  assert workdir_lib.config_differences(recorded, tiers("4, 16,32.0 ,64")) == []
  assert workdir_lib.config_differences(
      recorded, tiers("4,16,32")) == ["--bandwidth_tiers (workdir '4,16,32,64', now '4,16,32')"]
  finished = lambda: compare.finished_summary(config,
                                              compare.data_sha256_asked(config, tabulating=False))
  assert finished()["final"] == first["final"]
  lines = ratings.read_text().splitlines()
  user, item, rating, stamp = lines[0].split("\t")  # user 196's one rating moves last
  lines[0] = "\t".join([user, item, rating, "1999999999"])
  ratings.write_text("\n".join(lines) + "\n")
  for use in (lambda: train(config), finished):  # resumed, or tabulated as it is
    with pytest.raises(WorkdirError, match="holds a run trained on other data"):
      use()
  # Without its checkpoints (deleted to save disk) the run started afresh over the
  # finished run's files: its summary names the data too.
  shutil.rmtree(tmp_path / "run" / "checkpoints")
  with pytest.raises(WorkdirError, match="holds a run trained on other data"):
    train(config)
  again = train(dataclasses.replace(config, overwrite=True))
  assert again["resumed_from_round"] is None and again["final"] != first["final"]


def test_a_run_without_a_cadence_saves_its_last_round_and_is_not_trained_again(data_dir, tmp_path):
  """--checkpoint_every=0 --checkpoint_minutes=0: no checkpoint on the way, the last
  round's at the end, so rerunning the finished run does not train it again."""
  lines = []
  config = TrainConfig(data_dir=str(data_dir),
                       workdir=str(tmp_path),
                       **dict(TINY, checkpoint_every=0, checkpoint_minutes=0))
  first = train(config, log=lines.append)
  assert [r for r, _ in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == [4]
  trained = [l for l in lines if l.startswith("round")]
  assert len(trained) == 2
  lines.clear()
  again = train(config, log=lines.append)
  assert again["resumed_from_round"] == 4
  assert not [l for l in lines if l.startswith("round")]
  assert again["final"] == first["final"]


def test_altered_newest_checkpoint_falls_back_to_the_previous_one(data_dir, reference, tmp_path):
  """4 KiB in the middle of the newest checkpoint overwritten with 0xFF (same size):
  its checksum does not match, so the run warns, resumes from the one before and ends
  exactly where the uninterrupted run did."""
  workdir = _copy(reference, tmp_path)
  (workdir / "summary.json").unlink()
  saved = checkpoint.list_checkpoints(workdir / "checkpoints")
  assert [r for r, _ in saved] == [20, 30]
  newest = saved[-1][1]
  flip_middle(newest)
  lines = []
  summary = train(TrainConfig(data_dir=str(data_dir), workdir=str(workdir), **RUN),
                  log=lines.append)
  warnings = [l for l in lines if l.startswith("warning:")]
  assert len(warnings) == 1 and str(newest) in warnings[0] and "checksum mismatch" in warnings[0]
  assert summary["resumed_from_round"] == 20
  expected = json.loads((reference / "summary.json").read_text())
  assert _untimed(summary["final"]) == _untimed(expected["final"])
  assert [_untimed(r) for r in metrics_rows(workdir)
         ] == [_untimed(r) for r in metrics_rows(reference)]
  assert (workdir / "final_params.msgpack").read_bytes() == \
      (reference / "final_params.msgpack").read_bytes()


def test_cadence_saves_by_rounds_and_by_minutes_since_the_last_save():
  now = [0.0]
  every_10_rounds_or_minute = checkpoint.Cadence(10, 1.0, clock=lambda: now[0])
  assert [r for r in range(1, 25) if every_10_rounds_or_minute.due(r)] == [10, 20]
  now[0] = 59.9
  assert not every_10_rounds_or_minute.due(3)
  now[0] = 60.0  # a minute since the cadence was made
  assert every_10_rounds_or_minute.due(3)
  every_10_rounds_or_minute.saved()
  now[0] = 119.0
  assert not every_10_rounds_or_minute.due(4) and every_10_rounds_or_minute.due(10)
  now[0] = 120.0
  assert every_10_rounds_or_minute.due(4)
  by_time_only = checkpoint.Cadence(0, 0.5, clock=lambda: now[0])
  now[0] += 29.0
  assert not any(by_time_only.due(r) for r in (1, 10, 100))
  now[0] += 1.0
  assert by_time_only.due(1)
  never = checkpoint.Cadence(0, 0.0, clock=lambda: now[0])
  now[0] += 1e6
  assert not any(never.due(r) for r in (1, 10, 100))


def test_a_checkpoint_by_time_between_evaluations_resumes_exactly(data_dir, reference, tmp_path):
  """--checkpoint_every=0 and a tiny --checkpoint_minutes: a checkpoint after every
  round (the newest two kept); resumed from round 29, mid evaluation window (the window's
  averages are in the checkpoint), the run ends where the uninterrupted one did."""
  by_time = dict(RUN, checkpoint_every=0, checkpoint_minutes=1e-9)
  workdir = tmp_path / "run"
  train(_config(data_dir, workdir=str(workdir), **by_time))
  saved = checkpoint.list_checkpoints(workdir / "checkpoints")
  assert [r for r, _ in saved] == [29, 30]
  for path in (saved[-1][1], workdir / "summary.json", workdir / "final_params.msgpack"):
    path.unlink()
  summary = train(_config(data_dir, workdir=str(workdir), **by_time))
  assert summary["resumed_from_round"] == 29
  assert [_untimed(r) for r in metrics_rows(workdir)
         ] == [_untimed(r) for r in metrics_rows(reference)]
  assert (workdir / "final_params.msgpack").read_bytes() == \
      (reference / "final_params.msgpack").read_bytes()


def test_a_resumed_run_continues_its_server_lr_schedule(data_dir, tmp_path):
  """Resumed from round 2 of 4, a linear decay to 0 goes on from its third step (the
  step count is in the checkpoint): the model ends as the uninterrupted run's."""
  decaying = dict(TINY, checkpoint_every=2, server_lr_schedule="linear", server_lr_end=0.0)
  workdir = tmp_path / "run"
  train(_config(data_dir, workdir=str(workdir), **decaying))
  uninterrupted = (workdir / "final_params.msgpack").read_bytes()
  saved = checkpoint.list_checkpoints(workdir / "checkpoints")
  assert [r for r, _ in saved] == [2, 4]
  for path in (saved[-1][1], workdir / "summary.json", workdir / "final_params.msgpack"):
    path.unlink()
  assert train(_config(data_dir, workdir=str(workdir), **decaying))["resumed_from_round"] == 2
  assert (workdir / "final_params.msgpack").read_bytes() == uninterrupted


def test_workdir_with_other_flags_is_refused(data_dir, reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  # --data_dir and --quiet may differ; --dim and --rounds may not. The refusal comes
  # before the data is read (the data_dir here does not exist).
  proc = train_binary(*_flags(tmp_path / "nowhere", workdir, **dict(RUN, dim=32, rounds=31)),
                      "--quiet")
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --workdir=") and "--overwrite" in last, last
  assert "--dim (workdir 16, now 32)" in last and "--rounds (workdir 30, now 31)" in last
  assert "--data_dir" not in last and "--quiet" not in last
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before
  with pytest.raises(WorkdirError, match=r"--seed \(workdir 0, now 1\)"):
    train(_config(data_dir, workdir=str(workdir), **dict(RUN, seed=1)))


def test_overwrite_starts_the_workdir_over(data_dir, reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  summary = train(
      _config(data_dir, workdir=str(workdir), overwrite=True, **dict(TINY, checkpoint_every=3)))
  assert summary["resumed_from_round"] is None
  assert [r["round"] for r in metrics_rows(workdir)] == [2, 4]
  assert [r for r, _ in checkpoint.list_checkpoints(workdir / "checkpoints")] == [3, 4]
  assert json.loads((workdir / "config.json").read_text())["rounds"] == 4


def _sampled(round_index, seed=0):
  return np.asarray(round_clients(jax.random.key(seed), round_index, ML100K_USERS, 16))


def test_nonfinite_updates_stop_the_run_naming_round_and_users(data_dir, monkeypatch):
  poison_users(monkeypatch, lambda u: u % 4 == 0)
  expected = sorted(int(u) for u in _sampled(0) if u % 4 == 0)
  assert expected  # seed 0 samples some of them in round 1
  with pytest.raises(NonFiniteUpdateError) as e:
    train(_config(data_dir, on_nonfinite="stop", **TINY))
  message = str(e.value)
  assert "\n" not in message
  assert message == (f"round 1: {len(expected)} of 16 sampled clients sent a non-finite update "
                     f"(user ids {expected}); stopped (--on_nonfinite=stop; the same command with "
                     "--on_nonfinite=skip resumes, skipping such clients)")


def test_a_round_shape_too_small_for_its_clients_stops_the_run(data_dir, monkeypatch):
  plan = experiment.build_round_config
  monkeypatch.setattr(experiment, "build_round_config",
                      lambda *a, **k: dataclasses.replace(plan(*a, **k), max_lane_steps=1))
  with pytest.raises(RuntimeError, match="outgrew the static round shape"):
    train(_config(data_dir, **TINY))


def test_a_run_whose_every_client_fails_for_dead_rounds_rounds_stops(data_dir, monkeypatch):
  """Skipping cannot help when every sampled client fails: the model no longer changes.
  The run stops after ``DEAD_ROUNDS`` such rounds in a row, saying why, in one line."""
  poison_users(monkeypatch, lambda u: u >= 0)
  lines = []
  with pytest.raises(NonFiniteUpdateError) as e:
    train(TrainConfig(data_dir=str(data_dir), **TINY), log=lines.append)
  assert str(e.value) == (f"rounds 1-{DEAD_ROUNDS}: every sampled client sent a non-finite "
                          "update, so the model no longer changes (diverged? lower the "
                          "learning rates, with --overwrite or another --workdir); stopped")
  assert TINY["rounds"] > DEAD_ROUNDS
  assert sum("16 of 16 sampled clients sent a non-finite update" in l for l in lines) == DEAD_ROUNDS


def test_a_resumed_run_counts_the_dead_rounds_before_its_checkpoint(data_dir, monkeypatch,
                                                                    tmp_path):
  poison_users(monkeypatch, lambda u: u >= 0)
  config = TrainConfig(data_dir=str(data_dir),
                       workdir=str(tmp_path / "run"),
                       checkpoint_every=1,
                       **TINY)
  save = checkpoint.save

  class Killed(Exception):
    pass

  def save_then_die(directory, r, *args, **kwargs):
    save(directory, r, *args, **kwargs)
    if r == DEAD_ROUNDS - 1:
      raise Killed

  monkeypatch.setattr(checkpoint, "save", save_then_die)
  with pytest.raises(Killed):
    train(config)
  monkeypatch.setattr(checkpoint, "save", save)
  # Resumed after round DEAD_ROUNDS - 1: it stops one round later, as the run would have.
  with pytest.raises(NonFiniteUpdateError, match=f"rounds 1-{DEAD_ROUNDS}: every sampled"):
    train(config)


def test_nonfinite_updates_are_skipped_counted_and_logged(data_dir, monkeypatch):
  poison_users(monkeypatch, lambda u: u % 4 == 0)
  losses, account = [], training._account  # each round's per-client training losses
  monkeypatch.setattr(
      training, "_account", lambda host, metrics, m:
      (losses.append(np.asarray(metrics.loss, np.float64)), account(host, metrics, m)))
  lines = []
  summary = train(TrainConfig(data_dir=str(data_dir), **dict(TINY, rounds=2, eval_every=1)),
                  log=lines.append)
  per_round = [sum(int(u) % 4 == 0 for u in _sampled(r)) for r in range(2)]
  assert summary["final"]["skipped_clients"] == sum(per_round) > 0
  logged = [l for l in lines if "non-finite" in l]
  assert len(logged) == sum(n > 0 for n in per_round)
  assert all(l.endswith("skipped them") for l in logged)
  # The loss is the kept clients' mean (the skipped ones' is NaN), not a mean with zeros.
  last = losses[-1]
  assert np.sum(np.isnan(last)) == per_round[1]
  assert summary["final"]["loss"] == pytest.approx(np.nanmean(last), rel=1e-6)
  assert per_round[1] > 0  # the seed's sample: a last round with skipped clients
  assert summary["final"]["loss"] != pytest.approx(np.mean(np.nan_to_num(last)), rel=1e-6)


@pytest.mark.parametrize(
    "setting,message",
    [(dict(on_nonfinite="ignore"), "--on_nonfinite='ignore' is invalid"),
     (dict(checkpoint_every=-1), "--checkpoint_every=-1 is invalid"),
     (dict(checkpoint_minutes=-1.0), "--checkpoint_minutes=-1.0 is invalid"),
     (dict(checkpoint_minutes=float("nan")), "--checkpoint_minutes=nan is invalid"),
     (dict(server_lr_schedule="step"), "--server_lr_schedule='step' is invalid: must be one of"),
     (dict(server_lr_end=1.5), "--server_lr_end=1.5 is invalid: must be in [0, 1]"),
     (dict(server_lr_end=float("nan")), "--server_lr_end=nan is invalid"),
     (dict(train_negatives="seen"), "--train_negatives='seen' is invalid: must be one of"),
     (dict(workdir=" "), "--workdir=' ' is invalid: must be a directory, or none (no files)"),])
def test_bad_new_settings_are_refused(setting, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    TrainConfig(**setting).validate()


def _one_line_error(proc):
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert lines and lines[-1].startswith("error: "), proc.stderr
  return lines[-1]


def test_missing_data_without_download_is_one_line_error(tmp_path):
  line = _one_line_error(train_binary(f"--data_dir={tmp_path}", "--nodownload", timeout=120))
  assert f"{tmp_path}/ml-100k/u.data is missing (downloads disabled)" in line


def test_malformed_ratings_file_is_one_line_error_naming_file_and_line(tmp_path):
  ratings = tmp_path / "ml-1m" / "ratings.dat"
  ratings.parent.mkdir()
  ratings.write_text("1::1193::5::978300760\n1::oops::3::978302109\n")
  line = _one_line_error(train_binary(f"--data_dir={tmp_path}", "--dataset=ml-1m-raw", timeout=120))
  assert line.startswith(f"error: {ratings}:2: ") and "'oops'" in line


def test_plot_draws_each_runs_metrics(tmp_path):
  pytest.importorskip("matplotlib")
  dirs = []
  for name, scale in (("fedras", 1), ("dense", 32)):
    workdir = tmp_path / name
    workdir.mkdir()
    rows = [
        dict(round=r,
             **{"hr@10": 0.1 + r / 100, "ndcg@10": 0.05 + r / 200},
             bits_up_total=r * 1000 * scale,
             bits_down_total=r * 900 * scale,
             sim_seconds=r * 0.5 * scale) for r in (5, 10, 15)
    ]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                           + '{"round": 2')  # a torn last line is ignored
    dirs.append(str(workdir))
  out = tmp_path / "plots" / "cmp.png"
  proc = subprocess.run([sys.executable, "-m", "experiments.plot", f"--out={out}", *dirs],
                        cwd=REPO,
                        capture_output=True,
                        text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # What is drawn: per run, HR@10 (top) and NDCG@10 (bottom) against the round, the bits
  # sent up + down and the simulated seconds, as written above (the torn line left out).
  # Read in a fresh interpreter: importing experiments.plot here would define its flags in
  # this test process beside other binaries'.
  probe = ("import json, sys\n"
           "from matplotlib import pyplot as plt\n"
           "from experiments import plot\n"
           "figures, close = [], plt.close\n"
           "plt.close = lambda fig=None: (figures.append(fig), close(fig))\n"
           "plot.plot_runs([(d, plot.read_rows(d)) for d in sys.argv[2:]], sys.argv[1])\n"
           "print(json.dumps([[(l.get_label(), [list(map(float, v)) for v in l.get_data()])\n"
           "                   for l in ax.lines] for ax in figures[0].axes]))\n")
  drawn = subprocess.run([sys.executable, "-c", probe,
                          str(tmp_path / "direct.png"), *dirs],
                         cwd=REPO,
                         capture_output=True,
                         text=True,
                         check=True,
                         timeout=120)
  axes = json.loads(drawn.stdout)  # six axes, row by row
  axes = [axes[:3], axes[3:]]
  rounds = np.array([5.0, 10.0, 15.0])
  for (ax_row, metric), (col, x) in itertools.product(
      zip(axes, (0.1 + rounds / 100, 0.05 + rounds / 200)),
      enumerate((lambda s: rounds, lambda s: rounds * 1900 * s, lambda s: rounds * 0.5 * s))):
    lines = ax_row[col]
    assert [label for label, _ in lines] == dirs
    for (_, xy), scale in zip(lines, (1, 32)):
      np.testing.assert_allclose(xy, [x(scale), metric])
  missing = subprocess.run(
      [sys.executable, "-m", "experiments.plot", f"--out={out}",
       str(tmp_path / "nothing")],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120)
  assert missing.returncode != 0
  assert missing.stderr.strip().splitlines()[-1].startswith("error: ")


def test_plot_picks_the_protocol_every_run_has(tmp_path):
  """Runs of --eval_protocol=full have only full_* metrics: they are plotted as such (the
  plot used to draw empty axes and exit 0); runs of two protocols are refused."""
  pytest.importorskip("matplotlib")

  def run(name, keys):
    workdir = tmp_path / name
    workdir.mkdir()
    rows = [
        dict(round=r,
             bits_up_total=r,
             bits_down_total=r,
             sim_seconds=r,
             **{k: 0.1 * r for k in keys}) for r in (1, 2)
    ]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(workdir)

  full = [run(n, ("full_hr@10", "full_ndcg@10")) for n in ("f1", "f2")]
  sampled = run("s", ("hr@10", "ndcg@10"))
  plot = lambda *dirs: subprocess.run(
      [sys.executable, "-m", "experiments.plot", f"--out={tmp_path / 'p.png'}", *dirs],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120)
  proc = plot(*full)
  assert proc.returncode == 0 and "No artists" not in proc.stderr, proc.stderr
  proc = plot(sampled, full[0])
  assert proc.returncode == 1
  assert "has no sampled-protocol metrics" in proc.stderr.strip().splitlines()[-1]
