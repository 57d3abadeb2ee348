"""An exclusive lock on a workdir for the life of a run.

``WorkdirLock(workdir)`` (a context manager) holds ``<workdir>/.lock``: the file names
its owner (pid, host, start time, as JSON) and the owner holds an exclusive
``fcntl.flock`` on it, taken without waiting. A second run on the same workdir is
refused with ``WorkdirLockError`` naming the workdir and the owner. The kernel drops
the lock when its process ends, however it ends (``kill -9`` included), so a lock file
left behind by a dead run is taken over, with a warning that names the dead owner.
A run that ends normally removes the file.

``flock`` is per open file (not per process), atomic, and works on local filesystems
and NFS (Linux emulates it with POSIX locks there). In a multi-process run process 0
alone takes it (``training.train``).
"""
import datetime
import fcntl
import json
import os
import pathlib
import socket

from fedras_jax.outputs import dumps, naming

LOCK_FILE = ".lock"


class WorkdirLockError(RuntimeError):
  """The workdir is held by another running process."""


def _owner(text: str) -> str:
  """``"pid N on host H since T"`` from a lock file's text (``text`` if not ours)."""
  try:
    info = json.loads(text)
    return f"pid {info['pid']} on {info['host']} since {info['started']}"
  except (ValueError, TypeError, KeyError):
    return f"unknown owner ({text.strip()[:80]!r})" if text.strip() else "unknown owner"


def _read(fd) -> str:
  return os.pread(fd, 4096, 0).decode("utf-8", "replace")


class WorkdirLock:
  """Holds ``<workdir>/.lock`` between ``acquire`` and ``release`` (or in a ``with``)."""

  def __init__(self, workdir, *, warn=print):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self.warn = warn
    self._fd = None

  def acquire(self) -> "WorkdirLock":
    """Takes the lock; ``WorkdirLockError`` if a running process holds it."""
    if self._fd is not None:
      return self
    with naming(self.path):
      self.workdir.mkdir(parents=True, exist_ok=True)
      while True:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          owner = _owner(_read(fd))
          os.close(fd)
          raise WorkdirLockError(
              f"--workdir={self.workdir} is in use by another run ({owner}; lock file "
              f"{self.path}); wait for it to end or stop it") from None
        except BaseException:
          os.close(fd)
          raise
        # Its previous owner may have removed the file between our open and flock:
        # then we hold a lock on a file nobody else will open. Start again.
        try:
          here, there = os.fstat(fd), os.stat(self.path)
          if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
            break
        except FileNotFoundError:
          pass
        os.close(fd)
      previous = _read(fd)
      if previous.strip():
        self.warn(f"warning: taking over the lock {self.path} left by a run that no longer "
                  f"runs ({_owner(previous)})")
      info = dict(pid=os.getpid(),
                  host=socket.gethostname(),
                  started=datetime.datetime.now(
                      datetime.timezone.utc).isoformat(timespec="seconds"))
      os.ftruncate(fd, 0)
      os.pwrite(fd, (dumps(info) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self):
    """Removes the lock file and drops the lock (no-op if not held)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
      self.path.unlink(missing_ok=True)
    finally:
      os.close(fd)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
