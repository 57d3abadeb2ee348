"""A whole training run: an experiment stepped round by round, evaluated, saved.

``train(config)`` builds the ``experiment.Experiment`` of a ``config.TrainConfig``,
runs its jitted rounds, evaluates every ``eval_every`` rounds, writes the workdir (see
``fedras_jax.workdir`` for its files) and returns the summary.

Re-running the same config resumes from the newest checkpoint; a round depends only on
(seed, round, state), so the resumed run is bit-identical to an uninterrupted one
(timing fields aside: ``workdir.TIMING_FIELDS``). The metrics files are rewritten from
the checkpoint's rows, so rows written after it are dropped, not duplicated.
"""
import contextlib
import dataclasses
import math
import pathlib
import sys
import time
from typing import Callable

import jax
import numpy as np

from fedras_jax import checkpoint as ckpt_lib
from fedras_jax import data as data_lib
from fedras_jax import distributed
from fedras_jax import outputs
from fedras_jax import workdir as workdir_lib
from fedras_jax.config import TrainConfig
from fedras_jax.experiment import build_experiment, run_mesh
from fedras_jax.federated import round_clients
from fedras_jax.workdir_lock import WorkdirLock


class NonFiniteUpdateError(FloatingPointError):
  """``on_nonfinite="stop"`` and a round had clients with non-finite updates, or
  ``"skip"`` and ``DEAD_ROUNDS`` rounds in a row dropped every sampled client."""


# Rounds in a row whose every sampled client sent a non-finite update before a run
# stops under ``on_nonfinite="skip"``: the model no longer changes, so the rest of the
# run would only repeat them (a diverged model: learning rates too large).
DEAD_ROUNDS = 3


def train(config: TrainConfig, log: Callable[[str], None] = print) -> dict:
  """Runs ``config`` to the end (resuming the run in its workdir if there is one);
  returns the summary (also written to the workdir).

  In a multi-process run (see ``fedras_jax.distributed``) every process calls this
  with the same config; local training is sharded over every global device, and
  only process 0 logs, holds the workdir and writes files (its summary is the run's).

  The workdir is locked for the whole run (``workdir_lock``, by process 0): another
  run on it raises ``WorkdirLockError`` before anything in it is read or changed.

  Timing in the summary: the first round a process runs compiles; ``compile_seconds``
  is this process's (the checkpoint's when it ran no round). ``train_seconds`` sums
  every other round, carried on through the checkpoints over every process of a
  resumed run, and ``client_updates_per_second`` is over those rounds.
  """
  config.validate()
  with contextlib.ExitStack() as hold:
    return _run(config, log, hold)


def _fresh_host(config: TrainConfig, data_sha256: str) -> dict:
  """Host-side state of a run (checkpointed as JSON next to the arrays); ``data_sha256``:
  the split's (``data.split_sha256``), which a resumed run must train on too."""
  return dict(config=dataclasses.asdict(config),
              data_sha256=data_sha256,
              totals=dict(bits_up=0, bits_down=0, sim_seconds=0.0, skipped=0, info_loss=0.0),
              window=dict(actions=[], error_up=[], error_down=[]),
              loss_sum=0.0,
              loss_rounds=0,
              rows=[],
              best=None,
              train_seconds=0.0,
              timed_rounds=0,
              compile_seconds=None,
              wall_seconds=0.0,
              dead_rounds=0,
              eval_seconds=0.0,
              evaluations=0)


