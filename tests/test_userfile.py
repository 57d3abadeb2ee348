"""A user's own interaction file (--dataset=PATH) and split-cache integrity."""

import logging
import os

import numpy as np
import pytest

from conftest import write

from fedras_jax import data
from fedras_jax.data import userfile

# 4 users x 12 items, string ids, a header (Amazon-style export).
HEADER_CSV = """userId,movieId,rating,timestamp
alice,m1,5,100
alice,m2,3,101
alice,m3,4,102
bob,m1,1,200
bob,m4,5,201
carol,m2,2,300
carol,m5,4,301
carol,m6,5,302
dave,m7,4,400
"""


def rows_of(inter):
  """{(raw user, raw item): timestamp} of an `Interactions`."""
  return {(str(inter.raw_user_ids[u]), str(inter.raw_item_ids[i])): int(t)
          for u, i, t in zip(inter.users, inter.items, inter.timestamps)}


# ------------------------------------------------------------- parsing --


@pytest.mark.parametrize("sep", [",", "\t", ";", "|", "::"])
def test_header_and_delimiter_are_detected_ids_remapped(tmp_path, sep):
  text = HEADER_CSV.replace(",", sep)
  inter = data.parse_interaction_file(write(tmp_path / "r.csv", text))
  assert (inter.num_users, inter.num_items) == (4, 7)
  # String ids are remapped in sorted order; raw ids kept.
  assert list(inter.raw_user_ids) == ["alice", "bob", "carol", "dave"]
  assert list(inter.raw_item_ids) == ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]
  assert rows_of(inter)[("carol", "m5")] == 301
  assert inter.num_interactions == 9


def test_a_byte_order_mark_and_spaces_around_fields_are_ignored(tmp_path):
  text = "\ufeffUserID, ItemID\n 7, x\n7 ,y\n"
  inter = data.parse_interaction_file(write(tmp_path / "r.csv", text))
  assert list(inter.raw_user_ids) == [7] and inter.num_interactions == 2
  assert list(inter.raw_item_ids) == ["x", "y"]
  # Without a header the mark sat on the first user id: a fourth user '\ufeff1', and the
  # ids compared as strings ('10' before '9').
  opts = data.FileOptions(columns="user,item")
  inter = data.parse_interaction_file(write(tmp_path / "h.csv", "\ufeff1,10\n1,11\n2,10\n9,12\n"),
                                      opts)
  assert list(inter.raw_user_ids) == [1, 2, 9] and list(inter.raw_item_ids) == [10, 11, 12]


def test_ids_that_read_as_one_number_but_differ_stay_apart(tmp_path):
  """"-0" and "0" are different users (they merged into user 0); "007" and "7" too."""
  inter = data.parse_interaction_file(write(tmp_path / "r.csv", "user,item\n0,1\n-0,1\n5,2\n"))
  assert inter.num_users == 3 and sorted(map(str, inter.raw_user_ids)) == ["-0", "0", "5"]
  inter = data.parse_interaction_file(write(tmp_path / "s.csv", "user,item\n-3,1\n0,1\n5,2\n"))
  assert list(inter.raw_user_ids) == [-3, 0, 5]  # canonical integers stay numbers


def test_ids_with_colons_are_data_not_a_recbole_header(tmp_path):
  """Every field of the first line holds a ':' (URIs as ids): with --data_columns it is the
  first interaction (it was taken for a RecBole header and dropped); without, the error asks
  for --data_columns (it said the "header" had no user column)."""
  text = "spotify:user:a,spotify:track:1\nspotify:user:a,spotify:track:2\nspotify:user:b,x:y\n"
  path = write(tmp_path / "r.csv", text)
  inter = data.parse_interaction_file(path, data.FileOptions(columns="user,item"))
  assert inter.num_interactions == 3
  assert list(inter.raw_item_ids) == ["spotify:track:1", "spotify:track:2", "x:y"]
  with pytest.raises(ValueError, match="has no header naming known columns.*--data_columns"):
    data.parse_interaction_file(path)
  typed = write(tmp_path / "t.csv", "user_id:token,item_id:token,rating:float\n1,2,3\n")
  assert data.parse_interaction_file(typed).num_interactions == 1


