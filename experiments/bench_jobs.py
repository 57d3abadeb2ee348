"""Benchmarks ``compare --jobs=N`` against the same grid run one method after another.

Both run the same ``compare`` command into fresh output directories (no compilation
cache, so each part compiles its own rounds, as a first run does) and must tabulate the
same runs; printed: the wall time of each, their ratio, and how far apart each run's
final HR@10 is (a run on fewer threads may round differently)::

    python -m experiments.bench_jobs --data_dir=/work/shared/data --jobs=2
    python -m experiments.bench_jobs --methods=fedras,svd,topk,colr --rounds=100
    python -m experiments.bench_jobs --rounds=300 --markdown=docs/benchmarks/jobs_ml100k.md
"""
import csv
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import flags

from experiments import jobs, pages
from fedras_jax import data as data_lib
from fedras_jax import flags as flag_lib
from fedras_jax import outputs
from fedras_jax.config import TrainConfig

_DATA_DIR = flags.DEFINE_string("data_dir", None, "where the dataset is (default: the "
                                "library's data directory)")
_METHODS = flags.DEFINE_string("methods", "fedras,svd,topk,colr",
                               "the grid's methods (slowest first)")
_JOBS = flags.DEFINE_integer("jobs", 2, "processes at once", lower_bound=2)
_ROUNDS = flags.DEFINE_integer("rounds", 100, "rounds per run", lower_bound=1)
_RATIO = flags.DEFINE_string("ratio", "1/32", "payload ratio")
_MARKDOWN = flags.DEFINE_string(
    "markdown", None, "also write the timing as a markdown page here (with the command, "
    "commit and machine that produced it)")


def _run(outdir: pathlib.Path, jobs_flag: int) -> tuple:
  cmd = [
      sys.executable, "-m", "experiments.compare", f"--outdir={outdir}",
      f"--methods={_METHODS.value}", f"--ratios={_RATIO.value}", f"--rounds={_ROUNDS.value}",
      f"--eval_every={_ROUNDS.value}", "--compilation_cache=none", f"--jobs={jobs_flag}"
  ] + ([f"--data_dir={_DATA_DIR.value}"] if _DATA_DIR.value else [])
  start = time.perf_counter()
  # compare's progress goes straight to this stdout; its error line, if any, is relayed.
  proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    lines = [l for l in proc.stderr.splitlines() if l.strip()] or ["(no output)"]
    raise ValueError(f"experiments.compare --jobs={jobs_flag} failed: "
                     f"{lines[-1].removeprefix('error: ')}")
  with open(outdir / "compare.csv") as f:
    rows = [(r["method"], r["final_hr@10"]) for r in csv.DictReader(f)]
  return wall, rows


def main(argv):
  del argv
  if _MARKDOWN.value:
    outputs.check_writable_file(_MARKDOWN.value, "--markdown")
  print(f"{pages.cpus_text()}; grid: {_METHODS.value} at {_RATIO.value}, {_ROUNDS.value} rounds, "
        f"ML-100K FedMF defaults; slots of --jobs={_JOBS.value}: "
        f"{jobs.cpu_shares(jobs.usable_cpus(), _JOBS.value)}")
  methods = [m.strip() for m in _METHODS.value.split(",") if m.strip()]
  flag_lib.validate_points(TrainConfig(), "--methods", _METHODS.value,
                           [dict(method=m) for m in methods])  # before any fetch
  # Untimed: fetching ML-100K and building its cached split would count against the
  # first of the two runs alone.
  data_lib.load_dataset("ml-100k", _DATA_DIR.value)
  with tempfile.TemporaryDirectory() as tmp:
    one, rows_one = _run(pathlib.Path(tmp) / "one", 1)
    print(f"one method after another: {one:.1f} s", flush=True)
    many, rows_many = _run(pathlib.Path(tmp) / "many", _JOBS.value)
    print(f"--jobs={_JOBS.value}: {many:.1f} s", flush=True)
  if [m for m, _ in rows_one] != [m for m, _ in rows_many]:
    raise RuntimeError(f"the two tables hold different runs: {rows_one} against {rows_many}")
  # A run on fewer threads may round differently (XLA:CPU splits some reductions by
  # thread), so the final HR@10 may differ by the noise of a seed.
  diffs = ", ".join(
      f"{m} {float(b) - float(a):+.4f}" for (m, a), (_, b) in zip(rows_one, rows_many))
  lines = [
      "| grid run as | wall s |", "|---|---|", f"| one method after another | {one:.1f} |",
      f"| compare --jobs={_JOBS.value} | {many:.1f} |", f"| speed-up | {one / many:.2f}x |", "",
      f"final HR@10, --jobs minus one after another: {diffs}"
  ]
  print("\n".join(lines))
  if _MARKDOWN.value:
    setting = (f"setting: {_METHODS.value} at {_RATIO.value}, {_ROUNDS.value} rounds, ML-100K "
               "FedMF defaults, fresh outdirs, no compilation cache")
    pages.write_page(_MARKDOWN.value,
                     f"A grid as compare --jobs={_JOBS.value} against one method after another",
                     "experiments.bench_jobs", [setting], lines)


if __name__ == "__main__":
  flag_lib.run_main(main)
