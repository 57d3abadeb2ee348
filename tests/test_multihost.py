"""The train binary over 2 processes x 4 CPU devices (jax.distributed, gloo collectives)
equals 1 process x 1 device (the uncompressed run also 1 process x 8 devices); process
0 alone writes the workdir, a multi-process run resumes from it, and a failure of
process 0's set-up stops every process."""
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import metrics_rows, train_binary

from fedras_jax.checkpoint import load_params
from fedras_jax.launch import launch_local, xla_flags_with_devices

ROUNDS = 4
TIMEOUT = 400
# Small shapes: compiling the round dominates (three programs per method). The runs of one
# test share a compilation cache of their own (the reruns of a topology load its programs).
FLAGS = ("--method={method}", f"--rounds={ROUNDS}", "--eval_every=2", "--checkpoint_every=2",
         "--clients_per_round=16", "--dim=8")


def _run(argv, devices: int):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags_with_devices(devices))
  return train_binary(*argv, env=env, timeout=TIMEOUT)


def _train(workdir, method, data_dir, *, processes=1, devices=1, extra=()):
  argv = [f.format(method=method) for f in FLAGS] + [
      f"--data_dir={data_dir}", f"--workdir={workdir}",
      f"--compilation_cache={workdir.parent / 'xla_cache'}", *extra
  ]
  if processes == 1:
    return [_run(argv + (["--shard_clients"] if devices > 1 else []), devices)]
  # Every child is killed if one fails or hangs: none is left waiting in a collective.
  return launch_local("experiments.train",
                      argv,
                      num_processes=processes,
                      devices_per_process=devices,
                      timeout=TIMEOUT,
                      log_dir=workdir.parent)


def _ok(results):
  for r in results:
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  return results


def _params(workdir):
  return load_params(workdir / "final_params.msgpack")


def _assert_same_run(a, b):
  pa, pb = _params(a), _params(b)
  for name in ("users", "items"):
    np.testing.assert_allclose(pa[name], pb[name], rtol=1e-5, atol=1e-6, err_msg=name)
  for ra, rb in zip(metrics_rows(a), metrics_rows(b), strict=True):
    assert ra["round"] == rb["round"]
    assert ra["bits_up_total"] == rb["bits_up_total"]
    assert ra["bits_down_total"] == rb["bits_down_total"]
    for key in ("hr@10", "ndcg@10", "loss"):
      assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("method", ["uncompressed", "fedras"])
def test_two_processes_equal_one_process_and_one_device(ml100k_path, tmp_path, method):
  data_dir = ml100k_path.parents[1]
  single, sharded, multi = tmp_path / "1x1", tmp_path / "1x8", tmp_path / "2x4"
  _ok(_train(single, method, data_dir))
  writer, other = _ok(_train(multi, method, data_dir, processes=2, devices=4))
  _assert_same_run(multi, single)
  # Process 0 logs and writes (first the process group it is in); process 1 computes the
  # same rounds silently.
  assert writer.stdout.startswith("2 processes, 8 devices\n")
  assert f"round     {ROUNDS}/{ROUNDS}" in writer.stdout and "done:" in writer.stdout
  assert "round" not in other.stdout and "done:" not in other.stdout
  assert [r["round"] for r in metrics_rows(multi)] == [2, 4]  # each row once, not once per process

  if method != "uncompressed":
    return
  # The binary's --shard_clients path in one process (the FedRAS round sharded over 8
  # devices against one device is tests/test_sharding.py's).
  _ok(_train(sharded, method, data_dir, devices=8))
  _assert_same_run(sharded, single)

  # Resume: drop the last checkpoint and the final files; the rerun continues from
  # round 2 (read by process 0, broadcast to process 1) and ends where the first run did.
  final = _params(multi)
  for name in ("checkpoints/round_000004.msgpack", "summary.json", "final_params.msgpack"):
    (multi / name).unlink()
  writer, _ = _ok(_train(multi, method, data_dir, processes=2, devices=4))
  assert "resuming from round 2" in writer.stdout
  for name, value in _params(multi).items():
    np.testing.assert_array_equal(value, final[name], err_msg=name)
  # Again, finished: process 0 resumes at the last round and trains none; process 1 gets
  # its accounting (it used to die summarising the rows it never had: IndexError).
  writer, other = _ok(_train(multi, method, data_dir, processes=2, devices=4))
  assert f"resuming from round {ROUNDS}" in writer.stdout and "done:" in writer.stdout

  # A workdir that process 0 refuses (other flags) stops both processes with one line.
  results = _train(multi, method, data_dir, processes=2, devices=4, extra=["--seed=1"])
  assert all(r.returncode != 0 for r in results)
  assert "holds a run with different flags" in results[0].stderr.strip().splitlines()[-1]
  assert "process 0 failed to set up the run" in results[1].stderr.strip().splitlines()[-1]


