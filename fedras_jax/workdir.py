"""A run's workdir: its files, the metrics writer, and whether a config may resume it.

The workdir holds the run:

* ``.lock``: held while a run uses the workdir (``workdir_lock``);
* ``config.json``: the config the run was started with;
* ``metrics.jsonl`` and ``metrics.csv``: one row per evaluation (JSON files are strict:
  a non-finite number, e.g. the loss of a diverged run, is ``null``; ``outputs.dumps``);
* ``checkpoints/round_NNNNNN.msgpack``: every ``checkpoint_every`` rounds, every
  ``checkpoint_minutes`` and at the last round (the newest two are kept): server state,
  stacked client states, the round counter and the host-side totals, metrics rows so far and
  best row (see ``fedras_jax.checkpoint``);
* ``summary.json`` (final figures, the exact config and the split's ``data_sha256``) and
  ``final_params.msgpack`` (users, items, dense of the final model;
  ``checkpoint.load_params`` reads it).

A workdir holding a run with different flags, or one trained on other data (its
checkpoints and summary record the split's sha256), is refused unless ``overwrite``
(which starts over); flags in ``config.NON_RESULT_FIELDS`` do not change a run's
numbers and may differ.
"""
import csv
import dataclasses
import io
import pathlib
from typing import Callable, List, Optional

from fedras_jax import checkpoint as ckpt_lib
from fedras_jax import outputs
from fedras_jax.config import NON_RESULT_FIELDS, TrainConfig, same_dataset

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
PARAMS_FILE = "final_params.msgpack"
RUN_FILES = ("metrics.jsonl", "metrics.csv", "summary.json", PARAMS_FILE, CONFIG_FILE)
# Row fields that measure wall time (they differ between otherwise identical runs).
TIMING_FIELDS = ("seconds_per_round", "wall_seconds")


class WorkdirError(ValueError):
  """The workdir holds a run this config must not touch."""


class MetricsWriter:
  """Writes evaluation rows to metrics.jsonl and metrics.csv in the workdir.

  Starts the files over from ``rows`` (the rows a resumed run already has; none for
  a fresh run), written atomically, then appends one row per ``write``.
  """

  def __init__(self, workdir: Optional[str], rows=()):
    self.dir = pathlib.Path(workdir) if workdir else None
    self.fields = list(rows[0]) if rows else None
    if not self.dir:
      return
    self.dir.mkdir(parents=True, exist_ok=True)
    if not rows:
      for name in ("metrics.jsonl", "metrics.csv"):
        (self.dir / name).unlink(missing_ok=True)
      return
    outputs.write_atomic(self.dir / "metrics.jsonl",
                         "".join(outputs.dumps(r) + "\n" for r in rows).encode())
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, self.fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    outputs.write_atomic(self.dir / "metrics.csv", text.getvalue().encode())

  def write(self, row: dict):
    if not self.dir:
      return
    path = self.dir / "metrics.jsonl"
    with outputs.naming(path), open(path, "a") as f:
      f.write(outputs.dumps(row) + "\n")
    new = self.fields is None
    self.fields = self.fields or list(row)
    path = self.dir / "metrics.csv"
    with outputs.naming(path), open(path, "a", newline="") as f:
      writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
      if new:
        writer.writeheader()
      writer.writerow(row)

  def summary(self, summary: dict):
    if self.dir:
      outputs.write_json(self.dir / "summary.json", summary)


def finished_record(workdir) -> dict:
  """The summary of the run finished in ``workdir`` (``summary.json``), or ``{}`` if it
  holds none or an unreadable one (a fresh run writes over it)."""
  path = pathlib.Path(workdir) / "summary.json"
  try:
    summary = outputs.read_json(path) if path.exists() else {}
  except ValueError:
    return {}
  return summary if isinstance(summary, dict) else {}


def recorded_config(workdir) -> Optional[dict]:
  """The config of the run held in ``workdir`` (``config.json``, else the one in
  ``summary.json``), or None if it holds none."""
  workdir = pathlib.Path(workdir)
  for name, get in ((CONFIG_FILE, lambda d: d), ("summary.json", lambda d: d.get("config")
                                                 if isinstance(d, dict) else d)):
    path = workdir / name
    if path.exists():
      remedy = "use --overwrite to start over"
      if ckpt_lib.list_checkpoints(workdir / CHECKPOINT_DIR):  # they record the flags too
        remedy = f"delete it to resume from the checkpoints, or {remedy}"
      try:
        recorded = get(outputs.read_json(path, remedy))
      except ValueError as e:
        raise WorkdirError(str(e)) from None
      if not isinstance(recorded, dict):
        raise WorkdirError(f"{path} holds no config; {remedy}")
      return recorded
  return None


