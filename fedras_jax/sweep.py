"""Whole training runs batched with ``vmap``: seeds x traced hyper-parameters.

Every hyper-parameter that does not change a shape is a traced value of the
round (``RoundHParams``) or of the client state (bandwidth), so ``P`` runs that
differ only in those and in their seed compile into ONE round program, ``vmap``-ed
over a leading run axis. Shape-changing settings (dim, model, method, clients per
round, and the payload ratio, which sets the compressors' static bounds such as CoLR's
rank) are separate programs: call ``sweep`` once per grid point of those.

Like ``train``, a sweep may span several processes (``fedras_jax.distributed``):
local training is then sharded over every global device, every process returns the
same results, and only process 0 logs.

Given a ``checkpoint_dir``, a sweep saves its stacked states every
``checkpoint_every`` rounds and every ``checkpoint_minutes`` (``fedras_jax.checkpoint``)
and the same sweep started again resumes from the newest one: every run's randomness is
in its state, so the results are those of an uninterrupted sweep. Checkpoints of another
sweep (other runs or result-affecting settings, or other data) are removed and the sweep
starts over, or, with ``refuse_other`` (``kept_sweep``: a sweep a user named), refused.
"""
import dataclasses
import functools
import itertools
import math
import pathlib
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedras_jax import checkpoint as ckpt_lib
from fedras_jax import data as data_lib
from fedras_jax import distributed
from fedras_jax import flags as flag_lib
from fedras_jax import outputs
from fedras_jax.compress import dense_bits
from fedras_jax.config import TrainConfig
from fedras_jax.experiment import (build_bandwidth, build_round_config, build_simulation,
                                   load_run_data, round_hparams, run_data_sha256, run_mesh)
from fedras_jax.federated import init_states
from fedras_jax.metrics import make_evaluate
from fedras_jax.workdir import SPLIT_DIFFERS, WorkdirError, config_differences, names_other_data

RESULTS_FILE = "results.json"  # kept_sweep's results
# Round hyper-parameters that are traced values of one program. Not payload_ratio: it sets
# static compressor bounds (CoLR's rank, the K, entry and rank caps), so runs at different
# ratios are different programs (``experiments.compare --ratios``).
SWEEPABLE = ("user_lr", "item_lr", "dense_lr", "weight_decay", "fluctuation")


def parse_grid(text: str,
               cast=flag_lib.finite_float,
               flag: str = "--grid",
               names: Sequence[str] = SWEEPABLE,
               what: str = "a finite number") -> Dict[str, list]:
  """``"item_lr=4,8;user_lr=0.5,1"`` -> ``{"item_lr": [4.0, 8.0], "user_lr": [0.5, 1.0]}``.

  ``cast``: text -> value, or a callable ``name -> (cast, what)`` for per-name types.
  ``ValueError`` naming ``flag`` for an entry that is not ``name=v1,v2,...``, a name
  not in ``names`` (default: the sweepable ones) or a value that ``cast`` refuses.
  """
  grid = {}
  for part in filter(None, text.split(";")):
    name, _, values = part.partition("=")
    name = name.strip()
    if not values.strip() or not name:
      raise ValueError(f"{flag}={text}: bad entry {part!r}: expected name=v1,v2")
    if names is not None and name not in names:
      raise ValueError(f"{flag}={text}: cannot sweep {name!r} here: sweepable are "
                       f"{', '.join(names)}")
    if name in grid:
      raise ValueError(f"{flag}={text}: {name!r} appears twice")
    if "=" in values:  # "item_lr=4,8,dense_lr=0.1": a second name after a comma
      raise ValueError(f"{flag}={text}: bad entry {part!r}: separate names with ';', e.g. "
                       "'item_lr=4,8;dense_lr=0.05,0.1'")
    entry_cast, entry_what = cast(name) if names is None else (cast, what)
    grid[name] = flag_lib.parse_values(f"{flag}={name}", values, entry_cast, entry_what)
  return grid


