"""Runs an experiment binary as several processes on this machine.

    python -m experiments.launch --num_processes=2 --devices_per_process=4 -- \\
        experiments.train --flagfile=configs/ml100k_mf.flags --workdir=runs/two_processes

starts ``python -m MODULE ARGS --coordinator=127.0.0.1:PORT --num_processes=N
--process_id=i`` for i = 0 .. N-1 on a free port: JAX's multi-controller model, each
process a peer of the others through ``jax.distributed``. ``--devices_per_process``
gives each process that many simulated CPU devices (``XLA_FLAGS``; 0: leave the
environment alone, e.g. on GPU hosts). Process 0's output is shown as it comes; the
others' goes to ``--process_logs/process_<i>.log`` (stdout) and ``process_<i>.err``
(stderr). If a process fails, the others are stopped and every failed one is reported
(its status and last lines; "killed" for one stopped at ``--timeout`` or after a
peer failed); the exit status is non-zero. On a
cluster, start one process per host (or per accelerator) yourself, see
docs/multihost.md: this launcher is for one machine (tests, benchmarks, trials).
"""
import sys

from absl import app, flags

from fedras_jax import flags as flag_lib
from fedras_jax.launch import launch_local, new_log_dir

_PROCESSES = flags.DEFINE_integer("num_processes", 2, "processes to start")
_DEVICES = flags.DEFINE_integer("devices_per_process", 0,
                                "simulated CPU devices per process (0: as the environment says)")
_TIMEOUT = flags.DEFINE_float("timeout", 0, "seconds before every process is killed (0: none)")
_LOGS = flags.DEFINE_string("process_logs", None,
                            "where processes 1.. write their output (default: a temp dir)")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("name the module to run: ... -- experiments.train [flags]")
  if not _TIMEOUT.value >= 0:
    raise ValueError(f"--timeout={_TIMEOUT.value} is invalid: must be >= 0 (0: none)")
  log_dir = _LOGS.value or new_log_dir()
  if _PROCESSES.value > 1:
    print(f"processes 1-{_PROCESSES.value - 1} write their output to {log_dir}", file=sys.stderr)
  results = launch_local(argv[1],
                         argv[2:],
                         num_processes=_PROCESSES.value,
                         devices_per_process=_DEVICES.value,
                         timeout=_TIMEOUT.value or None,
                         log_dir=log_dir,
                         stream_first=True)
  failed = [r for r in results if r.returncode != 0]
  for i, r in enumerate(results):
    if r.returncode != 0:  # process 0's own output was shown already: status only
      how = ("was killed (--timeout, or stopped after a peer failed)"
             if r.returncode == -9 else f"exited with status {r.returncode}")
      print(f"process {i} {how}",
            *(r.stderr or "").strip().splitlines()[-5:],
            sep="\n  ",
            file=sys.stderr)
  if failed:
    sys.exit(max(failed[0].returncode, 1))


if __name__ == "__main__":
  flag_lib.run_main(main, arguments=True)
