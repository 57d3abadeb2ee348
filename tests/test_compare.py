"""experiments/compare.py: the table, --tune_at, kept searches, --only_finished."""
import csv
import dataclasses
import functools
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys

import pytest

from experiments import compare, jobs
from fedras_jax.config import TrainConfig
from fedras_jax.workdir import WorkdirError
from fedras_jax.workdir_lock import WorkdirLockError


def _compare(data_dir, outdir, methods, *extra):
  cmd = [
      sys.executable, "-m", "experiments.compare", f"--data_dir={data_dir}", f"--outdir={outdir}",
      f"--methods={methods}", "--ratios=1/8,1/32", "--rounds=2", "--clients_per_round=8",
      "--eval_every=2", "--tune=item_lr=4,8", "--tune_at=1/32", "--tune_widen=0", *extra
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(outdir / "compare.csv") as f:
    return proc.stdout, list(csv.DictReader(f))


def _compare_process(*flags):
  """``experiments.compare`` run with ``flags``, for tests that stop before any training."""
  return subprocess.run([sys.executable, "-m", "experiments.compare", *flags],
                        capture_output=True,
                        text=True,
                        timeout=300)


def test_models_default_to_the_model_flag(ml100k_path, tmp_path):
  """Without --models/--seeds the grid takes --model/--seed (as a flagfile sets them)."""
  proc = _compare_process(f"--data_dir={ml100k_path.parents[1]}", f"--outdir={tmp_path}",
                          "--methods=svd", "--ratios=1/8", "--model=ncf", "--seed=3",
                          "--only_finished")
  assert "== ml-100k_ncf_svd_1over8_s3 (1 of 1)" in proc.stdout, proc.stderr[-2000:]
  assert "error: no finished runs" in proc.stderr and proc.returncode == 1


def test_full_ranking_only_is_refused_before_any_run(tmp_path):
  """compare scores the sampled protocol: --eval_protocol=full used to train a whole run
  and then die tabulating it (KeyError 'hr@10')."""
  proc = _compare_process(f"--outdir={tmp_path}", "--methods=svd", "--eval_protocol=full")
  assert proc.returncode == 1 and "error: --eval_protocol=full" in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


def test_several_processes_are_refused(tmp_path):
  """compare runs in one process (each of its runs would have run whole on every host)."""
  proc = _compare_process(f"--outdir={tmp_path}", "--coordinator=127.0.0.1:1234",
                          "--num_processes=2", "--process_id=0")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == "error: --coordinator: compare runs in one process"


def test_a_bad_base_flag_is_named_before_any_run(tmp_path):
  """A bad base flag used to be reported as the first grid flag checked against it
  (``--seeds=: --dense_lr=-1.0 is invalid``)."""
  proc = _compare_process(f"--outdir={tmp_path}", "--methods=svd", "--dense_lr=-1")
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --dense_lr=-1.0 is invalid: must be finite and >= 0"), proc.stderr
  assert not list(tmp_path.iterdir())


def test_compare_tunes_once_per_method_and_resumes(ml100k_path, tmp_path):
  data_dir = ml100k_path.parents[1]
  # Each method its own process on its own CPU (--jobs), then the table of both.
  parts = 2 if len(jobs.usable_cpus() or [0, 1]) >= 2 else 1
  out, rows = _compare(data_dir, tmp_path, "uncompressed,svd", f"--jobs={parts}")
  # The dense baseline runs once; svd at both ratios.
  assert [(r["method"], r["payload_ratio"]) for r in rows] == [("uncompressed", "1/8"),
                                                               ("svd", "1/8"), ("svd", "1/32")]
  trained = [line for line in out.splitlines() if line.startswith("[part ")]
  if parts == 2:
    cpus = jobs.usable_cpus()
    assert f"[part uncompressed] started on CPUs {[cpus[0]]}" in trained
    assert f"[part svd] started on CPUs {cpus[1:]}" in trained
    # Each part counts its own runs.
    assert "[part uncompressed] == ml-100k_mf_uncompressed_1over8_s0 (1 of 1)" in trained
    assert "[part svd] == ml-100k_mf_svd_1over32_s0 (2 of 2)" in trained
    assert not any("| dataset |" in line for line in trained)  # the parts print no table
  else:
    trained = out.splitlines()
    # The dense baseline runs once, whatever the ratios: 3 runs, not 4.
    assert "== ml-100k_mf_svd_1over32_s0 (3 of 3)" in trained
  text = "\n".join(trained)
  assert text.count("   tuned ") == 2 and text.count("   kept ") == 1  # svd 1/32 reuses 1/8's
  # A search says how far it is (every --eval_every=2 rounds: once in 2 rounds).
  assert text.count("   searching 2 points (validation): round 2/2: HR@10 mean ") == 2, text
  for method in ("uncompressed", "svd"):
    search = json.loads((tmp_path / f"ml-100k_mf_{method}_1over32_s0" / "tuning.json").read_text())
    assert search["config"]["payload_ratio"] == 1 / 32 and search["config"]["validation"]
    best = max(search["results"], key=lambda r: r["hr@10"])
    assert sorted(r["item_lr"] for r in search["results"]) == [4.0, 8.0]
    for row in (r for r in rows if r["method"] == method):
      # Two points: the pick sits at an edge, and --tune_widen=0 leaves it there.
      assert row["tuned"] == f"item_lr={best['item_lr']} (grid edge)"
      assert float(row["valid_hr@10"]) == best["hr@10"]
      name = f"ml-100k_mf_{method}_{row['payload_ratio'].replace('/', 'over')}_s0"
      summary = json.loads((tmp_path / name / "summary.json").read_text())
      assert summary["config"]["item_lr"] == best["item_lr"]
      assert float(row["final_hr@10"]) == summary["final"]["hr@10"]
      # Both protocols, next to each other (--eval_protocol defaults to both).
      assert float(row["final_full_hr@10"]) == summary["final"]["full_hr@10"]
      assert float(row["final_full_ndcg@10"]) == summary["final"]["full_ndcg@10"]
  assert not (tmp_path / "ml-100k_mf_svd_1over8_s0" / "tuning.json").exists()
  # The runs' evaluation rows (rounds 2: one each) and how the outputs were made.
  with open(tmp_path / "curves.csv") as f:
    curves = list(csv.DictReader(f))
  assert [(c["method"], c["payload_ratio"], c["round"]) for c in curves] == [("uncompressed", "1/8",
                                                                              "2"),
                                                                             ("svd", "1/8", "2"),
                                                                             ("svd", "1/32", "2")]
  assert [c["hr@10"] for c in curves] == [r["final_hr@10"] for r in rows]
  made = json.loads((tmp_path / "compare.json").read_text())
  assert made["command"].startswith("python -m experiments.compare --data_dir=")
  assert {"commit", "machine", "date"} <= set(made)
  svd_bits = [int(r["bits_up_total"]) for r in rows if r["method"] == "svd"]
  assert svd_bits[0] > svd_bits[1]  # 1/8 sends more than 1/32

  # Tabulating only: nothing is searched or trained again; topk is named as missing.
  out2, rows2 = _compare(data_dir, tmp_path, "uncompressed,svd,topk", "--only_finished")
  assert "   tuned " not in out2 and "compile" not in out2
  assert out2.count("not finished") == 2
  assert rows2 == rows
  # A finished run whose checkpoints were deleted is read, not trained again.
  shutil.rmtree(tmp_path / "ml-100k_mf_svd_1over8_s0" / "checkpoints")
  out2, rows2 = _compare(data_dir, tmp_path, "uncompressed,svd")
  assert "compile" not in out2 and rows2 == rows

  # A widened grid searches only its new point; --tune_seed=0 lends seed 0's search to seed 1.
  before = json.loads((tmp_path / "ml-100k_mf_svd_1over32_s0" / "tuning.json").read_text())
  out3, rows3 = _compare(data_dir, tmp_path, "svd", "--ratios=1/32", "--seeds=0,1",
                         "--tune=item_lr=2,4,8", "--tune_seed=0")
  assert out3.count("tuned (1 of 3 points searched)") == 1 and out3.count("   kept ") == 1
  search = json.loads((tmp_path / "ml-100k_mf_svd_1over32_s0" / "tuning.json").read_text())
  assert search["results"][:2] == before["results"]
  assert [r["item_lr"] for r in search["results"]] == [4.0, 8.0, 2.0]
  # The pick: best validation HR@10, ties to the first in grid order.
  best = max(sorted(search["results"], key=lambda r: r["item_lr"]), key=lambda r: r["hr@10"])
  # An edge pick is no edge where every point ties it (a flat score).
  flat = len({r["hr@10"] for r in search["results"]}) == 1
  tuned = f"item_lr={best['item_lr']}" + (" (grid edge)"
                                          if best["item_lr"] != 4 and not flat else "")
  assert [(r["seed"], r["tuned"]) for r in rows3] == [("0", tuned), ("1", tuned)]
  assert not (tmp_path / "ml-100k_mf_svd_1over32_s1" / "tuning.json").exists()
  # A run at the earlier pick is replaced by one at the new pick (and only then).
  earlier = max(before["results"], key=lambda r: r["hr@10"])["item_lr"]
  assert ("replacing the run" in out3) == (best["item_lr"] != earlier)
  summary = json.loads((tmp_path / "ml-100k_mf_svd_1over32_s0" / "summary.json").read_text())
  assert summary["config"]["item_lr"] == best["item_lr"]
  # compare.md adds the mean and std over seeds (NumPy float64 of the CSV's values).
  hrs = [float(r["final_hr@10"]) for r in rows3]
  line = next(l for l in (tmp_path / "compare.md").read_text().splitlines()
              if l.startswith("| ml-100k | mf | svd | 1/32 | 2 |"))
  assert f"{sum(hrs) / 2:.4f} ± {abs(hrs[0] - hrs[1]) / 2:.4f}" in line
  full = [float(r["final_full_hr@10"]) for r in rows3]
  assert f"{sum(full) / 2:.4f} ± {abs(full[0] - full[1]) / 2:.4f}" in line
  assert "final_full_hr@10" in (tmp_path / "compare.md").read_text().splitlines()[0]


def test_method_settings_fix_a_setting_per_method(ml100k_path, tmp_path):
  """--method_settings trains each method at its own fixed setting (through --jobs' parts
  too; a method not run may be named) and the table says it was set, not searched; an
  unknown method or a name --tune searches is refused before any run."""
  base = [
      sys.executable, "-m", "experiments.compare", f"--data_dir={ml100k_path.parents[1]}",
      f"--outdir={tmp_path}", "--methods=uncompressed,svd", "--ratios=1/32", "--rounds=1",
      "--clients_per_round=4", "--eval_every=1", "--item_lr=5"
  ]
  proc = subprocess.run(
      base + ["--method_settings=svd:item_lr=3,dense_lr=0.2;topk:item_lr=7", "--jobs=2"],
      capture_output=True,
      text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "compare.csv") as f:
    rows = {r["method"]: r for r in csv.DictReader(f)}
  assert rows["svd"]["tuned"] == "item_lr=3.0 (set);dense_lr=0.2 (set)"
  assert rows["uncompressed"]["tuned"] == ""
  for method, lr in (("uncompressed", 5.0), ("svd", 3.0)):
    summary = json.loads(
        (tmp_path / f"ml-100k_mf_{method}_1over32_s0" / "summary.json").read_text())
    assert summary["config"]["item_lr"] == lr
  # --overwrite through the parts: they train again, and the table holds what they trained
  # (the tabulation skipped every summary under --overwrite: "no finished runs").
  proc = subprocess.run(
      base
      + ["--method_settings=svd:item_lr=3,dense_lr=0.2;topk:item_lr=7", "--jobs=2", "--overwrite"],
      capture_output=True,
      text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "compare.csv") as f:
    assert sorted(r["method"] for r in csv.DictReader(f)) == ["svd", "uncompressed"]
  # Refused before any run (and before --outdir is made).
  proc = subprocess.run(base + ["--method_settings=tpok:item_lr=3", f"--outdir={tmp_path / 'bad'}"],
                        capture_output=True,
                        text=True,
                        timeout=300)
  assert proc.returncode == 1 and "--method='tpok' is invalid" in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not (tmp_path / "bad").exists()
  for bad, says in (("svd:user_lr=1;svd:user_lr=2", "svd sets 'user_lr' twice"),
                    ("svd:item_lr=3,4", "bad setting '4': expected name=value"),
                    ("svd:item_lr=x", "item_lr='x' is not a finite number"),
                    ("svd:tau=0.5", "cannot set 'tau' per method"), ("svd", "bad entry 'svd'")):
    with pytest.raises(ValueError, match=re.escape(f"--method_settings={bad}: ")) as e:
      compare.parse_method_settings(bad)
    assert says in str(e.value)
  proc = subprocess.run(base + ["--method_settings=svd:item_lr=3", "--tune=item_lr=1,2"],
                        capture_output=True,
                        text=True,
                        timeout=300)
  assert proc.returncode == 1 and "which --tune searches" in proc.stderr, proc.stderr[-2000:]


def test_over_seeds_counts_the_dense_baseline_once_whatever_ratio_holds_its_seeds():
  """compare runs uncompressed once per seed, under the first ratio of the invocation that
  trained it: seeds under 1/4 and 1/8 are one method's three seeds (mean and population std
  recomputed here), shown at payload 1."""
  metrics = ("final_hr@10", "final_ndcg@10", "final_full_hr@10", "final_full_ndcg@10")
  row = lambda method, ratio, seed, hr: dict(dataset="ml-100k",
                                             model="mf",
                                             method=method,
                                             payload_ratio=ratio,
                                             seed=seed,
                                             compression_up=0.0,
                                             **{m: hr for m in metrics})
  lines = compare.over_seeds([
      row("uncompressed", "1/4", 0, 0.6),
      row("uncompressed", "1/8", 1, 0.7),
      row("uncompressed", "1/8", 2, 0.8),
      row("svd", "1/8", 0, 0.5)
  ])
  dense = [l for l in lines if "| uncompressed |" in l]
  assert dense == [
      "| ml-100k | mf | uncompressed | 1 | 3 | " + " | ".join(["0.7000 ± 0.0816"] * 4)
      + " | 0.00% |"
  ]
  assert any(l.startswith("| ml-100k | mf | svd | 1/8 | 1 | 0.5000 ± 0.0000") for l in lines)


def test_runs_of_files_of_one_name_get_folders_of_their_own(tmp_path, monkeypatch):
  """Two files called ratings.csv (or ml-100k.csv beside the built-in ml-100k) once shared
  one run folder: the second was refused, or with --overwrite replaced the first."""
  for d in ("a", "b"):
    (tmp_path / d).mkdir()
    (tmp_path / d / "ratings.csv").write_text("1,2\n")
  a, b = (compare.run_label(str(tmp_path / d / "ratings.csv")) for d in ("a", "b"))
  assert a != b and a.startswith("ratings-") and b.startswith("ratings-")
  monkeypatch.chdir(tmp_path)
  assert compare.run_label("a/ratings.csv") == a  # the same file, however named
  digest = hashlib.sha256(str(tmp_path / "a" / "ratings.csv").encode()).hexdigest()
  assert a == f"ratings-{digest[:8]}"
  assert compare.run_label("ml-100k") == "ml-100k"
  assert compare.run_label("ml-100k.csv").startswith("ml-100k-")


def test_widened_grid_steps_past_the_edge_of_the_pick():
  grid = {"item_lr": [4.0, 8.0, 16.0], "dense_lr": [0.05, 0.1], "user_lr": [1.0]}
  assert compare.edge_names(grid, dict(item_lr=8.0, dense_lr=0.1, user_lr=1.0)) == ["dense_lr"]
  assert compare.widened(grid, dict(item_lr=4.0, dense_lr=0.1, user_lr=1.0)) == {
      "item_lr": [2.0, 4.0, 8.0, 16.0], "dense_lr": [0.05, 0.1, 0.2], "user_lr": [1.0]
  }
  # Not all positive: arithmetic steps.
  assert compare.widened({"w": [-1.0, 0.0, 2.0]}, {"w": 2.0}) == {"w": [-1.0, 0.0, 2.0, 4.0]}


def test_widening_stops_at_the_bound_of_the_setting():
  """A pick at weight_decay 0 or fluctuation 0 (their ranges' bounds) is no edge: the step
  past it would be an invalid setting (weight_decay -1e-5 used to abort the search)."""
  valid = functools.partial(compare.in_range, TrainConfig())
  grid = {"weight_decay": [0.0, 1e-5, 1e-4], "fluctuation": [0.0, 0.3, 0.6]}
  for point in (dict(weight_decay=0.0, fluctuation=0.0), dict(weight_decay=0.0, fluctuation=0.3)):
    assert compare.widened(grid, point, valid) == grid
    assert compare.open_edges(grid, point, valid) == []
  # The other edge of each still widens.
  point = dict(weight_decay=1e-4, fluctuation=0.6)
  assert compare.widened(grid, point, valid) == {
      "weight_decay": [0.0, 1e-5, 1e-4, 1.9e-4], "fluctuation": [0.0, 0.3, 0.6, 0.9]
  }
  assert compare.open_edges(grid, point, valid) == ["weight_decay", "fluctuation"]
  # A step past the range's bound is halved towards the edge until valid: 0.8 -> 1.6
  # (invalid), 1.2, 1.0 (fluctuation < 1), 0.9.
  grid, point = {"fluctuation": [0.4, 0.8]}, dict(fluctuation=0.8)
  assert compare.widened(grid, point, valid) == {"fluctuation": [0.4, 0.8, 0.9]}
  assert compare.open_edges(grid, point, valid) == ["fluctuation"]


def test_tune_widens_until_the_pick_is_inside_and_keeps_every_point(tmp_path, monkeypatch,
                                                                    data_now):
  """Validation HR@10 peaks at item_lr 32 (a diverged 128 is NaN): a grid of 2..8
  widens to 16 and 32 and 64, searching only new points, and a second call searches
  nothing."""
  searched = []

  def fake_sweep(config, seeds, points, log=print, checkpoint_dir=None):
    searched.append([p["item_lr"] for p in points])
    # A search checkpoints into the run's workdir (removed once its points are kept).
    assert checkpoint_dir.name == compare.SEARCH_CHECKPOINT_DIR
    assert checkpoint_dir.parent.parent == tmp_path
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / "round_000002.msgpack").write_bytes(b"")
    hr = lambda lr: math.nan if lr >= 128 else 0.7 - 0.01 * (math.log2(lr) - 5)**2
    return [dict(seed=seeds[0], **p, **{"hr@10": hr(p["item_lr"])}) for p in points]

  monkeypatch.setattr(compare, "sweep_points", fake_sweep)
  config = TrainConfig(workdir=str(tmp_path / "run"))
  point, hr, edges = compare.tune(config, {"item_lr": [2.0, 4.0, 8.0]}, widen=5)
  assert point == {"item_lr": 32.0} and hr == 0.7 and edges == []
  assert searched == [[2.0, 4.0, 8.0], [16.0], [32.0], [64.0]]
  kept = json.loads((tmp_path / "run" / compare.TUNING_FILE).read_text())["results"]
  assert [r["item_lr"] for r in kept] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
  assert not (tmp_path / "run" / compare.SEARCH_CHECKPOINT_DIR).exists()
  # Tabulating only: the best of the kept points whatever grid is named (a method may
  # have been searched from another starting grid), nothing searched; None where no
  # point was kept; a pick at the edge of what was searched is named.
  for grid in ([2.0, 4.0, 8.0], [16.0, 32.0, 64.0], [1.0]):
    assert compare.tune(config, {"item_lr": grid}, search=False, widen=5) == (point, hr, [])
  assert len(searched) == 4
  other = TrainConfig(workdir=str(tmp_path / "other"))
  assert compare.tune(other, {"item_lr": [2.0, 4.0, 8.0]}, search=False) is None
  assert compare.tune(other, {"item_lr": [2.0, 4.0, 8.0]})[::2] == ({"item_lr": 8.0}, ["item_lr"])
  assert compare.tune(other, {"item_lr": [16.0]},
                      search=False)[::2] == ({"item_lr": 8.0}, ["item_lr"])
  # Too few widenings: the pick is left at the edge and named; a NaN point never wins.
  assert compare.tune(config, {"item_lr": [2.0, 4.0, 8.0]},
                      widen=1)[::2] == ({"item_lr": 16.0}, ["item_lr"])
  assert compare.tune(config, {"item_lr": [64.0, 128.0]}, widen=0)[0] == {"item_lr": 64.0}
  # The diverged point is kept as null (strict JSON) and read back as NaN: it still never
  # wins, searched again or tabulated.
  assert [
      r["hr@10"]
      for r in json.loads((tmp_path / "run" / compare.TUNING_FILE).read_text())["results"]
      if r["item_lr"] == 128.0
  ] == [None]
  assert compare.tune(config, {"item_lr": [64.0, 128.0]}, widen=0)[0] == {"item_lr": 64.0}
  assert compare.tune(config, {"item_lr": [64.0, 128.0]}, search=False)[0] == {"item_lr": 32.0}
  assert searched[-1] == [128.0] and len(searched) == 6  # the repeats searched nothing