def _check_sweepable(names):
  for name in names:
    if name not in SWEEPABLE:
      raise ValueError(f"cannot vmap over {name!r}: sweepable are {SWEEPABLE}")


def grid_points(grid: Dict[str, Sequence[float]]) -> List[Dict[str, float]]:
  """The cartesian product of ``grid`` as a list of ``{name: value}``."""
  _check_sweepable(grid)
  names = list(grid)
  return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


def sweep(base: TrainConfig,
          seeds: Sequence[int],
          grid: Dict[str, Sequence[float]],
          log: Callable[[str], None] = print,
          checkpoint_dir: Optional[str] = None,
          refuse_other: bool = False) -> List[dict]:
  """``sweep_points`` over the cartesian product of ``grid`` (``{name: values}``)."""
  return sweep_points(base, seeds, grid_points(grid), log, checkpoint_dir, refuse_other)


def kept_sweep(base: TrainConfig,
               seeds: Sequence[int],
               grid: Dict[str, Sequence[float]],
               directory,
               log: Callable[[str], None] = print) -> List[dict]:
  """``sweep(base, seeds, grid)``, kept in ``directory``: the results that the same sweep
  (same seeds, grid and result-affecting settings) left in ``directory/results.json``,
  else the sweep checkpointed in ``directory/checkpoints`` (resumed from there), whose
  results are then kept there. Results or checkpoints of another sweep, or of one on
  other data, raise a ``WorkdirError`` naming what differs (nothing is removed);
  ``base.overwrite``: ``directory`` is cleared first.

  In a multi-process run process 0 alone reads and writes ``directory``: the kept results
  and the checkpoints reach every process from it."""
  directory = pathlib.Path(directory)
  path = directory / RESULTS_FILE
  setting = dict(seeds=list(seeds), grid={k: list(v) for k, v in grid.items()})
  data_sha256 = functools.cache(lambda: run_data_sha256(base))  # process 0 alone asks

  def prepare():
    if base.overwrite:
      shutil.rmtree(directory, ignore_errors=True)
    with outputs.naming(directory):  # an unwritable directory fails now, not after training
      directory.mkdir(parents=True, exist_ok=True)
    remedy = "delete it or use --overwrite to run the sweep again"
    return kept_results(path, base, remedy, data_sha256, refuse_other=True, **setting), np.int32(0)

  kept, _ = distributed.on_writer(prepare, np.int32(0))
  kept = distributed.share_json(kept)  # (None on every process where process 0 has none)
  if kept is not None:
    log(f"kept: the finished sweep in {path}")
    return kept
  checkpoints = directory / "checkpoints"
  results = sweep(base, seeds, grid, log, checkpoint_dir=checkpoints, refuse_other=True)
  if distributed.is_writer():
    keep_results(path, base, data_sha256, results, checkpoints, **setting)
  return results


def keep_results(path, config: TrainConfig, data_sha256: Callable[[], str], results, checkpoint_dir,
                 **setting):
  """Writes ``{"config", "data_sha256", **setting, "results"}`` to ``path`` (what
  ``kept_results`` reads back), then removes the ``checkpoint_dir`` the results no
  longer need. ``data_sha256()``: ``experiment.run_data_sha256(config)``."""
  outputs.write_json(path,
                     dict(config=dataclasses.asdict(config),
                          data_sha256=data_sha256(),
                          **setting,
                          results=results),
                     indent=1)
  shutil.rmtree(checkpoint_dir, ignore_errors=True)


