"""The cost of going multi-process: ms per round of one run as P processes x D devices.

    python -m experiments.bench_multihost --data_dir=D --methods=uncompressed,fedras \\
        --layouts=1x1,1x2,2x1,1x8,2x4 --rounds=30 --markdown=docs/benchmarks/multihost.md

Each layout runs ``experiments.train`` (the same flags, ML-100K FedMF by default) as P
peers on this machine with D simulated CPU devices each (``fedras_jax.launch``), 1 x D
with ``--shard_clients``; the time per round is process 0's ``train_seconds`` over the
rounds after the compiling one. A P x D layout is compared with 1 x (P*D), the same
devices in one process, when ``--layouts`` lists it (one-process layouts run first): the
ratio is what the cross-process transport (gloo over localhost here) costs. Results agree
across layouts up to float rounding, which FedRAS's K-Means can turn into another trajectory;
the final HR@10 of each layout is printed.
"""
import json
import os
import subprocess
import sys
import tempfile

from absl import flags

from experiments import pages
from fedras_jax import flags as flag_lib
from fedras_jax.launch import launch_local, xla_flags_with_devices

_METHODS = flags.DEFINE_list("methods", ["uncompressed", "fedras"], "train --method values")
_LAYOUTS = flags.DEFINE_list("layouts", ["1x1", "1x2", "2x1", "1x8", "2x4"],
                             "PROCESSESxDEVICES per run")
_ROUNDS = flags.DEFINE_integer("rounds", 30, "rounds per run (the first compiles)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (train --data_dir)")
_TRAIN_FLAGS = flags.DEFINE_list("train_flags", [], "more train flags, e.g. dim=32,dataset=ml-1m")
_MARKDOWN = flags.DEFINE_string("markdown", None, "also write the table as a generated page")


def _layout(text: str):
  try:
    processes, devices = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"--layouts={text!r} is invalid: expected PROCESSESxDEVICES, e.g. 2x4") \
        from None
  if processes < 1 or devices < 1:
    raise ValueError(f"--layouts={text!r} is invalid: both counts must be >= 1")
  return processes, devices


def run_layout(method: str, processes: int, devices: int, workdir: str) -> dict:
  """One run of ``method`` as ``processes`` x ``devices``; process 0's summary."""
  args = [
      f"--method={method}", f"--rounds={_ROUNDS.value}", f"--eval_every={_ROUNDS.value}",
      "--checkpoint_every=0", "--checkpoint_minutes=0", f"--workdir={workdir}", "--quiet",
      "--compilation_cache=none", *(f"--{f}" for f in _TRAIN_FLAGS.value)
  ]
  if _DATA_DIR.value:
    args.append(f"--data_dir={_DATA_DIR.value}")
  if processes == 1:
    # The user's XLA_FLAGS kept, as launch_local keeps them for the other layouts.
    env = dict(os.environ, XLA_FLAGS=xla_flags_with_devices(devices))
    results = [
        subprocess.run([
            sys.executable, "-m", "experiments.train", *args,
            *(["--shard_clients"] if devices > 1 else [])
        ],
                       env=env,
                       capture_output=True,
                       text=True)
    ]
  else:
    results = launch_local("experiments.train",
                           args,
                           num_processes=processes,
                           devices_per_process=devices,
                           log_dir=workdir + ".logs")
  for i, r in enumerate(results):
    if r.returncode:
      raise RuntimeError(f"{method} {processes}x{devices}: process {i} failed: "
                         + " ".join(r.stderr.strip().splitlines()[-3:]))
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def main(argv):
  del argv
  if _ROUNDS.value < 2:
    sys.exit(f"error: --rounds={_ROUNDS.value} is invalid: must be >= 2 (the first compiles)")
  try:
    layouts = [_layout(t) for t in _LAYOUTS.value]
  except ValueError as e:
    sys.exit(f"error: {e}")
  lines = [
      "| method | layout | ms/round | x same devices in 1 process | compile s | HR@10 |",
      "|---|---|---|---|---|---|"
  ]
  print(lines[0])
  with tempfile.TemporaryDirectory() as tmp:
    for method in _METHODS.value:
      one_process = {}
      # One-process layouts first (stable): each P x D then finds its 1 x (P*D).
      for processes, devices in sorted(layouts, key=lambda layout: layout[0] > 1):
        try:
          summary = run_layout(method, processes, devices,
                               os.path.join(tmp, f"{method}_{processes}x{devices}"))
        except RuntimeError as e:
          sys.exit(f"error: {e}")
        ms = 1e3 * summary["train_seconds"] / (_ROUNDS.value - 1)
        total = processes * devices
        if processes == 1:
          one_process[total] = ms
        ratio = f"{ms / one_process[total]:.2f}" if total in one_process else "-"
        line = (f"| {method} | {processes} x {devices} | {ms:.1f} | {ratio} | "
                f"{summary['compile_seconds']:.1f} | {summary['final']['hr@10']:.4f} |")
        lines.append(line)
        print(line, flush=True)
  if _MARKDOWN.value:
    pages.write_page(
        _MARKDOWN.value, "Multi-process overhead: one run as processes x devices",
        "experiments.bench_multihost", [
            f"setting: experiments.train defaults (ML-100K FedMF, 64 clients, d=64) "
            f"{' '.join('--' + f for f in _TRAIN_FLAGS.value)}, {_ROUNDS.value} rounds; "
            "processes are peers on this machine over gloo (localhost TCP); simulated CPU devices "
            "share the machine's cores",
            "HR@10: each run's final. Every layout computes the same round up to float rounding "
            "(the sum order of a sharded reduction); FedRAS's K-Means assignments can turn a "
            "last-bit difference into another trajectory after some tens of rounds, so its "
            "single-device HR@10 may differ from the sharded layouts' (tests/test_multihost.py "
            "checks equality over a few rounds)"
        ], lines)


if __name__ == "__main__":
  flag_lib.run_main(main)