def test_a_search_with_other_settings_refuses_the_kept_file_unless_overwriting(
    tmp_path, monkeypatch, data_now):
  """A rerun with one flag changed searched at once and replaced tuning.json, then was
  refused by the run's workdir: the finished run's record was lost. It is refused before
  searching; tabulating reads nothing from the other settings' file; --overwrite
  searches again and replaces it."""
  searched = []

  def fake_sweep(config, seeds, points, log=print, checkpoint_dir=None):
    searched.append(config.rounds)
    return [dict(seed=seeds[0], **p, **{"hr@10": 0.5 + p["item_lr"] / 100}) for p in points]

  monkeypatch.setattr(compare, "sweep_points", fake_sweep)
  config = TrainConfig(workdir=str(tmp_path / "run"), rounds=20)
  assert compare.tune(config, {"item_lr": [8.0, 16.0]})[0] == {"item_lr": 16.0}
  path = tmp_path / "run" / compare.TUNING_FILE
  kept = path.read_text()
  longer = dataclasses.replace(config, rounds=21)
  with pytest.raises(WorkdirError, match=r"other settings: --rounds \(workdir 20, now 21\)"):
    compare.tune(longer, {"item_lr": [8.0, 16.0]})
  assert path.read_text() == kept and searched == [20]
  assert compare.tune(longer, {"item_lr": [8.0, 16.0]}, search=False) is None
  again = dataclasses.replace(longer, overwrite=True)
  assert compare.tune(again, {"item_lr": [8.0, 16.0]})[0] == {"item_lr": 16.0}
  assert searched == [20, 21] and json.loads(path.read_text())["config"]["rounds"] == 21