def kept_results(path,
                 config: TrainConfig,
                 remedy: str,
                 data_sha256: Callable[[], Optional[str]],
                 *,
                 refuse_other: bool = False,
                 refuse_other_data: bool = False,
                 **setting) -> Optional[List[dict]]:
  """The ``results`` rows kept in JSON file ``path`` (``{"config", "data_sha256",
  **setting, "results"}``, non-finite numbers as NaN again) if its config differs from
  ``config`` in no result-affecting setting, it was run on the data of ``data_sha256()``
  (``experiment.run_data_sha256``, asked only if the file names its data:
  ``workdir.names_other_data``) and its other entries equal ``setting``; else None (no
  file, or another sweep's). Another sweep's file raises a ``WorkdirError`` naming the
  differences and ``remedy`` with ``refuse_other`` (a caller about to write over it:
  nothing finished is replaced unasked), and so does one of other data with
  ``refuse_other_data`` (a caller that would else say no sweep was kept). A file that is
  not JSON raises, naming ``remedy``."""
  if not pathlib.Path(path).is_file():
    return None
  saved = outputs.read_json(path, remedy, fields=())
  diffs = (config_differences(saved["config"], config) if "config" in saved else ["its config"])
  other_data = names_other_data(saved, data_sha256)
  if other_data:
    diffs.append(f"its data ({SPLIT_DIFFERS})")
  diffs += [
      f"{k} (kept {saved.get(k)!r}, now {v!r})" for k, v in setting.items() if saved.get(k) != v
  ]
  if diffs and (refuse_other or (other_data and refuse_other_data)):
    raise WorkdirError(f"{path} holds the results of a sweep with other settings: "
                       f"{', '.join(diffs)}; {remedy}")
  return None if diffs else outputs.rows_with_nan(saved.get("results", []))


def sweep_points(base: TrainConfig,
                 seeds: Sequence[int],
                 points: Sequence[Dict[str, float]],
                 log: Callable[[str], None] = print,
                 checkpoint_dir: Optional[str] = None,
                 refuse_other: bool = False) -> List[dict]:
  """Trains ``len(seeds) * len(points)`` runs of ``base`` in one program.

  ``points`` are ``{name: value}`` settings of ``SWEEPABLE`` names (``[]``: ``base``
  alone). Returns one dict per run: its seed, its point's values, final HR@K/NDCG@K,
  ``skipped_clients`` (the clients its rounds dropped for a non-finite update: a sweep
  always skips them, whatever ``on_nonfinite``, and counts them), and the program's
  ``compile_seconds`` (its first round in this process) and
  ``train_seconds`` (the other rounds and the final evaluation), shared by the runs of
  one call. With ``checkpoint_dir``, checkpoints by ``base``'s cadence
  (``checkpoint.Cadence``: every ``checkpoint_every`` rounds and every
  ``checkpoint_minutes``) and resumes from that directory's newest checkpoint of this sweep;
  another sweep's checkpoints there are removed, or with ``refuse_other`` raise a
  ``WorkdirError`` naming what differs (a rerun with a mistyped flag kept them).

  Every run is scored on ``base.seed``'s split and test negatives (one evaluation
  program for all; on files without timestamps, whose split is seeded, every run also
  trains on that split), so a run of seed ``s != base.seed`` differs from
  ``train(seed=s)`` in its data, not in its initialisation and sampling
  (docs/design/round.md). Only the sampled protocol is scored: ``eval_protocol``
  "full" is refused, "both" scores the sampled half.
  """
  if base.eval_protocol == "full":
    raise ValueError("eval_protocol='full': a sweep scores the sampled protocol only "
                     "(full ranking: training.train or experiments.compare)")
  base.validate()
  for point in points:
    _check_sweepable(point)
  points = list(points) or [{}]
  runs = [(s, p) for p in points for s in seeds]
  configs = [dataclasses.replace(base, seed=s, **p) for s, p in runs]
  for c in configs:
    c.validate()
  split, eval_items, eval_negatives = load_run_data(base)
  mesh = run_mesh(base)
  # One round program for every run: the static round shape fits all seeds.
  sim = build_simulation(base,
                         split,
                         round_config=build_round_config(base, split, seeds),
                         mesh=mesh)
  model, round_fn = sim.model, sim.round_fn
  server, clients, hp = _stacked_states(configs, model, split, sim.server_opt, sim.downlink)
  start_round, skipped = 0, np.zeros(len(runs), np.int32)
  data_sha256 = data_lib.split_sha256(split)
  if checkpoint_dir is not None:
    start_round, (server, clients), skipped = _resume(checkpoint_dir, configs, data_sha256,
                                                      (server, clients), skipped, log, refuse_other)
  if mesh is not None:
    server, clients, hp = distributed.replicate((server, clients, hp), mesh)
  batched_round = distributed.jit(jax.vmap(round_fn), mesh, donate_argnums=(0, 1))
  evaluate = make_evaluate(model, eval_items, eval_negatives)
  batched_eval = distributed.jit(jax.vmap(evaluate), mesh)
  start = time.time()
  cadence = ckpt_lib.Cadence(base.checkpoint_every, base.checkpoint_minutes)
  for r in range(start_round + 1, base.rounds + 1):
    server, clients, metrics = batched_round(server, clients, hp)
    skipped = skipped + metrics.skipped  # on the device: no wait for the round
    if r == start_round + 1:  # the first call compiles
      jax.block_until_ready(server)
      first_round = time.time()
    if (checkpoint_dir is not None and r < base.rounds and cadence.due(r)
        and distributed.is_writer()):
      ckpt_lib.save(
          checkpoint_dir, r, (server, clients),
          dict(configs=[dataclasses.asdict(c) for c in configs],
               data_sha256=data_sha256,
               skipped=np.asarray(skipped).tolist()))
      cadence.saved()
    if not base.quiet and (r % base.eval_every == 0 or r == base.rounds):
      # Every process evaluates (one program over all devices); process 0 logs.
      hr = np.asarray(batched_eval(clients.users, server.items, server.dense)["hr@10"])
      if distributed.is_writer():
        now = time.time()
        # The rounds after the first, compiling one set the pace.
        per_round = (now - first_round) / max(r - start_round - 1, 1)
        log(f"round {r}/{base.rounds}: HR@10 mean {hr.mean():.4f} (min {hr.min():.4f}, "
            f"max {hr.max():.4f}) over {len(runs)} runs, {now - start:.0f}s, "
            f"ETA {per_round * (base.rounds - r):.0f}s")
  scores = jax.device_get(batched_eval(clients.users, server.items, server.dense))
  timing = dict(compile_seconds=first_round - start, train_seconds=time.time() - first_round)
  skipped = np.asarray(skipped)
  return [
      dict(seed=s,
           **p,
           **{k: float(v[i]) for k, v in scores.items()},
           skipped_clients=int(skipped[i]),
           **timing) for i, (s, p) in enumerate(runs)
  ]