def _same_tiers(a, b) -> bool:
  """Whether two ``--bandwidth_tiers`` lists are one (``"1, 2"`` and ``"1,2.0"``)."""
  try:
    return [float(t) for t in a.split(",")] == [float(t) for t in b.split(",")]
  except (AttributeError, ValueError):
    return a == b


# Settings of several spellings, compared by what they mean (else: equal values).
_SAME_SETTING = {"dataset": same_dataset, "bandwidth_tiers": _same_tiers}


def config_differences(recorded: dict, config: TrainConfig) -> List[str]:
  """``["--name (workdir X, now Y)", ...]`` for the result-affecting settings of
  ``config`` that differ from ``recorded`` (a field it lacks: its default). Two spellings
  of one file's path are one ``--dataset`` (the split's sha256 is checked apart), and of
  one list one ``--bandwidth_tiers``."""
  out = []
  for field in dataclasses.fields(config):
    if field.name in NON_RESULT_FIELDS:
      continue
    old, new = recorded.get(field.name, field.default), getattr(config, field.name)
    if not _SAME_SETTING.get(field.name, lambda a, b: a == b)(old, new):
      out.append(f"--{field.name} (workdir {old!r}, now {new!r})")
  return out


def refuse(workdir, diffs: List[str]):
  raise WorkdirError(
      f"--workdir={workdir} holds a run with different flags: {', '.join(diffs)}; rerun "
      "with its flags to resume it, or add --overwrite to replace it")


# What differs when a record's data_sha256 is not the rerun's (data.split_sha256).
SPLIT_DIFFERS = ("the split differs: the dataset file, its options or the test negatives "
                 "changed")


def names_other_data(record: dict, data_sha256: Callable[[], Optional[str]]) -> bool:
  """Whether ``record`` (a checkpoint's host state, a summary, kept results) names other
  data than ``data_sha256()``, which is called only if it names any: a record written
  before the data were recorded is taken as it is, and so is one where ``data_sha256()``
  is None (the data are not there to hash)."""
  if "data_sha256" not in record:
    return False
  now = data_sha256()
  return now is not None and record["data_sha256"] != now


def other_data_error(where: str, remedy: str) -> WorkdirError:
  """The error for the run in ``where`` whose records name other data than a rerun's."""
  return WorkdirError(f"{where} holds a run trained on other data ({SPLIT_DIFFERS}); {remedy}")


def clear_run(workdir):
  """Removes the files of a run from ``workdir`` (other files are left alone)."""
  workdir = pathlib.Path(workdir)
  for name in RUN_FILES:
    (workdir / name).unlink(missing_ok=True)
    outputs.remove_stale_temporaries(workdir, name)  # writes a kill interrupted
  ckpt_dir = workdir / CHECKPOINT_DIR
  for _, path in ckpt_lib.list_checkpoints(ckpt_dir):
    path.unlink(missing_ok=True)
  if ckpt_dir.is_dir():
    outputs.remove_stale_temporaries(ckpt_dir, "round_*.msgpack")
    try:
      ckpt_dir.rmdir()
    except OSError:  # not empty: someone else's files
      pass


def prepare(config: TrainConfig) -> bool:
  """Checks (or clears, with ``overwrite``) the workdir; True if it may be resumed."""
  workdir = pathlib.Path(config.workdir)
  if config.overwrite:
    clear_run(workdir)
    return False
  recorded = recorded_config(workdir)
  if recorded is not None:
    diffs = config_differences(recorded, config)
    if diffs:
      refuse(config.workdir, diffs)
  return True


def restore(config: TrainConfig, template, warn=print):
  """``(round, (server, clients), host, path)`` of the newest valid checkpoint of the
  run in ``config.workdir``, or None to start afresh (no checkpoint, or ``overwrite``,
  which clears the run). Raises ``WorkdirError`` if the workdir holds a run with other
  result-affecting flags. ``template``: ``(server, clients)`` of the right structure."""
  if not prepare(config):
    return None
  path_dir = pathlib.Path(config.workdir) / CHECKPOINT_DIR
  found = ckpt_lib.restore_latest(path_dir, template, warn=warn)
  if found is None:
    return None
  start_round, state, host, path = found
  diffs = config_differences(host["config"], config)
  if diffs:
    refuse(config.workdir, diffs)
  if int(state[0].round) != start_round:
    raise ckpt_lib.CheckpointError(f"{path}: server round {int(state[0].round)} != "
                                   f"{start_round}")
  host["config"] = dataclasses.asdict(config)
  return start_round, state, host, path