def test_a_search_kept_on_other_data_is_refused_unless_overwriting(tmp_path, monkeypatch, data_now):
  """The same flags on an edited dataset reused tuning.json's points (searched on the old
  data) as these data's. Refused before searching, as other flags are; tabulating reads
  nothing from it; --overwrite searches again. A file kept before the data were
  recorded is taken as it is."""
  searched = []

  def fake_sweep(config, seeds, points, log=print, checkpoint_dir=None):
    searched.append([p["item_lr"] for p in points])
    return [dict(seed=seeds[0], **p, **{"hr@10": 0.5 + p["item_lr"] / 100}) for p in points]

  monkeypatch.setattr(compare, "sweep_points", fake_sweep)
  config, grid = TrainConfig(workdir=str(tmp_path / "run"), rounds=20), {"item_lr": [8.0, 16.0]}
  assert compare.tune(config, grid)[0] == {"item_lr": 16.0}
  path = tmp_path / "run" / compare.TUNING_FILE
  kept = path.read_text()
  assert json.loads(kept)["data_sha256"] == "data-a"
  data_now["sha256"] = "data-b"
  for search in (True, False):  # tabulating too: else left out unsaid
    with pytest.raises(WorkdirError, match=r"other settings: its data \(the split differs"):
      compare.tune(config, grid, search=search)
  assert path.read_text() == kept and searched == [[8.0, 16.0]]
  assert compare.tune(dataclasses.replace(config, overwrite=True), grid)[0] == {"item_lr": 16.0}
  assert len(searched) == 2 and json.loads(path.read_text())["data_sha256"] == "data-b"
  record = json.loads(path.read_text())
  del record["data_sha256"]
  path.write_text(json.dumps(record))
  data_now["sha256"] = "data-c"
  assert compare.tune(config, grid)[0] == {"item_lr": 16.0} and len(searched) == 2


