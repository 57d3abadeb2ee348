"""Output files: strict JSON, atomic writes, and write errors that name the file.

Every JSON file the library and the binaries write (``metrics.jsonl``,
``summary.json``, ``config.json``, ``tuning.json``, benchmark results) goes through
``dumps``: strict RFC 8259 JSON, with a non-finite float (NaN, +-Infinity, which
Python's ``json`` would write as the non-standard literals ``NaN`` / ``Infinity``)
written as ``null``. ``write_atomic`` replaces a file whole (``write_json`` and
``write_csv`` through it); ``naming`` turns an
``OSError`` without a file name (a full disk: ``[Errno 28] No space left on device``)
into one that names the file being written.
"""
import contextlib
import csv
import errno
import io
import json
import math
import os
import pathlib
import uuid

import numpy as np


def json_safe(obj):
  """``obj`` with every non-finite float (Python or numpy) replaced by None, numpy
  scalars and arrays as Python numbers and lists, tuples as lists."""
  if isinstance(obj, dict):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return json_safe(obj.tolist())
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def rows_with_nan(rows) -> list:
  """``rows`` (flat dicts of numbers read back from strict JSON) with every ``None``
  as NaN again: a number that was not finite when written (a diverged run's metric)."""
  return [{k: math.nan if v is None else v for k, v in r.items()} for r in rows]


def dumps(obj, **kwargs) -> str:
  """``json.dumps`` of ``json_safe(obj)`` that never writes ``NaN`` or ``Infinity``."""
  return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


@contextlib.contextmanager
def naming(path):
  """Re-raises an ``OSError`` raised inside without a file name as one naming ``path``."""
  try:
    yield
  except OSError as e:
    if e.filename is not None:
      raise
    if e.errno is None:
      raise OSError(f"{path}: {e}") from e
    raise type(e)(e.errno, e.strerror or str(e), str(path)) from e


def check_writable_file(path, flag: str):
  """Raises ``ValueError`` naming ``flag`` unless a file can be written at ``path`` (its
  folder is made): a binary checks where its outputs go before its work, not after."""
  path = pathlib.Path(path)
  with naming(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() or not os.access(path.parent, os.W_OK):
      raise ValueError(f"{flag}={path}: not a writable file path")


def write_atomic(path, data: bytes, verify=None) -> pathlib.Path:
  """Writes ``data`` to ``path`` via a temporary file in the same directory, fsync and
  ``os.replace``: a reader (or a run killed at any instant) sees the old file or the
  new one, never a torn one. ``verify(temporary path)``, if given, runs before the
  rename; whatever it raises leaves ``path`` as it was (the temporary file is removed)."""
  path = pathlib.Path(path)
  with naming(path):
    if path.is_dir():
      raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
      with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      if verify is not None:
        verify(tmp)
      os.replace(tmp, path)
    finally:
      tmp.unlink(missing_ok=True)
  try:  # make the rename itself durable (best effort: not every filesystem allows it)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
  except OSError:
    pass
  return path


def remove_stale_temporaries(directory, stem: str = "*"):
  """Removes the temporary files that ``write_atomic`` left in ``directory`` for
  ``stem`` (a glob of the target's name) when a kill interrupted the write: those whose
  writing process (the pid in the name) no longer runs on this machine."""
  for tmp in pathlib.Path(directory).glob(f".{stem}.*.*.tmp"):
    try:
      pid = int(tmp.name.rsplit(".", 3)[1])
      os.kill(pid, 0)
    except ValueError:  # not one of write_atomic's names
      continue
    except ProcessLookupError:  # its writer is gone
      tmp.unlink(missing_ok=True)
    except PermissionError:  # another user's live process
      continue


def write_json(path, obj, indent=2) -> pathlib.Path:
  """Writes ``obj`` as strict JSON (``dumps``) to ``path``, atomically."""
  return write_atomic(path, (dumps(obj, indent=indent) + "\n").encode())


def write_csv(path, columns, rows) -> pathlib.Path:
  """Writes ``rows`` (dicts) as CSV with the header ``columns`` to ``path``, atomically."""
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, columns)
  writer.writeheader()
  writer.writerows(rows)
  return write_atomic(path, text.getvalue().encode())


def read_json(path, remedy: str = "", fields=None):
  """The JSON in ``path``; a ``ValueError`` naming the file (and ``remedy``, e.g. "use
  --overwrite to start over") if it is not JSON, or, with ``fields`` (names), not an
  object holding them."""
  tail = f"; {remedy}" if remedy else ""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.loads(f.read())
  except ValueError as e:  # UnicodeDecodeError (not UTF-8) too
    raise ValueError(f"{path} is not readable JSON ({e}){tail}") from None
  if fields is not None:
    missing = [k for k in fields if k not in value] if isinstance(value, dict) else None
    if missing is None or missing:
      what = "not a JSON object" if missing is None else f"has no {', '.join(missing)}"
      raise ValueError(f"{path}: {what}{tail}")
  return value