def _run(config: TrainConfig, log: Callable[[str], None], hold: contextlib.ExitStack) -> dict:
  """``train`` of a validated ``config``; process 0 enters the workdir's lock into
  ``hold`` (released when ``train`` returns) before it reads or changes the workdir."""
  writes = distributed.is_writer()

  def say(msg: str):
    if not config.quiet and writes:
      _print(log, msg)

  mesh = run_mesh(config)
  if jax.process_count() > 1:  # (a scheduler may show each process fewer devices than meant)
    say(f"{jax.process_count()} processes, {jax.device_count()} devices")
  exp = build_experiment(config, mesh=mesh)
  split, sim = exp.split, exp.sim
  say(f"{config.dataset}: {split.num_users} users, {split.num_items} items, "
      f"{len(split.train_items)} training interactions")
  if config.workdir:
    say(f"writing to {config.workdir}")
  round_fn = distributed.jit(sim.round_fn, mesh, donate_argnums=(0, 1))
  m = config.clients_per_round
  # The user rows of the clients a round will sample (to name the ones it drops).
  rows_to_sample = distributed.jit(
      lambda key, r, users: users[round_clients(key, r, split.num_users, m)], mesh)

  host, start_round, server, clients = _resume(config, sim, data_lib.split_sha256(split), mesh,
                                               hold, log, say)
  workdir = pathlib.Path(config.workdir) if config.workdir and writes else None
  writer = _open_files(config, workdir, host["rows"])

  wall_before, start = host["wall_seconds"], time.time()
  cadence = ckpt_lib.Cadence(config.checkpoint_every, config.checkpoint_minutes)
  compile_seconds, evaluated = None, False
  for r in range(start_round + 1, config.rounds + 1):
    rows_before = rows_to_sample(server.key, server.round, clients.users)
    t0 = time.time()
    server, clients, metrics = round_fn(server, clients, sim.hp)
    metrics = jax.device_get(metrics)
    if compile_seconds is None:  # the first round of this process compiles
      compile_seconds = time.time() - t0
    else:
      host["train_seconds"] += time.time() - t0
      host["timed_rounds"] += 1
    _account(host, metrics, m)
    # Rounds in a row that dropped every sampled client (checkpointed: a resumed run
    # stops where the uninterrupted one would).
    host["dead_rounds"] = _check_updates(config, r, metrics, rows_before, clients, say,
                                         host.get("dead_rounds", 0))
    if r % config.eval_every == 0 or r == config.rounds:
      t0 = time.time()
      scores = jax.device_get(exp.evaluate(clients.users, server.items, server.dense))
      if evaluated:  # the first evaluation of a process compiles: not timed
        host["eval_seconds"] = host.get("eval_seconds", 0.0) + time.time() - t0
        host["evaluations"] = host.get("evaluations", 0) + 1
      evaluated = True
      row = _evaluation_row(r, scores, host, metrics, sim.dense_round_bits,
                            wall_before + time.time() - start)
      writer.write(row)
      say(_progress_line(config, row, host))
    # The last round is saved whatever the cadence: rerunning a finished run resumes it
    # at its end instead of training it again.
    if workdir and (cadence.due(r) or r == config.rounds):
      host["wall_seconds"] = wall_before + time.time() - start
      if host["compile_seconds"] is None:
        host["compile_seconds"] = compile_seconds
      ckpt_lib.save(workdir / workdir_lib.CHECKPOINT_DIR, r, (server, clients), host)
      cadence.saved()

  if workdir:
    ckpt_lib.save_params(workdir / workdir_lib.PARAMS_FILE,
                         dict(users=clients.users, items=server.items, dense=server.dense))
  compile_seconds = compile_seconds if compile_seconds is not None else host["compile_seconds"]
  summary = _summary(config, sim, host, compile_seconds, start_round)
  writer.summary(summary)
  if writes:  # the final line, printed also with --quiet
    _print(log, _final_line(config, summary))
  return summary


def _resume(config: TrainConfig, sim, data_sha256: str, mesh, hold: contextlib.ExitStack, log, say):
  """``(host, start_round, server, clients)``: the newest checkpoint of the run in the
  workdir, or a fresh start. Process 0 alone locks and reads the workdir and sends what
  it found to every process (``distributed.on_writer``); the states are replicated over
  ``mesh`` when there is one."""
  initial = (sim.server, sim.clients)

  def restore():
    host, start_round, state = _fresh_host(config, data_sha256), 0, initial
    if config.workdir:
      hold.enter_context(WorkdirLock(config.workdir, warn=log))
      found = workdir_lib.restore(config, initial, warn=log)
      # The flags match; the data may not (an edited file, a negatives file gone from
      # --data_dir): the checkpoint's record, or without one (checkpoints deleted) the
      # finished run's summary, which a fresh start would write over.
      record = found[2] if found is not None else workdir_lib.finished_record(config.workdir)
      if workdir_lib.names_other_data(record, lambda: data_sha256):
        raise workdir_lib.other_data_error(
            f"--workdir={config.workdir}",
            "restore them to resume or keep the run, or add --overwrite to start over")
      if found is not None:
        start_round, state, host, path = found
        host.setdefault("data_sha256", data_sha256)
        say(f"resuming from round {start_round} of {config.rounds} ({path})")
    return host, (np.int32(start_round), state)

  host, (start_round, (server, clients)) = distributed.on_writer(restore, (np.int32(0), initial))
  # Every process keeps process 0's accounting (and so returns the same summary, also
  # when the run resumed at its last round and trains none).
  host = distributed.share_json(host)
  if mesh is not None:
    server, clients = distributed.replicate((server, clients), mesh)
  return host, int(start_round), server, clients