@pytest.mark.parametrize("user", ["u", "\u00fc"])  # the vectorised and the line-by-line reader
def test_integer_timestamps_keep_every_digit(tmp_path, user):
  """Nanosecond timestamps (19 digits) went through float64: A (…100) and B (…000) tied and
  the later line, B, was held out although A is later."""
  text = f"user,item,timestamp\n{user},A,1700000000000000100\n{user},B,1700000000000000000\n" \
         f"{user},C,5\n"
  inter = data.parse_interaction_file(write(tmp_path / "r.csv", text))
  assert inter.timestamps.tolist() == [1700000000000000100, 1700000000000000000, 5]
  split = data.leave_one_out(inter, num_test_negatives=0)
  assert inter.raw_item_ids[split.test_item[0]] == "A"
  # Fractional ones are still ranked (1.5 after 1, before 2), and so are integers past
  # int64, by both readers (the line-by-line one refused 10^19), exactly: one fractional
  # value made the column float64, tying nanosecond times and 19-digit fractions.
  for text, ranks in ((f"{user},A,2\n{user},B,1.5\n{user},C,1\n",
                       [2, 1, 0]), (f"{user},A,10000000000000000000\n{user},B,1\n", [1, 0]),
                      (f"{user},A,1600000000123456003\n{user},B,1600000000123456001\n"
                       f"{user},C,1600000000123456002\n{user},D,4.5\n", [3, 1, 2, 0]),
                      (f"{user},A,1600000000.123456790\n{user},B,1600000000.123456789\n", [1, 0])):
    inter = data.parse_interaction_file(write(tmp_path / "f.csv", "user,item,timestamp\n" + text))
    assert inter.timestamps.tolist() == ranks
  # Beside a fractional time, one past float64 is refused, as in a float column.
  for huge in ("1e400", "1e2000000000"):
    with pytest.raises(data.DataFormatError, match=f"r.csv:3: field 3 \\(timestamp\\) is '{huge}'"):
      data.parse_interaction_file(
          write(tmp_path / "r.csv", f"user,item,timestamp\n{user},A,1.5\n{user},B,{huge}\n"))


