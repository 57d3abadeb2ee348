"""Tests of experiments/bench_scale.py and the synthetic data generator behind it."""
import json
import subprocess
import sys

import numpy as np
import pytest

from fedras_jax.data import synthetic
from fedras_jax.federated import client_data_from_split


def rows(indptr, items):
  return [items[indptr[u]:indptr[u + 1]] for u in range(len(indptr) - 1)]


def test_zipf_popularity():
  p = synthetic.zipf_popularity(1000, 1.0)
  assert p.shape == (1000,) and abs(p.sum() - 1) < 1e-12
  assert np.all(np.diff(p) < 0)
  np.testing.assert_allclose(p[0] / p[9], 10.0)  # (i + 1) ** -1
  np.testing.assert_allclose(synthetic.zipf_popularity(5, 0.0), 0.2)


def test_single_draws_follow_popularity():
  """One item per user: the empirical item frequencies are the Zipf distribution."""
  num_items, users = 50, 40000
  p = synthetic.zipf_popularity(num_items, 1.2)
  for method in ("rejection", "keys"):
    _, items = synthetic.sample_distinct(np.random.default_rng(1),
                                         np.ones(users, int),
                                         num_items,
                                         popularity=p,
                                         method=method)
    freq = np.bincount(items, minlength=num_items) / users
    assert 0.5 * np.abs(freq - p).sum() < 0.02, method  # total variation
    assert freq[:5].sum() > 0.5  # the head dominates


@pytest.mark.parametrize("method", ["rejection", "keys"])
def test_distinct_and_exclusion(method):
  rng = np.random.default_rng(0)
  counts = rng.integers(0, 40, 300)
  excl_counts = rng.integers(0, 30, 300)
  excl_ptr, excl = synthetic.sample_distinct(rng, excl_counts, 200)
  ptr, items = synthetic.sample_distinct(rng,
                                         counts,
                                         200,
                                         popularity=synthetic.zipf_popularity(200, 1.1),
                                         exclude=(excl_ptr, excl),
                                         method=method)
  assert np.array_equal(np.diff(ptr), counts)
  for got, banned in zip(rows(ptr, items), rows(excl_ptr, excl)):
    assert len(np.unique(got)) == len(got)
    assert not np.intersect1d(got, banned).size


def test_methods_agree_on_inclusion():
  """Both exact methods give the same inclusion frequencies (successive sampling)."""
  p = synthetic.zipf_popularity(60, 1.1)
  counts = np.full(6000, 10)
  freq = {}
  for method in ("rejection", "keys"):
    _, items = synthetic.sample_distinct(np.random.default_rng(2),
                                         counts,
                                         60,
                                         popularity=p,
                                         method=method)
    freq[method] = np.bincount(items, minlength=60) / 6000
  assert np.abs(freq["rejection"] - freq["keys"]).max() < 0.03
  assert freq["keys"][0] > 0.9 and freq["keys"][-1] < 0.1  # item 0 nearly always held


def test_too_many_items_refused():
  with pytest.raises(ValueError, match="distinct"):
    synthetic.sample_distinct(np.random.default_rng(0), [5], 4)


def test_synthetic_split():
  settings = dict(min_interactions=5,
                  max_interactions=250,
                  num_test_negatives=20,
                  num_valid=1,
                  seed=3)
  split = synthetic.synthetic_split(400, 3000, **settings)
  sizes = split.num_seen_per_user
  assert sizes.min() >= 5 and sizes.max() <= 250
  assert 40 <= np.median(sizes) <= 90  # lognormal median 64
  assert split.test_negatives.shape == (400, 20) and split.has_validation
  counts = np.bincount(split.seen_items, minlength=3000)
  assert counts[:10].mean() > 10 * counts[-1000:].mean()  # long tail
  for u in range(0, 400, 37):  # negatives are never seen items
    assert not np.intersect1d(split.test_negatives[u], split.user_seen_items(u)).size
  again = synthetic.synthetic_split(400, 3000, **settings)
  assert np.array_equal(again.seen_items, split.seen_items)
  assert np.array_equal(again.test_negatives, split.test_negatives)
  data = client_data_from_split(split)
  assert data.num_users == 400 and data.num_items == 3000


def test_a_million_item_catalogue_keeps_the_size_and_popularity_laws():
  split = synthetic.synthetic_split(300, 1_000_000, seed=0)
  sizes = split.num_seen_per_user
  assert sizes.min() >= 20 and sizes.max() <= 700
  assert split.seen_items.max() < 1_000_000
  assert np.bincount(split.seen_items)[0] > 0.9 * 300  # the most popular item


def test_catalogue_clips_sizes():
  split = synthetic.synthetic_split(200, 150, num_test_negatives=99, seed=1)
  assert split.num_seen_per_user.max() <= 150 - 99


def test_the_page_holds_the_printed_table_of_the_measured_rounds(tmp_path):
  """``--markdown`` writes the tables it prints, and their ratios are those of the results
  in ``--json_out``: one configuration of uncompressed against itself as the baseline."""
  page, results = tmp_path / "pages" / "scale.md", tmp_path / "scale.json"
  proc = subprocess.run([
      sys.executable, "-m", "experiments.bench_scale", "--method=uncompressed",
      "--baseline_method=uncompressed", "--curves=clients", "--clients=8", "--fixed_items=300",
      "--min_users=40", "--rounds=2", f"--markdown={page}", f"--json_out={results}"
  ],
                        capture_output=True,
                        text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = page.read_text()
  assert text.startswith("# Cost of a round as the work grows\n")
  assert "- command: `python -m experiments.bench_scale --method=uncompressed" in text
  printed = [l for l in proc.stdout.splitlines() if l.startswith("|")]
  assert [l for l in text.splitlines() if l.startswith("|")] == printed
  header, row = [c.strip() for c in printed[0].split("|")
                ], [c.strip() for c in printed[2].split("|")]
  cell = dict(zip(header, row))
  (res,) = json.loads(results.read_text())["results"]["clients"]
  assert res["clients"] == 8 and len(res["round_s"]) == 2
  assert cell["clients"] == "8" and cell["slots S"] == str(res["slot_capacity"])
  assert cell["s/round"] == f"{res['median_s']:.3f}"
  assert cell["x base"] == f"{res['median_s'] / res['baseline_median_s']:.2f}"
  assert cell["updates/s"] == f"{8 / res['median_s']:.1f}"
  assert cell["up/dense"] == "1.0000"  # uncompressed sends the dense rows
