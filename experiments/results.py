"""``docs/results.md``: the paper's tables, generated from committed comparison outputs.

Each part of the evidence is one directory ``docs/results/<part>/`` holding what
``experiments/compare.py`` wrote for it: ``compare.csv`` (one row per run) and
``compare.json`` (the command, commit and machine). This binary reads every part and
writes one page: first, where ``docs/results/headline.csv`` names for each cell of the
grid (dataset, model, payload ratio) the part and setting whose FedRAS stands for it, the
acceptance table (:func:`headline`: that FedRAS's margins against the issue's targets and
the baselines), then, where ``docs/results/tiers.csv`` names in the same columns the part
whose FedRAS ran under bandwidth tiers, every method's simulated time to the uncompressed
final HR@10 minus 0.01 there (:func:`tiers`), then every part's FedRAS margins in one
overview table, then
per part its provenance, the mean ± std over seeds of HR@10 and
NDCG@10 (sampled and full ranking) of every method and payload ratio with the setting
the search picked, FedRAS's margin over uncompressed and over the best baseline at each
ratio, the simulated time each method takes to reach the uncompressed final HR@10
minus 0.01 (from ``curves.csv``, the runs' evaluation rows, when the part has it) and
(with matplotlib) HR@10 and NDCG@10 against the payload ratio with seed error bars,
next to the CSV it is drawn from, HR@10 against simulated time (from ``curves.csv``) and
the information loss of each compressed method, for runs longer than 300 rounds
their test HR@10 and NDCG@10 at round 300 beside the final ones (from ``curves.csv``),
and, where the part holds a
``published.csv`` (columns ``method``, ``payload_ratio``, ``hr@10``, ``source``: figures
a paper reports for the same setting), each such figure against the part's mean,
and, where the part holds a file ``reference`` naming another part, the margins against
that part's runs: a diagnostic part of FedRAS runs only (say with ``--gain_bits``) has its
FedRAS set against that part's uncompressed and baseline runs; a part of baselines only
(methods added to a grid later) has its runs join that part's as FedRAS's baselines::

    python -m experiments.results                 # docs/results/* -> docs/results.md

The page is never edited by hand: rerun this after adding or refreshing a part.
"""
import csv
import math
import pathlib
import shlex
from fractions import Fraction

import numpy as np
from absl import flags

from experiments import pages
from fedras_jax import flags as flag_lib
from fedras_jax import outputs
from fedras_jax.sweep import DENSE, cell_value, dense_at_one, seed_stats

REPO = pathlib.Path(__file__).resolve().parents[1]
_PARTS = flags.DEFINE_string("parts_dir", str(REPO / "docs" / "results"),
                             "directory of the parts (one compare outdir each)")
_OUT = flags.DEFINE_string("page", str(REPO / "docs" / "results.md"), "the page to write")

METRICS = ("final_hr@10", "final_ndcg@10", "final_full_hr@10", "final_full_ndcg@10")
FEDRAS = "fedras"
NOT_BASELINES = (FEDRAS, DENSE, "fedras_fixed_k")
EARLY_ROUND = 300  # runs longer than this also show their metrics at it


