"""Shared fixtures (a small ragged synthetic dataset, the real data files) and helpers
(files written, runs of ``experiments.train``, damaged checkpoints, poisoned users).

Real data is found as the library finds it: ``$FEDRAS_DATA`` (else the cache
``~/.cache/fedras_jax``), then the cache, then ``../shared/data`` (CI). A file the library
can fetch (ML-100K) is fetched into the library's data directory when absent, as
``python -m experiments.train`` does; ``FEDRAS_TEST_DOWNLOAD=0`` forbids that (the tests
needing it then skip, saying why).
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

# XLA:CPU's LLVM back end at -O0 for every program the tests compile: in this process, its
# xdist workers and the binaries the tests start (they inherit the environment). Set before
# JAX starts its backend. The tests' shapes are tiny and their runs short, so compiling is
# most of their time; -O0 compiles faster and runs slower, and XLA's own passes (fusion,
# layout, simplification) are the same, so the programs compute the same values up to float
# rounding (BUILD.md, Running tests; the measured gain: CHANGELOG). A level the user sets in
# XLA_FLAGS wins.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

from fedras_jax import experiment, runtime  # noqa: E402
from fedras_jax.data import datasets, fetch
from fedras_jax.federated import client_data_from_csr

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def pytest_configure(config):
  """One persistent XLA compilation cache for the tests that compile in this process
  (each pytest-xdist worker is a process of its own and makes its own).

  Many tests build the same small round (each a new closure, so ``jit``'s own cache
  misses) and load it from the cache instead of compiling it again. The directory is new
  for every session (nothing of an earlier session's or the user's cache is read) and set
  before any test module is imported (JAX decides once per process whether the cache is
  on).

  The binaries the tests start (``python -m experiments.*``) share one more directory, made
  by the main pytest process and handed down in ``$FEDRAS_COMPILATION_CACHE`` (the workers
  and the binaries inherit it): a binary loads the programs an earlier one of the same
  shapes stored, and no test writes to the user's default cache
  (``~/.cache/fedras_jax/compilation_cache``). Tests of the cache itself give their
  binaries a directory of their own.
  """
  import jax

  config.fedras_xla_cache = tempfile.mkdtemp(prefix="fedras-tests-xla-cache-")
  jax.config.update("jax_compilation_cache_dir", config.fedras_xla_cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
  if not hasattr(config, "workerinput"):  # the main process (pytest-xdist's or -n 0's)
    config.fedras_binaries_cache = tempfile.mkdtemp(prefix="fedras-tests-binaries-xla-cache-")
    os.environ[runtime.COMPILATION_CACHE_ENV] = config.fedras_binaries_cache


def pytest_xdist_auto_num_workers(config):
  """``--numprocesses=auto`` (setup.cfg): one worker per CPU this process may run on
  (its affinity, not the machine's count), at most 4: the longest test file bounds the
  suite beyond that, and every worker holds a JAX runtime."""
  del config
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(4, cpus or 1))


def pytest_unconfigure(config):
  for name in ("fedras_xla_cache", "fedras_binaries_cache"):
    if hasattr(config, name):
      shutil.rmtree(getattr(config, name), ignore_errors=True)


def data_dirs():
  """Where real data is looked up, in order."""
  dirs = [fetch.default_data_dir(), fetch.default_data_dir("~/.cache/fedras_jax"), SHARED]
  return list(dict.fromkeys(dirs))


def find_data_file(relpath: str, download: bool = True) -> pathlib.Path:
  """``<data dir>/relpath`` of the first of ``data_dirs()`` holding it, else fetched into
  the library's data directory when the library can fetch it; else the test skips."""
  for d in data_dirs():
    if (d / relpath).is_file():
      return d / relpath
  spec = datasets.FILES.get(relpath)
  where = ", ".join(str(d) for d in data_dirs())
  if spec is None or not spec.sources:
    pytest.skip(f"{relpath} is in none of {where} and cannot be fetched (put it there)")
  if not download:
    pytest.skip(f"{relpath} is in none of {where}; this test does not fetch it")
  if os.environ.get("FEDRAS_TEST_DOWNLOAD", "1") == "0":
    pytest.skip(f"{relpath} is in none of {where}; fetching disabled (FEDRAS_TEST_DOWNLOAD=0)")
  try:
    return fetch.ensure_file(spec, fetch.default_data_dir())
  except fetch.FetchError as e:
    pytest.skip(f"{relpath} is in none of {where} and could not be fetched: {e}")


def write(path, text: str) -> pathlib.Path:
  """Writes ``text`` to ``path`` (parents made); returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return path


def metrics_rows(workdir) -> list:
  """The rows of a run's ``metrics.jsonl``."""
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def train_binary(*args, cwd=REPO, env=None, timeout: float = 300):
  """``python -m experiments.train *args`` of this checkout, run in ``cwd`` (``env``: the
  variables to run it with, default this process's); the completed process, output
  captured as text."""
  env = dict(os.environ if env is None else env, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "experiments.train", *args],
                        cwd=cwd,
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                        env=env)


