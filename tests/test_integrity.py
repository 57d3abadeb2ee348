"""Runs nobody can corrupt (issue #17): the workdir lock, checksummed checkpoints,
strict JSON output, write errors naming the file, and one-line errors from every
binary for bad input (no traceback)."""
import json
import math
import os
import pathlib
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import exited_pid, flip_middle, poison_users

from fedras_jax import checkpoint, outputs
from fedras_jax import flags as flag_lib
from fedras_jax.config import TrainConfig
from fedras_jax.training import train
from fedras_jax import workdir as workdir_lib
from fedras_jax.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLockError

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(method="uncompressed",
            rounds=4,
            clients_per_round=16,
            dim=16,
            eval_every=2,
            checkpoint_every=2)

# Takes the lock of argv[1], says so, then waits to be killed.
HOLDER = """
import sys, time
from fedras_jax.workdir_lock import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _strict_json(text):
  """``json.loads`` that fails on the non-standard ``NaN`` / ``Infinity`` literals."""

  def refuse(literal):
    raise AssertionError(f"non-standard JSON literal {literal}")

  return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------ the lock --


def test_a_held_workdir_is_refused_naming_it_and_its_owner(tmp_path):
  warnings = []
  with WorkdirLock(tmp_path, warn=warnings.append):
    owner = _strict_json((tmp_path / LOCK_FILE).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(WorkdirLockError) as e:
      WorkdirLock(tmp_path).acquire()
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"--workdir={tmp_path} is in use by another run (pid "
                              f"{os.getpid()} on {socket.gethostname()} since ")
  assert not (tmp_path / LOCK_FILE).exists()  # released: the next run starts cleanly
  with WorkdirLock(tmp_path, warn=warnings.append):
    pass
  assert warnings == []


def test_the_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirLockError, match=f"pid {holder.pid} on "):
      WorkdirLock(tmp_path).acquire()
  finally:
    holder.kill()  # SIGKILL: the holder cannot clean up; its lock file stays
    holder.wait()
  assert str(holder.pid) in (tmp_path / LOCK_FILE).read_text()
  warnings = []
  with WorkdirLock(tmp_path, warn=warnings.append):
    assert len(warnings) == 1
    assert "taking over the lock" in warnings[0] and f"pid {holder.pid} on" in warnings[0]
    assert _strict_json((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_second_run_on_a_workdir_in_use_is_refused_and_touches_nothing(ml100k_path, tmp_path):
  """Two runs on one workdir: while one holds it, the binary refuses another (even with
  --overwrite, which would otherwise clear the workdir), in one line, exit status 1."""
  (tmp_path / "metrics.jsonl").write_text('{"round": 2}\n')
  with WorkdirLock(tmp_path):
    proc = subprocess.run([
        sys.executable, "-m", "experiments.train", f"--data_dir={ml100k_path.parents[1]}",
        f"--workdir={tmp_path}", "--overwrite", "--rounds=2", "--compilation_cache=none"
    ],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          timeout=300)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: --workdir={tmp_path} is in use by another run (pid "
                         f"{os.getpid()} on "), last
  assert (tmp_path / "metrics.jsonl").read_text() == '{"round": 2}\n'


# -------------------------------------------------------- strict JSON output --


def test_dumps_writes_non_finite_numbers_as_null():
  obj = dict(a=float("nan"),
             b=[1.0, float("inf"), -float("inf")],
             c=np.float32("nan"),
             d=np.array([0.5, np.nan]),
             e=(np.int64(3), "x"),
             f=None)
  assert _strict_json(outputs.dumps(obj)) == dict(a=None,
                                                  b=[1.0, None, None],
                                                  c=None,
                                                  d=[0.5, None],
                                                  e=[3, "x"],
                                                  f=None)


def test_a_run_with_nan_losses_writes_strict_json_and_takes_over_a_dead_lock(
    ml100k_path, tmp_path, monkeypatch):
  """Every user row poisoned: every client is skipped, so no loss is finite (the rows'
  loss is NaN; two such rounds stay below DEAD_ROUNDS): every JSON file of the workdir
  still parses strictly, with null where the NaN was. The workdir's lock file was left by
  a dead process: the run takes it over, warning."""
  poison_users(monkeypatch, lambda u: u >= 0)
  dead = exited_pid()
  (tmp_path / LOCK_FILE).write_text(
      json.dumps(dict(pid=dead, host=socket.gethostname(), started="earlier")))
  lines = []
  summary = train(TrainConfig(data_dir=str(ml100k_path.parents[1]),
                              workdir=str(tmp_path),
                              **dict(TINY, rounds=2)),
                  log=lines.append)
  assert any(
      l.startswith("warning: taking over the lock") and f"pid {dead}" in l for l in lines), lines
  assert not (tmp_path / LOCK_FILE).exists()
  assert summary["final"]["skipped_clients"] == 2 * TINY["clients_per_round"]
  assert math.isnan(summary["final"]["loss"])
  rows = [_strict_json(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == [2] and all(r["loss"] is None for r in rows)
  saved = _strict_json((tmp_path / "summary.json").read_text())
  assert saved["final"]["loss"] is None and saved["final"]["hr@10"] == summary["final"]["hr@10"]
  assert _strict_json((tmp_path / "config.json").read_text())["rounds"] == 2


# ------------------------------------------------------ checksummed checkpoints --


def _state(value):
  return dict(table=jnp.full((64, 64), value, jnp.float32), step=jnp.asarray(value, jnp.int32))


@pytest.mark.parametrize("damage", ["flip_4k", "flip_one_bit", "truncate"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
  for r in (1, 2):
    checkpoint.save(tmp_path, r, _state(r), host=dict(round=r))
  newest = checkpoint.path_for(tmp_path, 2)
  size = newest.stat().st_size
  assert size > 3 * 4096
  if damage == "flip_4k":
    flip_middle(newest)
  elif damage == "flip_one_bit":
    data = bytearray(newest.read_bytes())
    data[size // 2] ^= 0x01
    newest.write_bytes(bytes(data))
  else:
    newest.write_bytes(newest.read_bytes()[:size // 2])
  warnings = []
  round_index, state, host, path = checkpoint.restore_latest(tmp_path,
                                                             _state(0),
                                                             warn=warnings.append)
  assert (round_index, host, path) == (1, dict(round=1), checkpoint.path_for(tmp_path, 1))
  np.testing.assert_array_equal(state["table"], np.ones((64, 64), np.float32))
  assert len(warnings) == 1 and str(newest) in warnings[0]
  if damage != "truncate":
    assert "checksum mismatch" in warnings[0]


def test_final_params_are_checksummed(tmp_path):
  path = checkpoint.save_params(tmp_path / "final_params.msgpack", _state(3))
  assert checkpoint.load_params(path)["table"].sum() == 3 * 64 * 64
  flip_middle(path, size=64)
  with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch"):
    checkpoint.load_params(path)


# ----------------------------------------------------- errors naming the file --


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
  writer = workdir_lib.MetricsWriter(str(tmp_path))
  (tmp_path / "metrics.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
  with pytest.raises(OSError) as e:
    writer.write(dict(round=1, loss=0.5))
  assert e.value.errno == 28 and str(tmp_path / "metrics.jsonl") in str(e.value)

  def main():
    writer.write(dict(round=2, loss=0.5))

  with pytest.raises(SystemExit) as e:
    flag_lib.guarded(main)()
  assert e.value.code == (f"error: [Errno 28] No space left on device: "
                          f"'{tmp_path / 'metrics.jsonl'}'")


def test_ctrl_c_is_one_line_and_exit_status_130(capsys, monkeypatch):
  """A KeyboardInterrupt printed its traceback (the run itself resumes as after a kill)."""

  def main():
    raise KeyboardInterrupt

  monkeypatch.delenv("FEDRAS_TRACEBACK", raising=False)
  with pytest.raises(SystemExit) as e:
    flag_lib.guarded(main)()
  assert e.value.code == 130
  assert capsys.readouterr().err.startswith("interrupted (a run with a --workdir resumes")


def test_ctrl_c_of_a_train_in_its_default_workdir_names_it():
  """Without --workdir, train runs in runs/<name>-<time>: the same command again starts a new
  folder, so Ctrl-C said to rerun it and the rounds done were lost."""
  code = ("import sys, experiments.train as t\n"
          "def interrupted(config):\n  raise KeyboardInterrupt\n"
          "t.train = interrupted\n"
          "t.default_workdir = lambda config: 'runs/ml-100k-mf-fedras-20261208-000000'\n"
          "sys.argv = ['train'] + sys.argv[1:]\n"
          "t.flag_lib.run_main(t.main)\n")
  run = lambda *flags: subprocess.run(
      [sys.executable, "-c", code, *flags],
      capture_output=True,
      text=True,
      env={k: v for k, v in os.environ.items() if k != "FEDRAS_TRACEBACK"})
  proc = run("--rounds=1")
  assert proc.returncode == 130, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "interrupted (its workdir is runs/ml-100k-mf-fedras-20261208-000000: add "
      "--workdir=runs/ml-100k-mf-fedras-20261208-000000 to the same command to resume it)")
  proc = run("--rounds=1", "--workdir=runs/mine")
  assert proc.returncode == 130 and proc.stderr.strip().splitlines()[-1].startswith(
      "interrupted (a run with a --workdir resumes")


def test_write_atomic_names_the_file_on_a_write_error(tmp_path, monkeypatch):

  def no_space(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", no_space)
  target = tmp_path / "summary.json"
  with pytest.raises(OSError, match=f"No space left on device: '{target}'"):
    outputs.write_json(target, dict(a=1))
  assert list(tmp_path.iterdir()) == []  # no temporary file left behind


# --------------------------------------------- every binary: one-line errors --


def _lastfm_with_a_huge_id(data_dir):
  path = data_dir / "lastfm-2k" / "user_artists.dat"
  path.parent.mkdir(parents=True)
  path.write_text("userID\tartistID\tweight\n1\t2\t3\n2\t18446744073709551616\t5\n")
  return path


def test_binaries_refuse_bad_input_in_one_line(tmp_path):
  lastfm = _lastfm_with_a_huge_id(tmp_path / "data")
  quick = ["--data_dir=/nonexistent", "--compilation_cache=none"]
  cases = [  # (module, args, the start of the error line)
      ("train", ["--seed=-1"], "--seed=-1 is invalid: must be an integer in [0, 2^32)"),
      ("train", ["--rounds=abc"], "flag --rounds=abc: "),
      ("train", ["--server_lr=-1"], "--server_lr=-1.0 is invalid: must be finite and >= 0"),
      ("train", ["--item_lr=-1"], "--item_lr=-1.0 is invalid: must be finite and >= 0"),
      ("train", ["--compute_seconds=-1"],
       "--compute_seconds=-1.0 is invalid: must be finite and >= 0"),
      ("train", ["--dataset=nope"], "--dataset='nope' is invalid"),
      ("train", ["--rounds=0"], "--rounds=0 is invalid"),
      ("train", ["--aggregation=median"], "--aggregation='median' is invalid"),
      ("train", [f"--data_dir={tmp_path / 'data'}", "--dataset=lastfm-2k"],
       f"{lastfm}:3: field 2 (item) is '18446744073709551616', expected an integer"),
      ("sweep", ["--grid=nosuch=1,2"], "--grid=nosuch=1,2: cannot sweep 'nosuch'"),
      ("sweep", ["--grid=dim=32,64"], "--grid=dim=32,64: cannot sweep 'dim'"),
      ("sweep", ["--grid=item_lr=nan"], "--grid=item_lr=nan: 'nan' is not a finite number"),
      ("sweep", ["--grid=item_lr=abc"], "--grid=item_lr=abc: 'abc' is not a finite number"),
      ("sweep", ["--grid=item_lr=-1"], "--grid=item_lr=-1: --item_lr=-1.0 is invalid"),
      ("sweep", ["--shape_grid=nosuch=1,2"], "--shape_grid=nosuch=1,2: no setting 'nosuch'"),
      ("sweep", ["--seeds=a,b"], "--seeds=a,b: 'a' is not an integer"),
      ("sweep", ["--seeds=0,1,0"], "--seeds=0,1,0: '0' repeats an earlier entry"),
      ("compare", ["--ratios=1/32,0.03125"],
       "--ratios=1/32,0.03125: '0.03125' repeats an earlier entry"),
      ("sweep", ["--eval_protocol=full"], "--eval_protocol=full: a sweep scores the sampled"),
      ("sweep", ["--on_nonfinite=stop"], "--on_nonfinite=stop: a sweep's runs share one program"),
      ("sweep", ["--markdown=page.md"], "--markdown=page.md: the page is --bench's timing"),
      ("compare", ["--ratios=1/0"], "--ratios=1/0: '1/0' is not a payload ratio in (0, 1]"),
      ("compare", ["--ratios=abc"], "--ratios=abc: 'abc' is not a payload ratio in (0, 1]"),
      ("compare", ["--tune=item_lr=abc"], "--tune=item_lr=abc: 'abc' is not a finite number"),
      ("compare", ["--tune=item_lr=8,16",
                   "--tune_at=1/32,1/8"], "--tune_at=1/32,1/8: name one payload ratio"),
      ("compare", ["--methods=svd,nosuch",
                   "--jobs=2"], "--methods=svd,nosuch: --method='nosuch' is invalid"),
      ("compare", ["--models=mf,nfc"], "--models=mf,nfc: --model='nfc' is invalid"),
      ("compare", [f"--datasets=ml-100k,{tmp_path / 'none.csv'}"],
       f"--datasets=ml-100k,{tmp_path / 'none.csv'}: no file {tmp_path / 'none.csv'}"),
      ("golden", ["--configs=nosuch"], "--configs: no configs/NAME.flags for nosuch"),
      ("golden", ["ml100k_mf"], "unexpected arguments: ml100k_mf (flags are --name=value)"),
      ("bench_jobs", ["--methods=nosuch",
                      "--data_dir=/nonexistent"], "--methods=nosuch: --method='nosuch' is invalid"),
      ("bench_round", ["--lane_sweep=8,x"], "--lane_sweep=8,x: 'x' is not a positive integer"),
      ("bench_round", [f"--markdown={tmp_path}"], f"--markdown={tmp_path}: not a writable file"),
      ("bench_eval", ["--repeats=0"], "flag --repeats=0: 0 is not"),
      ("plot", [], "give one or more workdirs"),
      ("bench_scale", ["--method=nosuch"], "--method='nosuch' is invalid"),
      ("bench_scale", ["--curves=client"], "--curves=client: name one or both of clients, items"),
      ("bench_scale", [f"--markdown={tmp_path}"], f"--markdown={tmp_path}: not a writable file"),
      ("bench_round", ["--methods=nosuch"], "--method='nosuch' is invalid"),
      ("bench_quantizer", ["--dim=0"], "flag --dim=0: 0 is not a positive integer"),
      ("bench_jobs", ["--jobs=1"], "flag --jobs=1: "),
  ]
  running = []
  for module, args, _ in cases:
    extra = quick if module in ("train", "sweep", "compare") and not any(
        a.startswith("--data_dir") for a in args) else []
    running.append(
        subprocess.Popen([sys.executable, "-m", f"experiments.{module}", *extra, *args],
                         cwd=REPO,
                         stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE,
                         text=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu")))
    if len(running) % 4 == 0:  # a few at a time on a small machine
      running[-4].wait(timeout=300)
  for (module, args, want), proc in zip(cases, running):
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 1, (module, args, stderr[-2000:])
    # One line, nothing else (JAX's own log line about absent TPU backends aside).
    lines = [l for l in stderr.splitlines() if l.strip() and "xla_bridge.py" not in l]
    assert len(lines) == 1, (module, args, stderr[-3000:])
    assert lines[0].startswith("error: " + want), (module, args, lines[0])


def test_temporary_files_of_killed_writes_are_removed(tmp_path):
  """A kill during the first checkpoint write, or during a final file's, leaves a
  temporary file: the next restore, or --overwrite, removes it (they used to stay); one
  whose writer still runs (a concurrent search's write in flight) is left alone."""
  gone, alive = exited_pid(), os.getpid()
  ckpt_dir = tmp_path / workdir_lib.CHECKPOINT_DIR
  ckpt_dir.mkdir()
  (ckpt_dir / f".round_000002.msgpack.{gone}.abcd1234.tmp").write_bytes(b"torn")
  live = ckpt_dir / f".round_000004.msgpack.{alive}.abcd1234.tmp"
  live.write_bytes(b"in flight")
  assert checkpoint.restore_latest(ckpt_dir, {"x": np.zeros(2)}) is None
  assert list(ckpt_dir.iterdir()) == [live]
  live.unlink()
  torn = tmp_path / f".summary.json.{gone}.abcd1234.tmp"
  torn.write_text("{")
  mine = tmp_path / "notes.txt"
  mine.write_text("kept")
  workdir_lib.clear_run(tmp_path)
  assert not torn.exists() and mine.exists()


def test_a_json_file_that_is_not_text_is_named_with_the_remedy(tmp_path):
  """Bytes that are not UTF-8 (a corrupted config.json) used to surface as the codec's
  message alone, naming neither the file nor what to do."""
  path = tmp_path / "config.json"
  path.write_bytes(b"\xff\xfe garbage")
  with pytest.raises(ValueError, match=f"{path} is not readable JSON .*; use --overwrite"):
    outputs.read_json(path, "use --overwrite")


@pytest.mark.parametrize("text, message", [("[1, 2]", "not a JSON object"),
                                           ('{"final": {}}', "has no config"),
                                           ('{"x": 1}', "has no final, config")])
def test_a_json_file_without_its_fields_is_named(tmp_path, text, message):
  path = tmp_path / "summary.json"
  path.write_text(text)
  with pytest.raises(ValueError, match=f"{path}: {message}; use --overwrite"):
    outputs.read_json(path, "use --overwrite", fields=("final", "config"))
  assert outputs.read_json(path) == json.loads(text)  # without fields: any JSON
