"""Parts of a grid as processes at once, each on its own share of this process's CPUs.

On CPU one run of this framework uses about one core's worth: XLA:CPU's threads gain
little at its kernel sizes (``docs/design/quantizer_speed.md#one-core-or-two``), so a
grid finishes sooner as several processes, each pinned to its own cores, than as one
process using all of them. ``compare --jobs=N`` runs its methods that way.
"""
import os
import subprocess
import sys
import threading
from typing import Optional, Sequence


def usable_cpus() -> Optional[list]:
  """The CPUs this process may run on (its affinity), sorted; None where the platform
  has no affinity (then the parts run unpinned)."""
  try:
    return sorted(os.sched_getaffinity(0))
  except AttributeError:
    return None


def round_robin(items: Sequence, parts: int) -> list:
  """``items`` dealt into ``min(parts, len(items))`` non-empty lists, in order:
  part ``i`` gets items ``i, i + parts, ...``."""
  parts = min(parts, len(items))
  return [list(items[i::parts]) for i in range(parts)]


def cpu_shares(cpus: Optional[Sequence[int]], parts: int) -> list:
  """``cpus`` cut into ``parts`` contiguous, disjoint sets of near-equal size (the
  first ``len(cpus) % parts`` one larger); ``parts`` Nones when ``cpus`` is None. A
  ``ValueError`` when there are fewer CPUs than parts."""
  if cpus is None:
    return [None] * parts
  if parts > len(cpus):
    raise ValueError(f"{parts} parallel parts but this process may use only {len(cpus)} CPUs "
                     f"({sorted(cpus)})")
  size, extra = divmod(len(cpus), parts)
  shares, start = [], 0
  for i in range(parts):
    end = start + size + (i < extra)
    shares.append(set(cpus[start:end]))
    start = end
  return shares


def _pin(cpus):
  return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def _relay(name: str, stream, out):
  for line in stream:
    out.write(f"[{name}] {line}")
    out.flush()


def run_pinned(commands: Sequence[Sequence[str]], shares: Sequence, names: Sequence[str]) -> list:
  """Runs every command at once, command ``i`` pinned to the CPUs ``shares[i]`` (None:
  unpinned), each output line (stdout and stderr) relayed to this process's stdout
  prefixed with ``[names[i]]`` as it comes (Python commands run unbuffered); waits for
  all and returns their exit statuses."""
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  procs, relays = [], []
  for cmd, cpus, name in zip(commands, shares, names, strict=True):
    proc = subprocess.Popen(list(cmd),
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            text=True,
                            env=env,
                            preexec_fn=_pin(cpus))
    relay = threading.Thread(target=_relay, args=(name, proc.stdout, sys.stdout), daemon=True)
    relay.start()
    procs.append(proc)
    relays.append(relay)
  codes = [proc.wait() for proc in procs]
  for relay in relays:
    relay.join()
  return codes