def test_a_finished_run_of_other_data_is_refused_not_tabulated(tmp_path, data_now):
  """A finished run's summary is read, not resumed, so the checkpoints' data check never
  ran: a run of the old data passed for one of the edited data. A summary written before
  the data were recorded is taken as it is."""
  config = TrainConfig(workdir=str(tmp_path), rounds=20)
  summary = dict(final=dict(round=20), config=dataclasses.asdict(config), data_sha256="data-a")
  (tmp_path / "summary.json").write_text(json.dumps(summary))
  finished = lambda c: compare.finished_summary(c, compare.data_sha256_asked(c, tabulating=False))
  assert finished(config) == summary
  assert finished(dataclasses.replace(config, rounds=30)) is None
  data_now["sha256"] = "data-b"
  with pytest.raises(WorkdirError, match="holds a run trained on other data.*delete that folder"):
    finished(config)
  del summary["data_sha256"]
  (tmp_path / "summary.json").write_text(json.dumps(summary))
  assert finished(config) == summary


def test_tabulating_where_the_data_are_absent_reads_finished_runs_unchecked(tmp_path, capsys):
  """--only_finished needs no data: a finished run (and a kept search) of a dataset file
  that is not there are tabulated, a line saying their data went unchecked; nothing is
  hashed for records that name no data. Training or searching needs the file."""
  config = TrainConfig(dataset=str(tmp_path / "gone.csv"), workdir=str(tmp_path / "run"), rounds=20)
  (tmp_path / "run").mkdir()
  summary = dict(final=dict(round=20), config=dataclasses.asdict(config), data_sha256="data-a")
  (tmp_path / "run" / "summary.json").write_text(json.dumps(summary))
  asked = compare.data_sha256_asked(config, tabulating=True)
  assert compare.finished_summary(config, asked) == summary
  assert "its data are not here, so the data of its records are not checked" in (
      capsys.readouterr().out)
  with pytest.raises(FileNotFoundError, match="gone.csv: no such file"):
    compare.finished_summary(config, compare.data_sha256_asked(config, tabulating=False))
  searched = dataclasses.replace(config, validation=True, workdir=None, quiet=False)
  compare.keep_results(tmp_path / "run" / compare.TUNING_FILE, searched, lambda: "data-a",
                       [dict(seed=0, item_lr=8.0, **{"hr@10": 0.5})], tmp_path / "none")
  assert compare.tune(config, {"item_lr": [8.0]}, search=False)[0] == {"item_lr": 8.0}