@pytest.mark.parametrize("user", ["u", "\u00fc"])  # the vectorised and the line-by-line reader
def test_iso_8601_times_order_the_interactions(tmp_path, user):
  """A column of ISO dates or times (Yelp's ``date``) was refused as a timestamp (and, under
  a name not known, ignored for a random order). Seconds since 1970 UTC, hand-computed:
  2016-07-03 is 16,985 days after 1970-01-01 (1,467,504,000 s)."""
  day = 1_467_504_000
  read = lambda text: data.parse_interaction_file(write(tmp_path / "r.csv", text))
  latest = lambda inter: inter.raw_item_ids[data.leave_one_out(inter, num_test_negatives=0).
                                            test_item[list(inter.raw_user_ids).index(user)]]
  inter = read(f"user,item,date\n{user},A,2016-07-03\n{user},B,2016-07-03 00:00:01\n"
               f"{user},C,2016-07-02T23:59\nv,A,2016-07-04\nv,B,1969-12-31T23:59:59\n")
  assert inter.timestamps.tolist() == [day, day + 1, day - 60, day + 86_400, -1]
  assert latest(inter) == "B"
  # UTC offsets: 01:00+02:00 is 23:00 the day before, earlier than 23:30Z, and -01:30 later.
  inter = read(
      f"user,item,time\n{user},A,2016-07-03T01:00+02:00\n{user},B,2016-07-02T23:30:00Z"
      f"\n{user},C,2016-07-02T22:30-0130\nv,A,2016-07-04T00:00+00\nv,B,2016-07-05T00:00Z\n")
  assert inter.timestamps.tolist() == [day - 3_600, day - 1_800, day, day + 86_400, day + 172_800]
  assert latest(inter) == "C"
  # Fractions of a second to any digit (pandas writes nanoseconds): ranked exactly (cut to
  # microseconds, A and B tied and the later line, B, was held out although A is later).
  inter = read(
      f"user,item,time\n{user},A,2016-07-03 00:00:00.123456789\n"
      f"{user},B,2016-07-03 00:00:00.123456001\n{user},C,2016-07-03 00:00:00.1\n"
      f"{user},D,1969-12-31T23:59:59.{'0' * 19}2\n{user},E,1969-12-31T23:59:59.{'0' * 19}1\n")
  assert inter.timestamps.tolist() == [4, 3, 2, 1, 0] and latest(inter) == "A"
  # A column is all numbers or all dates, its times all with an offset or all without, each
  # a date with an optional time: both readers refuse the rest at the same line.
  for rows, expected in (("A,2016-07-03\n{u},B,5",
                          "'5', expected an ISO 8601 date or time without a UTC offset "
                          "as on line 2"), ("A,5\n{u},B,2016-07-03",
                                            "'2016-07-03', expected a number as on line 2"),
                         ("A,2016-07-04\n{u},B,20160703",
                          "'20160703', expected an ISO 8601 date or time without"),
                         ("A,2016-07-03T00:00Z\n{u},B,2016-07-03T00:00",
                          "'2016-07-03T00:00', expected an ISO 8601 "
                          "time with a UTC offset as on line 2"),
                         ("A,2016-07-03\n{u},B,07/03/2016",
                          "'07/03/2016', expected a finite number or an ISO 8601 "
                          "date or time"), ("A,2016-07-03\n{u},B,2016-07-03 18",
                                            "'2016-07-03 18', expected a "),
                         ("A,2016-07-03\n{u},B,2016-07-03T24:00",
                          "'2016-07-03T24:00', expected a ")):
    bad = write(tmp_path / "b.csv", f"user,item,timestamp\n{user},{rows.format(u=user)}\n")
    with pytest.raises(data.DataFormatError,
                       match=f"b.csv:3: field 3 \\(timestamp\\) is {expected}"):
      data.parse_interaction_file(bad)
  # A date column is the time only where no other column has a time name: beside a
  # timestamp (finer than its day) or a time (of day: refused, not the day alone).
  inter = read(f"user,item,date,timestamp\n{user},A,2016-07-03,{day + 90}\n"
               f"{user},B,2016-07-03,{day}\n")
  assert inter.timestamps.tolist() == [day + 90, day] and latest(inter) == "A"
  with pytest.raises(data.DataFormatError, match="r.csv:2: field 4 \\(timestamp\\) is '18:00:00'"):
    read(f"user,item,date,time\n{user},A,2016-07-03,18:00:00\n{user},B,2016-07-03,09:00:00\n")
  # The same rule for --data_columns (it refused "two timestamp columns").
  inter = data.parse_interaction_file(
      write(tmp_path / "h.csv", f"{user},A,2016-07-03,{day + 90}\n{user},B,2016-07-03,{day}\n"),
      data.FileOptions(columns="user,item,date,timestamp"))
  assert inter.timestamps.tolist() == [day + 90, day]
  with pytest.raises(ValueError, match="invalid: two timestamp columns"):
    data.FileOptions(columns="user,item,date,datetime").check()


def test_a_date_column_of_other_values_is_ignored_as_before(tmp_path, caplog):
  """A ``date`` column of US dates was ignored (a random order) before ``date`` named a
  time column; it still is, said (it was refused), and another column's error still
  stops the read."""
  text = "user,item,rating,date\na,x,5,2016-07-03\na,y,4,07/03/2016\nb,x,3,1/1/2016\n"
  with caplog.at_level(logging.WARNING):
    inter = data.parse_interaction_file(write(tmp_path / "r.csv", text))
  assert inter.num_interactions == 3 and sorted(inter.timestamps.tolist()) == [0, 1, 2]
  assert [r.getMessage() for r in caplog.records] == [
      f"{tmp_path / 'r.csv'}: the 'date' column is not read as the time ({tmp_path / 'r.csv'}:3: "
      "field 4 (timestamp) is '07/03/2016', expected a finite number or an ISO 8601 date or time "
      "(e.g. 2016-07-03 18:21:27)): each user's held-out interaction is a seeded random one; "
      "numbers or ISO 8601 dates (2016-07-03, 2016-07-03T18:21:27) order them"
  ]
  with pytest.raises(data.DataFormatError, match="r.csv:4: field 3 \\(rating\\) is 'five'"):
    data.parse_interaction_file(write(tmp_path / "r.csv", text.replace(",3,", ",five,")))


