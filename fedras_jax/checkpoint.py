"""Checkpoints of a run: jax state + host bookkeeping in one msgpack file per round.

A checkpoint is ``<dir>/round_<NNNNNN>.msgpack`` holding

* ``state``: any pytree of arrays (here ``(ServerState, ClientStates)``) as a flax
  state dict; new-style PRNG key arrays are stored as their ``key_data`` and
  re-wrapped with the implementation of the template's key on restore;
* ``host``: a JSON string (totals, metrics rows so far, ...). JSON keeps Python
  floats exactly (``repr`` round-trips), so a resumed run continues bit-identically.

The file is ``MAGIC`` (8 bytes), the sha256 of the rest (32 bytes), then the msgpack
payload. A file whose checksum does not match (altered in place, a damaged disk) is
refused like a truncated one: ``restore_latest`` warns and falls back to the previous
checkpoint. Every file is written to a temporary name in the same directory, flushed,
fsynced and renamed over the target (``os.replace``), so a reader (or a run killed
with SIGKILL at any instant) sees either the old file or the new one, never a torn one.

When to save is a ``Cadence``: every N rounds and whenever M minutes of wall time
have passed since the last save, so a run of slow rounds (a vmapped search over a large
catalogue) loses at most minutes when it is killed, not N of its rounds.

Serialization is ``flax.serialization`` (msgpack, already a flax dependency): the
state is a few small host-side arrays written synchronously by one process, which
needs neither orbax's asynchronous, multi-host, directory-per-step machinery nor a
new dependency.
"""
import hashlib
import json
import pathlib
import re
import time
from typing import Any, Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from fedras_jax.outputs import remove_stale_temporaries, write_atomic

FORMAT = 3  # 3: ServerState.downlink_state (was residual + downlink_memory); 2: checksummed
MAGIC = b"FEDRASCK"
_NAME = re.compile(r"^round_(\d+)\.msgpack$")


class Cadence:
  """When a run saves: at every multiple of ``every_rounds`` (0: never by rounds) and
  after any round that ends ``every_minutes`` or more after the last save (or after the
  cadence was made; 0: never by time). ``clock`` returns seconds (monotonic)."""

  def __init__(self,
               every_rounds: int,
               every_minutes: float,
               clock: Callable[[], float] = time.monotonic):
    self.every_rounds, self.every_minutes, self._clock = every_rounds, every_minutes, clock
    self._last = clock()

  def due(self, round_index: int) -> bool:
    """Whether the state after round ``round_index`` is to be saved."""
    by_rounds = bool(self.every_rounds) and round_index % self.every_rounds == 0
    by_time = bool(self.every_minutes) and (self._clock() - self._last >= 60.0 * self.every_minutes)
    return by_rounds or by_time

  def saved(self):
    """Marks a save now: the next one by time is ``every_minutes`` from here."""
    self._last = self._clock()


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit the run."""


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_host(tree):
  """``tree`` with every leaf a numpy array (PRNG keys as their uint32 key data)."""
  return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x))
                      if _is_key(x) else np.asarray(x), tree)


def from_host(host_tree, template):
  """The inverse of ``to_host``: ``host_tree``'s leaves as device arrays of
  ``template``'s dtypes, PRNG keys re-wrapped with ``template``'s implementation."""

  def device(t, r):
    if _is_key(t):
      return jax.random.wrap_key_data(jnp.asarray(r), impl=jax.random.key_impl(t))
    return jnp.asarray(r, dtype=t.dtype)

  return jax.tree.map(device, template, host_tree)


def _seal(body: bytes) -> bytes:
  return MAGIC + hashlib.sha256(body).digest() + body


def _unseal(data: bytes, where: str) -> bytes:
  """The payload of sealed ``data``; ``CheckpointError`` if its checksum does not match."""
  head = len(MAGIC) + hashlib.sha256().digest_size
  if len(data) < head or not data.startswith(MAGIC):
    raise CheckpointError(f"{where}: not a format-{FORMAT} checkpoint (no header; truncated, "
                          "or written by an older version?)")
  body = data[head:]
  if hashlib.sha256(body).digest() != data[len(MAGIC):head]:
    raise CheckpointError(f"{where}: checksum mismatch (the file was altered or damaged)")
  return body


def tree_to_bytes(tree, **extra) -> bytes:
  """Checksummed msgpack bytes of ``{"format", "state": tree, **extra}``."""
  payload = dict(format=FORMAT, state=serialization.to_state_dict(to_host(tree)), **extra)
  return _seal(serialization.msgpack_serialize(payload))


def tree_from_bytes(data: bytes, template, where: str = "checkpoint") -> Tuple[Any, dict]:
  """``(tree, payload)``: ``tree`` shaped like ``template`` (device arrays, keys
  re-wrapped), ``payload`` the raw dict (``format``, ``state`` and the extras).

  Raises ``CheckpointError`` if the bytes are not a checkpoint, their checksum does
  not match, or the structure, a shape or a dtype differs from ``template``.
  """
  body = _unseal(data, where)
  try:
    payload = serialization.msgpack_restore(body)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
      raise CheckpointError(f"{where}: not a format-{FORMAT} checkpoint")
    host_template = to_host(template)
    restored = serialization.from_state_dict(host_template, payload["state"])
  except CheckpointError:
    raise
  except Exception as e:  # noqa: BLE001 - msgpack / structure errors of any kind
    raise CheckpointError(f"{where}: unreadable ({type(e).__name__}: {e})") from None
  want = jax.tree.structure(host_template)
  if jax.tree.structure(restored) != want:
    raise CheckpointError(f"{where}: state structure differs from this run's")
  for (key_path, t), r in zip(
      jax.tree_util.tree_flatten_with_path(host_template)[0], jax.tree.leaves(restored)):
    r = np.asarray(r)
    if r.shape != t.shape or r.dtype != t.dtype:
      raise CheckpointError(
          f"{where}: {jax.tree_util.keystr(key_path)} is {r.dtype}{list(r.shape)}, this run "
          f"expects {t.dtype}{list(t.shape)} (a different dataset or model?)")

  return from_host(restored, template), payload


def path_for(directory, round_index: int) -> pathlib.Path:
  return pathlib.Path(directory) / f"round_{round_index:06d}.msgpack"


def list_checkpoints(directory) -> List[Tuple[int, pathlib.Path]]:
  """``[(round, path), ...]`` of the checkpoints in ``directory``, oldest first."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  found = []
  for p in directory.iterdir():
    m = _NAME.match(p.name)
    if m:
      found.append((int(m.group(1)), p))
  return sorted(found)


