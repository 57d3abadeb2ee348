"""The generated results page: its tables are the seed statistics of the compare rows
(checked by hand) and FedRAS's margins name the right baseline."""
import csv
import json
import shlex
import sys
from fractions import Fraction

import numpy as np
import pytest

from experiments import compare, pages, results
from fedras_jax.config import TrainConfig


def _row(method, ratio, seed, hr, ndcg, comp=0.9, tuned="item_lr=8"):
  row = {c: "" for c in compare.COLUMNS}
  row.update(dataset="ml-100k",
             model="mf",
             method=method,
             payload_ratio=ratio,
             seed=seed,
             rounds=300,
             tuned=tuned,
             compression_up=comp,
             info_loss_total=2.0 + seed)
  row["final_hr@10"], row["final_ndcg@10"] = hr, ndcg
  return row


ROWS = [
    _row("uncompressed", "1/32", 0, 0.68, 0.40, comp=0.0),
    _row("uncompressed", "1/32", 1, 0.70, 0.42, comp=0.0),
    _row("fedras", "1/32", 0, 0.67, 0.39, tuned="item_lr=16"),
    _row("fedras", "1/32", 1, 0.69, 0.41, tuned="item_lr=16"),
    _row("svd", "1/32", 0, 0.60, 0.35),
    _row("svd", "1/32", 1, 0.62, 0.37),
    _row("topk", "1/32", 0, 0.64, 0.30),
    _row("topk", "1/32", 1, 0.64, 0.30),
    _row("fedras_fixed_k", "1/32", 0, 0.75, 0.45),  # not a baseline of FedRAS
]