def test_a_search_of_a_run_another_process_holds_is_refused(tmp_path, monkeypatch, data_now):
  """A run's workdir held by another process (its lock): a search with points to run is
  refused before it trains any and keeps nothing; a search whose points are all kept,
  and tabulating, still read the kept points; released, the search runs."""
  searched = []

  def fake_sweep(config, seeds, points, log=print, checkpoint_dir=None):
    searched.append([p["item_lr"] for p in points])
    return [dict(seed=seeds[0], **p, **{"hr@10": 0.5 + 0.01 * p["item_lr"]}) for p in points]

  monkeypatch.setattr(compare, "sweep_points", fake_sweep)
  config = TrainConfig(workdir=str(tmp_path / "run"))
  assert compare.tune(config, {"item_lr": [2.0, 4.0]}) == ({"item_lr": 4.0}, 0.54, ["item_lr"])
  hold = ("import sys, time; from fedras_jax.workdir_lock import WorkdirLock; "
          "lock = WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")
  other = subprocess.Popen([sys.executable, "-c", hold, config.workdir],
                           stdout=subprocess.PIPE,
                           text=True)
  try:
    assert other.stdout.readline() == "held\n"
    with pytest.raises(WorkdirLockError, match=f"pid {other.pid}"):
      compare.tune(config, {"item_lr": [2.0, 4.0, 8.0]})
    assert searched == [[2.0, 4.0]]
    assert compare.tune(config, {"item_lr": [2.0, 4.0]})[0] == {"item_lr": 4.0}
    assert compare.tune(config, {"item_lr": [8.0]}, search=False)[0] == {"item_lr": 4.0}
  finally:
    other.kill()
    other.wait()
  assert compare.tune(config, {"item_lr": [2.0, 4.0, 8.0]})[0] == {"item_lr": 8.0}
  assert searched == [[2.0, 4.0], [8.0]]