def read_part(part: pathlib.Path):
  """``(provenance dict, rows)`` of one part directory; a ``ValueError`` naming the
  file that is missing or malformed."""
  csv_path, json_path = part / "compare.csv", part / "compare.json"
  for path in (csv_path, json_path):
    if not path.is_file():
      raise ValueError(f"{path}: missing (a part is a compare --outdir's compare.csv/.json)")
  made = outputs.read_json(json_path, fields=("command",))
  with open(csv_path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or any(c not in rows[0] for c in ("method", "payload_ratio", *METRICS[:2])):
    raise ValueError(f"{csv_path}: not a compare.csv (no rows, or columns missing)")
  # (A compare.csv written before --test_negatives existed scored against 99.)
  rows = [dense_at_one({**r, "test_negatives": r.get("test_negatives") or "99"}) for r in rows]
  # An uncompressed seed is one run whichever ratio it was tabulated under.
  runs = [
      tuple(r.get(c) for c in ("dataset", "model", "method", "payload_ratio", "seed")) for r in rows
  ]
  repeated = next((run for i, run in enumerate(runs) if run in runs[:i]), None)
  if repeated:  # the margins would keep one row, the mean ± std count both
    raise ValueError(f"{csv_path}: run {', '.join(map(str, repeated))} appears twice")
  return made, rows


def _cell(mean_std, seeds: int) -> str:
  """``mean ± std`` over ``seeds`` seeds, the value alone for one seed."""
  mean, std = mean_std
  if math.isnan(mean):
    return ""
  return f"{mean:.4f}" if seeds == 1 else f"{mean:.4f} ± {std:.4f}"


def _ratio_order(rows):
  return sorted({r["payload_ratio"] for r in rows}, key=lambda t: -Fraction(t))


def _loss(mean_std) -> str:
  return "-" if math.isnan(mean_std[0]) else f"{mean_std[0]:.3g}"


def method_table(rows) -> list:
  """Markdown lines: per (dataset, model, method, ratio) the seeds, mean ± std of
  ``METRICS``, the uplink compression, the information loss (the norm of the applied
  item update minus the uncompressed one, summed over rounds; the seeds' mean) and the
  setting(s) searched or fixed per method (``compare.csv``'s ``tuned``; ``-`` where the
  command's flags set it, e.g. seeds run at a search's pick by another invocation)."""
  extra = ("compression_up", "info_loss_total")
  stats = seed_stats(rows, ("dataset", "model", "method", "payload_ratio"), METRICS + extra)
  tuned = {}
  for r in rows:
    key = (r["dataset"], r["model"], r["method"], r["payload_ratio"])
    tuned.setdefault(key, set()).add(r.get("tuned", ""))
  lines = [
      "| dataset | model | method | payload | seeds | HR@10 | NDCG@10 | full HR@10 | "
      "full NDCG@10 | uplink smaller by | information loss | setting |", "|" + "---|" * 12
  ]
  # Ratios from the largest; methods in the order the comparison ran them.
  order = {t: i for i, t in enumerate(_ratio_order(rows))}
  method_order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
  for key in sorted(stats, key=lambda k: (k[0], k[1], order[k[3]], method_order[k[2]])):
    seeds, s = stats[key]
    lines.append("| " + " | ".join(key) + f" | {seeds} | "
                 + " | ".join(_cell(s[c], seeds) for c in METRICS)
                 + f" | {s['compression_up'][0]:.1%} | {_loss(s['info_loss_total'])} | "
                 f"{'; '.join(sorted(t or '-' for t in tuned[key]))} |")
  return lines


def runs_by_point(rows) -> dict:
  """``{(dataset, model, payload ratio): {method: {seed: row}}}``; uncompressed's runs
  (payload ``"1"``: it sends the dense table) at every ratio of their dataset and model."""
  points, dense = {}, {}
  for r in rows:
    if r["method"] == DENSE:
      dense.setdefault((r["dataset"], r["model"]), {})[r["seed"]] = r
    else:
      point = points.setdefault((r["dataset"], r["model"], r["payload_ratio"]), {})
      point.setdefault(r["method"], {})[r["seed"]] = r
  for (dataset, model, _), methods in points.items():
    if (dataset, model) in dense:
      methods[DENSE] = dense[(dataset, model)]
  return points


def _mean(runs: dict, seeds, metric: str) -> float:
  """The mean of ``metric`` over ``runs[seed]`` of ``seeds`` (NaN if one lacks it)."""
  return float(np.mean([cell_value(runs[s], metric) for s in seeds]))


def paired_margin(ours: dict, theirs: dict, metric: str):
  """``(mean of ours minus theirs, seeds)`` of ``metric`` over the seeds both ran
  (``ours``, ``theirs``: ``{seed: row}``), a difference of means over all the seeds of
  each with ``seeds`` 0 when they share none; nan where a run lacks the value."""
  common = [s for s in ours if s in theirs]
  if common:
    return _mean(ours, common, metric) - _mean(theirs, common, metric), len(common)
  return _mean(ours, ours, metric) - _mean(theirs, theirs, metric), 0


def _margin_text(value: float, seeds: int, ours: dict) -> str:
  """``"+0.0100"``, saying over how many seeds where fewer than FedRAS's (``ours``), or
  ``unpaired``; ``-`` for NaN."""
  if math.isnan(value):
    return "-"
  text = f"{round(value, 4) or 0.0:+.4f}"  # no -0.0000
  if seeds == 0:
    return text + " (unpaired)"
  return text if seeds == len(ours) else text + f" ({seeds} of its seeds)"


def _margin_cell(pair, ours: dict) -> str:
  """``"+0.0100 / -0.0020"`` of an (HR, NDCG) pair of :func:`paired_margin`'s, each value
  with its own seed note (:func:`_margin_text`); ``-`` if neither is known."""
  if all(math.isnan(value) for value, _ in pair):
    return "-"
  return " / ".join(_margin_text(value, seeds, ours) for value, seeds in pair)


def _best_pairs(ours: dict, baselines: dict, metrics) -> tuple:
  """``(pairs, names)``: FedRAS's :func:`paired_margin` on each of ``metrics`` against the
  baseline it is closest to (or furthest behind) on that metric, and that baseline's name
  (``(nan, 0)`` and ``-`` where no baseline has the metric)."""
  pairs, names = [], []
  for metric in metrics:
    found = {m: paired_margin(ours, runs, metric) for m, runs in baselines.items()}
    found = {m: v for m, v in found.items() if not math.isnan(v[0])}
    best = min(found, key=lambda m: found[m][0]) if found else None
    pairs.append(found[best] if best else (math.nan, 0))
    names.append(best or "-")
  return pairs, names


def _against_best(ours: dict, baselines: dict, metrics) -> tuple:
  """``(cell, names)``: :func:`_best_pairs` as a margins cell and the baselines' names
  (one where it is the same on every metric)."""
  pairs, names = _best_pairs(ours, baselines, metrics)
  return _margin_cell(pairs, ours), " / ".join(dict.fromkeys(names))


MARGIN_HEADER = ("| dataset | model | payload | FedRAS seeds | FedRAS − uncompressed (HR / NDCG) | "
                 "FedRAS − best baseline (HR / NDCG) | best baseline | full ranking: FedRAS − "
                 "uncompressed | full ranking: FedRAS − best baseline | best baseline (full) |")


def margins(rows) -> list:
  """Markdown lines: at each (dataset, model, ratio) with FedRAS runs, FedRAS's seeds, its
  HR@10 and NDCG@10 (sampled, then full ranking) minus uncompressed's (at any ratio: it
  sends the dense table) and minus the best baseline's on each metric, naming those
  baselines. Every margin is a mean over the seeds both methods ran, the cell saying so
  where those are fewer than FedRAS's; a ratio where FedRAS has neither to compare with
  gets no line."""
  lines = [MARGIN_HEADER, "|" + "---|" * 10]
  points = runs_by_point(rows)
  for (dataset, model, ratio), methods in sorted(points.items(),
                                                 key=lambda kv: (*kv[0][:2], -Fraction(kv[0][2]))):
    ours = methods.get(FEDRAS)
    baselines = {m: runs for m, runs in methods.items() if m not in NOT_BASELINES}
    if ours is None or (DENSE not in methods and not baselines):
      continue  # no FedRAS here, or FedRAS alone (a diagnostic part): nothing to say
    cells = []
    for metrics in (METRICS[:2], METRICS[2:]):
      dense = methods.get(DENSE)
      cells.append(
          _margin_cell([paired_margin(ours, dense, m) for m in metrics], ours) if dense else "-")
      cells += _against_best(ours, baselines, metrics) if baselines else ("-", "-")
    lines.append(f"| {dataset} | {model} | {ratio} | {len(ours)} | " + " | ".join(cells) + " |")
  return lines


def has_fedras(rows) -> bool:
  """Whether ``rows`` hold a FedRAS run (a part of baselines only does not)."""
  return any(r["method"] == FEDRAS for r in rows)


def against_reference(rows, ref_rows) -> list:
  """The rows a part's margins against its reference part come from; wherever this part
  ran a method at a dataset, model and ratio, its runs stand in place of the reference's
  (run with this part's flags, they compare like with like). A part with FedRAS runs (a
  diagnostic variant): its runs and the reference's uncompressed and baseline runs (the
  reference's FedRAS aside). A part without (more baselines): the reference's runs at the
  datasets, models and ratios this part ran."""
  point = lambda r: (r["dataset"], r["model"], r["method"], dense_at_one(r)["payload_ratio"])
  own = {point(r) for r in rows}
  if has_fedras(rows):
    return list(rows) + [r for r in ref_rows if r["method"] != FEDRAS and point(r) not in own]
  ran = {(d, m, ratio) for d, m, method, ratio in own if method != DENSE}
  ran_models = {(d, m) for d, m, _, _ in own}
  at_ours = lambda r: ((r["dataset"], r["model"], r["payload_ratio"]) in ran or
                       (r["method"] == DENSE and (r["dataset"], r["model"]) in ran_models))
  return [r for r in ref_rows if at_ours(r) and point(r) not in own] + list(rows)


def compared_rows(rows, reference) -> list:
  """The rows a part's FedRAS margins come from: its own, or with a ``reference``
  (:func:`read_reference`'s ``(name, rows)``) :func:`against_reference`'s."""
  return rows if reference is None else against_reference(rows, reference[1])


def overview(sections) -> list:
  """Markdown lines: the FedRAS margins (:func:`margins`) of every part in one table, a
  row per part and ratio, the part linked to its section; a part whose command runs
  FedRAS but has no finished FedRAS run gets a row saying so. ``sections``: ``(name,
  made, rows, reference)`` per part (``made``: its ``compare.json``), ``reference`` as
  :func:`read_reference` returns it (a part with one is compared against its reference
  part's runs)."""
  header, rule = margins([])  # the margins table's columns, the part's first
  lines = ["| part " + header, "|---" + rule]
  for name, made, rows, reference in sections:
    compared = compared_rows(rows, reference)
    link = part_link(name, rows)
    lines += [f"| {link} {line}" for line in margins(compared)[2:]]
    planned = FEDRAS in (_command_list(made["command"], "methods") or ())
    if planned and not has_fedras(rows):
      for dataset, model in dict.fromkeys((r["dataset"], r["model"]) for r in rows):
        lines.append(f"| {link} | {dataset} | {model} | - | 0 | no FedRAS run finished yet |"
                     + " - |" * 5)
  return lines


HEADLINE_FILE = "headline.csv"
HEADLINE_COLUMNS = ("dataset", "model", "payload_ratio", "part", "fedras_setting", "see")
# Issue #14's acceptance: FedRAS within this of uncompressed on HR@10 and NDCG@10.
TARGETS = {("mf", "1/32"): 0.005, ("ncf", "1/32"): 0.01}
_METRIC_NAMES = ("HR@10", "NDCG@10")


def _same_value(a: str, b: str) -> bool:
  """Whether two flag values are the same, as numbers where both are (``32`` is
  ``32.0``)."""
  try:
    return float(a) == float(b)
  except ValueError:
    return a == b


def _ran_setting(word: str, made: dict, runs: dict) -> bool:
  """Whether the flag ``word`` (``--name=value``) is one the part ran its FedRAS ``runs``
  (``{seed: row}``) with: where their ``tuned`` records the flag (a search's pick, or a
  ``--method_settings`` value), that value wherever it is recorded; else a word of the
  command (its notes aside: :func:`command_words`) or the value the command gives the flag
  (a ``--flagfile`` of the repository read in place, as it is now: ``experiments.golden``
  checks that no config's runs change)."""
  name, _, value = word.removeprefix("--").partition("=")
  recorded = []
  for row in runs.values():
    for entry in row.get("tuned", "").split(";"):
      tuned_name, _, tuned = entry.split(" (")[0].partition("=")
      if tuned_name.strip() == name:
        recorded.append(tuned.strip())
  if recorded:
    return all(_same_value(v, value) for v in recorded)
  if word in command_words(made["command"]):
    return True
  given = _command_list(made["command"], name)
  return given is not None and len(given) == 1 and _same_value(given[0], value)


def _shortfall(pairs, bound: float) -> str:
  """``yes`` if every value of :func:`paired_margin`'s ``pairs`` (at its printed 4
  decimals) is above ``bound``, else ``no`` and the metrics that are not; ``-`` if one is
  unknown."""
  if any(math.isnan(value) for value, _ in pairs):
    return "-"
  short = [name for (value, _), name in zip(pairs, _METRIC_NAMES) if round(value, 4) <= bound]
  return f"no: {', '.join(short)}" if short else "yes"


def _at_cell(row: dict, cell: tuple) -> bool:
  """Whether a run (or curve) ``row`` is at ``cell`` (dataset, model, payload ratio):
  uncompressed's at every ratio of its dataset and model."""
  if row["method"] == DENSE:
    return (row["dataset"], row["model"]) == cell[:2]
  return (row["dataset"], row["model"], row["payload_ratio"]) == cell


def linked_parts(name: str, parts: dict) -> set:
  """The names of the parts ``reference`` files link to part ``name``, either way and at
  any remove (``name`` among them). ``parts``: ``{name: (made, rows, reference)}``."""
  links = {}
  for other, (_, _, reference) in parts.items():
    if reference is not None:
      links.setdefault(other, set()).add(reference[0])
      links.setdefault(reference[0], set()).add(other)
  linked, todo = {name}, [name]
  while todo:
    for other in links.get(todo.pop(), ()):
      if other not in linked:
        linked.add(other)
        todo.append(other)
  return linked


def cell_runs(name: str, cell: tuple, parts: dict) -> dict:
  """``{label: (part, method, {seed: row})}``: the runs a cell's FedRAS part ``name`` is
  judged against at ``cell``, and the part each came from. First the part's compared runs
  (:func:`compared_rows`: with a reference part, its own where it ran the method and the
  reference's elsewhere), labelled by their method; then, labelled ``method (part)``, the
  reference's baseline runs of the methods the part ran too, and the baseline runs at the
  cell of every part of baselines only that ``reference`` files link to this one
  (:func:`linked_parts`: say SVD rerun at FedRAS's item_lr), each a baseline of its own so
  that none hides behind another, less the runs that reproduce one already there (same
  method and seed, same final HR@10 and NDCG@10). ``parts``: ``{name: (made, rows,
  reference)}`` as :func:`main` reads them (docs/design/evidence.md says why). A
  ``ValueError`` names a part whose runs at the cell have other rounds or sampled
  negatives than the FedRAS runs'."""
  _, rows, reference = parts[name]
  ran_here = {r["method"] for r in rows if _at_cell(r, cell)}
  runs = {
      method: (name if method in ran_here else reference[0], method, seeds)
      for method, seeds in runs_by_point(compared_rows(rows, reference)).get(cell, {}).items()
  }
  run_id = lambda method, r: (method, r["seed"], r["final_hr@10"], r["final_ndcg@10"])
  known = {run_id(method, r) for _, method, seeds in runs.values() for r in seeds.values()}
  # The reference's runs of a method the part ran too (compared_rows kept the part's), then
  # the linked parts of baselines only.
  others = [(reference[0], reference[1])] if reference else []
  direct = {name} | ({reference[0]} if reference else set())
  others += [(other, parts[other][1])
             for other in sorted(linked_parts(name, parts) - direct)
             if not has_fedras(parts[other][1])]
  for other, other_rows in others:
    for method, seeds in runs_by_point(other_rows).get(cell, {}).items():
      fresh = {s: r for s, r in seeds.items() if run_id(method, r) not in known}
      if method not in (FEDRAS, DENSE) and fresh:
        runs[f"{method} ({other})"] = (other, method, fresh)
        known |= {run_id(method, r) for r in fresh.values()}
  lengths = lambda seeds: {(r["rounds"], r["test_negatives"]) for r in seeds.values()}
  ours = lengths(runs[FEDRAS][2]) if FEDRAS in runs else set()
  for source, method, seeds in runs.values():
    if ours and lengths(seeds) != ours:
      raise ValueError(f"part {source!r}'s {method} runs at {' '.join(cell)} have (rounds, "
                       f"sampled negatives) {sorted(lengths(seeds))}, FedRAS's {sorted(ours)}")
  return runs


def read_cells(path: pathlib.Path, parts: dict) -> list:
  """The rows of a cells file (``headline.csv``, ``tiers.csv``: per cell of the grid,
  i.e. dataset, model and payload ratio, the part whose FedRAS stands for it, that
  FedRAS's setting as ``--name=value`` words, and the page under ``docs/`` that reads
  it), each checked against ``parts`` (``{name: (made, rows, reference)}`` as
  :func:`main` reads them): per row ``(entry, cell, runs)``, ``runs`` the cell's
  :func:`cell_runs`. A ``ValueError`` names the file and line of a row whose columns are
  missing, whose part is unknown, has no FedRAS runs or none at the cell, whose setting the
  part's FedRAS did not run, or whose page does not exist."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    entries = list(reader)
  missing = [c for c in HEADLINE_COLUMNS if c not in (reader.fieldnames or ())]
  if missing or not entries:
    raise ValueError(f"{path}: no rows, or columns {missing} missing (wants {HEADLINE_COLUMNS})")
  cells = []
  for line_number, entry in enumerate(entries, start=2):
    where = f"{path}:{line_number}"
    if any(entry[c] is None for c in HEADLINE_COLUMNS):
      raise ValueError(f"{where}: fewer than the {len(HEADLINE_COLUMNS)} columns")
    name, cell = entry["part"], (entry["dataset"], entry["model"], entry["payload_ratio"])
    if name not in parts:
      raise ValueError(f"{where}: no part {name!r}")
    if not has_fedras(parts[name][1]):
      raise ValueError(f"{where}: part {name!r} has no FedRAS runs (a part of baselines only "
                       "stands for no cell: name its reference)")
    try:
      runs = cell_runs(name, cell, parts)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    if FEDRAS not in runs:
      raise ValueError(f"{where}: part {name!r} has no FedRAS run at {' '.join(cell)}")
    made = parts[name][0]
    wrong = [
        w for w in entry["fedras_setting"].split() if not _ran_setting(w, made, runs[FEDRAS][2])
    ]
    if wrong:
      raise ValueError(f"{where}: part {name!r}'s FedRAS did not run with {' '.join(wrong)}")
    if not (REPO / "docs" / entry["see"].partition("#")[0]).is_file():
      raise ValueError(f"{where}: no page docs/{entry['see'].partition('#')[0]}")
    cells.append((entry, cell, runs))
  return cells


def _cell_part(entry: dict, rows) -> str:
  """A cells file row's part, linked, and its FedRAS setting."""
  return f"{part_link(entry['part'], rows)} `{entry['fedras_setting']}`"


def headline(path: pathlib.Path, parts: dict) -> list:
  """Markdown lines: issue #14's acceptance, one row per row of ``path`` (a
  ``headline.csv``, read by :func:`read_cells`). Each row: the part linked, the setting,
  the runs' rounds and FedRAS's seeds, its margin over uncompressed and whether that is
  within ``TARGETS`` (``-`` where the issue sets none), its margin over the best baseline
  of :func:`cell_runs` and whether it is ahead of every one on both metrics, the
  baselines it was set against with their seeds, and the reading page."""
  lines = [
      "| dataset | model | payload | FedRAS: part and setting | rounds | seeds | FedRAS − "
      "uncompressed (HR / NDCG) | within the target | FedRAS − best baseline (HR / NDCG) | "
      "best baseline | ahead of every baseline | baselines (seeds) | reading |", "|" + "---|" * 13
  ]
  for entry, cell, runs in read_cells(path, parts):
    methods = {label: seeds for label, (_, _, seeds) in runs.items()}
    ours, dense = methods[FEDRAS], methods.get(DENSE)
    target = TARGETS.get((cell[1], cell[2]))
    to_dense = [paired_margin(ours, dense, m) for m in METRICS[:2]] if dense else []
    within = "-" if target is None or not dense else _shortfall(to_dense, -target - 1e-9)
    baselines = {
        label: seeds for label, (_, method, seeds) in runs.items() if method not in NOT_BASELINES
    }
    best, names = _best_pairs(ours, baselines, METRICS[:2]) if baselines else ([], [])
    rounds = "/".join(sorted({r["rounds"] for r in ours.values()}, key=int))
    listed = ", ".join(f"{label} {len(seeds)}" for label, seeds in baselines.items()) or "-"
    see = entry["see"]
    lines.append(
        f"| {' | '.join(cell)} | {_cell_part(entry, parts[entry['part']][1])} | {rounds} | "
        f"{len(ours)} | {_margin_cell(to_dense, ours) if dense else '-'} | {within} | "
        f"{_margin_cell(best, ours) if best else '-'} | "
        f"{' / '.join(dict.fromkeys(names)) or '-'} | "
        f"{_shortfall(best, 0.0) if best else '-'} | {listed} | [{see}]({see}) |")
  return lines


TIERS_FILE = "tiers.csv"


def tiers(path: pathlib.Path, parts: dict, curves: dict) -> list:
  """Markdown lines: issue #14's bandwidth-tiers criterion, the simulated time each
  method takes to reach the uncompressed final HR@10 minus 0.01, per row of ``path`` (a
  ``tiers.csv``, read as :func:`read_cells` reads ``headline.csv``: per cell the part
  whose FedRAS ran under tiers). Each cell's runs (:func:`cell_runs`) are timed on the
  curves of the parts and seeds they came from (``curves``: ``{part name: curves.csv
  rows}``) by :func:`time_to_target`, one row per run label (FedRAS's first and
  uncompressed's next where the runs evaluate at the same rounds), the part linked and its
  FedRAS setting first. A ``ValueError`` names the file and line of a row whose cell has
  no uncompressed runs or one of whose runs (a seed of a method) has no curves."""
  lines = []
  for number, (entry, cell, runs) in enumerate(read_cells(path, parts), start=2):
    if DENSE not in runs:
      raise ValueError(f"{path}:{number}: no uncompressed runs at {' '.join(cell)} to time "
                       "the others against")
    first = {FEDRAS: 0, DENSE: 1}  # then the others in cell_runs' order
    timed = [
        dict(c, method=label)
        for label, (source, method,
                    seeds) in sorted(runs.items(), key=lambda kv: first.get(kv[0], 2))
        for c in curves.get(source) or ()
        if c["method"] == method and c["seed"] in seeds and _at_cell(c, cell)
    ]
    curved = {(c["method"], c["seed"]) for c in timed}
    bare = [
        f"{label} seed {seed} ({source})" for label, (source, _, seeds) in runs.items()
        for seed in seeds if (label, seed) not in curved
    ]
    if bare:
      raise ValueError(f"{path}:{number}: no curves at {' '.join(cell)} for {', '.join(bare)}")
    table = time_to_target(timed, [r for _, _, seeds in runs.values() for r in seeds.values()])
    if not lines:
      lines = ["| FedRAS: part and setting " + table[0], "|---" + table[1]]
    lines += [f"| {_cell_part(entry, parts[entry['part']][1])} {line}" for line in table[2:]]
  return lines


PUBLISHED_COLUMNS = ("method", "payload_ratio", "hr@10", "source")


def read_published(part: pathlib.Path):
  """The part's ``published.csv`` rows (``hr@10`` as a float), or None without one; a
  ``ValueError`` naming the file if a column is missing or a figure is not a number."""
  path = part / "published.csv"
  if not path.is_file():
    return None
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or any(c not in rows[0] for c in PUBLISHED_COLUMNS):
    raise ValueError(f"{path}: needs the columns {', '.join(PUBLISHED_COLUMNS)} and a row")
  for i, r in enumerate(rows, start=2):
    try:
      r["hr@10"] = float(r["hr@10"])
    except ValueError:
      raise ValueError(f"{path}:{i}: hr@10 {r['hr@10']!r} is not a number") from None
  return [dense_at_one(r) for r in rows]


def published_table(rows, published, within: float = 0.03) -> list:
  """Markdown lines: each published HR@10 beside the part's mean final HR@10 of the
  same method and payload ratio (such a part holds one dataset and model), the
  difference and whether it is within ``within``."""
  stats = seed_stats(rows, ("method", "payload_ratio"), METRICS[:1])
  lines = [
      f"| method | payload | HR@10 here | published | here − published | within {within} | "
      "source |", "|" + "---|" * 7
  ]
  for p in published:
    got = stats.get((p["method"], p["payload_ratio"]))
    if got is None:
      here, diff, ok = "not run", "-", "-"
    else:
      mean = got[1][METRICS[0]][0]
      here, diff = f"{mean:.4f}", f"{mean - p['hr@10']:+.4f}"
      ok = "yes" if abs(mean - p["hr@10"]) <= within else "no"
    lines.append(f"| {p['method']} | {p['payload_ratio']} | {here} | {p['hr@10']:.3f} | {diff} | "
                 f"{ok} | {p['source']} |")
  return lines


def read_curves(part: pathlib.Path):
  """The part's ``curves.csv`` rows (numbers as floats), or None without one."""
  path = part / "curves.csv"
  if not path.is_file():
    return None
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  try:
    for r in rows:
      for c in ("round", "sim_seconds", "hr@10", "ndcg@10"):
        r[c] = float(r[c])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{path}: not a compare curves.csv (a row without a number for "
                     f"{e})") from None
  return [dense_at_one(r) for r in rows]


def time_to_target(curves, rows, margin: float = 0.01) -> list:
  """Markdown lines: per (dataset, model, method, ratio), in how many seeds the run's
  HR@10 reached the mean final HR@10 of the uncompressed runs of its dataset and model in
  ``rows`` (see :func:`target_rows`) minus ``margin``, and the mean simulated seconds and
  rounds of its first evaluation at or above it (over the seeds that reached it). Runs of
  a dataset and model without uncompressed runs in ``rows`` have no target and no line."""
  dense = seed_stats([r for r in rows if r["method"] == DENSE], ("dataset", "model"), METRICS[:1])
  first = {}
  for r in sorted(curves, key=lambda r: r["round"]):
    ref = dense.get((r["dataset"], r["model"]))
    if not ref:
      continue
    run = (r["dataset"], r["model"], r["method"], r["payload_ratio"], r["seed"])
    first.setdefault(run, None)
    if first[run] is None and r["hr@10"] >= ref[1][METRICS[0]][0] - margin:
      first[run] = (r["sim_seconds"], r["round"])
  groups = {}
  for (*key, _), hit in first.items():
    groups.setdefault(tuple(key), []).append(hit)
  lines = [
      f"| dataset | model | method | payload | seeds reaching (uncompressed − {margin}) | "
      "mean simulated s (of those seeds) | mean rounds (of those seeds) |", "|" + "---|" * 7
  ]
  for key, hits in groups.items():
    got = [h for h in hits if h is not None]
    mean = lambda i: f"{sum(h[i] for h in got) / len(got):.0f}" if got else "-"
    lines.append("| " + " | ".join(key) + f" | {len(got)} of {len(hits)} | {mean(0)} | {mean(1)} |")
  return lines


def at_round(curves, rows, at: int = EARLY_ROUND) -> list:
  """Markdown lines: per (dataset, model, method, ratio) of runs longer than ``at``
  rounds, the mean ± std over seeds of the test HR@10 and NDCG@10 of their evaluation
  at round ``at`` (from ``curves``) beside the final ones (from ``rows``); a header
  alone if no run is longer or none evaluated at ``at``."""
  keys = ("dataset", "model", "method", "payload_ratio")
  run = lambda r: (*(r[k] for k in keys), str(r["seed"]))
  longer = [r for r in rows if float(r["rounds"]) > at]
  rounds_of = {run(r): r["rounds"] for r in longer}  # runs of two lengths are two groups
  there = [
      {**r, "rounds": rounds_of[run(r)]} for r in curves if r["round"] == at and run(r) in rounds_of
  ]
  early = seed_stats(there, keys + ("rounds",), ("hr@10", "ndcg@10"))
  final = seed_stats(longer, keys + ("rounds",), METRICS[:2])
  lines = [
      f"| dataset | model | method | payload | seeds | HR@10 at round {at} | NDCG@10 at round {at} "
      "| rounds | final HR@10 | final NDCG@10 |", "|" + "---|" * 10
  ]
  for (*key, rounds), (seeds, s) in final.items():
    if (*key, rounds) not in early:
      continue
    n, e = early[(*key, rounds)]
    lines.append("| " + " | ".join(key) + f" | {seeds if n == seeds else f'{n} of {seeds}'} | "
                 f"{_cell(e['hr@10'], n)} | {_cell(e['ndcg@10'], n)} | {rounds} | "
                 f"{_cell(s[METRICS[0]], seeds)} | {_cell(s[METRICS[1]], seeds)} |")
  return lines


def plot_part(rows, path: pathlib.Path) -> bool:
  """HR@10 and NDCG@10 against the payload ratio (top) and against the uplink each run
  actually sent in its last round (bottom: ``1 - compression_up``, the seeds' mean; an
  adaptive method sends less than its ratio allows), one line per method, seed std as
  error bars, to ``path``; False without matplotlib."""
  plt = pages.pyplot()
  if plt is None:
    return False
  stats = seed_stats(rows, ("method", "payload_ratio"), METRICS[:2] + ("compression_up",))
  fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
  sent = lambda s: 1.0 - s["compression_up"][0]
  for row, (x_of, label) in enumerate(
      ((lambda t, s: float(Fraction(t)), "payload ratio (of the dense float32 item table)"),
       (lambda t, s: sent(s), "uplink sent in the last round (of the dense float32 item table)"))):
    for ax, metric in zip(axes[row], METRICS[:2]):
      for method in dict.fromkeys(m for m, _ in stats):
        pts = sorted((x_of(t, s), *s[metric]) for (m, t), (_, s) in stats.items() if m == method)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                    yerr=[p[2] for p in pts],
                    marker="o",
                    capsize=3,
                    label=method)
      ax.set_xscale("log", base=2)
      ax.set_xlabel(label)
      ax.set_ylabel(metric.replace("final_", "").upper())
  axes[0][0].legend(fontsize=8)
  pages.save_figure(fig, plt, path)
  return True