def _open_files(config: TrainConfig, workdir, rows) -> workdir_lib.MetricsWriter:
  """The metrics writer of ``workdir`` (None: no files), started over from ``rows``;
  writes the run's ``config.json``."""
  writer = workdir_lib.MetricsWriter(workdir, rows)  # creates the workdir
  if workdir:
    outputs.write_json(workdir / workdir_lib.CONFIG_FILE, dataclasses.asdict(config))
  return writer


def _account(host: dict, metrics, m: int):
  """Adds a round's ``RoundMetrics`` to the totals and the evaluation window."""
  if bool(metrics.overflow):
    raise RuntimeError("a round's clients outgrew the static round shape (slot capacity, "
                       "bucket widths or lane steps): the run's RoundConfig was not planned "
                       "for these clients (federated.plan_capacity)")
  totals, window = host["totals"], host["window"]
  totals["bits_up"] += int(np.sum(metrics.bits_up, dtype=np.int64))
  totals["bits_down"] += int(metrics.bits_down) * m
  totals["sim_seconds"] += float(metrics.sim_seconds)
  totals["skipped"] += int(metrics.skipped)
  totals["info_loss"] += float(metrics.info_loss)
  window["actions"].append(np.asarray(metrics.num_actions).tolist())
  window["error_up"].append(float(np.mean(metrics.error_up)))
  window["error_down"].append(float(metrics.error_down))
  loss = np.asarray(metrics.loss)[np.isfinite(metrics.loss)]  # skipped clients' is NaN
  if loss.size:
    host["loss_sum"] += float(np.mean(loss))
    host["loss_rounds"] += 1


def _check_updates(config: TrainConfig, r: int, metrics, rows_before, clients, say,
                   dead_rounds: int) -> int:
  """Names the clients round ``r`` dropped for a non-finite update (and stops with
  ``on_nonfinite="stop"``); a non-finite loss with nothing dropped is an error.
  ``dead_rounds``: the rounds in a row before ``r`` that dropped every sampled client;
  returns it counting ``r``, and stops when it reaches ``DEAD_ROUNDS``."""
  skipped = int(metrics.skipped)
  if not skipped:
    if not np.isfinite(metrics.loss).all():
      raise FloatingPointError(f"round {r}: non-finite training loss")
    return 0
  sampled = np.asarray(metrics.sampled)
  ids = _skipped_users(sampled, rows_before,
                       np.asarray(clients.users)[sampled], metrics.loss, skipped)
  what = (f"round {r}: {skipped} of {len(sampled)} sampled clients sent a non-finite update " +
          (f"(user ids {ids})"
           if ids is not None else f"(among user ids {sorted(int(u) for u in sampled)})"))
  if config.on_nonfinite == "stop":
    raise NonFiniteUpdateError(f"{what}; stopped (--on_nonfinite=stop; the same command with "
                               "--on_nonfinite=skip resumes, skipping such clients)")
  say(f"{what}; skipped them")
  dead_rounds = dead_rounds + 1 if skipped == len(sampled) else 0
  if dead_rounds == DEAD_ROUNDS:
    raise NonFiniteUpdateError(
        f"rounds {r - DEAD_ROUNDS + 1}-{r}: every sampled client sent a non-finite update, "
        "so the model no longer changes (diverged? lower the learning rates, with --overwrite "
        "or another --workdir); stopped")
  return dead_rounds


def _skipped_users(sampled, rows_before, rows_after, loss, count: int):
  """Sorted user ids of the ``count`` clients the round dropped, or None if they
  cannot be told apart. A dropped client keeps its user row bit for bit (a trained
  one moves); fallback: the clients whose training loss is non-finite."""
  sampled = np.asarray(sampled)
  m = len(sampled)
  same = np.all(np.asarray(rows_before).view(np.uint8).reshape(
      m, -1) == np.asarray(rows_after).view(np.uint8).reshape(m, -1),
                axis=1)
  for mask in (same, ~np.isfinite(np.asarray(loss))):
    if int(mask.sum()) == count:
      return sorted(int(u) for u in sampled[mask])
  return None


