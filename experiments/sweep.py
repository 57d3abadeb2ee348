"""Batch sweeps: runs vmapped over seeds and traced hyper-parameters in one program.

    python -m experiments.sweep --seeds=0,1,2,3 --grid="item_lr=4,8,16" --rounds=100 \
        --method=uncompressed --output=runs/sweep.csv
    python -m experiments.sweep --shape_grid="dim=32,64" ...   # one program per shape point
    python -m experiments.sweep --bench --seeds=0,1,2,3,4,5,6,7  # vmapped vs sequential
    python -m experiments.sweep --bench --seeds=0,1,2,3,4,5,6,7 --rounds=50 \
        --method=uncompressed --markdown=docs/benchmarks/sweep_ml100k.md   # as a page

Every other flag is a ``TrainConfig`` flag (see ``python -m experiments.train --helpfull``),
the multi-process ones included (``--coordinator``, ``--num_processes``, ``--process_id``:
every process runs the same command; process 0 prints and writes ``--output``).
A sweep scores the sampled protocol only (HR@K / NDCG@K among ``--test_negatives``), under
the default ``--eval_protocol=both`` too; ``full`` is refused (full ranking: ``train`` or
``compare``).

With ``--workdir=DIR`` nothing finished is lost: each shape point's program checkpoints
every ``--checkpoint_every`` rounds and every ``--checkpoint_minutes`` in
``DIR/<shape point>/checkpoints`` and keeps its results in
``DIR/<shape point>/results.json``; the same command run again reuses the finished points
and resumes the interrupted one (``--overwrite``: start over). A point whose results or
checkpoints a sweep with other seeds, grid, result-affecting settings or data left is
refused, naming what differs (its checkpoints are kept).
"""
import contextlib
import dataclasses
import itertools
import pathlib
import re
import time

from absl import flags
import numpy as np

from experiments import pages
from fedras_jax import distributed
from fedras_jax import flags as flag_lib
from fedras_jax.config import TrainConfig
from fedras_jax.outputs import check_writable_file, write_csv
from fedras_jax.runtime import enable_compilation_cache, tune_host_allocator
from fedras_jax.sweep import grid_points, kept_sweep, parse_grid, summarize, sweep
from fedras_jax.workdir_lock import WorkdirLock

flag_lib.define_train_flags()

flags.DEFINE_string("seeds", "0,1,2,3", "comma-separated seeds, vmapped")
flags.DEFINE_string("grid", "", "traced settings, vmapped: 'item_lr=4,8;user_lr=0.5,1'")
flags.DEFINE_string("shape_grid", "", "shape settings, one program each: 'dim=32,64;model=mf,ncf'")
flags.DEFINE_string("output", "", "CSV of one row per configuration (mean/std over seeds)")
flags.DEFINE_boolean(
    "bench", False, "time the seeds vmapped against one run per seed (compiling afresh: "
    "the compilation cache is not used)")
flags.DEFINE_string(
    "markdown", None, "with --bench: also write its timing as a markdown page here (with the "
    "command, commit and machine that produced it)")
FLAGS = flags.FLAGS


def bench(base: TrainConfig, seeds, grid, markdown=None):
  """Prints the time of the seeds vmapped in one program against one run per seed (and
  writes it as the page ``markdown`` if given)."""
  t0 = time.time()
  batched = sweep(base, seeds, grid)[0]
  batched_total = time.time() - t0
  t0 = time.time()
  singles = [sweep(base, [s], grid)[0] for s in seeds]
  sequential_total = time.time() - t0
  if not distributed.is_writer():  # every process timed the same programs
    return
  lines = bench_table(batched, batched_total, singles, sequential_total)
  print(f"{len(seeds)} seeds x {base.rounds} rounds, method {base.method}:")
  print("\n".join(lines))
  if markdown:
    setting = (f"setting: {len(seeds)} seeds x {base.rounds} rounds, {base.dataset} "
               f"{base.model}, method {base.method}, {base.clients_per_round} clients per "
               "round; compiling afresh (no compilation cache)")
    pages.write_page(markdown, "Seeds vmapped in one program against one run per seed",
                     "experiments.sweep", [setting], lines)