def test_a_search_keeps_what_another_invocation_searched_before_it_took_the_lock(
    tmp_path, monkeypatch, data_now):
  """Another invocation keeps item_lr 8 between this search's first read of tuning.json and
  its taking the lock: the search reads the file again under the lock, does not search 8
  and keeps it (it rewrote the file with its own points only)."""
  searched = []

  def fake_sweep(config, seeds, points, log=print, checkpoint_dir=None):
    searched.append([p["item_lr"] for p in points])
    return [dict(seed=seeds[0], **p, **{"hr@10": 0.5 + 0.01 * p["item_lr"]}) for p in points]

  class LockAfterAnotherSearch(compare.WorkdirLock):

    def __enter__(self):
      config = dataclasses.replace(TrainConfig(), validation=True, workdir=None, quiet=False)
      compare.keep_results(self.workdir / compare.TUNING_FILE, config,
                           compare.data_sha256_asked(config, tabulating=False),
                           [dict(seed=0, item_lr=8.0, **{"hr@10": 0.9})], tmp_path / "none")
      return super().__enter__()

  monkeypatch.setattr(compare, "sweep_points", fake_sweep)
  monkeypatch.setattr(compare, "WorkdirLock", LockAfterAnotherSearch)
  config = TrainConfig(workdir=str(tmp_path / "run"))
  assert compare.tune(config, {"item_lr": [2.0, 4.0, 8.0]}) == ({"item_lr": 8.0}, 0.9, ["item_lr"])
  assert searched == [[2.0, 4.0]]
  kept = json.loads((tmp_path / "run" / compare.TUNING_FILE).read_text())["results"]
  assert sorted(r["item_lr"] for r in kept) == [2.0, 4.0, 8.0]