def test_a_run_of_spaces_is_one_separator(tmp_path):
  """Aligned columns (``1   10  5``) read as the same file with one comma between fields (a
  run of spaces made empty fields: the line counts disagreed and the file was refused); a
  file with one space between fields keeps its empty fields."""
  aligned = ("user  item   rating  timestamp\n   1    10       5  881250949\n"
             "   1   200       3  881250950 \n  22    10       4  881250951\n")
  inter = data.parse_interaction_file(write(tmp_path / "a.txt", aligned))
  commas = "\n".join(",".join(line.split()) for line in aligned.splitlines()) + "\n"
  reference = data.parse_interaction_file(write(tmp_path / "c.csv", commas))
  assert rows_of(inter) == rows_of(reference) == {("1", "10"): 881250949, ("1", "200"): 881250950,
                                                  ("22", "10"): 881250951}
  broken = aligned.replace(" 3 ", " ")
  with pytest.raises(data.DataFormatError,
                     match="a.txt:3: expected 4 fields separated by runs of spaces, got 3 "):
    data.parse_interaction_file(write(tmp_path / "a.txt", broken))
  single = "user item note timestamp\n1 10 x 5\n1 11  6\n1 12 y 7\n"
  inter = data.parse_interaction_file(write(tmp_path / "s.txt", single))
  assert rows_of(inter) == {("1", "10"): 5, ("1", "11"): 6, ("1", "12"): 7}
  # Two spaces between every field: runs of spaces (one space made empty fields of every
  # other one), also without a header; only spaces and tabs separate (U+3000 is in an id).
  doubled = data.parse_interaction_file(write(tmp_path / "d.txt", "1  10  5\n1  11  6\n2  10  7\n"),
                                        data.FileOptions(columns="user,item,timestamp"))
  assert rows_of(doubled) == {("1", "10"): 5, ("1", "11"): 6, ("2", "10"): 7}
  wide = data.parse_interaction_file(
      write(tmp_path / "w.txt", "user   item\n\u5c71\u3000\u7530    10\nb  \t  11\nb     12\n"))
  assert list(wide.raw_user_ids) == ["b", "\u5c71\u3000\u7530"] and wide.num_interactions == 3


def test_headerless_file_needs_data_columns(tmp_path):
  path = write(tmp_path / "r.csv", "3,10,5,7\n3,11,1,8\n20,10,2,9\n")
  with pytest.raises(ValueError, match="--data_columns"):
    data.parse_interaction_file(path)
  opts = data.FileOptions(columns="user,item,rating,timestamp")
  inter = data.parse_interaction_file(path, opts)
  # Numeric ids sort numerically (3 before 20), not as strings.
  assert list(inter.raw_user_ids) == [3, 20]
  assert rows_of(inter) == {("3", "10"): 7, ("3", "11"): 8, ("20", "10"): 9}
  # Columns named in another order, one ignored.
  opts = data.FileOptions(columns="item,user,skip,time")
  inter = data.parse_interaction_file(path, opts)
  assert list(inter.raw_user_ids) == [10, 11]
  with pytest.raises(ValueError, match="names 3 columns but .* 4 fields"):
    data.parse_interaction_file(path, data.FileOptions(columns="user,item,rating"))
  with pytest.raises(ValueError, match="exactly one item column"):
    data.FileOptions(columns="user,rating").check()


def test_a_header_of_other_names_is_skipped_with_data_header(tmp_path):
  """A header naming no known column: the error names the line and both flags; with
  them the header is skipped (it used to become an interaction of user 'customer')."""
  path = write(tmp_path / "r.csv", "customer,sku\n3,10\n3,11\n20,10\n")
  with pytest.raises(ValueError, match="first line: 'customer,sku'.*--data_columns.*--data_header"):
    data.parse_interaction_file(path)
  opts = data.FileOptions(columns="user,item", header=True)
  inter = data.parse_interaction_file(path, opts)
  assert list(inter.raw_user_ids) == [3, 20] and list(inter.raw_item_ids) == [10, 11]
  assert inter.num_interactions == 3
  # Its names alone say nothing: without --data_columns, no user column.
  with pytest.raises(data.DataFormatError, match="the header has no user column"):
    data.parse_interaction_file(path, data.FileOptions(header=True))


