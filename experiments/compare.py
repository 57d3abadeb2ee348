"""The paper's comparison: methods x payload ratios x models x datasets x seeds.

    python -m experiments.compare --methods=uncompressed,fedras,topk,svd,colr,embedding_kmeans \
        --ratios=1/8,1/32 --models=mf --datasets=ml-100k --seeds=0 --rounds=300 \
        --outdir=runs/compare

Every run gets the same rounds, clients per round, learning rates, seeds and test
candidates (the base flags); one row per run goes to ``compare.csv`` (its evaluation
rows to ``curves.csv``), a markdown
table to ``compare.md`` and, with matplotlib installed, HR@10 against payload ratio
per method to ``compare.png``. Every other flag is a ``TrainConfig`` flag; ``--models``,
``--datasets`` and ``--seeds`` default to the single ``--model``, ``--dataset`` and
``--seed`` (say, of a ``--flagfile``).

``--tune="item_lr=4,8,16"`` gives every method and ratio the same search: the
candidates are trained in one vmapped program on the validation split (one more
interaction per user held out, scored against its own negatives), the best
validation HR@10 picks the setting, and only that setting is run on the test items.
A pick at the grid's smallest or largest value widens the grid one step past it and
searches again, up to ``--tune_widen`` times (a pick still at an edge is marked
``(grid edge)`` in the table), unless the metric is the same at every value of that setting
(flat: HR@10 is 1 with at most 9 test negatives). ``--tune_metric=ndcg@10`` picks by validation NDCG@10
instead (the table's ``valid_hr@10`` stays the pick's validation HR@10).
With ``--tune_at=1/32`` each method searches once, at that ratio, and uses the
setting it found at every ratio (a ratio sweep at the cost of one search per method);
with ``--tune_seed=0`` the search runs at seed 0 only and every seed uses its pick.
``--method_settings='uncompressed:item_lr=32;fedras:item_lr=16'`` fixes a setting per
method instead of searching it (say the picks of a shorter grid's search, reused for
longer runs); the table shows it as ``item_lr=32.0 (set)``.

Nothing is lost when a comparison is interrupted: every run resumes from its
workdir (``<outdir>/<run name>``, e.g. ``ml-100k_mf_fedras_1over32_s0``; a ``--dataset=PATH``
run is named by the file's name and a hash of its absolute path, so two files called
``ratings.csv`` never share one) and a search's results are kept there in
``tuning.json``, so running the same command again redoes only what is missing
(a widened ``--tune`` grid searches only its new points).
Runs may be split over several invocations into one ``--outdir`` (say one per
method, in parallel; each given the same ``--method_settings``, which may name methods
it does not run, or its runs are not the grid's: a run trained at another setting is
left out of the table, and a workdir holding one is not overwritten); a last invocation
over the whole grid with ``--only_finished``
then tabulates every finished run from the workdirs, trains nothing and names
the runs that are missing. It takes each search's pick as the best of every point
kept in its ``tuning.json``, so invocations may search a method from different
starting grids (say one nearer its expected pick), or, where a finished run holds
one of those points, that run's. ``--jobs=N`` does all that itself: one process per
method, N at once, each pinned to its share of this process's CPUs (on CPU a run
uses about one core's worth: ``experiments/jobs.py``), then the table of the whole
grid. A run's search and its training hold the run's workdir (its ``.lock``): an
invocation that reaches a run another one holds stops with an error naming the holder,
so invocations running at once split the grid by method or seed, not into runs that
share a search (``--tune_seed``, ``--tune_at``).

A run that diverges (``--on_nonfinite=stop`` and a non-finite update, or three rounds
in a row in which every client's update was non-finite: ``training.DEAD_ROUNDS``)
stops with one line that says so; the comparison goes on with the other runs, leaves
it out of the table and exits with an error naming it (``--only_finished`` names it
as missing). A pick near where a setting
diverges can pass its search and diverge on the test items (the search trains
without them): search a grid that stops short of that edge, or fix the setting with
``--method_settings``.
"""
import csv
import dataclasses
import functools
import hashlib
import itertools
import pathlib
import sys
from fractions import Fraction
from typing import Callable, Optional

from absl import flags
import numpy as np

