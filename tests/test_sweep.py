"""A vmapped sweep run equals the same run trained alone; a sweep resumes from its checkpoint
and keeps its finished results."""
import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import poison_users

from fedras_jax import checkpoint as ckpt_lib
from fedras_jax import sweep as sweep_lib
from fedras_jax.sweep import grid_points, parse_grid, summarize, sweep_points
from fedras_jax.workdir import WorkdirError
from fedras_jax.config import TrainConfig
from fedras_jax.experiment import load_run_data
from fedras_jax.training import train
from fedras_jax.workdir_lock import WorkdirLock


def _tiny(ml100k_path, rounds, **settings):
  """An uncompressed ML-100K FedMF run of ``rounds`` rounds, d=8, evaluated at the end."""
  return TrainConfig(data_dir=str(ml100k_path.parents[1]),
                     method="uncompressed",
                     rounds=rounds,
                     eval_every=rounds,
                     dim=8,
                     quiet=True,
                     **settings)


def test_sweep_run_equals_single_run_and_resumes_from_its_checkpoint(ml100k_path, tmp_path):
  # A decaying server step: its count is vmapped, checkpointed and resumed with the runs.
  base = _tiny(ml100k_path,
               rounds=6,
               clients_per_round=8,
               checkpoint_every=4,
               server_lr_schedule="cosine",
               server_lr_end=0.1)
  points = grid_points({"item_lr": [4.0, 8.0]})
  # The whole sweep leaves its round-4 checkpoint behind (none at the end).
  results = sweep_points(base, [0, 1], points, checkpoint_dir=tmp_path)
  assert [(r["seed"], r["item_lr"]) for r in results] == [(0, 4.0), (1, 4.0), (0, 8.0), (1, 8.0)]
  assert [r for r, _ in ckpt_lib.list_checkpoints(tmp_path)] == [4]
  # The same sweep again starts from round 4, as if cut off after it, and ends the same.
  lines = []
  resumed = sweep_points(base, [0, 1], points, log=lines.append, checkpoint_dir=tmp_path)
  assert lines[0].startswith("resuming from round 4 of 6"), lines
  assert [(r["hr@10"], r["ndcg@10"]) for r in resumed
         ] == [(r["hr@10"], r["ndcg@10"]) for r in results]
  assert len({r["ndcg@10"] for r in results}) == 4, results
  alone = train(dataclasses.replace(base, item_lr=8.0, checkpoint_every=0))["final"]
  np.testing.assert_allclose(results[2]["hr@10"], alone["hr@10"], atol=1e-6)
  np.testing.assert_allclose(results[2]["ndcg@10"], alone["ndcg@10"], atol=1e-6)
  rows = summarize(results)
  assert [(r["item_lr"], r["seeds"]) for r in rows] == [(4.0, 2), (8.0, 2)]
  np.testing.assert_allclose(rows[1]["hr@10_mean"], (results[2]["hr@10"] + results[3]["hr@10"]) / 2)


def test_a_sweep_counts_the_clients_it_skips_as_train_does(ml100k_path, tmp_path, monkeypatch):
  base = _tiny(ml100k_path, rounds=3, clients_per_round=16, checkpoint_every=2)
  bad = lambda ids: ids % 4 == 0
  poison_users(monkeypatch, bad)  # train's states
  init_states = sweep_lib.init_states

  def poisoned(*args, **kwargs):  # the sweep's
    server, clients = init_states(*args, **kwargs)
    ids = np.arange(clients.users.shape[0])
    return server, clients._replace(users=clients.users.at[bad(ids)].set(np.nan))

  monkeypatch.setattr(sweep_lib, "init_states", poisoned)
  swept = sweep_points(base, [0, 1], [], checkpoint_dir=tmp_path)
  for row in swept:
    alone = train(dataclasses.replace(base, seed=row["seed"], checkpoint_every=0))["final"]
    assert row["skipped_clients"] == alone["skipped_clients"] > 0, row
  # Resumed from its round-2 checkpoint, it keeps the count of rounds 1-2.
  resumed = sweep_points(base, [0, 1], [], checkpoint_dir=tmp_path)
  assert [r["skipped_clients"] for r in resumed] == [r["skipped_clients"] for r in swept]


