"""Process-level settings for the experiment binaries (not applied on import)."""
import ctypes
import os
import pathlib
from typing import Optional

COMPILATION_CACHE_ENV = "FEDRAS_COMPILATION_CACHE"
_CACHE_OFF = ("", "none", "off")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_host_allocator() -> bool:
  """Makes glibc keep freed memory for reuse instead of unmapping it.

  XLA:CPU allocates each run's large buffers afresh; by default glibc serves them
  with new mmaps, and first-touch page faults then dominate a round (the measurement:
  CHANGELOG). Disable with
  ``FEDRAS_NO_MALLOC_TUNING=1``. Returns whether the setting was applied.
  """
  if os.environ.get("FEDRAS_NO_MALLOC_TUNING"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  # mallopt(int, int): ctypes wraps a Python int past a C int silently (1 << 34 arrived
  # as 0, a trim threshold that trims at every free), so every value must fit one.
  libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  libc.mallopt.restype = ctypes.c_int
  settings = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 2**31 - 1))
  assert all(0 <= value < 2**31 for _, value in settings)
  ok = all([libc.mallopt(option, value) == 1 for option, value in settings])
  return bool(ok)


def default_compilation_cache_dir() -> str:
  """``$FEDRAS_COMPILATION_CACHE``, else ``~/.cache/fedras_jax/compilation_cache``."""
  return os.environ.get(COMPILATION_CACHE_ENV) or str(
      pathlib.Path.home() / ".cache" / "fedras_jax" / "compilation_cache")


def enable_compilation_cache(path: Optional[str] = None, warn=print) -> Optional[str]:
  """Turns on JAX's persistent compilation cache in ``path``; returns the directory in
  use. ``"none"``/``"off"``/``""``: leave it off. ``None``: ``$FEDRAS_COMPILATION_CACHE``,
  else a directory already given to JAX (``JAX_COMPILATION_CACHE_DIR``), else
  ``~/.cache/fedras_jax/compilation_cache``.

  A run started again with the same shapes then loads its compiled round from disk
  instead of compiling it. Programs that compile in under 0.5 s are not stored (unless
  ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says otherwise). Only point it at a
  directory you alone can write: JAX trusts its contents. A directory that cannot be created is reported through ``warn`` and
  the cache stays off (the run goes on).
  """
  import jax  # here, not at import: the caller may configure jax first

  if path is None:
    path = (os.environ.get(COMPILATION_CACHE_ENV) or jax.config.jax_compilation_cache_dir
            or default_compilation_cache_dir())
  if path.strip().lower() in _CACHE_OFF:
    return None
  try:
    pathlib.Path(path).expanduser().mkdir(parents=True, exist_ok=True)
  except OSError as e:
    warn(f"warning: compilation cache off: cannot create {path} ({e.strerror or e})")
    return None
  path = str(pathlib.Path(path).expanduser())
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # the user's wins
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path