from experiments import jobs, pages
from fedras_jax import flags as flag_lib
from fedras_jax import data as data_lib
from fedras_jax import outputs
from fedras_jax.config import DATASETS, TrainConfig, dataset_label
from fedras_jax.data import FetchError
from fedras_jax.experiment import run_data_sha256
from fedras_jax.runtime import enable_compilation_cache, tune_host_allocator
from fedras_jax.sweep import (DENSE, SWEEPABLE, dense_at_one, grid_points, keep_results,
                              kept_results, parse_grid, seed_stats, sweep_points)
from fedras_jax.training import NonFiniteUpdateError, train
from fedras_jax.workdir import (config_differences, names_other_data, other_data_error,
                                recorded_config)
from fedras_jax.workdir_lock import WorkdirLock

flag_lib.define_train_flags()

flags.DEFINE_string("methods", "uncompressed,fedras,topk,svd,colr,embedding_kmeans", "methods")
flags.DEFINE_string("ratios", "1/2,1/4,1/8,1/16,1/32,1/64", "payload ratios (fractions)")
flags.DEFINE_string("models", "", "models (default: the --model flag)")
flags.DEFINE_string("datasets", "", "datasets (default: the --dataset flag)")
flags.DEFINE_string("seeds", "", "seeds (default: the --seed flag)")
flags.DEFINE_string("outdir", "runs/compare", "where runs, compare.csv/.md/.png go")
flags.DEFINE_string("tune", "", "per-method search on the validation split, e.g. 'item_lr=4,8,16'")
flags.DEFINE_string(
    "method_settings", "", "per-method fixed settings instead of a search, e.g. "
    "'uncompressed:item_lr=32;fedras:item_lr=16' (a name may not also be in --tune)")
flags.DEFINE_bool(
    "only_finished", False, "train nothing: tabulate the runs of the grid "
    "already finished in --outdir, and name the missing ones")
flags.DEFINE_string(
    "tune_at", "", "search (--tune) once per method at this payload ratio, "
    "e.g. 1/32, and use its setting at every ratio (default: at every ratio)")
flags.DEFINE_integer("tune_widen",
                     3, "at most this many times, extend a --tune grid whose pick sits "
                     "at its smallest or largest value by one step past that edge and search again "
                     "(geometric steps for positive values; 0: never)",
                     lower_bound=0)
flags.DEFINE_enum("tune_metric", "hr@10", ["hr@10", "ndcg@10"],
                  "the validation metric a --tune search maximises")
flags.DEFINE_integer(
    "tune_seed", None, "search (--tune) at this seed only and use its "
    "setting for every seed (default: each seed searches)")
flags.DEFINE_integer(
    "jobs",
    1, "run the grid as one process per method, this many at once, each pinned to its "
    "share of this process's CPUs, then tabulate it as --only_finished does (on CPU one "
    "run uses about one core's worth; put the slowest methods first)",
    lower_bound=1)
flags.DEFINE_bool(
    "tabulate", True, "write compare.csv/.md/.json/.png and print the table "
    "(--notabulate: train only; --jobs sets it for its parts)")
FLAGS = flags.FLAGS

COLUMNS = ("dataset", "model", "method", "payload_ratio", "seed", "rounds", "final_hr@10",
           "final_ndcg@10", "final_full_hr@10", "final_full_ndcg@10", "best_hr@10", "best_ndcg@10",
           "tuned", "valid_hr@10", "bits_up_total", "bits_down_total", "compression_up",
           "compression_down", "info_loss_total", "sim_seconds", "train_seconds", "test_negatives")

CURVE_COLUMNS = ("dataset", "model", "method", "payload_ratio", "seed", "round", "sim_seconds",
                 "hr@10", "ndcg@10")

TUNING_FILE = "tuning.json"
# A search's checkpoints while it runs (every --checkpoint_every rounds and every
# --checkpoint_minutes): a search cut off midway resumes from them.
SEARCH_CHECKPOINT_DIR = "search_checkpoints"


def edge_names(grid, point) -> list:
  """The names of ``grid`` (of two or more values) whose value in ``point`` is the
  smallest or the largest of the grid's."""
  return [n for n, v in grid.items() if len(v) > 1 and point[n] in (min(v), max(v))]