def _evaluation_row(r: int, scores: dict, host: dict, metrics, dense_round_bits: int,
                    wall_seconds: float) -> dict:
  """The metrics row of an evaluation at round ``r`` (``scores``: the evaluation's);
  appends it to ``host["rows"]``, updates the best row and empties the window."""
  totals, window = host["totals"], host["window"]
  per_round = host["train_seconds"] / host["timed_rounds"] if host["timed_rounds"] else 0.0
  actions = np.asarray(window["actions"], np.int32)
  row = dict(round=r,
             **{k: float(v) for k, v in scores.items()},
             loss=host["loss_sum"] / host["loss_rounds"] if host["loss_rounds"] else math.nan,
             bits_up_total=totals["bits_up"],
             bits_down_total=totals["bits_down"],
             compression_up=1.0 - float(np.mean(metrics.bits_up)) / dense_round_bits,
             compression_down=1.0 - float(metrics.bits_down) / dense_round_bits,
             bits_up_mean=float(np.mean(metrics.bits_up)),
             bits_up_max=int(np.max(metrics.bits_up)),
             actions_mean=float(np.mean(actions)),
             actions_min=int(np.min(actions)),
             actions_max=int(np.max(actions)),
             error_up=float(np.mean(window["error_up"])),
             error_down=float(np.mean(window["error_down"])),
             info_loss_total=totals["info_loss"],
             sim_seconds=totals["sim_seconds"],
             skipped_clients=totals["skipped"],
             seconds_per_round=per_round,
             wall_seconds=wall_seconds)
  host["loss_sum"], host["loss_rounds"] = 0.0, 0
  for values in window.values():
    values.clear()
  host["rows"].append(row)
  primary = primary_metric(host["config"]["eval_protocol"])
  if host["best"] is None or row[primary] > host["best"][primary]:
    host["best"] = row
  return row


def _progress_line(config: TrainConfig, row: dict, host: dict) -> str:
  totals, per_round = host["totals"], row["seconds_per_round"]
  speed = f"{1 / per_round:.1f} rounds/s" if per_round > 0 else "- rounds/s"
  r, rounds = row["round"], config.rounds
  evals_left = (rounds // config.eval_every - r // config.eval_every +
                (rounds % config.eval_every != 0 and r < rounds))
  per_eval = host.get("eval_seconds", 0.0) / max(host.get("evaluations", 0), 1)
  eta = per_round * (rounds - r) + per_eval * evals_left
  # -1: a method without actions (uncompressed, TopK, SVD, CoLR)
  actions = f"  K {row['actions_mean']:.1f}" if row["actions_mean"] >= 0 else ""
  return (f"round {r:5d}/{rounds}  {scores_text(row)}  "
          f"loss {row['loss']:.4f}  {speed}  ETA {eta:.0f}s"
          f"  up {totals['bits_up'] / 8e6:.1f} MB  down {totals['bits_down'] / 8e6:.1f} MB"
          f"{actions}  sim {totals['sim_seconds']:.0f}s")


def _final_line(config: TrainConfig, summary: dict) -> str:
  where = f", files in {config.workdir}" if config.workdir else ""
  return (f"done: {scores_text(summary['final'])}  "
          f"(compile {summary['compile_seconds'] or 0.0:.1f}s, "
          f"{summary['train_seconds']:.1f}s training{where})")


def _print(log: Callable[[str], None], msg: str):
  log(msg)
  if log is print:
    sys.stdout.flush()


def _summary(config: TrainConfig, sim, host: dict, compile_seconds, start_round: int) -> dict:
  round_config = sim.round_config
  return dict(final=host["rows"][-1],
              best=host["best"],
              compile_seconds=compile_seconds,
              train_seconds=host["train_seconds"],
              client_updates_per_second=config.clients_per_round * host["timed_rounds"]
              / max(host["train_seconds"], 1e-9),
              capacity=dict(slot_capacity=round_config.slot_capacity,
                            client_buckets=round_config.client_buckets,
                            max_lane_steps=round_config.max_lane_steps),
              config=dataclasses.asdict(config),
              data_sha256=host["data_sha256"],
              resumed_from_round=start_round or None)


def primary_metric(eval_protocol: str) -> str:
  """The metric a run's best row is chosen by: sampled HR@10, full-ranking HR@10
  when only that is computed."""
  return "full_hr@10" if eval_protocol == "full" else "hr@10"


def scores_text(row: dict) -> str:
  """``HR@10 x  NDCG@10 y  full HR@10 z  NDCG@10 w`` (the protocols ``row`` has)."""
  parts = []
  for prefix, label in (("", ""), ("full_", "full ")):
    if f"{prefix}hr@10" in row:
      parts.append(f"{label}HR@10 {row[prefix + 'hr@10']:.4f}  "
                   f"NDCG@10 {row[prefix + 'ndcg@10']:.4f}")
  return "  ".join(parts)