def save(directory, round_index: int, state, host: dict, keep: int = 2) -> pathlib.Path:
  """Writes the checkpoint of ``round_index``; keeps the newest ``keep`` files."""
  path = write_atomic(path_for(directory, round_index),
                      tree_to_bytes(state, round=int(round_index), host=json.dumps(host)))
  for _, old in list_checkpoints(directory)[:-keep]:
    old.unlink(missing_ok=True)
  return path


def restore_latest(directory,
                   template,
                   warn=print) -> Optional[Tuple[int, Any, dict, pathlib.Path]]:
  """``(round, state, host, path)`` of the newest readable checkpoint, or None if
  there is none. An unreadable newest file (``warn``-ed) falls back to an older one;
  if none is readable, raises ``CheckpointError``."""
  found = list_checkpoints(directory)
  remove_stale_temporaries(directory, "round_*.msgpack")  # writes a kill interrupted
  errors = []
  for round_index, path in reversed(found):
    try:
      state, payload = tree_from_bytes(path.read_bytes(), template, where=str(path))
      host = json.loads(payload["host"])
      if int(payload["round"]) != round_index:
        raise CheckpointError(f"{path}: holds round {payload['round']}")
    except (CheckpointError, KeyError, ValueError, OSError) as e:
      why = str(e) if str(path) in str(e) else f"{path}: {type(e).__name__}: {e}"
      errors.append(why)
      warn(f"warning: skipping checkpoint {why}")
      continue
    return round_index, state, host, path
  if errors:
    raise CheckpointError(f"no readable checkpoint in {directory} ({'; '.join(errors)}); "
                          "use --overwrite to start over")
  return None


def latest_host(directory) -> Optional[dict]:
  """The host record of the newest checkpoint in ``directory`` whose bytes are sound,
  read without a template (so whatever its state's shapes), or None."""
  for _, path in reversed(list_checkpoints(directory)):
    try:
      return json.loads(
          serialization.msgpack_restore(_unseal(path.read_bytes(), str(path)))["host"])
    except Exception:  # noqa: BLE001 - unreadable for any reason: the next older one
      continue
  return None


def save_params(path, params: dict) -> pathlib.Path:
  """Writes a dict of arrays (e.g. the final model) as msgpack, atomically."""
  return write_atomic(path, tree_to_bytes(params))


def load_params(path) -> dict:
  """The dict of numpy arrays written by ``save_params`` (``CheckpointError`` if the
  file's checksum does not match)."""
  body = _unseal(pathlib.Path(path).read_bytes(), str(path))
  return serialization.msgpack_restore(body)["state"]