def widened(grid, point, valid=lambda name, value: True, names=None) -> dict:
  """``grid`` with every name of ``edge_names`` (of those in ``names``, if given) extended
  by one step past the edge its ``point`` value sits on: the ratio of the two outermost values there if every
  value is positive, else their difference. A step that ``valid(name, value)`` refuses
  (past the setting's range: ``fluctuation`` 1 or more) is halved towards the edge until
  it is valid; a pick at the bound itself (``weight_decay=0``) is not widened."""
  out = dict(grid)
  # Rounded to 6 digits: 0.05 -> 0.025, not 0.025000000000000005.
  rounded = lambda x: float(f"{x:.6g}")

  def step(name, edge, inner, positive):
    new = rounded(edge * edge / inner if positive else 2 * edge - inner)
    for _ in range(20):
      if new == edge:
        return None
      if valid(name, new):
        return new
      new = rounded((edge + new) / 2)
    return None

  for name in edge_names(grid, point):
    if names is not None and name not in names:
      continue
    v = sorted(grid[name])
    if point[name] == v[0] and (low := step(name, v[0], v[1], v[0] > 0)) is not None:
      out[name] = [low] + v
    if point[name] == v[-1] and (high := step(name, v[-1], v[-2], v[0] > 0)) is not None:
      out[name] = out[name] + [high]
  return out


def open_edges(grid, point, valid=lambda name, value: True, tied=()) -> list:
  """The ``edge_names`` that ``widened`` can widen: a pick at the bound of its setting's
  range (``weight_decay=0``) is no edge, nor is a name whose every grid value some point of
  ``tied`` (the points scoring as well as the pick, as ``{name: value}``) holds: a score
  flat across a setting points past neither edge (HR@10 is 1 for every setting with at
  most 9 test negatives)."""
  wider = widened(grid, point, valid)
  return [
      n for n in edge_names(grid, point)
      if wider[n] != grid[n] and {t[n] for t in tied} != set(grid[n])
  ]