def _resume(checkpoint_dir, configs, data_sha256, initial, skipped, log, refuse_other=False):
  """``(start_round, (server, clients), skipped [runs])``: the newest checkpoint in
  ``checkpoint_dir`` of the sweep of ``configs`` (its runs, in order) on the split of
  ``data_sha256`` (``data.split_sha256``) and the clients each run skipped until then, or
  ``(0, initial, skipped)``. Process 0 reads it and sends it to every process.
  Checkpoints of another sweep, or of one on other data, are removed, or with
  ``refuse_other`` raise a ``WorkdirError`` naming what differs (all of them unreadable:
  the ``CheckpointError``), the files kept."""

  def differs(host) -> Optional[str]:
    """What makes ``host`` another sweep's, or None."""
    saved = host.get("configs", [])
    diffs = next((d for d in map(config_differences, saved, configs) if d), [])
    if len(saved) != len(configs) or diffs:
      return ", ".join(diffs) or f"{len(saved)} runs, now {len(configs)}"
    if names_other_data(host, lambda: data_sha256):
      return f"its data ({SPLIT_DIFFERS})"
    return None

  def start_over(why):
    log(f"{checkpoint_dir}: {why}: starting over")
    for _, old in ckpt_lib.list_checkpoints(checkpoint_dir):
      old.unlink()
    return None, (np.int32(0), initial, skipped)

  def other(why: str):
    if refuse_other:
      raise WorkdirError(f"{checkpoint_dir} holds the checkpoints of a sweep with other settings: "
                         f"{why}; rerun with its flags to resume it, or add --overwrite to start "
                         "over")
    return start_over(f"checkpoints of a sweep with other settings ({why})")

  def restore():
    # Compared before the states are read: another sweep's may have other shapes (runs, dim).
    host = ckpt_lib.latest_host(checkpoint_dir)
    if host is not None and differs(host) is not None:
      return other(differs(host))
    try:
      found = ckpt_lib.restore_latest(checkpoint_dir, initial, warn=log)
    except ckpt_lib.CheckpointError as e:
      if refuse_other:
        raise
      return start_over(e)
    if found is None:
      return None, (np.int32(0), initial, skipped)
    start_round, state, host, path = found
    if differs(host) is not None:  # (an older checkpoint than the newest sound one)
      return other(differs(host))
    log(f"resuming from round {start_round} of {configs[0].rounds} ({path})")
    return None, (np.int32(start_round), state, np.asarray(host.get("skipped", skipped), np.int32))

  _, (start_round, state, skipped) = distributed.on_writer(restore, (np.int32(0), initial, skipped))
  return int(start_round), state, skipped


