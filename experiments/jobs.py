"""Parts of a grid as processes at once, each slot on its own share of the CPUs.

On CPU one run of this framework uses about one core's worth: XLA:CPU's threads gain
little at its kernel sizes (``docs/design/quantizer_speed.md#one-core-or-two``), so a
grid finishes sooner as several processes, each pinned to its own cores, than as one
process using all of them. ``compare --jobs=N`` runs its methods that way.
"""
import os
import queue
import signal
import subprocess
import sys
import threading
from typing import Optional, Sequence

# Pins itself to the CPUs of argv[1] (comma-separated; empty: leaves them), then
# becomes the command argv[2:]: the pinning happens before the command starts a thread.
_LAUNCHER = ("import os, sys\n"
             "if sys.argv[1]: os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')})\n"
             "os.execvp(sys.argv[2], sys.argv[2:])\n")
# A stopped command gets SIGINT, then SIGTERM (a command started from a background
# shell ignores SIGINT), then SIGKILL, this many seconds apart.
_GRACE_SECONDS = 10


def usable_cpus() -> Optional[list]:
  """The CPUs this process may run on (its affinity), sorted; None where the platform
  has no affinity (then the parts run unpinned)."""
  try:
    return sorted(os.sched_getaffinity(0))
  except AttributeError:
    return None


def cpu_shares(cpus: Optional[Sequence[int]], parts: int) -> list:
  """``cpus`` cut into ``parts`` contiguous, disjoint sets of near-equal size (the
  first ``len(cpus) % parts`` one larger); ``parts`` Nones when ``cpus`` is None. A
  ``ValueError`` when there are fewer CPUs than parts or no part."""
  if parts < 1:
    raise ValueError(f"{parts} parallel parts: need at least one")
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


def pinned(command: Sequence[str], cpus) -> list:
  """``command`` started pinned to ``cpus`` (a set; None: as it is)."""
  mask = "" if cpus is None else ",".join(str(c) for c in sorted(cpus))
  return [sys.executable, "-c", _LAUNCHER, mask, *command]


class _Slots:
  """The shared state of :func:`run_queue`'s slots: the commands still to run, the
  running processes, their exit statuses, and whether to start no more."""

  def __init__(self, commands, names, env):
    self.todo = queue.Queue()
    for index, (name, command) in enumerate(zip(names, commands, strict=True)):
      self.todo.put((index, name, command))
    self.env = env
    self.codes, self.running = {}, {}
    self.lock = threading.Lock()
    self.stopping = False

  def work(self, cpus):
    """One slot: the next command, pinned to ``cpus``, until none is left."""
    while True:
      try:
        index, name, command = self.todo.get_nowait()
      except queue.Empty:
        return
      with self.lock:
        if self.stopping:
          return
        proc = subprocess.Popen(pinned(command, cpus),
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                text=True,
                                errors="replace",
                                env=self.env)
        self.running[index] = proc
      _write(f"[{name}] started on CPUs {sorted(cpus) if cpus is not None else 'any'}\n")
      for line in proc.stdout:  # drained to the end even when this process cannot print
        _write(f"[{name}] {line}")
      self.codes[index] = proc.wait()

  def stop(self):
    """Starts nothing more; SIGINT to the running commands, then SIGTERM and SIGKILL
    to those still alive after each grace period."""
    with self.lock:
      self.stopping = True
      procs = list(self.running.values())
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
      alive = [proc for proc in procs if proc.poll() is None]
      for proc in alive:
        proc.send_signal(sig)
      for proc in alive:
        try:
          proc.wait(timeout=_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
          pass


def _write(text: str):
  try:
    sys.stdout.write(text)
    sys.stdout.flush()
  except (OSError, ValueError):  # a closed or broken stdout: the line is dropped
    pass


def _raise_interrupt(signum, frame):
  del frame
  raise KeyboardInterrupt(f"signal {signum}")


def run_queue(commands: Sequence[Sequence[str]], names: Sequence[str], shares: Sequence) -> list:
  """Runs ``commands`` in ``len(shares)`` slots at once, slot ``j`` pinned to the CPUs
  ``shares[j]`` (None: unpinned): each slot takes the next command as its last one
  ends, so put the longest first. Every output line (stdout and stderr) is relayed to
  this process's stdout as it comes, prefixed with ``[names[i]]`` (Python commands run
  unbuffered; JAX in them does not preallocate an accelerator's memory). Returns the
  commands' exit statuses (-1: not started). If this process is interrupted (Ctrl-C,
  or SIGTERM when called from the main thread), the running commands get SIGINT (then
  SIGTERM, then SIGKILL, 10 s apart while alive), nothing new starts, and the
  interruption is raised again once they have ended.
  """
  env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  state = _Slots(commands, names, env)
  threads = [threading.Thread(target=state.work, args=(cpus,), daemon=True) for cpus in shares]
  main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
  try:
    for t in threads:
      t.start()
    for t in threads:
      while t.is_alive():
        t.join(timeout=0.5)  # short joins: a signal is handled between them
  except BaseException:
    state.stop()
    for t in threads:
      t.join(timeout=5)
    raise
  finally:
    if main_thread:
      signal.signal(signal.SIGTERM, previous)
  return [state.codes.get(i, -1) for i in range(len(commands))]
