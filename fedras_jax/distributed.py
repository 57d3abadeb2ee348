"""One simulation over several processes, through JAX's own distributed runtime.

JAX runs multi-host programs "multi-controller": every process runs the same Python
program on its own data, and a jitted computation over a mesh of all global devices
is one XLA program whose collectives (here the ``psum`` that merges the sharded local
training, see ``federated.local_training``) cross process boundaries. Nothing in this
module moves data itself; it only

* starts the runtime (``initialize``): an explicit coordinator, or JAX's automatic
  detection on Cloud TPU, SLURM and Open MPI; on CPU it selects the gloo collectives
  (XLA:CPU has no cross-process collectives without them);
* builds the ``("clients",)`` mesh over every global device (``client_mesh``);
* places host state on that mesh, replicated (``replicate``), so every process hands
  the round the same global arrays;
* runs set-up that only process 0 may do (the workdir: lock, checkpoint, files) and
  shares its outcome with the others (``on_writer``), so a failure there stops every
  process with an error instead of leaving the others waiting in a collective.

Every process loads the data and builds the round itself; every array the round
returns is replicated, so each process can read metrics without communication, and
only process 0 (``is_writer``) writes logs and files.
"""
import dataclasses
import json
from typing import Any, Callable, Optional, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fedras_jax.checkpoint import from_host, to_host

CLIENTS_AXIS = "clients"
AUTO = "auto"


class DistributedError(RuntimeError):
  """A process of a multi-process run cannot go on (bad settings or a failed peer)."""


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
  """How this process joins a run.

  ``coordinator``: ``""`` (one process, the default), ``"auto"`` (JAX detects the
  cluster: Cloud TPU, SLURM, Open MPI) or ``"HOST:PORT"`` of process 0, in which case
  ``num_processes`` and ``process_id`` say how many processes there are and which
  one this is. ``initialization_timeout``: seconds to wait for every peer to join.
  """
  coordinator: str = dataclasses.field(
      default="",
      metadata=dict(
          help=("multi-process runs: HOST:PORT of process 0 (give every process the same), or "
                "'auto' to let JAX detect the cluster (Cloud TPU, SLURM, Open MPI); empty: one "
                "process. See docs/multihost.md")))
  num_processes: int = dataclasses.field(
      default=1, metadata=dict(help="with --coordinator=HOST:PORT: how many processes the run has"))
  process_id: int = dataclasses.field(
      default=0,
      metadata=dict(help=(
          "with --coordinator=HOST:PORT: this process' index, 0 .. num_processes-1; process 0 "
          "writes the logs and the workdir")))
  initialization_timeout: int = dataclasses.field(
      default=300, metadata=dict(help="seconds to wait for every process to join"))

  def validate(self) -> "ProcessGroup":
    if self.initialization_timeout < 1:
      raise ValueError(f"--initialization_timeout={self.initialization_timeout} is invalid: "
                       "must be >= 1 second")
    if self.coordinator in ("", AUTO):
      # Without an address the process count and index come from nowhere (one process) or
      # from the cluster: a value given for them would be ignored.
      for name, default in (("num_processes", 1), ("process_id", 0)):
        if getattr(self, name) != default:
          raise ValueError(f"--{name}={getattr(self, name)} needs --coordinator=HOST:PORT "
                           f"(--coordinator={self.coordinator!r})")
      return self
    host, sep, port = self.coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ValueError(f"--coordinator={self.coordinator!r} is invalid: expected HOST:PORT, "
                       "'auto' or empty")
    if self.num_processes < 1:
      raise ValueError(f"--num_processes={self.num_processes} is invalid: must be >= 1")
    if not 0 <= self.process_id < self.num_processes:
      raise ValueError(f"--process_id={self.process_id} is invalid: must be in "
                       f"[0, {self.num_processes}) for --num_processes={self.num_processes}")
    return self