def curve_means(curves) -> dict:
  """``{(payload ratio, method): [(round, simulated s, HR@10), ...]}``: per evaluation
  round, the mean over the seeds that evaluated it, in round order."""
  points = {}
  for r in curves:
    key = (r["payload_ratio"], r["method"])
    points.setdefault(key, {}).setdefault(r["round"], []).append((r["sim_seconds"], r["hr@10"]))
  return {
      key: [(rnd, sum(p[0]
                      for p in ps) / len(ps), sum(p[1]
                                                  for p in ps) / len(ps))
            for rnd, ps in sorted(by_round.items())] for key, by_round in points.items()
  }


def plot_curves(curves, path: pathlib.Path) -> bool:
  """HR@10 against simulated seconds (``curve_means``), one panel per payload ratio,
  one line per method (uncompressed in every panel), to ``path``; False without
  matplotlib."""
  plt = pages.pyplot()
  if plt is None:
    return False
  means = curve_means(curves)
  # The uncompressed curve (ratio 1) is the reference in every panel.
  ratios = sorted({k[0] for k in means if k[1] != DENSE} or {"1"}, key=lambda t: -Fraction(t))
  fig, axes = plt.subplots(1, len(ratios), figsize=(4.5 * len(ratios), 3.6), squeeze=False)
  for ax, ratio in zip(axes[0], ratios):
    for (r, method), pts in means.items():
      if r == ratio or method == DENSE:
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker=".", label=method)
    ax.set_title(f"payload {ratio}")
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel("HR@10")
  axes[0][0].legend(fontsize=8)
  pages.save_figure(fig, plt, path)
  return True