def test_a_search_over_a_new_name_keeps_the_points_searched_without_it(
    tmp_path, monkeypatch, data_now):
  """item_lr searched first, then dense_lr at one item_lr: the kept points (no dense_lr
  in them: they ran at the config's) take part, and one of them can win."""
  searched = []

  def fake_sweep(config, seeds, points, log=print, checkpoint_dir=None):
    searched.append(points)
    hr = lambda p: 0.6 + 0.01 * p["item_lr"] - abs(p.get("dense_lr", config.dense_lr) - 0.1)
    return [dict(seed=seeds[0], **p, **{"hr@10": hr(p)}) for p in points]

  monkeypatch.setattr(compare, "sweep_points", fake_sweep)
  config = TrainConfig(workdir=str(tmp_path / "run"), dense_lr=0.1)
  assert compare.tune(config, {"item_lr": [4.0, 8.0, 16.0]})[0] == {"item_lr": 16.0}
  grid = {"item_lr": [16.0], "dense_lr": [0.05, 0.1, 0.2]}
  point, hr, edges = compare.tune(config, grid, widen=0)
  # Only the two new points ran; the kept (16, 0.1) wins with 0.76.
  assert searched[1] == [{"item_lr": 16.0, "dense_lr": 0.05}, {"item_lr": 16.0, "dense_lr": 0.2}]
  assert point == {"item_lr": 16.0, "dense_lr": 0.1} and math.isclose(hr, 0.76)
  assert edges == []
  assert compare.tune(config, grid, search=False)[0] == point


def test_tune_picks_by_the_chosen_metric(tmp_path, monkeypatch, data_now):
  """HR@10 peaks at item_lr 8, NDCG@10 at 16: each metric picks its own peak, the
  second from the first's kept points, and the returned score is the pick's HR@10."""
  searched = []

  def fake_sweep(config, seeds, points, log=print, checkpoint_dir=None):
    searched.append(len(points))
    scores = {4.0: (0.60, 0.30), 8.0: (0.66, 0.33), 16.0: (0.65, 0.36), 32.0: (0.50, 0.20)}
    return [
        dict(seed=seeds[0], **p, **dict(zip(("hr@10", "ndcg@10"), scores[p["item_lr"]])))
        for p in points
    ]

  monkeypatch.setattr(compare, "sweep_points", fake_sweep)
  config = TrainConfig(workdir=str(tmp_path / "run"))
  grid = {"item_lr": [4.0, 8.0, 16.0, 32.0]}
  assert compare.tune(config, grid) == ({"item_lr": 8.0}, 0.66, [])
  assert compare.tune(config, grid, metric="ndcg@10") == ({"item_lr": 16.0}, 0.65, [])
  assert searched == [4]


def test_a_flat_validation_score_widens_no_edge(tmp_path, monkeypatch, data_now, capsys):
  """With at most 9 test negatives HR@10 is 1 for every setting: the pick (the first of a
  tie) sits at an edge, but the tie spans the grid, so nothing is widened (it was widened
  --tune_widen times for nothing); a setting flat beside one that rises is not widened with
  it; a grid diverging throughout (NaN: no tie) still widens."""
  searched = []

  def fake_sweep(config, seeds, points, **_):
    searched.append([p["item_lr"] for p in points])
    return [dict(seed=seeds[0], **p, **{"hr@10": min(1.0, p["item_lr"] / 8)}) for p in points]

  monkeypatch.setattr(compare, "sweep_points", fake_sweep)
  config = TrainConfig(workdir=str(tmp_path / "run"))
  assert compare.tune(config, {"item_lr": [8.0, 16.0]}, widen=3) == ({"item_lr": 8.0}, 1.0, [])
  assert searched == [[8.0, 16.0]]
  assert "validation hr@10 is the same across item_lr: its edge is not widened" in (
      capsys.readouterr().out)
  assert compare.tune(config, {"item_lr": [8.0, 16.0]}, search=False) == ({"item_lr": 8.0}, 1.0, [])
  # A rising score still widens: 1, 2 to 4 and 8 (each pick at the top edge, alone), and 8
  # to 16, which ties it: the pick 8 is then inside the tie, and the widening stops.
  other = TrainConfig(workdir=str(tmp_path / "other"))
  assert compare.tune(other, {"item_lr": [1.0, 2.0]}, widen=5) == ({"item_lr": 8.0}, 1.0, [])
  assert searched[1:] == [[1.0, 2.0], [4.0], [8.0], [16.0]]
  # Two settings, the score flat in dense_lr: only item_lr widens (dense_lr was widened too,
  # the pick taking its new low value at every step).
  points = []
  monkeypatch.setattr(
      compare, "sweep_points", lambda config, seeds, pts, **_: points.append(pts) or
      [dict(seed=seeds[0], **p, **{"hr@10": p["item_lr"] / 100}) for p in pts])
  two = TrainConfig(workdir=str(tmp_path / "two"))
  assert compare.tune(two, {"item_lr": [4.0, 8.0], "dense_lr": [0.05, 0.1]},
                      widen=1) == ({"item_lr": 16.0, "dense_lr": 0.05}, 0.16, ["item_lr"])
  assert [(p["item_lr"], p["dense_lr"]) for p in points[1]] == [(16.0, 0.05), (16.0, 0.1)]
  # Diverged (NaN) from item_lr 4 up: no tie, so the grid widens down to where it trains.
  points.clear()
  monkeypatch.setattr(
      compare, "sweep_points", lambda config, seeds, pts, **_: points.append(pts) or [
          dict(seed=seeds[0],
               **p,
               **{"hr@10": math.nan if p["item_lr"] >= 4 else 0.5 + p["item_lr"] / 100})
          for p in pts
      ])
  nan = TrainConfig(workdir=str(tmp_path / "nan"))
  assert compare.tune(nan, {"item_lr": [8.0, 16.0]}, widen=3) == ({"item_lr": 2.0}, 0.52, [])
  assert [[p["item_lr"] for p in pts] for pts in points] == [[8.0, 16.0], [4.0], [2.0], [1.0]]