def exited_pid() -> int:
  """The pid of a process that has exited (a lock or temporary file's dead writer)."""
  proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True,
                        text=True,
                        check=True)
  return int(proc.stdout)


def flip_middle(path, size: int = 4096):
  """Overwrites ``size`` bytes in the middle of ``path`` with 0xFF (same file size)."""
  data = bytearray(path.read_bytes())
  start = (len(data) - size) // 2
  data[start:start + size] = b"\xff" * size
  path.write_bytes(bytes(data))


def poison_users(monkeypatch, bad):
  """Makes the user rows of the users ``bad(ids)`` (a mask of ``[U]`` ids) NaN when a run
  initialises its state."""
  init_states = experiment.init_states

  def poisoned(*args, **kwargs):
    server, clients = init_states(*args, **kwargs)
    ids = np.arange(clients.users.shape[0])
    return server, clients._replace(users=clients.users.at[bad(ids)].set(np.nan))

  monkeypatch.setattr(experiment, "init_states", poisoned)


class Synthetic:
  """10 users, 30 items, 2 to 18 training positives each (user 9 has more negatives
  to draw than unseen items, which exercises the wrap-around)."""
  num_users = 10
  num_items = 30

  def __init__(self, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [2, 3, 5, 8, 12, 4, 6, 9, 3, 18]
    self.train, self.seen = [], []
    for n in sizes:
      items = rng.choice(self.num_items, n + 1, replace=False)
      self.train.append(np.sort(items[:n]))
      self.seen.append(np.sort(items))  # the last one plays the test item
    self.train_indptr = np.r_[0, np.cumsum([len(t) for t in self.train])]
    self.seen_indptr = np.r_[0, np.cumsum([len(s) for s in self.seen])]
    self.data = client_data_from_csr(self.train_indptr, np.concatenate(self.train),
                                     self.seen_indptr, np.concatenate(self.seen), self.num_items)


@pytest.fixture(scope="session")
def synthetic():
  return Synthetic()


@pytest.fixture
def data_now(monkeypatch):
  """``{"sha256": ...}``, what ``compare`` and ``sweep`` take for the data's sha256
  (``experiment.run_data_sha256``) in this test: tests of kept records that train
  nothing load no data; setting the entry stands for an edited dataset."""
  from experiments import compare
  from fedras_jax import sweep

  now = {"sha256": "data-a"}
  monkeypatch.setattr(compare, "run_data_sha256", lambda config: now["sha256"])
  monkeypatch.setattr(sweep, "run_data_sha256", lambda config: now["sha256"])
  return now


@pytest.fixture(scope="session")
def ml100k_path():
  """``<data dir>/ml-100k/u.data`` (found or fetched, see the module docstring)."""
  return find_data_file("ml-100k/u.data")