def plot_info_loss(rows, path: pathlib.Path) -> bool:
  """The information loss (``info_loss_total``, seeds' mean) of every compressed
  method, bars grouped by payload ratio on a log scale, to ``path``; False without
  matplotlib or without a compressed run that recorded it."""
  plt = pages.pyplot()
  stats = seed_stats([r for r in rows if r["method"] != DENSE], ("payload_ratio", "method"),
                     ("info_loss_total",))
  stats = {k: s["info_loss_total"][0] for k, (_, s) in stats.items()}
  stats = {k: v for k, v in stats.items() if math.isfinite(v) and v > 0}
  if plt is None or not stats:
    return False
  ratios = sorted({k[0] for k in stats}, key=lambda t: -Fraction(t))
  methods = list(dict.fromkeys(k[1] for k in stats))
  fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(ratios) * len(methods) / 3), 3.6))
  width = 0.8 / len(methods)
  for j, method in enumerate(methods):
    xs = [i + j * width for i, t in enumerate(ratios) if (t, method) in stats]
    ax.bar(xs, [stats[(t, method)] for t in ratios if (t, method) in stats], width, label=method)
  ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ratios))], ratios)
  ax.set_yscale("log")
  ax.set_xlabel("payload ratio")
  ax.set_ylabel("information loss (summed over rounds)")
  ax.legend(fontsize=8)
  pages.save_figure(fig, plt, path)
  return True