def test_grid_rejects_shape_changing_settings():
  assert grid_points({"item_lr": [1, 2], "user_lr": [3]}) == [{"item_lr": 1, "user_lr": 3},
                                                              {"item_lr": 2, "user_lr": 3}]
  with pytest.raises(ValueError, match="cannot vmap over 'dim'"):
    grid_points({"dim": [8, 16]})
  with pytest.raises(ValueError, match="eval_protocol='full': a sweep scores the sampled"):
    sweep_points(TrainConfig(eval_protocol="full"), [0], [])


def test_parse_grid():
  assert parse_grid("item_lr=4,8; user_lr=0.5") == {"item_lr": [4.0, 8.0], "user_lr": [0.5]}
  assert parse_grid("") == {}
  with pytest.raises(ValueError, match="expected name=v1,v2"):
    parse_grid("item_lr")
  with pytest.raises(ValueError, match="separate names with ';'"):
    parse_grid("item_lr=4,8,dense_lr=0.1")


def test_validation_scores_a_held_out_interaction_never_the_test_item(ml100k_path):
  base = TrainConfig(data_dir=str(ml100k_path.parents[1]))
  split, items, negatives = load_run_data(dataclasses.replace(base, validation=True))
  test_split, test_items, test_negatives = load_run_data(base)
  np.testing.assert_array_equal(items, split.valid_item)
  np.testing.assert_array_equal(split.test_item, test_items)  # same test item either way
  assert np.all(items >= 0) and not np.any(items == split.test_item)
  assert len(split.train_items) == len(test_split.train_items) - split.num_users
  assert negatives.shape == test_negatives.shape
  assert np.mean(negatives == split.test_negatives) < 0.05, "a draw of its own"
  for u in range(0, split.num_users, 97):
    seen = set(split.seen_items[split.seen_indptr[u]:split.seen_indptr[u + 1]].tolist())
    train_u = split.train_items[split.train_indptr[u]:split.train_indptr[u + 1]]
    assert items[u] in seen and items[u] not in train_u
    assert not seen & set(negatives[u].tolist()) and len(set(negatives[u].tolist())) == 99


def test_a_sweep_starts_over_on_another_sweeps_checkpoint(tmp_path):
  configs = [TrainConfig(item_lr=4.0), TrainConfig(item_lr=8.0)]
  state = {"items": np.arange(6, dtype=np.float32).reshape(3, 2)}
  host = dict(configs=[dataclasses.asdict(c) for c in configs], data_sha256="ab", skipped=[3, 0])
  none = np.zeros(2, np.int32)
  ckpt_lib.save(tmp_path, 2, state, host)
  lines = []
  start, restored, skipped = sweep_lib._resume(tmp_path, configs, "ab",
                                               {"items": np.zeros(
                                                   (3, 2), np.float32)}, none, lines.append)
  assert start == 2 and np.array_equal(restored["items"], state["items"])
  assert list(skipped) == [3, 0]
  # Other values, other runs, or another number of runs: not this sweep's.
  for other in ([TrainConfig(item_lr=4.0), TrainConfig(item_lr=16.0)], configs[:1]):
    ckpt_lib.save(tmp_path, 2, state, host)
    fresh = {"items": np.zeros((3, 2), np.float32)}
    start, restored, skipped = sweep_lib._resume(tmp_path, other, "ab", fresh, none, lines.append)
    assert start == 0 and restored is fresh and skipped is none
    assert "checkpoints of a sweep with other settings (" in lines[-1]
    assert lines[-1].endswith("): starting over")
    assert ckpt_lib.list_checkpoints(tmp_path) == []
  # The same sweep on other data (an edited file, other test negatives): starts over.
  ckpt_lib.save(tmp_path, 2, state, host)
  fresh = {"items": np.zeros((3, 2), np.float32)}
  start, restored, _ = sweep_lib._resume(tmp_path, configs, "cd", fresh, none, lines.append)
  assert start == 0 and restored is fresh
  assert "with other settings (its data (the split differs" in lines[-1]
  # A sweep a user named (refuse_other): another's checkpoints are refused, naming what
  # differs, and kept (they were removed: a rerun with a mistyped flag lost them), also
  # where its states have other shapes (fewer runs stacked: they failed to load first).
  for other, sha, shape, differs in (([TrainConfig(item_lr=4.0),
                                       TrainConfig(item_lr=16.0)], "ab", (3, 2),
                                      r"--item_lr \(workdir 8.0, now 16.0\)"),
                                     (configs[:1], "ab", (1, 2), "2 runs, now 1"),
                                     (configs, "cd", (3, 2), r"its data \(the split differs")):
    ckpt_lib.save(tmp_path, 2, state, host)
    with pytest.raises(WorkdirError,
                       match=f"holds the checkpoints of a sweep with other "
                       f"settings: {differs}.*; rerun with its flags to resume it, or add "
                       "--overwrite to start over"):
      sweep_lib._resume(tmp_path,
                        other,
                        sha, {"items": np.zeros(shape, np.float32)},
                        none,
                        lines.append,
                        refuse_other=True)
    assert [r for r, _ in ckpt_lib.list_checkpoints(tmp_path)] == [2]
  # Every checkpoint damaged: refused too, kept (the CheckpointError names --overwrite).
  path = ckpt_lib.path_for(tmp_path, 2)
  path.write_bytes(path.read_bytes()[:-3])
  with pytest.raises(ckpt_lib.CheckpointError, match="use --overwrite to start over"):
    sweep_lib._resume(tmp_path,
                      configs,
                      "ab", {"items": np.zeros((3, 2), np.float32)},
                      none,
                      lines.append,
                      refuse_other=True)
  assert path.exists()
  # A damaged checkpoint: starts over too.
  ckpt_lib.save(tmp_path, 2, state, host)
  path = ckpt_lib.path_for(tmp_path, 2)
  path.write_bytes(path.read_bytes()[:-3])
  start, _, _ = sweep_lib._resume(tmp_path, configs, "ab", {"items": np.zeros((3, 2), np.float32)},
                                  none, lines.append)
  assert start == 0 and "starting over" in lines[-1] and not path.exists()