def test_a_finished_two_process_sweep_is_kept_on_a_rerun(ml100k_path, tmp_path):
  """Rerun of a finished two-process sweep: every process takes process 0's kept results
  and trains nothing (only a single process reused them: two ran the whole sweep again)."""
  args = [
      "--seeds=0", "--grid=item_lr=4,8", "--rounds=2", "--eval_every=2", "--clients_per_round=8",
      "--dim=8", f"--data_dir={ml100k_path.parents[1]}", f"--workdir={tmp_path / 'sweep'}",
      f"--output={tmp_path / 'out.csv'}", f"--compilation_cache={tmp_path / 'xla_cache'}"
  ]
  runs = [
      _ok(
          launch_local("experiments.sweep",
                       args,
                       num_processes=2,
                       devices_per_process=1,
                       timeout=TIMEOUT,
                       log_dir=tmp_path / f"logs{i}")) for i in range(2)
  ]
  first = (tmp_path / "sweep" / "base" / "results.json").read_text()
  assert not any("kept: the finished sweep" in r.stdout for r in runs[0])
  assert all("kept: the finished sweep" in r.stdout for r in runs[1])
  assert (tmp_path / "sweep" / "base" / "results.json").read_text() == first


@pytest.mark.parametrize("flags,message", [
    (["--coordinator=localhost"], "--coordinator='localhost' is invalid"),
    (["--coordinator=127.0.0.1:1234", "--num_processes=2", "--process_id=2"
     ], "--process_id=2 is invalid"),
    (["--num_processes=2"], "--num_processes=2 needs --coordinator=HOST:PORT"),
    (["--coordinator=auto", "--initialization_timeout=0"], "--initialization_timeout=0 is invalid")
])
def test_bad_process_flags_fail_naming_the_flag(flags, message):
  result = _run(["--rounds=1", *flags], devices=1)
  assert result.returncode != 0
  assert message in result.stderr.strip().splitlines()[-1]


def test_launcher_stops_every_peer_when_one_fails(tmp_path):
  start = time.time()
  results = launch_local("tests.launch_probe", [],
                         num_processes=3,
                         log_dir=tmp_path,
                         grace=1.0,
                         timeout=100)
  assert time.time() - start < 30  # not the 120 s the hanging peers would take
  assert [r.returncode for r in results] == [-9, 3, -9]
  assert "process 1 fails" in results[1].stderr
  assert "--num_processes=3" in results[2].args and "--process_id=2" in results[2].args


def test_a_launcher_stopped_by_sigterm_stops_its_processes(tmp_path):
  """SIGTERM (a `timeout`, a batch system) to the launch binary: its hanging process is
  killed before it exits (it was left running, reparented, holding its workdir)."""
  launcher = subprocess.Popen(
      [sys.executable, "-m", "experiments.launch", "--num_processes=1", "--", "tests.launch_probe"],
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  children = pathlib.Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
  deadline = time.time() + 60
  while not children.read_text().split() and time.time() < deadline:
    time.sleep(0.2)
  (child,) = map(int, children.read_text().split())
  launcher.send_signal(signal.SIGTERM)
  assert launcher.wait(timeout=30) == 128 + signal.SIGTERM
  with pytest.raises(ProcessLookupError):
    os.kill(child, 0)


def test_the_launch_binary_reports_processes_killed_at_its_timeout(tmp_path):
  """A process killed at --timeout has no stderr of its own: it is still named (the
  binary used to exit 1 in silence); a negative --timeout is refused."""
  launch = lambda *flags: subprocess.run(
      [sys.executable, "-m", "experiments.launch", *flags, "--", "tests.launch_probe"],
      capture_output=True,
      text=True,
      timeout=120)
  proc = launch("--num_processes=1", "--timeout=1", f"--process_logs={tmp_path}")
  assert proc.returncode == 1
  assert "process 0 was killed (--timeout, or stopped after a peer failed)" in proc.stderr
  # Where the other processes' output went is said, also for the default temporary folder.
  proc = launch("--num_processes=3", "--timeout=30")
  logs = re.search(r"processes 1-2 write their output to (\S+)\n", proc.stderr).group(1)
  assert "process 1 fails" in (pathlib.Path(logs) / "process_1.err").read_text()
  proc = launch("--timeout=-1")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --timeout=-1.0 is invalid")