def _trained_by(made: dict) -> list:
  """A bullet saying that a ``--only_finished`` command tabulated, not trained."""
  # In the command's words, not its notes ("--only_finished;" ends a shell list).
  if "--only_finished" not in (w.rstrip(";,") for w in command_words(made["command"])):
    return []
  return [
      "- the runs were trained by the same command without `--only_finished` (which "
      "tabulates finished runs and trains nothing), or by invocations over parts of its "
      "grid into the same `--outdir`"
  ]


def command_words(command: str) -> list:
  """The shell words of a part's ``command`` without its notes (the text from the first
  `` (``: how runs appended later were made, with their own flags)."""
  command = command.split(" (", 1)[0]
  try:
    return shlex.split(command)
  except ValueError:  # an unbalanced quote: whitespace it is
    return command.split()


def _command_list(command: str, flag: str, _depth: int = 0):
  """The comma-separated values of ``--flag`` in ``command`` (``--flag=v`` or ``--flag
  v``, the last one winning, as absl reads it; a ``--flagfile`` that exists relative to
  the repository is read in place; the notes aside: :func:`command_words`), or None where
  it is not given."""
  words = command_words(command)
  found = None
  for i, word in enumerate(words):
    name, eq, value = word.partition("=")
    if not eq and i + 1 < len(words):
      value = words[i + 1]
    if name == f"--{flag}":
      found = [v for v in value.split(",") if v]
    elif name == "--flagfile" and _depth < 4 and (REPO / value).is_file():
      lines = (REPO / value).read_text().splitlines()
      inner = _command_list(" ".join(l for l in lines if l.startswith("--")), flag, _depth + 1)
      found = inner if inner is not None else found
  return found