def test_min_rating_keeps_rows_at_or_above_it(tmp_path):
  path = write(tmp_path / "r.csv", HEADER_CSV)
  inter = data.parse_interaction_file(path, data.FileOptions(min_rating=4))
  assert set(rows_of(inter)) == {("alice", "m1"), ("alice", "m3"), ("bob", "m4"), ("carol", "m5"),
                                 ("carol", "m6"), ("dave", "m7")}
  nocol = write(tmp_path / "n.csv", "user,item\na,b\na,c\n")
  with pytest.raises(ValueError, match="--min_rating=4.0 needs a rating"):
    data.parse_interaction_file(nocol, data.FileOptions(min_rating=4.0))


def test_filters_one_pass_and_kcore_hand_computed(tmp_path):
  # Items: m1 (alice, bob), m2 (alice, carol), others once. Users: alice 3,
  # bob 2, carol 3, dave 1.
  path = write(tmp_path / "r.csv", HEADER_CSV)
  one = data.parse_interaction_file(
      path, data.FileOptions(min_user_interactions=2, min_item_interactions=2))
  # One pass, counts on the unfiltered data: users >= 2 and items >= 2.
  assert set(rows_of(one)) == {("alice", "m1"), ("alice", "m2"), ("bob", "m1"), ("carol", "m2")}
  assert list(one.raw_user_ids) == ["alice", "bob", "carol"]
  assert (one.num_users, one.num_items) == (3, 2)
  # k-core: bob and carol now have 1 interaction each -> dropped, then m1
  # and m2 have 1 user -> dropped, then alice has 0: nothing is left.
  with pytest.raises(data.DataFormatError, match="no interactions left"):
    data.parse_interaction_file(
        path, data.FileOptions(min_user_interactions=2, min_item_interactions=2, kcore=True))
  two = data.parse_interaction_file(
      path, data.FileOptions(min_user_interactions=2, min_item_interactions=1, kcore=True))
  assert set(
      rows_of(two)) == {k for k in rows_of(data.parse_interaction_file(path)) if k[0] != "dave"}


def test_a_user_left_too_short_for_leave_one_out_is_named_with_the_filter_that_helps(tmp_path):
  """c has 3 interactions, two of them with items no one else touched: without filters the
  advice is the user filter; with both filters (one pass) c is counted at 3, then keeps 1, and
  the advice is --kcore, which drops c and leaves a and b whole."""
  path = write(
      tmp_path / "r.csv", "user,item,timestamp\na,i1,1\na,i2,2\na,i3,3\nb,i1,4\n"
      "b,i2,5\nb,i3,6\nc,i1,7\nc,x1,8\nc,x2,9\nd,i1,10\n")
  load = lambda **options: data.load_dataset(
      str(path), tmp_path / "dd", num_test_negatives=0, file_options=data.FileOptions(**options))
  with pytest.raises(data.EmptyClientError,
                     match=r"user 3 \(raw id d\) has 1 .*"
                     r"\(--min_user_interactions=2 drops such users\)"):
    load()
  with pytest.raises(data.EmptyClientError, match=r"user 2 \(raw id c\) has 1 .*--kcore repeats"):
    load(min_user_interactions=3, min_item_interactions=2)
  split = load(min_user_interactions=3, min_item_interactions=2, kcore=True)
  assert (split.num_users, split.num_items, len(split.train_items)) == (2, 3, 4)


def test_kcore_against_a_brute_force_fixed_point():
  rng = np.random.default_rng(0)
  users = rng.integers(0, 60, 600)
  items = rng.zipf(1.5, 600) % 80
  inter = data.interactions.from_raw_ids("t", users, items, np.arange(600))
  out = userfile.filter_counts(inter, 5, 4, kcore=True)
  pairs = {(int(u), int(i))
           for u, i in zip(inter.raw_user_ids[inter.users], inter.raw_item_ids[inter.items])}
  while True:  # brute force on Python sets
    uc, ic = {}, {}
    for u, i in pairs:
      uc[u] = uc.get(u, 0) + 1
      ic[i] = ic.get(i, 0) + 1
    keep = {(u, i) for u, i in pairs if uc[u] >= 5 and ic[i] >= 4}
    if keep == pairs:
      break
    pairs = keep
  got = {(int(u), int(i)) for u, i in zip(out.raw_user_ids[out.users], out.raw_item_ids[out.items])}
  assert got == pairs and len(pairs) > 50
  assert out.num_users == len({u for u, _ in pairs})


