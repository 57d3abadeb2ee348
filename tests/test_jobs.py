"""experiments/jobs.py: a grid's parts as processes at once on disjoint CPUs."""
import os
import sys

import pytest

from experiments import jobs


def test_round_robin_deals_in_order_and_never_makes_an_empty_part():
  assert jobs.round_robin(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
  assert jobs.round_robin(["a", "b"], 4) == [["a"], ["b"]]
  assert jobs.round_robin(["a", "b", "c"], 1) == [["a", "b", "c"]]


def test_cpu_shares_are_contiguous_disjoint_and_cover_every_cpu():
  assert jobs.cpu_shares([0, 1, 2, 3, 4, 5, 6], 3) == [{0, 1, 2}, {3, 4}, {5, 6}]
  assert jobs.cpu_shares([2, 5], 2) == [{2}, {5}]
  assert jobs.cpu_shares(None, 2) == [None, None]
  with pytest.raises(ValueError, match="3 parallel parts but this process may use only 2 CPUs"):
    jobs.cpu_shares([0, 1], 3)


def test_run_pinned_pins_each_command_relays_its_lines_and_returns_its_status(capfd):
  cpus = jobs.usable_cpus()
  if cpus is None:
    pytest.skip("no CPU affinity on this platform")
  show = ("import os, sys; print(sorted(os.sched_getaffinity(0)), "
          "os.environ['PYTHONUNBUFFERED']); sys.exit({})")
  shares = [{cpus[0]}, set(cpus)]
  codes = jobs.run_pinned([[sys.executable, "-c", show.format(0)],
                           [sys.executable, "-c", show.format(3)]], shares, ["one", "all"])
  assert codes == [0, 3]
  out = capfd.readouterr().out.splitlines()
  assert f"[one] {[cpus[0]]} 1" in out  # pinned, and unbuffered: lines come as printed
  assert f"[all] {cpus} 1" in out
  assert sorted(os.sched_getaffinity(0)) == cpus  # this process is left as it was