def test_tabulating_takes_the_point_a_finished_run_was_trained_at(tmp_path, monkeypatch, data_now):
  """item_lr 2 and 4 tie on validation HR@10; a search over the widened grid (2, 4, 8)
  picks 2 (grid order), while the kept file order is 4, 8, 2: tabulating takes the
  point of the run that finished there (``recorded_pick``), not the first kept."""
  scores = {2.0: 0.65, 4.0: 0.65, 8.0: 0.60}
  monkeypatch.setattr(
      compare, "sweep_points", lambda config, seeds, points, **_:
      [dict(seed=seeds[0], **p, **{"hr@10": scores[p["item_lr"]]}) for p in points])
  config = TrainConfig(workdir=str(tmp_path / "run"))
  assert compare.tune(config, {"item_lr": [4.0, 8.0]})[0] == {"item_lr": 4.0}
  assert compare.tune(config, {"item_lr": [2.0, 4.0, 8.0]})[0] == {"item_lr": 2.0}
  grid = {"item_lr": [4.0, 8.0]}
  assert compare.tune(config, grid, search=False)[0] == {"item_lr": 4.0}  # first kept
  # The run that finished at the search's pick, 2: recorded_pick names it, tune takes it.
  trained = dataclasses.replace(config, item_lr=2.0)
  (tmp_path / "run").mkdir(exist_ok=True)
  (tmp_path / "run" / "config.json").write_text(json.dumps(dataclasses.asdict(trained)))
  assert compare.recorded_pick(config, grid) == {"item_lr": 2.0}
  assert compare.holds_other_pick(config, grid)
  assert not compare.holds_other_pick(trained, grid)
  # 4 ties 2, 8 is lower: a plateau, not a flat score; the pick at the edge stays an edge.
  assert compare.tune(config, grid, search=False,
                      prefer={"item_lr": 2.0}) == ({"item_lr": 2.0}, 0.65, ["item_lr"])
  # A point no search kept is not taken; a run differing in more than the grid is no pick.
  assert compare.tune(config, grid, search=False, prefer={"item_lr": 16.0})[0] == {"item_lr": 4.0}
  assert compare.recorded_pick(dataclasses.replace(config, rounds=7), grid) is None


def test_a_diverged_run_is_named_and_left_out_while_the_others_finish(ml100k_path, tmp_path):
  """A run whose model diverges stops (training.DEAD_ROUNDS); the comparison tabulates the
  other runs and exits with an error naming the stopped one. The diverged dense run is not
  trained again at the next ratio."""
  proc = subprocess.run([
      sys.executable, "-m", "experiments.compare", f"--data_dir={ml100k_path.parents[1]}",
      f"--outdir={tmp_path}", "--methods=uncompressed,svd", "--ratios=1/32,1/8", "--rounds=12",
      "--clients_per_round=4", "--eval_every=12", "--dim=8",
      "--method_settings=uncompressed:item_lr=1e12"
  ],
                        capture_output=True,
                        text=True,
                        timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  error = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(error) == 1 and error[0].startswith(
      "error: 1 run(s) stopped on non-finite updates and are left out of the table: "
      "ml-100k_mf_uncompressed_1over32_s0 (rounds "), error
  assert "every sampled client sent a non-finite update" in error[0]
  assert "   stopped: rounds " in proc.stdout
  with open(tmp_path / "compare.csv") as f:
    assert [(r["method"], r["payload_ratio"]) for r in csv.DictReader(f)] == [("svd", "1/32"),
                                                                              ("svd", "1/8")]
  assert proc.stdout.count("   stopped: rounds ") == 1