def tune(config: TrainConfig,
         grid,
         search: bool = True,
         widen: int = 0,
         metric: str = "hr@10",
         prefer: Optional[dict] = None) -> Optional[tuple]:
  """``(grid point of best validation metric, its validation HR@10, edge names)`` for
  ``config``; ``metric`` is ``"hr@10"`` or ``"ndcg@10"``.

  Every point searched is kept in ``<config.workdir>/tuning.json`` and reused by a
  later call with the same result-affecting settings: a widened grid searches only
  its new points (each point's result is its own deterministic run; points searched
  in different calls ran in different vmapped programs, so they agree with a joint
  search up to float rounding). A search saves checkpoints in
  ``<config.workdir>/search_checkpoints`` every ``checkpoint_every`` rounds and every
  ``checkpoint_minutes``; cut off midway, the same search resumes from them. Up to ``widen``
  times, a pick at the grid's edge widens the grid past it (``widened``) and searches the
  new points; the names still at an edge are returned. While it searches, the search holds
  the lock of ``config.workdir`` (``WorkdirLockError`` if another process holds it: a second
  invocation searching or training the same run). With ``search=False`` (tabulating)
  nothing is searched: the pick is the best of every point kept for this setting, whatever
  grids searched them (invocations may have searched a method from different starting
  grids), or ``prefer`` (``{name: value}``, the setting of a finished run) when it is one of
  them; the edges are those of the kept values; None if no point was kept.
  """
  # Not quiet: the search logs its validation HR@10 every eval_every rounds (a long
  # search is otherwise silent); evaluating changes no run's numbers.
  candidate = dataclasses.replace(config,
                                  validation=True,
                                  workdir=None,
                                  quiet=False,
                                  overwrite=False)
  path = pathlib.Path(config.workdir) / TUNING_FILE
  # A search writes over the file: one kept by a search with other settings is refused
  # first (a finished run's record), unless --overwrite says to search again.
  # One of other data is refused when tabulating too (it would else be left out unsaid).
  data_sha256 = data_sha256_asked(candidate, tabulating=not search)
  read_kept = lambda: kept_results(path,
                                   candidate,
                                   "delete it, or rerun with the flags and data it was searched "
                                   "with (--overwrite: search again)",
                                   data_sha256,
                                   refuse_other=search and not config.overwrite,
                                   refuse_other_data=not config.overwrite) or []
  kept = read_kept()
  # A point's full setting: its values, the candidate's for the other sweepable names.
  # A kept point lacks the names its own search did not vary: it ran at the candidate's.
  value = lambda point, name: point.get(name, getattr(candidate, name))
  key = lambda point: tuple(value(point, name) for name in SWEEPABLE)
  found = {key(r): r for r in kept}
  valid = functools.partial(in_range, candidate)
  # A diverged candidate (NaN) never wins, nor ties (a grid diverging throughout still widens).
  score = lambda r: r[metric] if np.isfinite(r[metric]) else -np.inf
  finite_tie = lambda r, best: np.isfinite(score(r)) and score(r) == score(best)
  if not search:
    # The points that differ from the candidate in the grid's names only.
    same = [
        r for r in found.values() if all(
            value(r, n) == getattr(candidate, n) for n in SWEEPABLE if n not in grid)
    ]
    if not same:
      return None
    best = max(same, key=score)
    if prefer is not None:  # a run trained at a kept point: that point, even on a tie
      best = next((r for r in same if all(value(r, n) == v for n, v in prefer.items())), best)
    point = {name: value(best, name) for name in grid}
    searched = {name: sorted({value(r, name) for r in same}) for name in grid}
    tied = [{n: value(r, n) for n in grid} for r in same if finite_tie(r, best)]
    print(
        f"   kept {point} (payload {config.payload_ratio:g}): validation {metric} "
        f"{best[metric]:.4f}, best of {len(same)} searched points "
        f"{max(score(r) for r in same):.4f}",
        flush=True)
    return point, best["hr@10"], open_edges(searched, point, valid, tied)
  for step in range(widen + 1):
    points = grid_points(grid)
    missing = [p for p in points if key(p) not in found]
    if missing:
      # The run's workdir is locked while its points are searched: a second invocation
      # searching the same run is refused instead of training the same points into the
      # same checkpoints, and what the file holds is read again under the lock.
      with WorkdirLock(config.workdir):
        kept = read_kept()
        found = {key(r): r for r in kept}
        missing = [p for p in points if key(p) not in found]
        checkpoints = path.parent / SEARCH_CHECKPOINT_DIR
        new = sweep_points(
            candidate, [config.seed],
            missing,
            log=lambda line: print(f"   searching {len(missing)} points (validation): {line}",
                                   flush=True),
            checkpoint_dir=checkpoints) if missing else []
        found.update((key(r), r) for r in new)
        kept += new
        keep_results(path, candidate, data_sha256, kept, checkpoints)
    results = [found[key(p)] for p in points]
    best = max(results, key=score)
    point = {name: value(best, name) for name in grid}
    how = (f"tuned ({len(missing)} of {len(results)} points searched)" if missing else "kept")
    print(f"   {how} {point} (payload {config.payload_ratio:g}): validation {metric} " + ", ".join(
        f"{'/'.join(str(value(r, n)) for n in grid)}: {r[metric]:.4f}" for r in results),
          flush=True)
    dropped = [r for r in results if r.get("skipped_clients")]
    if dropped:
      print("   (non-finite client updates skipped in the search: " + ", ".join(
          f"{'/'.join(str(value(r, n)) for n in grid)}: {r['skipped_clients']}" for r in dropped)
            + ")",
            flush=True)
    tied = [{n: value(r, n) for n in grid} for r in results if finite_tie(r, best)]
    edges = open_edges(grid, point, valid, tied)
    flat = [n for n in open_edges(grid, point, valid) if n not in edges]
    if flat:
      print(
          f"   validation {metric} is the same across {', '.join(flat)}: its edge is not "
          "widened",
          flush=True)
    if not edges or step == widen:
      return point, best["hr@10"], edges
    grid = widened(grid, point, valid, edges)
    print(f"   the pick sits at the edge of {', '.join(edges)}: widening the grid", flush=True)


def run_label(dataset: str) -> str:
  """A dataset's part of its runs' folder names: a built-in dataset's name; a file's name
  without the suffix and 8 hex digits of the sha256 of its absolute path (files of one name,
  ``ml-1m/ratings.dat`` and ``ml-10m/ratings.dat``, or ``ml-100k.csv`` beside the built-in
  ``ml-100k``, would else share one folder)."""
  if not data_lib.is_path(dataset):
    return dataset
  where = str(pathlib.Path(dataset).expanduser().resolve())
  return f"{dataset_label(dataset)}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"


def in_range(config: TrainConfig, name: str, value: float) -> bool:
  """Whether ``config`` with ``name`` set to ``value`` is a valid setting."""
  try:
    dataclasses.replace(config, **{name: value}).validate()
  except ValueError:
    return False
  return True