def test_without_timestamps_the_held_out_item_is_seeded_random(tmp_path, caplog):
  rng = np.random.default_rng(1)
  lines = ["user,item"
          ] + [f"u{u},i{i}" for u in range(30) for i in rng.choice(120, 6, replace=False)]
  path = write(tmp_path / "r.csv", "\n".join(lines) + "\n")
  split = lambda seed: data.load_dataset(
      str(path), tmp_path, seed=seed, num_test_negatives=5, cache=False)
  # No other columns, or one without a name (the index column pandas writes): nothing to
  # warn of.
  indexed = write(tmp_path / "i.csv", ",user,item\n0,a,x\n1,a,y\n2,b,x\n")
  with caplog.at_level(logging.WARNING):
    a, b, c = split(0), split(0), split(1)
    data.parse_interaction_file(indexed)
  assert not caplog.records
  # A time column under a name not known is ignored: said, with the flag that names it.
  dated = write(tmp_path / "d.csv", "user,item,rated_at\na,x,2\na,y,1\nb,x,5\n")
  with caplog.at_level(logging.WARNING):
    data.parse_interaction_file(dated)
  assert [r.getMessage() for r in caplog.records] == [
      f"{dated}: no timestamp column (known names: timestamp, time, ts, unixreviewtime, "
      "unix_timestamp, date, datetime; ignored columns: rated_at): each user's held-out "
      "interaction is a seeded random one; name a time column (numbers, e.g. Unix seconds, or "
      "ISO 8601 dates) with --data_columns, e.g. "
      "--data_columns=user,item,timestamp"
  ]
  np.testing.assert_array_equal(a.test_item, b.test_item)
  assert (a.test_item != c.test_item).any()
  # Not simply the last line of each user.
  inter = data.parse_interaction_file(path)
  last = [int(inter.items[np.flatnonzero(inter.users == u)[-1]]) for u in range(30)]
  assert (a.test_item != np.asarray(last)).any()


def test_recbole_inter_file(tmp_path):
  path = write(
      tmp_path / "x.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
      "u1\ti1\t5\t10\nu1\ti2\t4\t11\nu2\ti1\t3\t12\n")
  inter = data.parse_interaction_file(path)
  assert rows_of(inter) == {("u1", "i1"): 10, ("u1", "i2"): 11, ("u2", "i1"): 12}
  # Columns by header name in any order, numeric ids remapped numerically, whole float
  # timestamps kept as integers.
  path = write(
      tmp_path / "toy.inter", "timestamp:float\titem_id:token\tuser_id:token\trating:float\n"
      "881250949.0\t242\t196\t3\n881250950\t30\t196\t4\n881250951\t242\t9\t1\n")
  inter = data.parse_interaction_file(path)
  assert inter.name == "toy"
  np.testing.assert_array_equal(inter.raw_user_ids, [9, 196])
  np.testing.assert_array_equal(inter.raw_item_ids, [30, 242])
  np.testing.assert_array_equal(inter.users, [1, 1, 0])
  np.testing.assert_array_equal(inter.items, [1, 0, 1])
  np.testing.assert_array_equal(inter.timestamps, [881250949, 881250950, 881250951])
  bad = write(tmp_path / "y.inter", "user\titem\nu1\ti1\n")
  with pytest.raises(data.DataFormatError, match="name:type"):
    data.parse_interaction_file(bad)