@pytest.fixture
def part(tmp_path):
  d = tmp_path / "ml100k_mf_r32"
  d.mkdir()
  with open(d / "compare.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, compare.COLUMNS)
    writer.writeheader()
    writer.writerows(ROWS)
  (d / "compare.json").write_text(
      json.dumps(
          dict(command="python -m experiments.compare --x=1",
               commit="abc1234",
               machine="x86_64, 2 CPUs, cpu, jax 0.10.2",
               date="2026-12-01")))
  return d


def _sibling(part, name, rows):
  """A part ``name`` beside ``part`` holding ``rows`` (its provenance copied)."""
  d = part.parent / name
  d.mkdir()
  with open(d / "compare.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, compare.COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  (d / "compare.json").write_text((part / "compare.json").read_text())
  return d


def test_method_table_has_mean_and_population_std_over_seeds(part):
  _, rows = results.read_part(part)
  lines = results.method_table(rows)
  fedras = next(line for line in lines if "| fedras | 1/32" in line)
  # mean of 0.67, 0.69 = 0.68, population std = 0.01; NDCG 0.40 +- 0.01
  assert "| 2 | 0.6800 ± 0.0100 | 0.4000 ± 0.0100 |" in fedras
  assert "| 90.0% | 2.5 | item_lr=16 |" in fedras
  assert "| topk | 1/32 | 2 | 0.6400 ± 0.0000 |" in next(l for l in lines if "| topk |" in l)
  methods = [line.split(" | ")[2] for line in lines[2:]]
  # One seed: its value, no "± 0.0000" that reads as a measured spread.
  one = results.method_table([r for r in rows if r["seed"] == "0"])
  assert "| fedras | 1/32 | 1 | 0.6700 | 0.3900 |" in "\n".join(one)
  assert methods == ["uncompressed", "fedras", "svd", "topk", "fedras_fixed_k"]  # as run
  # Seeds run at a pick by the command's flags (no search of their own) say so.
  mixed = results.method_table([{**r, "tuned": ""} if r["seed"] == "1" else r for r in rows])
  assert "| 90.0% | 2.5 | -; item_lr=16 |" in next(l for l in mixed if "| fedras | 1/32" in l)
  assert "| - |" in next(
      l for l in results.method_table([{**r, "tuned": ""} for r in rows]) if "| fedras | 1/32" in l)


def test_margins_against_uncompressed_and_the_best_baseline_on_each_metric(part):
  _, rows = results.read_part(part)
  line = results.margins(rows)[2]
  # FedRAS 0.68/0.40, uncompressed 0.69/0.41; the best baseline on HR@10 is topk (0.64),
  # on NDCG@10 svd (0.36 against topk's 0.30); no full-ranking metrics in these rows.
  assert line == ("| ml-100k | mf | 1/32 | 2 | -0.0100 / -0.0100 | +0.0400 / +0.0400 | topk / svd "
                  "| - | - | - |")


def test_margins_pair_the_seeds_both_methods_ran(part):
  _, rows = results.read_part(part)
  full = lambda r, hr, ndcg: {**r, "final_full_hr@10": hr, "final_full_ndcg@10": ndcg}
  rows = [
      full(r, 0.2 + 0.1 * int(r["seed"]), 0.1) if r["method"] in ("fedras", "uncompressed") else r
      for r in rows
      if r["method"] != "topk"
  ]
  rows += [
      # Uncompressed's seed 2 (no FedRAS seed 2) is left out of the pairing.
      full(_row("uncompressed", "1", 2, 0.99, 0.99, comp=0.0), 0.99, 0.99),
      # colr ran seed 0 only: its margin is over that seed, and the cell says so.
      full(_row("colr", "1/32", 0, 0.66, 0.36), 0.25, 0.12),
      # topk shares no seed with FedRAS: unpaired means; its NaN NDCG is never "best".
      _row("topk", "1/32", 7, 0.70, "nan"),
  ]
  rows = [{k: str(v) for k, v in r.items()} for r in rows]
  line = results.margins(rows)[2]
  # Sampled: uncompressed over seeds 0, 1: -0.01 / -0.01. Best on HR@10: topk, 0.68 - 0.70
  # (unpaired; svd +0.07, colr +0.01); on NDCG@10: colr, 0.39 - 0.36 over seed 0 (svd +0.04).
  # Full ranking: FedRAS 0.25 / 0.1 against uncompressed's 0.25 / 0.1 over seeds 0, 1; colr
  # alone has full metrics: seed 0's 0.2 / 0.1 minus 0.25 / 0.12.
  assert line == ("| ml-100k | mf | 1/32 | 2 | -0.0100 / -0.0100 | -0.0200 (unpaired) / +0.0300 "
                  "(1 of its seeds) | topk / colr | +0.0000 / +0.0000 | -0.0500 (1 of its seeds) / "
                  "-0.0200 (1 of its seeds) | colr |")
  ours = {"0": {"m": "0.5"}, "1": {"m": "0.7"}}
  assert results.paired_margin(ours, {"1": {"m": "0.4"}, "2": {"m": "0.0"}},
                               "m") == (pytest.approx(0.3), 1)
  assert results.paired_margin(ours, {"5": {"m": "0.4"}}, "m") == (pytest.approx(0.2), 0)
  # A number 0 is a value (was read as missing), an empty cell is missing.
  assert results.paired_margin({"0": {"m": 0.5}}, {"0": {"m": 0.0}}, "m") == (0.5, 1)
  assert np.isnan(results.paired_margin({"0": {"m": 0.5}}, {"0": {"m": ""}}, "m")[0])
  # One metric missing from every baseline: that value is "-", the other keeps its note.
  cell = results._margin_cell([(0.1, 2), (np.nan, 0)], {"0": {}, "1": {}})
  assert cell == "+0.1000 / -"


def test_part_section_states_how_it_was_made(part):
  made, rows = results.read_part(part)
  text = "\n".join(results.part_section(part.name, made, rows, None))
  assert "`python -m experiments.compare --x=1`" in text and "abc1234" in text
  assert "results/ml100k_mf_r32/compare.csv" in text


def test_a_part_without_its_files_is_named(tmp_path):
  with pytest.raises(ValueError, match="compare.csv: missing"):
    results.read_part(tmp_path)


def test_one_uncompressed_run_under_two_ratios_is_refused(part):
  """The dense baseline runs once per seed, under whichever ratio came first: its seed 0
  tabulated under 1/32 and under 1/8 is one run listed twice."""
  twice = _sibling(part, "twice", ROWS + [_row("uncompressed", "1/8", 0, 0.70, 0.41)])
  with pytest.raises(ValueError, match="run ml-100k, mf, uncompressed, 1, 0 appears twice"):
    results.read_part(twice)
  # Its seeds under several ratios are one method's runs.
  seeds = _sibling(part, "seeds", ROWS + [_row("uncompressed", "1/8", 2, 0.72, 0.41)])
  _, rows = results.read_part(seeds)
  assert {r["payload_ratio"] for r in rows if r["method"] == "uncompressed"} == {"1"}


def test_the_plot_is_drawn_from_the_rows(part, monkeypatch):
  """HR@10 against the payload ratio: one line per method through its seeds' mean at
  each ratio, the population std as error bars (recomputed here from the rows)."""
  pytest.importorskip("matplotlib")
  _, rows = results.read_part(part)
  figures, save = [], pages.save_figure
  monkeypatch.setattr(pages, "save_figure", lambda fig, *a, **k:
                      (figures.append(fig), save(fig, *a, **k)))
  assert results.plot_part(rows, part / "ratio.png")
  assert (part / "ratio.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  drawn = {c.get_label(): c for c in figures[0].axes[0].containers}
  assert set(drawn) == {r["method"] for r in rows}
  for method, container in drawn.items():
    ratios = sorted({r["payload_ratio"] for r in rows if r["method"] == method},
                    key=lambda t: float(Fraction(t)))
    hrs = [[
        float(r["final_hr@10"]) for r in rows if r["method"] == method and r["payload_ratio"] == t
    ] for t in ratios]
    xs, ys = (np.asarray(v, float) for v in container.lines[0].get_data())
    np.testing.assert_allclose(xs, [float(Fraction(t)) for t in ratios])
    np.testing.assert_allclose(ys, [np.mean(h) for h in hrs])
    (bars,) = container.lines[2]
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in bars.get_segments()],
                               [2 * np.std(h) for h in hrs],
                               atol=1e-12)


def _curves():
  curves = []
  for method, seed, hrs in (("uncompressed", 0, (0.5, 0.68, 0.68)), ("uncompressed", 1, (0.6, 0.69,
                                                                                         0.70)),
                            ("fedras", 0, (0.4, 0.6, 0.685)), ("fedras", 1, (0.4, 0.5, 0.6))):
    for i, hr in enumerate(hrs):
      curves.append(
          dict(dataset="ml-100k",
               model="mf",
               method=method,
               payload_ratio="1/32",
               seed=str(seed),
               round=25.0 * (i + 1),
               sim_seconds=100.0 * (i + 1) + seed,
               hr=0,
               **{"hr@10": hr, "ndcg@10": 0.0}))
  return curves


def test_time_to_target_finds_the_first_evaluation_at_the_target(part):
  _, rows = results.read_part(part)  # uncompressed final HR@10: 0.68, 0.70 -> target 0.68
  lines = results.time_to_target(_curves(), rows)
  assert "| ml-100k | mf | uncompressed | 1/32 | 2 of 2 | 200 | 50 |" in lines
  # fedras: seed 0 reaches 0.68 at its third evaluation (300 s), seed 1 never
  assert "| ml-100k | mf | fedras | 1/32 | 1 of 2 | 300 | 75 |" in lines


def test_a_tabulating_command_says_what_trained_the_runs(part):
  made, rows = results.read_part(part)
  section = lambda: "\n".join(results.part_section("p", made, rows, None))
  assert "trained by the same command" not in section()
  made["command"] += " --only_finished"
  assert "trained by the same command" in section()
  made["command"] = "compare --x=1 (a note: the runs of compare --only_finished elsewhere)"
  assert "trained by the same command" not in section()  # a note's words are not the command's
  made["command"] = "compare --x=1 --only_finished; compare --y (the same, once per seed)"
  assert "trained by the same command" in section()
  made["command"] = "compare --x=1 --only_finished"
  assert "without a finished run" not in section()  # --methods not in the command
  # The grid of --methods x --ratios: colr never ran, FedRAS and svd only at 1/32, and
  # uncompressed (run once, shown at payload 1) ran.
  made["command"] += " --methods=uncompressed,fedras,svd,colr --ratios=1/4,1/32"
  assert ("- in the command, without a finished run here: fedras at 1/4; svd at 1/4; colr"
          in section())
  made["command"] = made["command"].replace("--ratios=1/4,1/32", "--ratios=1/32")
  assert "without a finished run here: colr\n" in section() + "\n"
  # absl's reading: "--flag value" too, the last occurrence winning, a flagfile read.
  made["command"] = "compare --methods=topk --methods fedras,colr --ratios 1/32"
  assert "without a finished run here: colr\n" in section() + "\n"
  assert results._command_list("x --flagfile=configs/ml100k_mf.flags", "dataset") == ["ml-100k"]
  assert results._command_list("x --flagfile=configs/ml100k_mf.flags --dataset=y",
                               "dataset") == ["y"]
  # --seeds: the seeds missing at a ratio where some ran; the dense baseline's at any ratio.
  made["command"] = ("compare --methods=uncompressed,fedras,fedras_fixed_k,colr --ratios=1/4,1/32"
                     " --seeds=0,1,2")
  assert ("without a finished run here: uncompressed (seed 2); fedras at 1/4 (every seed) and"
          " 1/32 (seed 2); fedras_fixed_k at 1/4 (every seed) and 1/32 (seeds 1, 2); colr\n"
         ) in section() + "\n"
  made["command"] = "compare --methods=fedras --ratios=1/4,1/8,1/32 --seeds=0,1"
  assert "without a finished run here: fedras at 1/4, 1/8\n" in section() + "\n"
  made["command"] = "compare --methods=uncompressed,fedras --ratios=1/32 --seeds=S"  # a template
  assert "without a finished run" not in section()
  # Notes in a command are free text: an apostrophe is no quotation.
  assert results._command_list("x --seeds=0,1 (item_lr: the search's pick)", "seeds") == ["0", "1"]


def test_curve_means_average_the_seeds_at_each_round():
  means = results.curve_means(_curves())
  # fedras round 25: seeds at 100 s and 101 s, HR@10 0.4 and 0.4; round 75: 0.685, 0.6
  assert means[("1/32", "fedras")][0] == pytest.approx((25.0, 100.5, 0.4))
  assert means[("1/32", "fedras")][2] == pytest.approx((75.0, 300.5, 0.6425))
  assert [p[0] for p in means[("1/32", "uncompressed")]] == [25.0, 50.0, 75.0]


def test_the_curve_and_information_loss_plots(part, monkeypatch):
  """Curves: per method, the seeds' mean simulated seconds and HR@10 at each round.
  Information loss: one bar per (ratio, method), the seeds' mean (recomputed here)."""
  pytest.importorskip("matplotlib")
  _, rows = results.read_part(part)
  figures, save = [], pages.save_figure
  monkeypatch.setattr(pages, "save_figure", lambda fig, *a, **k:
                      (figures.append(fig), save(fig, *a, **k)))
  assert results.plot_curves(_curves(), part / "curves.png")
  assert results.plot_info_loss(rows, part / "info_loss.png")
  for name in ("curves.png", "info_loss.png"):
    assert (part / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  (curves_ax,) = figures[0].axes
  drawn = {line.get_label(): np.asarray(line.get_data(), float) for line in curves_ax.lines}
  for method, seeds in (("uncompressed", ((0.5, 0.68, 0.68), (0.6, 0.69, 0.70))),
                        ("fedras", ((0.4, 0.6, 0.685), (0.4, 0.5, 0.6)))):
    np.testing.assert_allclose(drawn[method], [[100.5, 200.5, 300.5], np.mean(seeds, axis=0)])
  assert set(drawn) == {"uncompressed", "fedras"}
  bars = figures[1].axes[0].containers
  drawn = {c.get_label(): sorted(b.get_height() for b in c) for c in bars}
  want = {}
  for r in rows:
    if r["method"] != "uncompressed":
      want.setdefault(r["method"], {}).setdefault(r["payload_ratio"],
                                                  []).append(float(r["info_loss_total"]))
  assert set(drawn) == set(want)
  for method, by_ratio in want.items():
    np.testing.assert_allclose(drawn[method], sorted(np.mean(v) for v in by_ratio.values()))


def test_the_dense_baseline_counts_at_every_ratio(part):
  """compare runs uncompressed once, under its first ratio: the page shows it at
  payload 1 and measures FedRAS at every ratio against it."""
  made, rows = results.read_part(part)
  assert {r["payload_ratio"] for r in rows if r["method"] == "uncompressed"} == {"1"}
  rows += [dict(r, payload_ratio="1/8", final_hr=0) for r in rows if r["method"] == "fedras"]
  lines = results.margins(rows)
  assert "| ml-100k | mf | 1/8 | 2 | -0.0100 / -0.0100 | - | - | - | - | - |" in lines
  assert results.margins([r for r in rows if r["method"] == "fedras"])[2:] == []  # FedRAS alone
  assert "| ml-100k | mf | 1/32 | 2 | -0.0100 / -0.0100 | +0.0400 / +0.0400 | topk / svd |" in "\n".join(
      lines)
  assert "| ml-100k | mf | uncompressed | 1 | 2 |" in "\n".join(results.method_table(rows))


def test_published_figures_are_set_beside_the_parts_means(part):
  (part / "published.csv").write_text("method,payload_ratio,hr@10,source\n"
                                      "svd,1/32,0.585,paper\n"
                                      "uncompressed,1/32,0.72,paper\n"
                                      "colr,1/32,0.5,paper\n")
  _, rows = results.read_part(part)
  lines = results.published_table(rows, results.read_published(part))
  # svd: mean 0.61, 0.61 - 0.585 = +0.025 (within 0.03); uncompressed (shown at "1")
  # 0.69 - 0.72 = -0.03; colr was not run.
  assert lines[2] == "| svd | 1/32 | 0.6100 | 0.585 | +0.0250 | yes | paper |"
  assert lines[3].startswith("| uncompressed | 1 | 0.6900 | 0.720 | -0.0300 |")
  assert lines[4] == "| colr | 1/32 | not run | 0.500 | - | - | paper |"
  assert "Against published figures" in "\n".join(
      results.part_section(part.name, {"command": "c", "commit": "x", "machine": "m", "date": "d"},
                           rows,
                           None,
                           published=results.read_published(part)))
  # No FedRAS runs in this part's rows: no margins table.
  baselines = [r for r in rows if r["method"] not in ("fedras", "fedras_fixed_k")]
  assert "FedRAS − uncompressed" not in "\n".join(
      results.part_section(part.name, {"command": "c", "commit": "x", "machine": "m", "date": "d"},
                           baselines, None))
  (part / "published.csv").write_text("method,payload_ratio,hr@10,source\nsvd,1/32,high,paper\n")
  with pytest.raises(ValueError, match=r"published.csv:2: hr@10 'high'"):
    results.read_published(part)


def test_machine_line_names_the_cpus_of_a_narrowed_affinity(monkeypatch):
  monkeypatch.setattr(pages.os, "cpu_count", lambda: 8)
  monkeypatch.setattr(pages.os, "sched_getaffinity", lambda pid: {3}, raising=False)
  assert pages.cpus_text() == "8 CPUs (1 in this process's affinity)"
  monkeypatch.setattr(pages.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
  assert pages.cpus_text() == "8 CPUs"


def test_a_part_with_a_reference_gets_margins_against_that_parts_runs(part):
  # Its own uncompressed and SVD runs (this part's flags) stand in place of the
  # reference's, not pooled with them.
  diag = _sibling(part, "gains", [
      _row("fedras", "1/32", 0, 0.70, 0.43),
      _row("fedras", "1/32", 1, 0.70, 0.41),
      _row("uncompressed", "1/32", 0, 0.50, 0.20, comp=0.0),
      _row("svd", "1/32", 0, 0.66, 0.40),
      _row("svd", "1/32", 1, 0.66, 0.40),
  ])
  made, rows = results.read_part(diag)
  assert results.read_reference(diag, rows) is None
  (diag / "reference").write_text("ml100k_mf_r32\n")
  reference = results.read_reference(diag, rows)
  assert reference[0] == "ml100k_mf_r32"
  text = "\n".join(results.part_section("gains", made, rows, None, reference=reference))
  # The link is the referenced part's heading's anchor.
  assert results.heading("ml100k_mf_r32", reference[1]) == "ml100k_mf_r32: ml-100k, mf"
  assert "runs of [ml100k_mf_r32](#ml100k_mf_r32-ml-100k-mf):" in text
  # This part's FedRAS 0.70/0.42 against its own uncompressed (seed 0: 0.70/0.43 minus
  # 0.50/0.20) and the best baselines of its own SVD 0.66/0.40 and the reference's topk
  # 0.64/0.30 (the reference's FedRAS, fixed K and SVD left out).
  assert ("| ml-100k | mf | 1/32 | 2 | +0.2000 (1 of its seeds) / +0.2300 (1 of its seeds) | "
          "+0.0400 / +0.0200 | svd |") in text
  # Without its own runs, those of the reference: uncompressed 0.69/0.41, the best
  # baselines topk 0.64 (HR) and svd 0.36 (NDCG).
  fedras_only = [r for r in rows if r["method"] == "fedras"]
  text = "\n".join(results.part_section("gains", made, fedras_only, None, reference=reference))
  assert "| ml-100k | mf | 1/32 | 2 | +0.0100 / +0.0100 | +0.0600 / +0.0600 | topk / svd |" in text
  for bad in ("gains", "nosuch", "", ".", ".."):
    (diag / "reference").write_text(bad)
    with pytest.raises(ValueError, match="not another part"):
      results.read_reference(diag, rows)
  # A part with nothing to compare against for this part's dataset and model.
  (diag / "reference").write_text("ml100k_mf_r32")
  other = [dict(r, dataset="ml-1m") for r in rows]
  with pytest.raises(ValueError, match="no uncompressed or baseline run of"):
    results.read_reference(diag, other)
  # Runs of another length: their final metrics do not compare.
  longer = [dict(r, rounds="1000") for r in rows]
  with pytest.raises(ValueError,
                     match=r"\['1000'\] rounds long, those of part 'ml100k_mf_r32' \['300'\]"):
    results.read_reference(diag, longer)
  # Nor do runs scored among other numbers of sampled negatives (an empty or missing cell, as
  # the reference's here and every compare.csv written before the column: 99).
  fewer = [dict(r, test_negatives="49") for r in rows]
  with pytest.raises(ValueError,
                     match=r"\['49'\] sampled negatives per user, those of part 'ml100k_mf_r32' "
                     r"\['99'\]"):
    results.read_reference(diag, fewer)


def test_a_part_of_baselines_only_joins_its_references_baselines(part):
  """Methods added to a grid later (a part without FedRAS runs): the reference's FedRAS is
  set against them and the reference's own baselines, the best of all named, at the
  ratios the part ran, its runs in place of the reference's of the same method."""
  with open(part / "compare.csv", "a", newline="") as f:
    csv.DictWriter(f, compare.COLUMNS).writerows([
        # The reference's own embedding K-Means at 1/32, which the part's runs replace.
        _row("embedding_kmeans", "1/32", 0, 0.80, 0.50),
        # A ratio the part did not run: not shown with it.
        _row("fedras", "1/8", 0, 0.66, 0.38),
        _row("embedding_kmeans", "1/8", 0, 0.69, 0.41)
    ])
  more = _sibling(part, "ekm", [
      _row("embedding_kmeans", "1/32", 0, 0.66, 0.34),
      _row("embedding_kmeans", "1/32", 1, 0.66, 0.34)
  ])
  (more / "reference").write_text("ml100k_mf_r32")
  made, rows = results.read_part(more)
  reference = results.read_reference(more, rows)
  text = "\n".join(results.part_section("ekm", made, rows, None, reference=reference))
  assert ("The FedRAS runs of [ml100k_mf_r32](#ml100k_mf_r32-ml-100k-mf) against this part's "
          "runs" in text)
  # The reference's FedRAS (0.67/0.39, 0.69/0.41) against its uncompressed (0.68/0.40,
  # 0.70/0.42), against this part's embedding K-Means (0.66/0.34 both seeds; HR@10 ahead
  # of the reference's topk 0.64) and the reference's svd (0.35/0.37 NDCG@10, ahead of
  # this part's).
  row = ("| ml-100k | mf | 1/32 | 2 | -0.0100 / -0.0100 | +0.0200 / +0.0400 | "
         "embedding_kmeans / svd |")
  assert row in text
  overview = results.overview([("ekm", made, rows, reference)])
  ratio_lines = [line for line in overview[2:] if "| 1/" in line]
  assert len(ratio_lines) == 1 and ratio_lines[0].startswith(f"| [ekm](#ekm-ml-100k-mf) {row}")
  assert "| 1/8 |" not in text
  # A reference without a FedRAS run has nothing to set against these.
  _sibling(part, "no_fedras", [r for r in ROWS if r["method"] != "fedras"])
  (more / "reference").write_text("no_fedras")
  with pytest.raises(ValueError, match="part 'no_fedras' has no FedRAS run of"):
    results.read_reference(more, rows)


def test_a_part_with_a_reference_times_its_runs_to_that_parts_uncompressed_target(part):
  """A part without uncompressed runs of its own (a FedRAS variant) still gets the time
  to target, set by the reference part's uncompressed runs of the same dataset and model
  (final HR@10 0.68, 0.70: mean 0.69, target 0.68); a dataset without any gets no line."""
  diag = _sibling(part, "gains",
                  [_row("fedras", "1/32", 0, 0.685, 0.4),
                   _row("fedras", "1/32", 1, 0.675, 0.3)])
  (diag / "reference").write_text("ml100k_mf_r32")
  made, rows = results.read_part(diag)
  # Seed 1 peaks at 0.675: below the mean minus 0.01 (0.68), above a seed's minus 0.01.
  curves = [
      dict(c, **{"hr@10": 0.675}) if (c["seed"], c["round"]) == ("1", 75.0) else c
      for c in _curves()
      if c["method"] == "fedras"
  ]
  ml1m = dict(curves[0], dataset="ml-1m", **{"hr@10": 0.1})  # no uncompressed run of ml-1m
  reference = results.read_reference(diag, rows)
  # An uncompressed run of another dataset in the reference sets no target here.
  reference = (reference[0],
               reference[1] + [dict(ROWS[0], dataset="ml-1m", **{"final_hr@10": 0.1})])
  section = lambda reference, rows=rows: "\n".join(
      results.part_section("gains", made, rows, None, curves=curves + [ml1m], reference=reference))
  assert "Simulated time" not in section(None)  # no target without uncompressed runs
  text = section(reference)
  assert ("Simulated time to the uncompressed final HR@10 minus 0.01 (where this part has "
          "none, those of [ml100k_mf_r32](#ml100k_mf_r32-ml-100k-ml-1m-mf)") in text
  timed = text.split("Simulated time")[1].split("\n", 1)[1]  # the table, not its caption
  assert "| ml-100k | mf | fedras | 1/32 | 1 of 2 | 300 | 75 |" in timed
  assert "ml-1m" not in timed and "| uncompressed |" not in timed
  # A part with its own uncompressed runs (HR@10 0.60: target 0.59) uses those: both
  # seeds reach it.
  own = rows + [_row("uncompressed", "1/32", 0, 0.60, 0.3, comp=0.0)]
  text = section(reference, own)
  assert "(where this part has none" not in text
  assert "| ml-100k | mf | fedras | 1/32 | 2 of 2 |" in text


def test_runs_longer_than_300_rounds_show_their_metrics_at_round_300(part):
  _, rows = results.read_part(part)
  curves = [
      dict(dataset="ml-100k",
           model="mf",
           method=m,
           payload_ratio="1/32",
           seed=str(s),
           round=float(rnd),
           sim_seconds=0.0,
           **{"hr@10": hr, "ndcg@10": nd})
      for m, s, rnd, hr, nd in (("fedras", 0, 300, 0.60, 0.30), ("fedras", 1, 300, 0.64, 0.34),
                                ("fedras", 0, 250, 0.10, 0.10), ("svd", 0, 300, 0.5,
                                                                 0.2), ("svd", 1, 300, 0.5, 0.2))
  ]
  assert len(results.at_round(curves, rows)) == 2  # every run ends at round 300
  longer = [{**r, "rounds": "1000"} if r["method"] == "fedras" else r for r in rows]
  lines = results.at_round(curves, longer)
  # round 300: mean 0.62 ± 0.02 (HR), 0.32 ± 0.02 (NDCG); final: the rows' 0.68 ± 0.01
  assert lines[2:] == [
      "| ml-100k | mf | fedras | 1/32 | 2 | 0.6200 ± 0.0200 | 0.3200 ± 0.0200 | 1000 | "
      "0.6800 ± 0.0100 | 0.4000 ± 0.0100 |"
  ]
  # Runs of two lengths are two lines, each with its own seeds' round-300 figures.
  mixed = [{**r, "rounds": "1000" if r["seed"] == "0" else "500"} if r["method"] == "fedras" else r
           for r in rows]
  assert results.at_round(curves, mixed)[2:] == [
      "| ml-100k | mf | fedras | 1/32 | 1 | 0.6000 | 0.3000 | 1000 | 0.6700 | 0.3900 |",
      "| ml-100k | mf | fedras | 1/32 | 1 | 0.6400 | 0.3400 | 500 | 0.6900 | 0.4100 |"
  ]
  section = "\n".join(
      results.part_section("p", {"command": "c", "commit": "x", "machine": "m", "date": "d"},
                           longer, None, curves))
  assert "HR@10 at round 300" in section


def test_the_overview_holds_every_parts_margins_in_ratio_order(part):
  _, rows = results.read_part(part)
  rows += [{**r, "payload_ratio": "1/4"} for r in rows if r["method"] in ("fedras", "svd")]
  ref_rows = [r for r in rows if r["method"] != "fedras"]
  gains = [
      {**r, "final_hr@10": "0.70", "final_ndcg@10": "0.42"} for r in rows if r["method"] == "fedras"
  ]
  made = lambda methods: {"command": f"python -m experiments.compare --methods={methods}"}
  baselines = [r for r in rows if r["method"] in ("uncompressed", "svd")]
  lines = results.overview([("main", made("fedras,svd"), rows, None),
                            ("gains", made("fedras"), gains, ("main", ref_rows)),
                            ("planned", made("uncompressed,svd,fedras"), baselines, None),
                            ("baselines", made("uncompressed,svd"), baselines, None)])
  link = lambda name: f"[{name}](#{name}-ml-100k-mf)"
  # FedRAS 0.68/0.40 against uncompressed 0.69/0.41 and the best baselines, topk 0.64 (HR) and
  # svd 0.36 (NDCG) at 1/32, svd 0.61/0.36 at 1/4 (the only one there); 1/4 before 1/32. A
  # part whose command runs FedRAS without a finished FedRAS run says so; one whose command
  # does not run FedRAS has no row.
  tail = " - | - | - |"
  assert lines[2:] == [
      f"| {link('main')} | ml-100k | mf | 1/4 | 2 | -0.0100 / -0.0100 | +0.0700 / +0.0400 | svd |"
      + tail,
      f"| {link('main')} | ml-100k | mf | 1/32 | 2 | -0.0100 / -0.0100 | +0.0400 / +0.0400 | "
      "topk / svd |" + tail,
      f"| {link('gains')} | ml-100k | mf | 1/4 | 2 | +0.0100 / +0.0100 | +0.0900 / +0.0600 | svd |"
      + tail,
      f"| {link('gains')} | ml-100k | mf | 1/32 | 2 | +0.0100 / +0.0100 | +0.0600 / +0.0600 | "
      "topk / svd |" + tail,
      f"| {link('planned')} | ml-100k | mf | - | 0 | no FedRAS run finished yet | - | - | - | - | - |",
  ]


def test_a_pages_command_is_quoted_for_the_shell(monkeypatch):
  monkeypatch.setattr(sys, "argv", ["compare.py", "--tune=item_lr=4,8;dense_lr=0.1", "--seeds=0"])
  command = pages.provenance("experiments.compare")["command"]
  assert command == "python -m experiments.compare '--tune=item_lr=4,8;dense_lr=0.1' --seeds=0"
  assert shlex.split(command)[3:] == sys.argv[1:]


def _headline(tmp_path, *lines):
  path = tmp_path / "headline.csv"
  path.write_text("dataset,model,payload_ratio,part,fedras_setting,see\n"
                  + "".join(line + "\n" for line in lines))
  return path


def test_the_acceptance_table_checks_each_cell_against_the_issues_targets(part, monkeypatch):
  made, rows = results.read_part(part)
  parts = {part.name: (made, rows, None)}
  path = _headline(part.parent, "ml-100k,mf,1/32,ml100k_mf_r32,--item_lr=16,design/fedras.md")
  # FedRAS 0.68/0.40 against uncompressed 0.69/0.41: -0.01 on both, outside MF's 0.005;
  # ahead of the best baselines, topk (HR, +0.04) and svd (NDCG, +0.04).
  assert results.headline(path, parts)[2] == (
      "| ml-100k | mf | 1/32 | [ml100k_mf_r32](#ml100k_mf_r32-ml-100k-mf) `--item_lr=16` | 300 | "
      "2 | -0.0100 / -0.0100 | no: HR@10, NDCG@10 | +0.0400 / +0.0400 | topk / svd | yes | "
      "svd 2, topk 2 | [design/fedras.md](design/fedras.md) |")
  # A margin of exactly the target is within it; a baseline level on a metric is not beaten.
  monkeypatch.setattr(results, "TARGETS", {("mf", "1/32"): 0.01})
  level = [{**r, "final_ndcg@10": "0.40"} if r["method"] == "svd" else r for r in rows]
  line = results.headline(path, {part.name: (made, level, None)})[2]
  assert "| -0.0100 / -0.0100 | yes | +0.0400 / +0.0000 | topk / svd | no: NDCG@10 |" in line
  # No target at other ratios; a setting found among the command's words.
  at_4 = [{**r, "payload_ratio": "1/4"} if r["method"] != "uncompressed" else r for r in rows]
  made_lr = {**made, "command": "python -m experiments.compare --gain_bits=8 --item_lr=16"}
  path = _headline(part.parent, "ml-100k,mf,1/4,ml100k_mf_r32,--gain_bits=8,design/fedras.md")
  line = results.headline(path, {part.name: (made_lr, at_4, None)})[2]
  assert "| -0.0100 / -0.0100 | - | +0.0400 / +0.0400 |" in line


@pytest.mark.parametrize(
    "line,error",
    [("ml-100k,mf,1/32,nosuch,--item_lr=16,design/fedras.md", "headline.csv:2: no part 'nosuch'"),
     ("ml-100k,mf,1/4,ml100k_mf_r32,--item_lr=16,design/fedras.md",
      "no FedRAS run at ml-100k mf 1/4"),
     ("ml-100k,mf,1/32,ml100k_mf_r32,--item_lr=8,design/fedras.md", "did not run with --item_lr=8"),
     ("ml-100k,mf,1/32,ml100k_mf_r32,--gain_bits=8,design/fedras.md", "with --gain_bits=8"),
     ("ml-100k,mf,1/32,ml100k_mf_r32,--item_lr=16,design/nosuch.md", "no page docs/design/nosuch"),
     ("ml-100k,mf,1/32,ml100k_mf_r32", "headline.csv:2: fewer than the 6 columns"),])
def test_an_acceptance_row_that_does_not_hold_is_named(part, line, error):
  made, rows = results.read_part(part)
  with pytest.raises(ValueError, match=error):
    results.headline(_headline(part.parent, line), {part.name: (made, rows, None)})
  (part.parent / "headline.csv").write_text("dataset,model,part\nml-100k,mf,x\n")
  with pytest.raises(ValueError, match=r"columns \['payload_ratio', 'fedras_setting', 'see'\]"):
    results.headline(part.parent / "headline.csv", {})


def _linked_parts(part):
  """Beside ``part`` (FedRAS, uncompressed, SVD, TopK, fixed K at 1/32): a FedRAS variant
  ``gains`` with an SVD run of its own and one ``stages`` (with an SVD of its own) naming
  ``part``, and parts of baselines only: ``svd_lr32`` naming ``gains``,
  ``svd_lr32_again`` naming ``gains`` (its seed 0 bit for bit, nothing new), ``svd_st``
  naming ``stages`` (two links from ``gains``), ``ekm`` and ``rerun`` naming ``part``
  (``rerun``: TopK seed 0 bit for bit as ``part``'s, a new seed 2, and an uncompressed
  run), and ``alone`` naming none. Returns ``{name: (made, rows, reference)}``."""
  _sibling(part, "gains", [_row("fedras", "1/32", s, 0.69, 0.40) for s in (0, 1)]
           + [_row("svd", "1/32", 0, 0.55, 0.33)])
  _sibling(part, "stages", [_row("fedras", "1/32", 0, 0.6, 0.3), _row("svd", "1/32", 0, 0.9, 0.9)])
  _sibling(part, "svd_lr32", [_row("svd", "1/32", s, 0.70, 0.38) for s in (0, 1, 2)])
  _sibling(part, "svd_lr32_again", [_row("svd", "1/32", 0, 0.70, 0.38)])
  _sibling(part, "svd_st", [_row("svd", "1/32", 0, 0.5, 0.2)])
  _sibling(part, "ekm", [_row("embedding_kmeans", "1/32", 0, 0.5, 0.3)])
  _sibling(part, "rerun", [
      _row("topk", "1/32", 0, 0.64, 0.30),
      _row("topk", "1/32", 2, 0.66, 0.31),
      _row("uncompressed", "1/32", 2, 0.99, 0.99, comp=0.0)
  ])
  _sibling(part, "alone", [_row("svd", "1/32", 0, 0.95, 0.95)])
  for name, reference in (("gains", part.name), ("stages", part.name), ("svd_lr32", "gains"),
                          ("svd_lr32_again", "gains"), ("svd_st", "stages"), ("ekm", part.name),
                          ("rerun", part.name)):
    (part.parent / name / "reference").write_text(reference)
  parts = {}
  for p in sorted(d for d in part.parent.iterdir() if d.is_dir()):
    made, rows = results.read_part(p)
    parts[p.name] = (made, rows, results.read_reference(p, rows))
  return parts


def test_a_cells_baselines_are_every_linked_part_of_baselines_onlys(part):
  """The cell's runs: the variant's FedRAS and SVD, its reference's others and, labelled by
  their part, the reference's SVD the variant's replaced and the baselines of every part of
  baselines only linked to it at any remove (not a FedRAS part's own SVD, not an unlinked
  part's, not a rerun of a run already there, not an uncompressed rerun)."""
  parts = _linked_parts(part)
  runs = results.cell_runs("gains", ("ml-100k", "mf", "1/32"), parts)
  assert {label: (source, sorted(seeds)) for label, (source, _, seeds) in runs.items()} == {
      "fedras": ("gains", ["0", "1"]), "svd": ("gains", ["0"]),
      "uncompressed": (part.name, ["0", "1"]), "topk": (part.name, ["0", "1"]),
      "fedras_fixed_k": (part.name, ["0"]), f"svd ({part.name})": (part.name, ["0", "1"]),
      "embedding_kmeans (ekm)": ("ekm", ["0"]), "topk (rerun)": ("rerun", ["2"]), "svd (svd_lr32)":
          ("svd_lr32", ["0", "1", "2"]), "svd (svd_st)": ("svd_st", ["0"]),
  }
  path = _headline(part.parent, "ml-100k,mf,1/32,gains,,design/fedras.md")
  # FedRAS 0.69 / 0.40 against SVD at item_lr 32's 0.70 / 0.38 (seeds 0-1), the
  # reference's SVD 0.61 / 0.36, TopK 0.64 / 0.30 and the others below them.
  assert results.headline(path, parts)[2].endswith(
      f"| -0.0100 / +0.0200 | svd (svd_lr32) | no: HR@10 | svd 1, topk 2, svd ({part.name}) 2, "
      "embedding_kmeans (ekm) 1, topk (rerun) 1, svd (svd_lr32) 3, svd (svd_st) 1 | "
      "[design/fedras.md](design/fedras.md) |")
  # A part of baselines only stands for no cell (its runs would replace its reference's).
  with pytest.raises(ValueError, match="headline.csv:2: part 'ekm' has no FedRAS runs"):
    results.headline(_headline(part.parent, "ml-100k,mf,1/32,ekm,,design/fedras.md"), parts)
  path = _headline(part.parent, "ml-100k,mf,1/32,gains,,design/fedras.md")
  # A linked run of another length is refused, naming its part (read_reference keeps a
  # part's runs as long as its reference's, so only a hand-made parts table has one).
  made, rows, reference = parts["ekm"]
  parts["ekm"] = (made, [dict(r, rounds="1000") for r in rows], reference)
  with pytest.raises(ValueError,
                     match=r"headline.csv:2: part 'ekm''s embedding_kmeans runs "
                     r"at ml-100k mf 1/32 have \(rounds, sampled negatives\) \[\('1000', '99'\)\]"):
    results.headline(path, parts)


def test_the_committed_acceptance_table_covers_the_grid_and_each_row_has_its_reading():
  root = results.REPO / "docs" / "results"
  parts = {}
  for part in sorted(p for p in root.iterdir() if p.is_dir()):
    made, rows = results.read_part(part)
    parts[part.name] = (made, rows, results.read_reference(part, rows))
  lines = results.headline(root / results.HEADLINE_FILE, parts)
  cells = {tuple(line.split(" | ")[:3]) for line in lines[2:]}
  # Every cell of the issue's grid has a row.
  assert cells == {(f"| {d}", m, r)
                   for d in ("ml-100k", "ml-1m")
                   for m in ("mf", "ncf")
                   for r in ("1/4", "1/8", "1/16", "1/32", "1/64")}
  # Each row's reading (where a "no" has its measured reason) discusses the row's part.
  with open(root / results.HEADLINE_FILE, newline="") as f:
    for row in csv.DictReader(f):
      page = (results.REPO / "docs" / row["see"].partition("#")[0]).read_text()
      assert f"`{row['part']}`" in page, (row["part"], row["see"])


def test_malformed_part_files_are_one_line_errors(tmp_path):
  """A summary without its fields was a KeyError in compare; a curves.csv with a short row
  a TypeError in results."""
  (tmp_path / "summary.json").write_text('{"final": 3}')
  config = TrainConfig(workdir=str(tmp_path))
  unasked = lambda: pytest.fail("the data were hashed for a record that names none")
  with pytest.raises(ValueError, match="has no config"):
    compare.finished_summary(config, unasked)
  (tmp_path / "summary.json").write_text('{"final": 3, "config": {}}')
  assert compare.finished_summary(config, unasked) is None  # not a finished run's summary
  (tmp_path / "curves.csv").write_text("round,sim_seconds,hr@10,ndcg@10\n1,2,0.5\n")
  with pytest.raises(ValueError, match="curves.csv: not a compare curves.csv"):
    results.read_curves(tmp_path)
  (tmp_path / "compare.json").write_text('{"command": "python -m experiments.compare"}')
  row = "ml-100k,mf,fedras,1/32,0,0.6,0.4\n"
  (tmp_path / "compare.csv").write_text("dataset,model,method,payload_ratio,seed,final_hr@10,"
                                        "final_ndcg@10\n" + row + row.replace(",0,", ",1,") + row)
  with pytest.raises(ValueError, match="compare.csv: run ml-100k, mf, fedras, 1/32, 0 appears"):
    results.read_part(tmp_path)


def _flat_curves(rows, hr=0.5):
  """One evaluation per run of ``rows`` (round 25, 100 simulated s) at HR@10 ``hr``."""
  return [{
      **{k: r[k] for k in ("dataset", "model", "method", "payload_ratio", "seed")}, "round": 25.0,
      "sim_seconds": 100.0, "hr@10": hr, "ndcg@10": 0.0
  } for r in rows]


def test_the_tiers_table_times_each_of_a_cells_runs_on_its_own_parts_curves(part):
  """A tiers.csv row names a FedRAS variant part: every one of the cell's runs is timed on
  its own part's curves of the seeds it counts, against the reference part's uncompressed
  target (final HR@10 0.68, 0.70: target 0.68); the reference's own FedRAS curves and a
  rerun's curves of a seed counted elsewhere are not read."""
  parts = _linked_parts(part)
  curves = {name: _flat_curves(rows) for name, (_, rows, _) in parts.items()}
  uncompressed = [
      dict(c, round=50.0, sim_seconds=200.0, **{"hr@10": 0.68})
      for c in curves[part.name]
      if c["method"] == "uncompressed"
  ]
  curves[part.name] += uncompressed
  for c in curves[part.name]:
    c["hr@10"] = 0.99 if c["method"] == "fedras" else c["hr@10"]  # not the variant's
  curves["gains"] = [
      dict(c, **{"hr@10": 0.7}) if c["method"] == "fedras" else c for c in curves["gains"]
  ]
  curves["rerun"] = [
      dict(c, **{"hr@10": 0.99}) if c["seed"] == "0" else c for c in curves["rerun"]
  ]  # TopK seed 0 is part's run
  curves["svd_lr32"] = [
      dict(c, **{"hr@10": 0.69}) if c["seed"] == "0" else c for c in curves["svd_lr32"]
  ]
  path = part.parent / "tiers.csv"
  path.write_text("dataset,model,payload_ratio,part,fedras_setting,see\n"
                  "ml-100k,mf,1/32,gains,,design/fedras.md\n")
  lines = results.tiers(path, parts, curves)
  link = "| [gains](#gains-ml-100k-mf) `` | ml-100k | mf |"
  assert lines[2:] == [
      f"{link} fedras | 1/32 | 2 of 2 | 100 | 25 |",
      f"{link} uncompressed | 1 | 2 of 2 | 200 | 50 |", f"{link} svd | 1/32 | 0 of 1 | - | - |",
      f"{link} topk | 1/32 | 0 of 2 | - | - |", f"{link} fedras_fixed_k | 1/32 | 0 of 1 | - | - |",
      f"{link} svd ({part.name}) | 1/32 | 0 of 2 | - | - |",
      f"{link} embedding_kmeans (ekm) | 1/32 | 0 of 1 | - | - |",
      f"{link} topk (rerun) | 1/32 | 0 of 1 | - | - |",
      f"{link} svd (svd_lr32) | 1/32 | 1 of 3 | 100 | 25 |",
      f"{link} svd (svd_st) | 1/32 | 0 of 1 | - | - |",
  ]
  # A run without curves is an error naming it, not a shorter table.
  curves["svd_lr32"] = [c for c in curves["svd_lr32"] if c["seed"] != "2"]
  with pytest.raises(ValueError,
                     match=r"tiers.csv:2: no curves at ml-100k mf 1/32 for "
                     r"svd \(svd_lr32\) seed 2 \(svd_lr32\)"):
    results.tiers(path, parts, curves)
  del curves[part.name]  # a part without curves: each of its runs is named
  with pytest.raises(ValueError,
                     match=r"tiers.csv:2: no curves at ml-100k mf 1/32 for "
                     f"topk seed 0 \\({part.name}\\), topk seed 1"):
    results.tiers(path, parts, curves)
  made, rows, (name, ref_rows) = parts["gains"]
  parts["gains"] = (made, rows, (name, [r for r in ref_rows if r["method"] != "uncompressed"]))
  with pytest.raises(ValueError, match="tiers.csv:2: no uncompressed runs at ml-100k mf 1/32"):
    results.tiers(path, parts, curves)


def test_a_cells_setting_is_what_the_runs_recorded_or_the_command_set(part):
  """A headline or tiers row's setting counts as run where the FedRAS runs' tuned column
  records it (every recorded value, as numbers), else where the command's words (not its
  notes) or its flagfile (a config of the repository) set it."""
  made, rows = results.read_part(part)
  # FedRAS's tuned column records item_lr 16.0 (as --method_settings would); the command's
  # flagfile sets --item_lr=64 and --gain_bits=8, its notes --gain_bits=4.
  rows = [dict(r, tuned="item_lr=16.0 (set)") if r["method"] == "fedras" else r for r in rows]
  made = {
      **made, "command": "python -m experiments.compare --flagfile=configs/ml1m_mf_gains.flags "
                         "(seed 1: the same with --gain_bits=4)"
  }
  check = lambda rows: lambda setting: results.headline(
      _headline(part.parent, f"ml-100k,mf,1/32,ml100k_mf_r32,{setting},design/fedras.md"),
      {part.name: (made, rows, None)})
  for setting in ("--item_lr=16", "--gain_bits=8", "--gain_bits=8.0"):
    assert f"`{setting}`" in check(rows)(setting)[2]
  for setting in ("--item_lr=64", "--gain_bits=4", "--value_bits=16"):
    with pytest.raises(ValueError, match=f"did not run with {setting}"):
      check(rows)(setting)
  # Seeds that recorded different values: the setting is not every run's.
  mixed = [
      dict(r, tuned="item_lr=32.0 (set)") if (r["method"], r["seed"]) == ("fedras", "1") else r
      for r in rows
  ]
  with pytest.raises(ValueError, match="did not run with --item_lr=16"):
    check(mixed)("--item_lr=16")


def test_the_committed_tiers_table_covers_every_dataset_and_model():
  root = results.REPO / "docs" / "results"
  parts, curves = {}, {}
  for part in sorted(p for p in root.iterdir() if p.is_dir()):
    made, rows = results.read_part(part)
    parts[part.name] = (made, rows, results.read_reference(part, rows))
    curves[part.name] = results.read_curves(part)
  lines = results.tiers(root / results.TIERS_FILE, parts, curves)
  cells = {tuple(line.split(" | ")[1:4]) for line in lines[2:]}
  assert cells == {(d, m, method)
                   for d in ("ml-100k", "ml-1m")
                   for m in ("mf", "ncf")
                   for method in ("fedras", "uncompressed", "fedras_fixed_k", "topk", "svd", "colr",
                                  "embedding_kmeans")}
  with open(root / results.TIERS_FILE, newline="") as f:
    for row in csv.DictReader(f):
      page = (results.REPO / "docs" / row["see"].partition("#")[0]).read_text()
      assert f"`{row['part']}`" in page, (row["part"], row["see"])