def not_run(made: dict, rows) -> list:
  """A bullet naming the runs of the command's ``--methods`` x ``--ratios`` x ``--seeds``
  grid without a finished run in ``rows`` (the uncompressed baseline once per seed, at any
  ratio): a method none of whose runs finished, else the ratios none of its runs finished
  at and the seeds missing at the others; nothing if the command names no methods or every
  run finished."""
  command = made["command"]
  methods, ratios, seeds = (_command_list(command, flag) for flag in ("methods", "ratios", "seeds"))
  if methods is None:
    return []
  if seeds is not None and not all(s.isdigit() for s in seeds):
    seeds = None  # a template (say --seeds=S, one invocation per seed): not a grid
  missing = []
  for method in methods:
    points = [None] if method == DENSE or ratios is None else ratios
    holes = {}  # the seeds missing (None: every seed) -> the ratios (or None) missing them
    for ratio in points:
      done = {
          str(r["seed"])
          for r in rows
          if r["method"] == method and ratio in (None, r["payload_ratio"])
      }
      gone = tuple(s for s in seeds or () if s not in done)
      if not done or gone:
        holes.setdefault(gone if done else None, []).append(ratio)
    if list(holes) == [None] and len(holes[None]) == len(points):
      missing.append(method)  # none of its runs finished
    elif holes:
      where = []
      for gone, at in holes.items():
        ratios_there = ", ".join(r for r in at if r is not None)
        if gone is not None:
          ratios_there += f" ({'seed' if len(gone) == 1 else 'seeds'} {', '.join(gone)})"
        elif len(holes) > 1:  # beside ratios missing some seeds
          ratios_there += " (every seed)"
        where.append(ratios_there)
      missing.append(f"{method} {'at ' if points != [None] else ''}{' and '.join(where).strip()}")
  if not missing:
    return []
  return [f"- in the command, without a finished run here: {'; '.join(missing)}"]


