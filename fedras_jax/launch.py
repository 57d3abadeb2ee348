"""Starting a multi-process run's peers on this machine (tests, benchmarks, trials).

``launch_local`` runs ``python -m MODULE ARGS --coordinator=127.0.0.1:PORT
--num_processes=N --process_id=i`` for i = 0 .. N-1 on a free port, each process a
peer of the others through ``jax.distributed`` (see ``fedras_jax.distributed``), and
stops them all if one fails. On a cluster the scheduler starts the processes instead
(docs/multihost.md).
"""
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Sequence


def new_log_dir() -> pathlib.Path:
  """A fresh temporary folder for the processes' output (``launch_local``'s default)."""
  return pathlib.Path(tempfile.mkdtemp(prefix="fedras_launch_"))


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def _stop_signals_raise():
  """SIGTERM and SIGHUP (a ``timeout``, a batch system, a closed terminal) raise
  ``SystemExit`` inside the block, so its ``finally`` stops the children (a signal's
  default action ended the launcher at once and left them running). Only the main
  thread can set handlers; elsewhere this does nothing."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def stop(signum, frame):
    del frame
    raise SystemExit(128 + signum)

  old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
  try:
    yield
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)


def xla_flags_with_devices(devices: int) -> str:
  """``XLA_FLAGS`` for a process with ``devices`` simulated CPU devices: this process's
  ``XLA_FLAGS`` kept, the device count appended."""
  flags = os.environ.get("XLA_FLAGS", "")
  return f"{flags} --xla_force_host_platform_device_count={devices}".strip()


def launch_local(module: str,
                 args: Sequence[str],
                 *,
                 num_processes: int,
                 devices_per_process: int = 0,
                 timeout: Optional[float] = None,
                 log_dir=None,
                 stream_first: bool = False,
                 grace: float = 10.0) -> List[subprocess.CompletedProcess]:
  """Runs ``python -m module args`` as ``num_processes`` peers on this machine.

  Returns one ``CompletedProcess`` per process (``stdout``/``stderr`` as text; process
  0's are empty with ``stream_first``). Once one process fails, the others get
  ``grace`` seconds to end on their own (a peer of a failed set-up reports it and
  exits); then, or when ``timeout`` seconds have passed, every process still running is
  killed (status -9), so no peer is left waiting in a collective. A launcher stopped by
  SIGTERM or SIGHUP kills them too before it exits.
  """
  if num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} is invalid: must be >= 1")
  if devices_per_process < 0:
    raise ValueError(f"--devices_per_process={devices_per_process} is invalid: must be >= 0")
  env = dict(os.environ)
  if devices_per_process:
    env["XLA_FLAGS"] = xla_flags_with_devices(devices_per_process)
  log_dir = pathlib.Path(log_dir) if log_dir else new_log_dir()
  log_dir.mkdir(parents=True, exist_ok=True)
  port = free_port()
  procs, logs = [], []
  with contextlib.ExitStack() as files, _stop_signals_raise():
    try:
      for i in range(num_processes):
        argv = [
            sys.executable, "-m", module, *args, f"--coordinator=127.0.0.1:{port}",
            f"--num_processes={num_processes}", f"--process_id={i}"
        ]
        out, err = log_dir / f"process_{i}.log", log_dir / f"process_{i}.err"
        logs.append((out, err))
        if i == 0 and stream_first:
          procs.append(subprocess.Popen(argv, env=env))
        else:
          procs.append(
              subprocess.Popen(argv,
                               env=env,
                               stdout=files.enter_context(open(out, "w")),
                               stderr=files.enter_context(open(err, "w"))))
      deadline = time.time() + timeout if timeout else float("inf")
      while time.time() < deadline:
        codes = [p.poll() for p in procs]  # every one polled: a failure is seen at once
        if None not in codes:
          break
        if any(c not in (None, 0) for c in codes):
          deadline = min(deadline, time.time() + grace)
        time.sleep(0.2)
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
        p.wait()
  return [
      subprocess.CompletedProcess(p.args, p.returncode, "" if
                                  (i == 0 and stream_first) else out.read_text(), "" if
                                  (i == 0 and stream_first) else err.read_text())
      for i, (p, (out, err)) in enumerate(zip(procs, logs))
  ]