def bench_table(batched: dict, batched_total: float, singles: list,
                sequential_total: float) -> list:
  """The markdown lines of ``--bench``: total, compile and round seconds of the vmapped
  sweep (its result row ``batched``, ``batched_total`` s in all) and of the runs one per
  seed (their rows ``singles``, ``sequential_total`` s), and vmapped / one per seed."""
  compile_singles = sum(r["compile_seconds"] for r in singles)
  train_singles = sum(r["train_seconds"] for r in singles)
  return [
      "| | total s | compile s | rounds s |", "|---|---|---|---|",
      f"| vmapped in one program | {batched_total:.1f} | {batched['compile_seconds']:.1f} | "
      f"{batched['train_seconds']:.1f} |",
      f"| one run per seed | {sequential_total:.1f} | {compile_singles:.1f} | "
      f"{train_singles:.1f} |",
      f"| vmapped / one per seed | {batched_total / sequential_total:.2f} | "
      f"{batched['compile_seconds'] / compile_singles:.2f} | "
      f"{batched['train_seconds'] / train_singles:.2f} |"
  ]


def point_dir_name(point: dict) -> str:
  """``dim=32,model=ncf`` for a shape point (characters other than letters, digits and
  ``.=,-`` as ``_``); ``base`` without a shape grid."""
  return re.sub(r"[^\w.=,-]", "_", ",".join(f"{k}={v}" for k, v in point.items())) or "base"


def parse_sweep_flags(base: TrainConfig):
  """``(seeds, grid, shape_points)`` of the sweep flags; ``ValueError`` naming the flag
  and the value for anything that is not a valid setting of every run."""
  if base.eval_protocol == "full":
    raise ValueError("--eval_protocol=full: a sweep scores the sampled protocol only; use "
                     "--eval_protocol=sampled (full ranking: experiments.train or compare)")
  if base.on_nonfinite == "stop":
    raise ValueError("--on_nonfinite=stop: a sweep's runs share one program and cannot "
                     "stop one by one; they skip such clients and count them "
                     "(skipped_clients)")
  seeds = flag_lib.parse_values("--seeds", FLAGS.seeds, int, "an integer")
  grid = parse_grid(FLAGS.grid)
  shape_grid = parse_grid(FLAGS.shape_grid,
                          flag="--shape_grid",
                          names=None,
                          cast=lambda name: flag_lib.field_parser(
                              TrainConfig, name, f"--shape_grid={FLAGS.shape_grid}"))
  shape_points = [dict(zip(shape_grid, v)) for v in itertools.product(*shape_grid.values())]
  flag_lib.validate_points(base, "--seeds", FLAGS.seeds, [dict(seed=s) for s in seeds])
  flag_lib.validate_points(base, "--grid", FLAGS.grid, grid_points(grid))
  flag_lib.validate_points(base, "--shape_grid", FLAGS.shape_grid, shape_points)
  return seeds, grid, shape_points


def main(argv):
  del argv
  tune_host_allocator()
  if not FLAGS.bench:  # --bench times compiles: a cache filled by an earlier run would hide them
    enable_compilation_cache(FLAGS.compilation_cache)
  base = flag_lib.config_from_flags(TrainConfig).validate()
  seeds, grid, shape_points = parse_sweep_flags(base)
  if FLAGS.markdown and not FLAGS.bench:
    raise ValueError(f"--markdown={FLAGS.markdown}: the page is --bench's timing; add --bench")
  distributed.initialize(flag_lib.config_from_flags(distributed.ProcessGroup))
  workdir = None if (base.workdir or "none").lower() == "none" else pathlib.Path(base.workdir)
  output = pathlib.Path(FLAGS.output) if FLAGS.output else None

  def setup(hold):
    """Process 0: ``--output`` and ``--markdown`` checked now, not after the sweep; the
    workdir locked (one sweep at a time in it). A failure here stops every process
    (``on_writer``)."""
    for flag, path in (("--output", output), ("--markdown", FLAGS.markdown)):
      if path:
        check_writable_file(path, flag)
    if workdir and not FLAGS.bench:
      hold.enter_context(WorkdirLock(workdir))
    return None, np.int32(0)

  with contextlib.ExitStack() as hold:
    distributed.on_writer(lambda: setup(hold), np.int32(0))
    if FLAGS.bench:
      bench(dataclasses.replace(base, quiet=True), seeds, grid, FLAGS.markdown)
      return
    rows = run_points(base, seeds, grid, shape_points, workdir)
  if output is not None and distributed.is_writer():
    write_csv(output, list(dict.fromkeys(k for r in rows for k in r)), rows)


def run_points(base: TrainConfig, seeds, grid, shape_points, workdir) -> list:
  """The summary rows of every shape point's sweep (kept in ``workdir`` if given)."""
  rows = []
  for point in shape_points:
    config = dataclasses.replace(base, **point)
    point_dir = workdir / point_dir_name(point) if workdir else None
    results = (kept_sweep(config, seeds, grid, point_dir) if point_dir else sweep(
        config, seeds, grid))
    for row in summarize(results):
      rows.append(dict(point, **row))
      if distributed.is_writer():
        print(", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()))
  return rows


if __name__ == "__main__":
  flag_lib.run_main(main)