def initialize(group: ProcessGroup) -> bool:
  """Joins the run of ``group`` (call before any JAX computation); True if this
  process is one of several. With ``coordinator=""`` nothing happens."""
  group.validate()
  if not group.coordinator:
    return False
  # Cross-process collectives on CPU need an implementation; GPU and TPU ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if group.coordinator == AUTO:
    where, args = "cluster detected by JAX", {}
  else:
    where = f"coordinator {group.coordinator} as process {group.process_id}"
    args = dict(coordinator_address=group.coordinator,
                num_processes=group.num_processes,
                process_id=group.process_id)
  try:
    jax.distributed.initialize(initialization_timeout=group.initialization_timeout, **args)
  except Exception as e:  # noqa: BLE001 - JAX raises RuntimeError or XlaRuntimeError
    raise DistributedError(f"could not join the run ({where}): "
                           + " ".join(str(e).splitlines())[:500]) from None
  return jax.process_count() > 1


def lost_peer(error: Exception) -> Optional[DistributedError]:
  """``error`` (raised by a JAX computation) as a one-line ``DistributedError`` when the
  run spans several processes: there a runtime failure means a peer died or cannot be
  reached (its collective timed out). None in a one-process run."""
  if jax.process_count() == 1 or not isinstance(error, jax.errors.JaxRuntimeError):
    return None
  first = (str(error).strip().splitlines() or [""])[0][:300]
  return DistributedError(f"process {jax.process_index()} lost a peer (it died or cannot be "
                          f"reached; see the other processes' logs): {first}")


def is_writer() -> bool:
  """Whether this process writes the run's logs and files (process 0)."""
  return jax.process_index() == 0


def client_mesh(devices=None) -> Mesh:
  """A 1-D ``("clients",)`` mesh over ``devices`` (default: every global device)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (CLIENTS_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of an array held whole by every device of ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


def jit(fn, mesh: Optional[Mesh], **kwargs):
  """``jax.jit(fn, **kwargs)``; with a ``mesh``, every output replicated over it, so
  each process can read the results without communication."""
  if mesh is not None:
    kwargs["out_shardings"] = replicated(mesh)
  return jax.jit(fn, **kwargs)


def replicate(tree, mesh: Mesh):
  """``tree`` (numpy or this process's jax arrays, PRNG keys included) as global
  arrays replicated over ``mesh``. Every process must pass the same values."""
  return jit(lambda t: t, mesh)(tree)


def on_writer(setup: Callable[[], Tuple[Any, Any]], template) -> Tuple[Optional[Any], Any]:
  """Runs ``setup() -> (private, shared)`` on process 0 only and gives ``shared`` to all.

  ``private`` is whatever only the writer needs (``None`` on the other processes);
  ``shared`` is a pytree of arrays shaped like ``template`` (PRNG key arrays
  included), broadcast from process 0. If ``setup`` raises on process 0, it raises
  there and every other process raises ``DistributedError``. With one process this
  is just ``setup()``.
  """
  if jax.process_count() == 1:
    return setup()
  private, shared, failure = None, template, None
  if is_writer():
    try:
      private, shared = setup()
    except Exception as e:  # noqa: BLE001 - re-raised below, after the peers know
      failure = e
  status, wire = multihost_utils.broadcast_one_to_all(
      (np.int32(failure is not None), to_host(shared)))
  if failure is not None:
    raise failure
  if int(status):
    raise DistributedError("process 0 failed to set up the run (its log says why)")
  return private, from_host(wire, template)


def share_json(value):
  """Process 0's ``value`` (JSON-serialisable) on every process, as JSON gives it back
  (the other processes' ``value`` is ignored). With one process: ``value`` itself."""
  if jax.process_count() == 1:
    return value
  data = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_writer() else None
  size = int(multihost_utils.broadcast_one_to_all(np.int32(0 if data is None else data.size)))
  data = multihost_utils.broadcast_one_to_all(np.zeros(size, np.uint8) if data is None else data)
  return json.loads(np.asarray(data).tobytes().decode())