def recorded_pick(config: TrainConfig, grid) -> Optional[dict]:
  """``{name: value}`` of ``grid``'s names in the run recorded in ``config``'s workdir,
  if that run differs from ``config`` in those names at most (None otherwise, or
  without a recorded run)."""
  recorded = recorded_config(config.workdir)
  if recorded is None or any(n not in recorded for n in grid):
    return None
  as_recorded = dataclasses.replace(config, **{n: recorded[n] for n in grid})
  return None if config_differences(recorded, as_recorded) else {n: recorded[n] for n in grid}


def holds_other_pick(config: TrainConfig, grid) -> bool:
  """True if ``config``'s workdir holds a run that differs from it only in ``grid``'s
  names: a run at a setting an earlier search picked and the current one does not."""
  pick = recorded_pick(config, grid)
  return pick is not None and any(getattr(config, n) != v for n, v in pick.items())


def data_sha256_asked(config: TrainConfig, tabulating: bool) -> Callable[[], Optional[str]]:
  """``run_data_sha256(config)``, computed when first asked (a record without its data's
  sha256 asks nothing) and kept. Tabulating, which needs no data (``--only_finished``),
  where the data cannot be read or fetched: None, with a line saying that the records'
  data went unchecked."""

  @functools.cache
  def asked():
    try:
      return run_data_sha256(config)
    except (OSError, FetchError) as e:
      if not tabulating:
        raise
      print(f"   (its data are not here, so the data of its records are not checked: {e})",
            flush=True)
      return None

  return asked


def finished_summary(config: TrainConfig, data_sha256: Callable[[],
                                                                Optional[str]]) -> Optional[dict]:
  """The summary of ``config``'s run in its workdir if that run is finished, else None.
  A finished run trained on other data than ``data_sha256()`` (``data_sha256_asked``;
  ``workdir.names_other_data``) raises a ``WorkdirError``: tabulated, it would pass for a
  run of these data."""
  path = pathlib.Path(config.workdir) / "summary.json"
  if not path.is_file():
    return None
  summary = outputs.read_json(path,
                              "use --overwrite to start the run over",
                              fields=("final", "config"))
  finished = isinstance(summary["final"], dict) and summary["final"].get("round") == config.rounds
  if not finished or config_differences(summary["config"], config):
    return None
  if names_other_data(summary, data_sha256):
    raise other_data_error(
        config.workdir, "delete that folder to train the run again on these data, or restore "
        "them (--overwrite: every run of the grid again)")
  return summary