def test_kept_sweep_reuses_finished_results_and_reruns_another_sweep(tmp_path, monkeypatch,
                                                                     data_now):
  calls = []

  def fake_sweep(base, seeds, grid, log=print, checkpoint_dir=None, refuse_other=False):
    assert refuse_other  # a sweep a user named: another's checkpoints are refused, not removed
    calls.append((list(seeds), checkpoint_dir))
    checkpoint_dir.mkdir(parents=True)  # as sweep_points' checkpoints would
    return [
        dict(seed=s, item_lr=lr, **{"hr@10": math.nan if lr > 8 else 0.5 + s})
        for lr in grid["item_lr"]
        for s in seeds
    ]

  monkeypatch.setattr(sweep_lib, "sweep", fake_sweep)
  base, grid = TrainConfig(rounds=3), {"item_lr": [4.0, 16.0]}
  first = sweep_lib.kept_sweep(base, [0, 1], grid, tmp_path / "point")
  assert calls == [([0, 1], tmp_path / "point" / "checkpoints")]
  assert not (tmp_path / "point" / "checkpoints").exists()  # finished: no checkpoints left
  lines = []
  again = sweep_lib.kept_sweep(base, [0, 1], grid, tmp_path / "point", log=lines.append)
  assert len(calls) == 1 and lines == [f"kept: the finished sweep in {tmp_path}/point/results.json"]
  # The diverged point (kept as null) reads back as NaN.
  assert [r["hr@10"] for r in again[:2]] == [0.5, 1.5] and all(
      math.isnan(r["hr@10"]) for r in again[2:])
  assert [r["item_lr"] for r in again] == [r["item_lr"] for r in first]
  # Other seeds, another grid or other result-affecting settings: refused, naming what
  # differs, the finished sweep kept (it was replaced silently); --overwrite runs again.
  kept = (tmp_path / "point" / "results.json").read_text()
  for seeds, other_grid, config, differs in (([0], grid, base,
                                              r"seeds \(kept \[0, 1\], now \[0\]\)"),
                                             ([0, 1], {"item_lr": [4.0]}, base,
                                              r"grid \(kept \{'item_lr': \[4.0, 16.0\]\}"),
                                             ([0, 1], grid, dataclasses.replace(base, rounds=4),
                                              r"--rounds \(workdir 3, now 4\)")):
    with pytest.raises(WorkdirError, match="other settings: " + differs):
      sweep_lib.kept_sweep(config, seeds, other_grid, tmp_path / "point")
  assert len(calls) == 1 and (tmp_path / "point" / "results.json").read_text() == kept
  # The same sweep on other data (an edited file): refused as well.
  data_now["sha256"] = "data-b"
  with pytest.raises(WorkdirError, match=r"other settings: its data \(the split differs"):
    sweep_lib.kept_sweep(base, [0, 1], grid, tmp_path / "point")
  data_now["sha256"] = "data-a"
  for seeds, other_grid, rounds in (([0], grid, 3), ([0], {"item_lr": [4.0]}, 3),
                                    ([0], {"item_lr": [4.0]}, 4)):
    sweep_lib.kept_sweep(dataclasses.replace(base, rounds=rounds, overwrite=True), seeds,
                         other_grid, tmp_path / "point")
  assert len(calls) == 4
  sweep_lib.kept_sweep(dataclasses.replace(base, rounds=4, overwrite=True), [0], {"item_lr": [4.0]},
                       tmp_path / "point")
  assert len(calls) == 5
  # A directory that cannot be made fails before the sweep runs, naming it.
  (tmp_path / "a_file").write_text("")
  with pytest.raises(OSError, match="a_file"):
    sweep_lib.kept_sweep(base, [0], grid, tmp_path / "a_file" / "point")
  assert len(calls) == 5
  # Settings that change no result (quiet, workdir, checkpoint_every) keep it.
  sweep_lib.kept_sweep(dataclasses.replace(base, rounds=4, quiet=True, checkpoint_every=7), [0],
                       {"item_lr": [4.0]}, tmp_path / "point")
  assert len(calls) == 5


