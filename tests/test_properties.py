"""Property-based tests (hypothesis): the parsers and the flag checks never crash.

Whatever a data file or a flag holds, the result is either a value that satisfies
the documented invariants or the library's one-line error (``DataFormatError`` for
data, ``ValueError`` naming the flag for settings): never another exception.
Examples are few (the suite's time is tight); each run draws new ones, except under
CI (``CI`` set), where the draw is fixed so that a landing never depends on luck.
"""
import dataclasses
import math
import os
import tempfile
import pathlib
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedras_jax import flags as flag_lib
from fedras_jax.data import formats, userfile
from fedras_jax.data.formats import DataFormatError
from fedras_jax.sweep import SWEEPABLE, parse_grid
from fedras_jax.config import TrainConfig

FEW = settings(max_examples=40,
               deadline=None,
               derandomize=bool(os.environ.get("CI")),
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
PARSE = settings(FEW, max_examples=100)  # a parse takes well under a millisecond

# A field: a valid small id, or something odd (ids at and beyond the int32 and int64
# limits, floats of every kind, odd text).
VALID = st.integers(0, 30).map(str)
BOUNDARY = st.sampled_from(
    [2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, 2**64 + 7, 10**30, -2**63 - 1, -1]).map(str)
ODD = st.one_of(
    BOUNDARY, BOUNDARY,
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from([
        "", " ", "nan", "-inf", "1e400", "0x10", "1_0", "\u0663", "(1,2)", "\x00", "007", "-0",
        "2e3"
    ]), st.text(max_size=6),
)


@st.composite
def _file_lines(draw, valid_row, odd_row):
  """Valid lines with at most one odd line among them, anywhere."""
  lines = draw(st.lists(valid_row, max_size=5))
  if draw(st.integers(0, 4)):
    lines.insert(draw(st.integers(0, len(lines))), draw(odd_row))
  return lines


@st.composite
def _odd_row(draw, sep, nfields):
  """A line with one field odd, or one field too few or too many, or any text."""
  fields = draw(st.lists(VALID, min_size=nfields, max_size=nfields))
  how = draw(st.integers(0, 5))
  if how <= 3:
    fields[draw(st.integers(0, nfields - 1))] = draw(ODD)
  elif how == 4:
    fields = fields[:-1] if draw(st.booleans()) else fields + [draw(st.one_of(VALID, ODD))]
  else:
    return draw(st.text(max_size=20))
  return sep.join(fields)


def _lines(sep, nfields):
  valid = st.lists(VALID, min_size=nfields, max_size=nfields).map(sep.join)
  return _file_lines(valid, _odd_row(sep, nfields))


def _negatives_lines():
  pair = st.tuples(VALID, VALID).map(lambda p: f"({p[0]},{p[1]})")
  valid = st.tuples(pair, st.lists(VALID, min_size=3, max_size=3).map("\t".join)).map("\t".join)
  odd_pair = st.one_of(
      st.tuples(st.one_of(VALID, BOUNDARY),
                st.one_of(VALID, BOUNDARY)).map(lambda p: f"({p[0]},{p[1]})"), ODD)
  odd = st.one_of(
      st.tuples(odd_pair,
                st.lists(VALID, min_size=3, max_size=3).map("\t".join)).map("\t".join),
      st.tuples(pair, _odd_row("\t", 3)).map("\t".join))
  return _file_lines(valid, odd)


# file name (a user's file is read by its suffix): (parser, header line or None, lines)
PARSERS = {
    "u.data": (formats.parse_movielens_100k, None, _lines("\t", 4)),
    "ratings.dat": (formats.parse_movielens_1m, None, _lines("::", 4)),
    "x.rating": (formats.parse_ncf_rating, None, _lines("\t", 4)), "user_artists.dat":
        (formats.parse_lastfm_user_artists, "userID\tartistID\tweight", _lines("\t", 3)), "x.inter":
            (userfile.parse_interaction_file, "user_id:token\titem_id:token\ttimestamp:float",
             _lines("\t", 3)), "x.test.negative": (formats.parse_ncf_test_negatives, None,
                                                   _negatives_lines()),
}


def _check_parsed(result):
  if isinstance(result, formats.TestNegatives):
    for a in (result.users, result.items, result.negatives):
      assert a.dtype == np.int32 and (a >= 0).all()
    assert result.negatives.shape[0] == result.users.shape[0]
    return
  n = result.users.shape[0]
  assert result.items.shape == result.timestamps.shape == (n,)
  assert 0 <= result.users.min() and result.users.max() < result.num_users <= 2**31
  assert 0 <= result.items.min() and result.items.max() < result.num_items <= 2**31


def _check_pairs_kept(result, lines, sep):
  """Where every line's user and item fields are canonical non-negative integers, the
  parse holds exactly the lines' (user, item) pairs, read back through its raw ids (ids
  kept verbatim where it has none: NCF's files) — a line dropped, or two ids merged (say
  2**64 and 2**64 + 7 through float64), fails."""
  fields = [line.split(sep)[:2] for line in lines]
  if not all(len(f) == 2 and all(re.fullmatch(r"0|[1-9][0-9]*", x) for x in f) for f in fields):
    return
  raw = lambda ids, i: i if ids is None else int(ids[i])
  got = {(raw(result.raw_user_ids, u), raw(result.raw_item_ids, i))
         for u, i in zip(result.users.tolist(), result.items.tolist())}
  assert got == {(int(u), int(i)) for u, i in fields}


@pytest.fixture(scope="module")
def scratch():
  with tempfile.TemporaryDirectory() as d:
    yield pathlib.Path(d)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_parse_or_raise_a_one_line_data_error(name, scratch):
  parse, header, lines = PARSERS[name]
  path = scratch / name

  @PARSE
  @given(lines=lines,
         newline=st.sampled_from(["\n", "\r\n"]),
         raw=st.one_of(st.none(), st.binary(max_size=40)))
  def check(lines, newline, raw):
    if raw is not None:
      path.write_bytes(raw)
    else:
      path.write_text(newline.join(([header] if header else []) + lines) + newline,
                      encoding="utf-8",
                      errors="surrogatepass")
    try:
      result = parse(path)
    except DataFormatError as e:
      message = str(e)
      assert message.startswith(str(path)) and "\n" not in message
      return
    _check_parsed(result)
    if raw is None and not isinstance(result, formats.TestNegatives):
      _check_pairs_kept(result, lines, "::" if name == "ratings.dat" else "\t")

  check()


# ------------------------------------------------------------------- flags --


def _field_values(field):
  if field.type in (int, "int"):
    return st.one_of(st.just(field.default), st.integers(-2**40, 2**40))
  if field.type in (float, "float"):
    return st.one_of(st.just(field.default), st.floats(allow_nan=True, allow_infinity=True))
  if field.type in (bool, "bool"):
    return st.booleans()
  return st.one_of(st.just(field.default), st.text(max_size=8))


CHANGED = st.lists(st.sampled_from(
    [f for f in dataclasses.fields(TrainConfig) if f.name not in ("data_dir", "workdir")]),
                   min_size=1,
                   max_size=3,
                   unique_by=lambda f: f.name)


@FEW
@given(data=st.data(), fields=CHANGED)
def test_config_validation_accepts_or_names_the_bad_flag(data, fields):
  values = {f.name: data.draw(_field_values(f), label=f.name) for f in fields}
  config = TrainConfig(**values)
  try:
    config.validate()
  except ValueError as e:
    message = str(e)
    assert "\n" not in message
    name = message[2:message.index("=")]
    assert message.startswith("--") and name in values, message
    return
  for name in ("user_lr", "item_lr", "dense_lr", "weight_decay", "server_lr", "compute_seconds"):
    value = getattr(config, name)
    assert math.isfinite(value) and value >= 0, name
  assert 0 <= config.seed < 2**32 and 0 < config.payload_ratio <= 1
  assert all(
      getattr(config, n) > 0
      for n in ("dim", "rounds", "clients_per_round", "batch_size", "eval_every"))
  assert all(math.isfinite(float(t)) and float(t) > 0 for t in config.bandwidth_tiers.split(","))


GRID_TEXT = st.one_of(
    st.text(max_size=20),
    st.lists(st.tuples(st.sampled_from(SWEEPABLE + ("dim", "nosuch", "")),
                       st.lists(st.one_of(VALID, ODD), max_size=3).map(",".join)),
             max_size=3).map(lambda parts: ";".join(f"{n}={v}" for n, v in parts)))


@FEW
@given(text=GRID_TEXT)
def test_grid_flags_parse_or_name_the_flag_and_value(text):
  try:
    grid = parse_grid(text, flag="--grid")
  except ValueError as e:
    assert str(e).startswith("--grid=")
    return
  assert set(grid) <= set(SWEEPABLE)
  assert all(math.isfinite(v) for values in grid.values() for v in values)


@FEW
@given(text=GRID_TEXT)
def test_shape_grid_values_have_the_setting_type_or_name_the_flag(text):
  try:
    grid = parse_grid(text,
                      flag="--shape_grid",
                      names=None,
                      cast=lambda n: flag_lib.field_parser(TrainConfig, n, "--shape_grid"))
  except ValueError as e:
    assert str(e).startswith("--shape_grid")
    return
  types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
  for name, values in grid.items():
    if types[name] is float:
      assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    elif types[name] in (int, bool):
      assert all(type(v) is types[name] for v in values)


@FEW
@given(text=st.text(max_size=20))
def test_list_flags_parse_or_name_the_flag_and_value(text):
  for cast, what in ((int, "an integer"), (flag_lib.fraction, "a payload ratio"),
                     (flag_lib.positive_int, "a positive integer")):
    try:
      values = flag_lib.parse_values("--ratios", text, cast, what)
    except ValueError as e:
      assert str(e).startswith(f"--ratios={text}: ")
      assert str(e).endswith((f"is not {what}", "repeats an earlier entry"))
      continue
    assert len(values) == text.count(",") + 1 == len(set(values))
    if cast is flag_lib.fraction:
      assert all(0 < v <= 1 for v in values)
