"""experiments/jobs.py: a grid's parts as processes at once, each slot on its own CPUs."""
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import jobs

needs_affinity = pytest.mark.skipif(jobs.usable_cpus() is None,
                                    reason="no CPU affinity on this platform")


def test_cpu_shares_are_contiguous_disjoint_and_cover_every_cpu():
  assert jobs.cpu_shares([0, 1, 2, 3, 4, 5, 6], 3) == [{0, 1, 2}, {3, 4}, {5, 6}]
  assert jobs.cpu_shares([2, 5], 2) == [{2}, {5}]
  assert jobs.cpu_shares(None, 2) == [None, None]
  with pytest.raises(ValueError, match="3 parallel parts but this process may use only 2 CPUs"):
    jobs.cpu_shares([0, 1], 3)
  with pytest.raises(ValueError, match="need at least one"):
    jobs.cpu_shares([0, 1], 0)


def _show(code: int, pause: float = 0.0):
  """A command that prints its CPUs and whether it runs unbuffered, then exits ``code``."""
  return [
      sys.executable, "-c", "import os, sys, time; print(sorted(os.sched_getaffinity(0)), "
      f"os.environ['PYTHONUNBUFFERED']); time.sleep({pause}); sys.exit({code})"
  ]


@needs_affinity
def test_pinned_starts_a_command_on_the_given_cpus_only():
  cpu = jobs.usable_cpus()[-1]
  show = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
  out = subprocess.run(jobs.pinned(show, {cpu}), capture_output=True, text=True, check=True).stdout
  assert out.strip() == str([cpu])


@needs_affinity
def test_run_queue_pins_each_slot_relays_lines_and_returns_every_status(capfd):
  cpus = jobs.usable_cpus()
  shares = [{cpus[0]}, set(cpus)]
  # Three commands in two slots: the third waits for a free slot.
  codes = jobs.run_queue([_show(0, 0.5), _show(3), _show(0)], ["a", "b", "c"], shares)
  assert codes == [0, 3, 0]
  out = capfd.readouterr().out.splitlines()
  assert f"[a] {[cpus[0]]} 1" in out  # pinned to slot 0, and unbuffered
  assert f"[b] {cpus} 1" in out
  assert out.count(f"[c] {cpus} 1") + out.count(f"[c] {[cpus[0]]} 1") == 1
  assert sum(line.endswith(" started on CPUs " + str([cpus[0]])) for line in out) >= 1
  assert sorted(os.sched_getaffinity(0)) == cpus  # this process is left as it was


def test_an_interrupted_queue_stops_its_commands_and_starts_no_more(tmp_path):
  # A parent running one long command that ignores SIGINT (as one started from a
  # background shell does) in one slot, then SIGTERM to the parent.
  script = tmp_path / "parent.py"
  script.write_text("import sys\n"
                    "from experiments import jobs\n"
                    "jobs._GRACE_SECONDS = 1\n"
                    "long = [sys.executable, '-c', 'import os, signal, time; "
                    "signal.signal(signal.SIGINT, signal.SIG_IGN); "
                    "open(\"pid\", \"w\").write(str(os.getpid())); time.sleep(60)']\n"
                    "later = [sys.executable, '-c', 'open(sys.argv[1], \"w\")', 'x']\n"
                    "jobs.run_queue([long, later], ['long', 'later'], [None])\n")
  parent = subprocess.Popen(
      [sys.executable, str(script)],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      cwd=tmp_path,
      env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
  assert parent.stdout.readline().startswith("[long] started")
  while not (tmp_path / "pid").exists():
    time.sleep(0.1)
  start = time.monotonic()
  parent.send_signal(signal.SIGTERM)
  out = parent.communicate(timeout=60)[0]
  assert time.monotonic() - start < 15  # the long command was stopped, not waited for
  assert parent.returncode != 0 and "KeyboardInterrupt" in out
  assert "[later]" not in out and not (tmp_path / "x").exists()
  with pytest.raises(ProcessLookupError):  # ended and reaped, not left running
    os.kill(int((tmp_path / "pid").read_text()), 0)