def test_the_sweep_binary_checks_its_output_and_locks_its_workdir(tmp_path):
  """Both fail at once, before any data is loaded or any round runs: an --output that is
  a directory (it used to fail after the whole sweep, losing its results), and a
  --workdir that another sweep holds (two sweeps there deleted each other's checkpoint
  writes)."""

  def sweep_binary(*flags):
    return subprocess.run([sys.executable, "-m", "experiments.sweep", "--seeds=0", *flags],
                          capture_output=True,
                          text=True,
                          timeout=300)

  for flag in ("--output", "--bench --markdown"):
    proc = sweep_binary(*f"{flag}={tmp_path}".split())
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {flag.split()[-1]}={tmp_path}: not a writable file path")
  with WorkdirLock(tmp_path / "sweep"):
    proc = sweep_binary(f"--workdir={tmp_path / 'sweep'}", f"--output={tmp_path / 'out.csv'}")
  assert proc.returncode == 1 and "is in use by another run" in proc.stderr, proc.stderr
  assert not (tmp_path / "out.csv").exists()


def test_sweep_bench_writes_the_table_it_prints_as_a_page(ml100k_path, tmp_path):
  # The uncompressed round: the page is the subject here, and FedRAS's would compile 3x
  # longer (its seeds vmapped in one program: the two-process sweep of test_multihost.py).
  page = tmp_path / "pages" / "bench.md"
  argv = [
      "--bench", "--seeds=0,1", "--rounds=1", "--dim=8", "--clients_per_round=8",
      "--method=uncompressed", f"--data_dir={ml100k_path.parents[1]}", f"--markdown={page}"
  ]
  proc = subprocess.run([sys.executable, "-m", "experiments.sweep", *argv],
                        capture_output=True,
                        text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  printed = [l for l in proc.stdout.splitlines() if l.startswith("|")]
  assert [l.split("|")[1].strip() for l in printed[2:]
         ] == ["vmapped in one program", "one run per seed", "vmapped / one per seed"]
  text = page.read_text()
  assert text.startswith("# Seeds vmapped in one program against one run per seed\n")
  assert f"- command: `python -m experiments.sweep {' '.join(argv)}`" in text
  assert "- setting: 2 seeds x 1 rounds, ml-100k mf, method uncompressed, 8 clients per round" in text
  assert [l for l in text.splitlines() if l.startswith("|")] == printed