def read_reference(part: pathlib.Path, rows):
  """``(name, rows)`` of the part named in ``part/reference`` (``rows``: this part's), or
  None without that file; a ``ValueError`` naming the file if that is not another part,
  one with no uncompressed or baseline run of this part's datasets and models (no FedRAS
  run, for a part without FedRAS runs), or one whose runs have other lengths (rounds) or
  other numbers of sampled negatives than this part's."""
  path = part / "reference"
  if not path.is_file():
    return None
  name = path.read_text().strip()
  other = part.parent / name
  if (not name or "/" in name or name in (".", "..") or other == part
      or not (other / "compare.csv").is_file()):
    raise ValueError(f"{path}: names {name!r}, not another part in {part.parent}")
  ref_rows = read_part(other)[1]
  ours = {(r["dataset"], r["model"]) for r in rows}
  variant = has_fedras(rows)
  if not any(
      (r["method"] != FEDRAS) == variant and (r["dataset"], r["model"]) in ours for r in ref_rows):
    needed = "uncompressed or baseline" if variant else "FedRAS"
    raise ValueError(f"{path}: part {name!r} has no {needed} run of {sorted(ours)}")
  values = lambda rs, key: sorted({r[key] for r in rs if (r["dataset"], r["model"]) in ours})
  for key, what in (("rounds", "rounds long"), ("test_negatives", "sampled negatives per user")):
    if values(rows, key) != values(ref_rows, key):
      raise ValueError(f"{path}: this part's runs have {values(rows, key)} {what}, those of "
                       f"part {name!r} {values(ref_rows, key)}: their final metrics do not "
                       "compare")
  return name, ref_rows


def target_rows(rows, reference=None) -> tuple:
  """``(uncompressed rows, from_reference)``: per dataset and model of ``rows``, the
  part's own uncompressed runs, or where it has none those of the ``reference`` part
  (``read_reference``'s ``(name, rows)``), and whether any came from there."""
  own = [r for r in rows if r["method"] == DENSE]
  covered = {(r["dataset"], r["model"]) for r in own}
  wanted = {(r["dataset"], r["model"]) for r in rows} - covered
  borrowed = [] if reference is None else [
      r for r in reference[1] if r["method"] == DENSE and (r["dataset"], r["model"]) in wanted
  ]
  return own + borrowed, bool(borrowed)


def heading(name: str, rows) -> str:
  """The page's heading of part ``name``: its name, datasets and models."""
  return (f"{name}: {', '.join(sorted({r['dataset'] for r in rows}))}, "
          f"{', '.join(sorted({r['model'] for r in rows}))}")