@pytest.mark.parametrize("text,line,what",
                         [("user,item,rating\na,b,5\na,c\n", 3, "expected 3 fields"),
                          ("user,item,rating\na,b,5\na,c,five\n", 3, "'five'"),
                          ("user,item,rating\na,b,5\n\na,c,1\n", 3, "blank line"),
                          ("\nuser,item\na,b\n", 1, "blank line"),
                          ("user,item\na,b,\na,c,\n", 1, "2 field(s) separated by ',', the "
                           "lines below 3"), ("user,item,timestamp\na,b,1\n,c,2\n", 3, "user"),
                          ("user,item,rating\na,b,5\na,c,4_5\n", 3, "(rating) is '4_5'"),
                          ("user,item,timestamp\na,b,1\na,c,1_00\n", 3, "(timestamp) is '1_00'"),
                          ("user\titem\trating\n1\t2\t5\n1\t3\t4_5\n", 3, "(rating) is '4_5'"),])
def test_malformed_line_is_one_line_error_and_nothing_is_cached(tmp_path, text, line, what):
  path = write(tmp_path / "bad.csv", text)
  with pytest.raises(data.DataFormatError) as e:
    data.load_dataset(str(path), tmp_path / "dd", num_test_negatives=1)
  msg = str(e.value)
  assert msg.startswith(f"{path}:{line}: ") and "\n" not in msg
  assert what in msg
  assert not list((tmp_path / "dd").rglob("*.npz"))