def parse_method_settings(text: str) -> dict:
  """``"svd:item_lr=16;fedras:item_lr=8,dense_lr=0.1"`` -> ``{"svd": {"item_lr": 16.0},
  "fedras": {"item_lr": 8.0, "dense_lr": 0.1}}``: one value per sweepable name; a
  ``ValueError`` naming ``--method_settings`` for a malformed entry or a name given twice
  for one method. Methods not run are allowed (one settings text serves the invocations
  a grid is split into); the caller checks that each is a method."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(";"))):
    method, colon, rest = part.partition(":")
    method = method.strip()
    if not colon or not method:
      raise ValueError(f"--method_settings={text}: bad entry {part!r}: expected "
                       "method:name=value[,name=value]")
    settings = out.setdefault(method, {})
    for item in rest.split(","):
      name, eq, value = (x.strip() for x in item.partition("="))
      where = f"--method_settings={text}: {method}"
      if not eq or not name or not value:
        raise ValueError(f"{where}: bad setting {item.strip()!r}: expected name=value (one "
                         "value per name; a search is --tune)")
      if name not in SWEEPABLE:
        raise ValueError(f"{where}: cannot set {name!r} per method: settable are "
                         f"{', '.join(SWEEPABLE)}")
      if name in settings:
        raise ValueError(f"{where} sets {name!r} twice")
      try:
        settings[name] = flag_lib.finite_float(value)
      except ValueError:
        raise ValueError(f"{where}: {name}={value!r} is not a finite number") from None
  return out


def table_row(config: TrainConfig,
              ratio_text: str,
              summary: dict,
              tuned_names,
              valid_hr: float,
              edges=(),
              set_names=()) -> dict:
  """``compare.csv``'s row of a finished run; ``tuned`` names the searched setting,
  marked ``(grid edge)`` where the search's pick sits at its grid's edge (``edges``),
  then the method's fixed settings (``set_names``, ``--method_settings``) marked
  ``(set)``."""
  final, best = summary["final"], summary["best"]
  # A protocol the run did not compute (--eval_protocol) is left empty.
  scores = {
      f"{which}_{prefix}{m}@10": row.get(f"{prefix}{m}@10", "")
      for which, row in (("final", final), ("best", best))
      for prefix in ("", "full_")
      for m in ("hr", "ndcg")
      if f"{which}_{prefix}{m}@10" in COLUMNS
  }
  tuned = ";".join([
      *(f"{name}={summary['config'][name]}" + (" (grid edge)" if name in edges else "")
        for name in tuned_names), *(f"{name}={summary['config'][name]} (set)" for name in set_names)
  ])
  return {
      "dataset": config.dataset, "model": config.model, "method": config.method,
      "payload_ratio": ratio_text, "seed": config.seed, "rounds": config.rounds,
      **scores, "tuned": tuned, "valid_hr@10": valid_hr, "bits_up_total": final["bits_up_total"],
      "bits_down_total": final["bits_down_total"], "compression_up": final["compression_up"],
      "compression_down": final["compression_down"], "info_loss_total": final["info_loss_total"],
      "sim_seconds": final["sim_seconds"], "train_seconds": summary["train_seconds"],
      "test_negatives": config.test_negatives
  }


def curve_rows(config: TrainConfig, ratio_text: str) -> list:
  """The evaluation rows of ``config``'s run (its workdir's ``metrics.csv``) as
  ``CURVE_COLUMNS`` rows: the learning curve against rounds and simulated seconds."""
  with open(pathlib.Path(config.workdir) / "metrics.csv", newline="") as f:
    return [{
        "dataset": config.dataset, "model": config.model, "method": config.method,
        "payload_ratio": ratio_text, "seed": config.seed, **{c: r[c] for c in CURVE_COLUMNS[5:]}
    } for r in csv.DictReader(f)]


def over_seeds(rows) -> list:
  """Lines of a markdown table: per dataset, model, method and ratio, the mean and
  (population) std over seeds of the final HR@10 and NDCG@10 (sampled and full ranking)
  and the uplink compression."""
  metrics = ("final_hr@10", "final_ndcg@10", "final_full_hr@10", "final_full_ndcg@10")
  lines = [
      "| dataset | model | method | payload_ratio | seeds | " + " | ".join(metrics)
      + " | compression_up |", "|" + "---|" * 10
  ]
  stats = seed_stats([dense_at_one(r) for r in rows],
                     ("dataset", "model", "method", "payload_ratio"), metrics + ("compression_up",))
  for key, (seeds, s) in stats.items():
    lines.append("| " + " | ".join(map(str, key)) + f" | {seeds} | " + " | ".join(
        f"{s[c][0]:.4f} ± {s[c][1]:.4f}" if np.isfinite(s[c][0]) else "" for c in metrics)
                 + f" | {s['compression_up'][0]:.2%} |")
  return lines


def write_outputs(rows, outdir: pathlib.Path, curves=()):
  """``compare.csv`` (``rows``), ``curves.csv`` (the runs' evaluation rows),
  ``compare.md``, ``compare.json`` (how they were made) and ``compare.png``."""
  outputs.write_csv(outdir / "compare.csv", COLUMNS, rows)
  if curves:
    outputs.write_csv(outdir / "curves.csv", CURVE_COLUMNS, curves)
  shown = COLUMNS[:14]
  lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
  for r in rows:
    lines.append("| " + " | ".join(
        f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in shown) + " |")
  lines += [
      "", "final_*: the last round's test metrics (what the tables report); best_*: the "
      "evaluation with the highest test HR@10, picked on test data (an upper bound, not a "
      "result); valid_hr@10: the search's validation score of the pick."
  ]
  if len({r["seed"] for r in rows}) > 1:
    lines += ["", "Over seeds (mean ± population std, ddof=0):", ""] + over_seeds(rows)
  outputs.write_atomic(outdir / "compare.md", ("\n".join(lines) + "\n").encode())
  outputs.write_json(outdir / "compare.json", pages.provenance("experiments.compare"), indent=1)
  plt = pages.pyplot()
  if plt is None:
    print("matplotlib not installed: no plot (pip install -e '.[plot]')")
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  for method in dict.fromkeys(r["method"] for r in rows):
    pts = sorted((float(Fraction(r["payload_ratio"])), r["final_hr@10"])
                 for r in map(dense_at_one, rows)
                 if r["method"] == method)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("payload ratio (of the dense float32 item table)")
  ax.set_ylabel("HR@10")
  ax.legend()
  pages.save_figure(fig, plt, outdir / "compare.png", dpi=120)


def run_in_parts(methods, parts: int) -> list:
  """This command (``sys.argv``) once per method, ``parts`` processes at once (each slot
  pinned to its share of the CPUs; a slot takes the next method as its last one ends),
  every part training its runs without writing the tables; returns the ``(method,
  exit status)`` of every part that failed."""
  slots = min(parts, len(methods))
  shares = jobs.cpu_shares(jobs.usable_cpus(), slots)
  # Flags given later win: each part's own flags override the command's.
  commands = [[
      sys.executable, "-m", "experiments.compare", *sys.argv[1:], f"--methods={m}", "--jobs=1",
      "--notabulate"
  ] for m in methods]
  print(f"--jobs={parts}: {len(methods)} parts (one per method) in {slots} slots", flush=True)
  try:
    codes = jobs.run_queue(commands, [f"part {m}" for m in methods], shares)
  except KeyboardInterrupt as e:
    raise ValueError(f"--jobs: interrupted ({e or 'Ctrl-C'}); the parts were stopped and "
                     "the same command resumes them") from None
  return [(m, code) for m, code in zip(methods, codes) if code != 0]


def main(argv):
  del argv
  tune_host_allocator()
  enable_compilation_cache(FLAGS.compilation_cache)
  split = lambda s: [x.strip() for x in s.split(",") if x.strip()]
  flag_lib.refuse_process_group("compare")
  base = flag_lib.config_from_flags(TrainConfig)
  base.validate()  # a bad base flag names itself, not the first flag checked against it
  if base.eval_protocol == "full":
    raise ValueError("--eval_protocol=full: compare's searches, tables and plots score the "
                     "sampled protocol; use --eval_protocol=both (the default) or sampled")
  what = "a payload ratio in (0, 1], e.g. 1/32"
  ratios = list(
      zip(split(FLAGS.ratios),
          flag_lib.parse_values("--ratios", FLAGS.ratios, flag_lib.fraction, what)))
  seeds = (flag_lib.parse_values("--seeds", FLAGS.seeds, int, "an integer")
           if FLAGS.seeds else [base.seed])
  flag_lib.validate_points(base, "--seeds", FLAGS.seeds, [dict(seed=s) for s in seeds])
  if FLAGS.tune_seed is not None:
    flag_lib.validate_points(base, "--tune_seed", FLAGS.tune_seed, [dict(seed=FLAGS.tune_seed)])
  grid = parse_grid(FLAGS.tune, flag="--tune")
  flag_lib.validate_points(base, "--tune", FLAGS.tune, grid_points(grid))
  tune_at = None
  if FLAGS.tune_at:
    values = flag_lib.parse_values("--tune_at", FLAGS.tune_at, flag_lib.fraction, what)
    if len(values) != 1:
      raise ValueError(f"--tune_at={FLAGS.tune_at}: name one payload ratio")
    tune_at = (FLAGS.tune_at.strip(), values[0])
  if (tune_at or FLAGS.tune_seed is not None) and not grid:
    raise ValueError("--tune_at and --tune_seed need --tune")
  outdir = pathlib.Path(FLAGS.outdir)

  def run_config(dataset, model, method, ratio, seed):
    ratio_text, value = ratio
    name = (f"{run_label(dataset)}_{model}_{method}_{ratio_text.replace('/', 'over')}"
            f"_s{seed}")
    config = dataclasses.replace(base,
                                 dataset=dataset,
                                 model=model,
                                 method=method,
                                 payload_ratio=value,
                                 seed=seed,
                                 workdir=str(outdir / name),
                                 **method_settings.get(method, {}))
    config.validate()
    return name, config

  methods = list(dict.fromkeys(split(FLAGS.methods)))
  if not methods:
    raise ValueError("--methods is empty: name at least one method")
  flag_lib.validate_points(base, "--methods", FLAGS.methods, [dict(method=m) for m in methods])
  method_settings = parse_method_settings(FLAGS.method_settings)
  for method, settings in method_settings.items():
    if set(settings) & set(grid):
      raise ValueError(f"--method_settings={FLAGS.method_settings}: {method} sets "
                       f"{sorted(set(settings) & set(grid))}, which --tune searches")
    flag_lib.validate_points(base, "--method_settings", FLAGS.method_settings,
                             [dict(method=method, **settings)])
  datasets = split(FLAGS.datasets) or [base.dataset]
  models = split(FLAGS.models) or [base.model]
  flag_lib.validate_points(base, "--datasets", FLAGS.datasets, [dict(dataset=d) for d in datasets])
  flag_lib.validate_points(base, "--models", FLAGS.models, [dict(model=m) for m in models])
  for dataset in datasets:  # a file read at the first run that needs it, maybe hours in
    if dataset not in DATASETS and not FLAGS.only_finished and not pathlib.Path(dataset).is_file():
      raise ValueError(f"--datasets={FLAGS.datasets or dataset}: no file {dataset}")
  grid_runs = list(itertools.product(datasets, models, methods, ratios, seeds))
  for point in grid_runs:  # every run's settings, before the first one trains
    run_config(*point)
  with outputs.naming(outdir):
    outdir.mkdir(parents=True, exist_ok=True)
  failed = []
  if FLAGS.jobs > 1 and not FLAGS.only_finished:
    failed = run_in_parts(methods, FLAGS.jobs)
  only_finished = FLAGS.only_finished or FLAGS.jobs > 1
  rows, curves = [], []
  # The dense baseline does not depend on the ratio: one run per dataset, model, seed.
  planned = sum(method != DENSE or ratio == ratios[0] for _, _, method, ratio, _ in grid_runs)
  started = 0
  diverged = []  # the runs stopped on non-finite updates, with why
  # (dataset, model, seed) of the dense runs that finished or diverged: not run again at the
  # later ratios. One that did neither at the first ratio (--only_finished: not there) is
  # looked for at the next: a run an earlier invocation with other --ratios trained.
  dense_settled = set()
  for dataset, model, method, ratio, seed in grid_runs:
    if method == DENSE and (dataset, model, seed) in dense_settled:
      continue
    name, config = run_config(dataset, model, method, ratio, seed)
    search_seed = seed if FLAGS.tune_seed is None else FLAGS.tune_seed
    search_config = run_config(dataset, model, method, tune_at or ratio, search_seed)[1]
    started += 1
    print(f"== {name} ({started} of {max(started, planned)})", flush=True)
    tuned = (tune(search_config,
                  grid,
                  search=not only_finished,
                  widen=FLAGS.tune_widen,
                  metric=FLAGS.tune_metric,
                  prefer=recorded_pick(config, grid) if only_finished else None) if grid else
             ({}, float("nan"), []))
    summary = None
    if tuned is not None:
      config = dataclasses.replace(config, **tuned[0])
      if not only_finished and holds_other_pick(config, grid):
        print(f"   replacing the run at an earlier pick with {tuned[0]}", flush=True)
        config = dataclasses.replace(config, overwrite=True)
      try:
        # A finished run is read, not resumed: it may have no checkpoint to resume from
        # (checkpoints/ deleted, or trained with no cadence before its last round was kept).
        # Tabulating after --jobs --overwrite, the parts have just trained them again.
        summary = (None if config.overwrite and not only_finished else finished_summary(
            config, data_sha256_asked(config, tabulating=only_finished)))
        if summary is None and not only_finished:
          summary = train(config)
      except NonFiniteUpdateError as e:
        print(f"   stopped: {e}", flush=True)
        diverged.append(f"{name} ({e})")
        if method == DENSE:
          dense_settled.add((dataset, model, seed))
    if summary is None:
      print("   not finished: left out of the table", flush=True)
      continue
    if method == DENSE:
      dense_settled.add((dataset, model, seed))
    rows.append(
        table_row(config, ratio[0], summary, grid, tuned[1], tuned[2],
                  method_settings.get(method, {})))
    curves += curve_rows(config, ratio[0])
    if FLAGS.tabulate:  # after every run: nothing is lost if interrupted
      write_outputs(rows, outdir, curves)
  if rows and FLAGS.tabulate:
    print((outdir / "compare.md").read_text())
  if failed:
    raise ValueError("--jobs: " + "; ".join(
        f"the part of {m} ended with exit status {code}" for m, code in failed)
                     + " (its lines above say why; the table holds the runs that finished)")
  if diverged:
    raise ValueError(f"{len(diverged)} run(s) stopped on non-finite updates and are left out "
                     "of the table: " + "; ".join(diverged))
  if not rows:
    raise ValueError(f"no finished runs in {outdir}")


if __name__ == "__main__":
  flag_lib.run_main(main)