def anchor(text: str) -> str:
  """The markdown anchor of a heading ``text`` (lowercase, spaces to ``-``, other
  punctuation but ``-`` and ``_`` dropped)."""
  return "".join(c for c in text.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def part_link(name: str, rows) -> str:
  """A markdown link to part ``name``'s section on the page."""
  return f"[{name}](#{anchor(heading(name, rows))})"


def part_section(name: str,
                 made: dict,
                 rows,
                 plot_file,
                 curves=None,
                 figures=(),
                 published=None,
                 reference=None) -> list:
  """The page's section of one part (``curves``: its ``curves.csv`` rows, if any;
  ``figures``: ``(caption, file)`` of its other plots; ``published``: its
  ``published.csv`` rows, if any; ``reference``: ``read_reference``'s, if any)."""
  lines = [
      f"## {heading(name, rows)}", "", *pages.provenance_lines(made),
      f"- rows: [{name}/compare.csv](results/{name}/compare.csv)", *_trained_by(made),
      *not_run(made, rows), "",
      "Mean ± population std over seeds (one seed: its value); `setting`: what the validation "
      "search picked (`(set)`: fixed per method by `--method_settings`; `-`: the command's "
      "fixed setting).", "", *method_table(rows), ""
  ]
  margin_lines = margins(rows)
  if len(margin_lines) > 2:  # a header alone: no FedRAS runs in the part
    lines += [*margin_lines, ""]
  if reference:
    ref_name, ref_rows = reference
    ref_lines = margins(against_reference(rows, ref_rows))
    if len(ref_lines) > 2:
      link = part_link(ref_name, ref_rows)
      caption = (f"FedRAS of this part against the uncompressed and baseline runs of {link}:"
                 if has_fedras(rows) else
                 f"The FedRAS runs of {link} against this part's runs and the other runs of "
                 "that part:")
      lines += [caption, "", *ref_lines, ""]
  if published:
    lines += [
        f"Against published figures ([{name}/published.csv](results/{name}/published.csv)):", "",
        *published_table(rows, published), ""
    ]
  if plot_file:
    lines += [f"![{name}](results/{name}/{plot_file})", ""]
  target, from_reference = target_rows(rows, reference)
  if curves and target:
    of = ""
    if from_reference:
      ref_name, ref_rows = reference
      of = (f" (where this part has none, those of {part_link(ref_name, ref_rows)}; the seconds "
            "are this part's runs' own)")
    lines += [
        f"Simulated time to the uncompressed final HR@10 minus 0.01{of} (evaluation rounds "
        f"only; curves: [{name}/curves.csv](results/{name}/curves.csv)):", "",
        *time_to_target(curves, target), ""
    ]
  at_lines = at_round(curves, rows) if curves else []
  if len(at_lines) > 2:
    lines += [
        f"Test metrics at round {EARLY_ROUND} and at the end, for runs longer than "
        f"{EARLY_ROUND} rounds:", "", *at_lines, ""
    ]
  for caption, file in figures:
    lines += [f"{caption}:", "", f"![{name}: {file}](results/{name}/{file})", ""]
  return lines


def main(argv):
  del argv
  root = pathlib.Path(_PARTS.value)
  parts = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
  if not parts:
    raise ValueError(f"{root}: no parts (directories holding compare.csv/.json)")
  body = [
      "# Results", "", "Generated by `experiments/results.py` from `docs/results/*/`; do not "
      "edit by hand.", ""
  ]
  sections, overview_parts, part_curves = [], [], {}
  for part in parts:
    made, rows = read_part(part)
    reference = read_reference(part, rows)
    overview_parts.append((part.name, made, rows, reference))
    plotted = plot_part(rows, part / "ratio.png")
    curves = part_curves[part.name] = read_curves(part)
    figures = [(caption, file) for caption, file, draw in (
        ("HR@10 against simulated time (seeds' mean)", "curves.png",
         lambda path: curves and plot_curves(curves, path)),
        ("Information loss (the Frobenius norm of the item update the clients applied minus "
         "the one the uncompressed aggregate of the same local updates gives, summed over "
         "rounds; in embedding units, so it grows with a method's searched item_lr; CoLR trains "
         "its low-rank factors and sends them exactly, so its loss is ~0 by construction and "
         "shows in accuracy instead)", "info_loss.png", lambda path: plot_info_loss(rows, path)),
    ) if draw(part / file)]
    sections += part_section(part.name, made, rows, "ratio.png" if plotted else None, curves,
                             figures, read_published(part), reference)
  by_name = {name: (made, rows, reference) for name, made, rows, reference in overview_parts}
  headline_path = root / HEADLINE_FILE
  if headline_path.is_file():
    body += [
        "## Acceptance", "",
        f"Issue #14's criteria, per cell of the grid: FedRAS at 1/32 within {TARGETS[('mf', '1/32')]} "
        f"(MF) / {TARGETS[('ncf', '1/32')]} (NCF) of uncompressed on HR@10 and NDCG@10, and ahead "
        "of every baseline on both at every payload. Each cell's FedRAS is the part and setting "
        f"[{HEADLINE_FILE}](results/{HEADLINE_FILE}) names (FedRAS's variants were compared "
        "across parts on these test metrics, so a cell's pick carries some selection; each "
        "part's table has the seeds' spread), its margins are computed as in the overview "
        "below, and *reading* is the page that measures where FedRAS falls short. Its "
        "baselines are the part's (or its reference part's) and, labelled by their part, those "
        "of every part of baselines only that `reference` files link to it at any remove (say "
        "SVD rerun at FedRAS's item_lr), each a baseline of its own, less reruns that "
        "reproduce a run already there; *baselines (seeds)* lists them.", "",
        *headline(headline_path, by_name), ""
    ]
  tiers_path = root / TIERS_FILE
  if tiers_path.is_file():
    body += [
        "## Under bandwidth tiers", "",
        "Issue #14's tiers criterion: under four bandwidth tiers with fluctuation 0.3, the "
        "simulated time each method takes to reach the uncompressed final HR@10 (its seeds' "
        "mean) minus 0.01, per dataset and model, from the runs' evaluation rounds. Each "
        f"cell's FedRAS is the part and setting [{TIERS_FILE}](results/{TIERS_FILE}) names "
        "(the other methods' runs are chosen as for the acceptance table: the part's, its "
        "reference's and those of linked parts of baselines only); each part's section has "
        "its command and curves.", "", *tiers(tiers_path, by_name, part_curves), ""
    ]
  body += [
      "## Every part", "",
      "FedRAS against uncompressed and against the best baseline on each metric in every "
      "part (a part with a reference: its FedRAS against the reference part's runs, or, for a "
      "part of baselines only, the reference's FedRAS against both parts' runs). A margin "
      "is the mean over the seeds both methods ran (a cell says where those are fewer than "
      "FedRAS's); *best baseline* names the baseline FedRAS is closest to or furthest behind "
      "on HR@10 / NDCG@10 (one name where it is the same); `-`: no such run at that payload "
      "in the part or its reference, or runs without that metric. `fedras` is the part's FedRAS "
      "variant: its command says which (the part's name hints, e.g. `gain8` 8-bit row gains, "
      "`ncf16` 16-bit values and a fixed 0.95 threshold, `ndcg` searched by NDCG@10). Each "
      "part's section below has its command, its runs and the searched settings.", "",
      *overview(overview_parts), "",
      "In the parts' tables, *uplink smaller by* is one minus the bits a client sent in the "
      "run's last round (the mean over that round's clients) over the bits of the dense "
      "float32 item table (what the payload ratio budgets). NCF clients also "
      "send the tower's dense weights whole, with every method: an uncompressed NCF client "
      "sends more than the item table, and its row shows a negative reduction.", "", *sections
  ]
  outputs.write_atomic(pathlib.Path(_OUT.value), ("\n".join(body) + "\n").encode())
  print(f"wrote {_OUT.value} ({len(parts)} parts)")


if __name__ == "__main__":
  flag_lib.run_main(main)