def test_ml100k_as_csv_and_inter_give_the_ml100k_split(tmp_path, ml100k_path):
  raw = ml100k_path.read_text()
  csv = write(tmp_path / "ratings.csv", raw.replace("\t", ","))
  inter = write(tmp_path / "ratings.inter",
                "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + raw)
  reference = data.leave_one_out(data.parse_movielens_100k(ml100k_path))
  for path, columns in ((csv, "user,item,rating,timestamp"), (inter, "")):
    split = data.load_dataset(str(path), tmp_path / "dd", file_options=data.FileOptions(columns))
    for field in ("train_items", "train_indptr", "test_item", "test_negatives"):
      np.testing.assert_array_equal(getattr(split, field), getattr(reference, field))


# ------------------------------------------------------- cache integrity --


def _cached(tmp_path):
  return sorted((tmp_path / "dd" / "splits").glob("*.npz"))


def test_an_edited_file_is_never_served_stale(tmp_path, caplog):
  path = write(tmp_path / "r.csv", HEADER_CSV)
  load = lambda **kw: data.load_dataset(str(path),
                                        tmp_path / "dd",
                                        num_test_negatives=1,
                                        file_options=data.FileOptions(min_user_interactions=2),
                                        **kw)
  first = load()
  assert first.num_users == 3 and len(_cached(tmp_path)) == 1
  write(path, HEADER_CSV.replace("carol,m6,5,302", "carol,m1,5,302"))
  second = load()
  # carol's latest item was m6 (id 5 of m1..m6), it is now m1 (id 0).
  assert first.test_item[2] == 5 and second.test_item[2] == 0
  # Other options, another cache entry; the same options, the same split.
  assert len(_cached(tmp_path)) == 2
  np.testing.assert_array_equal(load().test_item, second.test_item)


def test_the_same_bytes_elsewhere_are_a_cache_hit(tmp_path, caplog):
  """The cache's record named the file by its absolute path: a copy in another folder was
  rebuilt, warning that it was "built from other data or options"."""
  load = lambda path: data.load_dataset(str(path),
                                        tmp_path / "dd",
                                        num_test_negatives=1,
                                        file_options=data.FileOptions(min_user_interactions=2))
  first = load(write(tmp_path / "a" / "r.csv", HEADER_CSV))
  with caplog.at_level(logging.WARNING):
    second = load(write(tmp_path / "b" / "r.csv", HEADER_CSV))
  assert "rebuilding" not in caplog.text and len(_cached(tmp_path)) == 1
  np.testing.assert_array_equal(second.test_item, first.test_item)


def test_a_split_cached_by_an_older_reader_is_not_served(tmp_path, monkeypatch):
  """The same bytes and options read by a changed reader (``READER_VERSION``) may parse
  to other interactions: such a cache entry is another key, not a hit."""
  path = write(tmp_path / "r.csv", HEADER_CSV)
  load = lambda: data.load_dataset(str(path),
                                   tmp_path / "dd",
                                   num_test_negatives=1,
                                   file_options=data.FileOptions(min_user_interactions=2))
  monkeypatch.setattr(userfile, "READER_VERSION", userfile.READER_VERSION - 1)
  load()
  assert len(_cached(tmp_path)) == 1
  monkeypatch.undo()
  load()
  load()  # now a hit
  assert len(_cached(tmp_path)) == 2


def test_a_cached_split_of_a_named_dataset_notices_a_replaced_file(tmp_path, caplog):
  # Last.fm-2K: no known sha256, so only the cache's own record can notice.
  lastfm = lambda order: "userID\tartistID\tweight\n" + "".join(f"{u}\t{i}\t1\n" for u in (2, 3)
                                                                for i in order(u))
  path = write(tmp_path / "dd" / "lastfm-2k" / "user_artists.dat",
               lastfm(lambda u: range(u * 3 - 6, u * 3 + 1)))
  load = lambda: data.load_dataset("lastfm-2k", tmp_path / "dd", num_test_negatives=2)
  first = load()
  np.testing.assert_array_equal(first.test_item, [6, 9])
  assert len(_cached(tmp_path)) == 1
  # Same size, other content: user 3's last artist is now 3, not 9.
  write(path, lastfm(lambda u: range(7) if u == 2 else range(9, 2, -1)))
  with caplog.at_level(logging.WARNING):
    second = load()
  assert "built from other data or options (differs in sources)" in caplog.text
  np.testing.assert_array_equal(second.test_item, [6, 3])
  assert len(_cached(tmp_path)) == 1  # rebuilt in place
  # Random bytes where the file was: a one-line error, never the old split.
  path.write_bytes(os.urandom(4096))
  with pytest.raises(data.DataFormatError) as e:
    load()
  assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_replaced_ml100k_is_refused_before_its_cached_split_is_used(tmp_path, ml100k_path):
  target = tmp_path / "dd" / "ml-100k" / "u.data"
  target.parent.mkdir(parents=True)
  target.symlink_to(ml100k_path)
  data.load_dataset("ml-100k", tmp_path / "dd")
  assert len(_cached(tmp_path)) == 1
  target.unlink()
  for other in (ml100k_path.read_bytes().replace(b"\t5\t", b"\t4\t"), os.urandom(4096)):
    target.write_bytes(other)
    with pytest.raises(data.ChecksumError) as e:
      data.load_dataset("ml-100k", tmp_path / "dd", download=False)
    assert str(target) in str(e.value) and "\n" not in str(e.value)


def test_an_altered_cache_file_is_rebuilt(tmp_path, caplog):
  path = write(tmp_path / "r.csv", HEADER_CSV)
  load = lambda: data.load_dataset(str(path),
                                   tmp_path / "dd",
                                   num_test_negatives=1,
                                   file_options=data.FileOptions(min_user_interactions=2))
  first = load()
  (cached,) = _cached(tmp_path)
  with np.load(cached) as z:
    arrays = dict(z)
  arrays["test_item"] = arrays["test_item"][::-1].copy()  # still valid
  with open(cached, "wb") as f:
    np.savez(f, **arrays)
  with pytest.raises(data.StaleSplitError, match="does not match its sha"):
    data.load_split(cached)
  with caplog.at_level(logging.WARNING):
    again = load()
  assert "rebuilding the cached split" in caplog.text
  np.testing.assert_array_equal(again.test_item, first.test_item)
  data.load_split(cached)  # rewritten whole


def test_split_metadata_mismatch_names_the_keys(tmp_path):
  split = data.leave_one_out(data.parse_interaction_file(write(tmp_path / "r.csv", HEADER_CSV),
                                                         data.FileOptions(min_user_interactions=2)),
                             num_test_negatives=1)
  path = data.save_split(tmp_path / "s.npz", split, dict(seed=0, x=[1]))
  data.load_split(path, dict(seed=0, x=[1]))
  with pytest.raises(data.StaleSplitError, match=r"differs in seed, y"):
    data.load_split(path, dict(seed=1, x=[1], y=2))


def test_named_datasets_refuse_file_options():
  with pytest.raises(ValueError, match="apply to a file"):
    data.load_dataset("ml-100k", file_options=data.FileOptions(min_rating=4))
  assert userfile.is_path("ratings.csv") and userfile.is_path("a/b")
  assert not userfile.is_path("ml-100k") and not userfile.is_path("nope")