def _stacked_states(configs, model, split, server_opt, downlink):
  """``(server, clients, hp)`` of every run in ``configs``, stacked on a leading
  ``[runs]`` axis."""
  dense_round_bits = dense_bits(split.num_items, model.item_dim)
  states = [
      init_states(model,
                  split.num_users,
                  split.num_items,
                  server_opt,
                  seed=c.seed,
                  bandwidth=build_bandwidth(c, split.num_users, dense_round_bits),
                  downlink=downlink) for c in configs
  ]
  server, clients = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  hp = jax.tree.map(lambda *xs: jnp.asarray(xs, jnp.float32),
                    *[round_hparams(c, dense_round_bits) for c in configs])
  return server, clients, hp


def cell_value(row: dict, column: str) -> float:
  """``row[column]`` as a float (a CSV string or a number); NaN where it is missing or
  empty."""
  value = row.get(column, "")
  return math.nan if value is None or value == "" else float(value)


DENSE = "uncompressed"  # the dense baseline, run once per dataset, model and seed


def dense_at_one(row: dict) -> dict:
  """A comparison row (``experiments.compare``) with the payload ratio ``"1"`` if it is
  the uncompressed baseline's: it sends the dense table at every ratio, and compare runs
  it once, under the first ratio of the invocation that trained it, so one grid's seeds
  may sit under several ratios."""
  return {**row, "payload_ratio": "1"} if row["method"] == DENSE else row


def seed_stats(rows, keys: Sequence[str], columns: Sequence[str]) -> dict:
  """``{group: (seeds, {column: (mean, std)})}`` over rows grouped by their ``keys``
  values (in first-seen order); std is the population std; a column with an empty or
  missing value in a group gets ``(nan, nan)``."""
  groups = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  out = {}
  for group, members in groups.items():
    stats = {}
    for c in columns:
      v = np.asarray([cell_value(r, c) for r in members])
      stats[c] = (float(v.mean()), float(v.std())) if np.isfinite(v).all() else (np.nan, np.nan)
    out[group] = (len(members), stats)
  return out


def summarize(results: List[dict], metrics=("hr@10", "ndcg@10")) -> List[dict]:
  """One row per grid point: mean and population std (ddof=0) over seeds of each metric."""
  keys = [
      k for k in results[0] if k not in ("seed", "compile_seconds", "skipped_clients",
                                         "train_seconds") and not k.startswith(("hr@", "ndcg@"))
  ]
  out = []
  for values, (seeds, stats) in seed_stats(results, keys, metrics).items():
    summary = dict(zip(keys, values), seeds=seeds)
    for m in metrics:
      summary[f"{m}_mean"], summary[f"{m}_std"] = stats[m]
    out.append(summary)
  return out
