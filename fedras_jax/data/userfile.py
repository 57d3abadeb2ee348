"""Interaction files a user brings: RecBole ``.inter``, CSV, TSV -> `Interactions`.

`parse_interaction_file` reads one file of ``user, item[, rating][, timestamp]``
rows (any other columns are ignored):

* **Delimiter**: tab, ``::``, ``,``, ``;``, ``|``, a space or runs of spaces:
  the first that splits the first line into n >= 2 fields and most of the
  first 50 lines into n too (the others are then reported as malformed, by
  line). Runs of spaces (or tabs; aligned columns, none at a line's ends
  counted) are tried last, so a file with one space between fields keeps its
  empty fields. Quoted fields are not supported.
* **Header**: a RecBole header (``name:type`` fields, always present in a
  ``.inter`` file) or a first line naming a known column (``user``,
  ``user_id``, ``userId``, ``item_id``, ``movieId``, ``asin``, ``rating``,
  ``timestamp``, ...; see `COLUMN_NAMES`, case-insensitive). Columns are then
  found by name. Without a header, ``columns`` (``--data_columns``) names them
  in order, e.g. ``user,item,rating,timestamp`` (other names: ignored
  columns); given with a header, it overrides the header's names. A header of
  other names (``customer,sku``) is skipped with ``header`` (``--data_header``).
* **Ids** of any kind (numbers, strings) are remapped to 0..n-1 in sorted
  order (numerically when every id is a decimal integer); the raw ids are
  kept (`Interactions.raw_user_ids`).
* **Implicit feedback**: every row is an interaction, or, with ``min_rating``,
  the rows whose rating is >= it. Repeated (user, item) pairs: the earliest.
* **Filters**: users with fewer than ``min_user_interactions`` and items with
  fewer than ``min_item_interactions`` interactions are dropped; one pass,
  both counted on the unfiltered data, or, with ``kcore``, repeated until
  both hold (a k-core). Ids are remapped after filtering.
* **Time**: the timestamp column, of numbers (non-integral ones are replaced
  by their rank) or of ISO 8601 dates or times (``2016-07-03``,
  ``2016-07-03 18:21:27``, ``2016-07-03T18:21:27.5+02:00``; read as seconds
  since 1970 UTC, those without a UTC offset as UTC; a column is all one kind;
  a date-time in a space-separated file needs its ``T``); a ``date`` or ``datetime`` column
  only where no other column has a time name, and ignored with a warning if
  it does not read as one (``07/03/2016``, or a mix of kinds); else a seeded random order, so leave-one-out holds
  out a random interaction per user (`leave_one_out` then takes the "latest");
  a warning says so when the header has columns of other names (``rated_at``:
  a time column under a name not in `COLUMN_NAMES`?).

Malformed input raises `formats.DataFormatError` (``<file>:<line>: ...``).
"""

import dataclasses
import logging
import os

import numpy as np

from fedras_jax.data import formats
from fedras_jax.data.interactions import Interactions, from_raw_ids

SUFFIXES = (".inter", ".csv", ".tsv", ".txt", ".dat")
# Part of a cached split's options: bumped when a change to the reader changes what a file
# parses to, so no split cached by an older reader is served (2: a byte-order mark before
# a headerless file's first id, numbers such as 1_0 refused; 3: also by the vectorised
# path, "-0" an id of its own, a first line of ids with colons not a RecBole header,
# integer timestamps read as integers; 4: beside a fractional one, timestamps ranked as exact
# decimals, not float64; 5: ISO 8601 times read, "date" / "datetime" time columns, runs of
# spaces a separator).
READER_VERSION = 5
# None: runs of spaces and tabs (`formats.split_fields`), tried after one space.
DELIMITERS = ("\t", "::", ",", ";", "|", " ", None)
_SNIFF_LINES = 50
_log = logging.getLogger(__name__)

# Header names (lower case, RecBole ``:type`` suffix removed) of each column.
COLUMN_NAMES = {
    "user": ("user", "user_id", "userid", "uid", "reviewerid", "customer_id", "customerid",
             "visitorid"),
    "item": ("item", "item_id", "itemid", "iid", "movie", "movie_id", "movieid", "product",
             "product_id", "productid", "asin", "business_id", "artist", "artist_id", "artistid",
             "track_id", "book_id", "isbn"),
    "rating": ("rating", "score", "stars", "overall", "weight", "preference"), "timestamp":
        ("timestamp", "time", "ts", "unixreviewtime", "unix_timestamp", "date", "datetime"),
}
_BY_NAME = {n: col for col, names in COLUMN_NAMES.items() for n in names}
# Time names taken only where no other time name is in the header: beside ``timestamp`` a
# ``date`` column is the coarser (a day), beside ``time`` the day of a time of day.
_DATE_NAMES = ("date", "datetime")


@dataclasses.dataclass(frozen=True)
class FileOptions:
  """How `parse_interaction_file` reads and filters a file (see module doc).

  Attributes:
      columns: comma-separated column names in file order ("" : from the
          header).
      min_rating: keep rows with rating >= this (None: every row).
      min_user_interactions: drop users with fewer interactions (0: none).
      min_item_interactions: drop items with fewer interactions (0: none).
      kcore: repeat the two filters until both hold.
      header: the first line is a header even if it names no known column
          (skipped; ``columns`` names the columns).
  """

  columns: str = ""
  min_rating: float | None = None
  min_user_interactions: int = 0
  min_item_interactions: int = 0
  kcore: bool = False
  header: bool = False

  def check(self):
    """Raises ValueError naming the flag of a bad option."""
    for flag in ("min_user_interactions", "min_item_interactions"):
      if getattr(self, flag) < 0:
        raise ValueError(f"--{flag}={getattr(self, flag)} is invalid:"
                         " must be >= 0")
    if self.min_rating is not None and not np.isfinite(self.min_rating):
      raise ValueError(f"--min_rating={self.min_rating} is invalid: "
                       "must be finite")
    if self.columns:
      names = [c.strip().lower() for c in self.columns.split(",")]
      found = [_BY_NAME.get(n) for n in names]
      for col in ("user", "item"):
        if found.count(col) != 1:
          raise ValueError(f"--data_columns={self.columns!r} is invalid: must "
                           f"name exactly one {col} column (e.g. "
                           "user,item,rating,timestamp)")
      # (date names count only where no other time name is given, as in a header)
      timed = [n for n, col in zip(names, found) if col == "timestamp"]
      times = [n for n in timed if n not in _DATE_NAMES] or timed
      for col, count in (("rating", found.count("rating")), ("timestamp", len(times))):
        if count > 1:
          raise ValueError(f"--data_columns={self.columns!r} is "
                           f"invalid: two {col} columns")
    return self

  @property
  def is_default(self) -> bool:
    return self == FileOptions()


def is_path(dataset: str) -> bool:
  """Whether `dataset` names a file rather than a registered dataset.

  A path: it holds a directory separator, ends with one of `SUFFIXES`, or
  is an existing file.
  """
  return (os.sep in dataset or "/" in dataset or dataset.lower().endswith(SUFFIXES)
          or os.path.isfile(dataset))


def _delimiter(path, lines: list[str]) -> str:
  if not lines[0].strip():
    raise formats.DataFormatError(
        path, 1, "blank line (the first line is the header or the "
        "first interaction)")
  sample = lines[:_SNIFF_LINES]
  fields = formats.split_fields
  for sep in DELIMITERS:
    n = len(fields(lines[0], sep))
    # (a space leaving an empty field on every line is runs of spaces: aligned columns)
    if (n >= 2 and 2 * sum(len(fields(s, sep)) == n for s in sample) > len(sample)
        and not (sep == " " and all("" in fields(s, sep) for s in sample))):
      return sep
  for sep in DELIMITERS:  # the lines below agree, the first does not: say so
    counts = [len(fields(s, sep)) for s in sample[1:]]
    m = max(set(counts), key=counts.count, default=1)
    if m >= 2 and 2 * counts.count(m) > len(counts):
      raise formats.DataFormatError(
          path, 1, f"{len(fields(lines[0], sep))} field(s) separated by "
          f"{formats.separator_name(sep)}, the lines below "
          f"{m} (a missing or extra separator?): {formats.quote_snippet(lines[0])}")
  tried = ", ".join(formats.separator_name(d) for d in DELIMITERS)
  raise formats.DataFormatError(
      path, 1, f"cannot detect the delimiter: none of {tried} splits the "
      f"first line and most of the first {len(sample)} lines into the same "
      "number (>= 2) of fields")


# The field types of a RecBole header (``name:type``); a data field such as
# ``spotify:track:1`` is not one.
RECBOLE_TYPES = ("token", "float", "token_seq", "float_seq")


def _header_columns(fields: list[str]) -> tuple[list[str], bool] | None:
  """Column names of a header line, and whether it is RecBole-typed."""
  typed = all(
      f.partition(":")[0].strip() and f.partition(":")[2].strip().lower() in RECBOLE_TYPES
      for f in fields)
  names = [(f.partition(":")[0] if typed else f).strip().strip('"').lower() for f in fields]
  if typed or any(n in _BY_NAME for n in names):
    return names, typed
  return None


def _wanted(path, names: list[str], source: str) -> dict:
  """column -> (field index, kind) for the known names among `names`."""
  wanted = {}
  for j in sorted(range(len(names)), key=lambda j: names[j] in _DATE_NAMES):
    n = names[j]
    col = _BY_NAME.get(n)
    if col is not None and col not in wanted:
      kind = {"user": "token", "item": "token", "timestamp": "time"}.get(col, "float")
      wanted[col] = (j, kind)
  for col in ("user", "item"):
    if col not in wanted:
      raise formats.DataFormatError(
          path, 1, f"{source} has no {col} column (columns: "
          f"{', '.join(names)}; known {col} names: "
          f"{', '.join(COLUMN_NAMES[col])})")
  return wanted


def parse_interaction_file(path,
                           options: FileOptions = FileOptions(),
                           *,
                           seed: int = 0,
                           name: str | None = None) -> Interactions:
  """Reads a user-supplied interaction file (see the module docstring).

  Args:
      path: the file.
      options: columns, implicit-feedback threshold, filters.
      seed: seed of the random order of a file without timestamps.
      name: dataset name (default: the file name without its suffix).

  Raises:
      formats.DataFormatError: malformed file (names file and line), or
          nothing left after filtering.
      ValueError: a bad option (names the flag).
  """
  options.check()
  if name is None:
    name = os.path.splitext(os.path.basename(str(path)))[0]
  lines = formats.read_lines(path)
  is_inter = str(path).lower().endswith(".inter")
  sep = "\t" if is_inter else _delimiter(path, lines)
  header = _header_columns(formats.split_fields(lines[0], sep))
  if header is None and options.header:
    header = [f.strip().lower() for f in formats.split_fields(lines[0], sep)], False
  if is_inter and (header is None or not header[1]):
    raise formats.DataFormatError(
        path, 1, "a RecBole .inter file starts with a tab-separated 'name:type' header (types: "
        f"{', '.join(RECBOLE_TYPES)}), got {formats.quote_snippet(lines[0])}")
  nfields = len(formats.split_fields(lines[0], sep))
  names, source = _column_names(path, options, header, lines[0], sep)
  wanted = _wanted(path, names, source)
  first = 2 if header is not None else 1
  rows = lines[first - 1:]
  if not rows:
    raise formats.DataFormatError(path, 1, "header only, no interactions")
  c = _read_columns(path, rows, sep, nfields, wanted, first, names)
  n = len(rows)
  keep = np.ones(n, dtype=bool)
  if options.min_rating is not None:
    if "rating" not in c:
      raise ValueError(f"--min_rating={options.min_rating} needs a "
                       f"rating column; {path} has none ({source}: "
                       f"{', '.join(names)})")
    keep = c["rating"] >= options.min_rating
  if "timestamp" in c:
    ts = formats.timestamps_to_int64(c["timestamp"])
  else:
    ts = np.random.default_rng(seed).permutation(n).astype(np.int64)
    # (An empty name, e.g. the index column pandas writes, is no time column.)
    ignored = [col for col in names if col and col not in _BY_NAME]
    if ignored and source == "the header":  # a time column under a name not known?
      _log.warning(
          "%s: no timestamp column (known names: %s; ignored columns: %s): each user's held-out "
          "interaction is a seeded random one; name a time column (numbers, e.g. Unix "
          "seconds, or ISO 8601 dates) with --data_columns, e.g. "
          "--data_columns=%s", path, ", ".join(COLUMN_NAMES["timestamp"]), ", ".join(ignored),
          ",".join("timestamp" if col == ignored[0] else col for col in names))
  if not keep.any():
    raise formats.DataFormatError(path, None, f"no rating >= --min_rating={options.min_rating}")
  ids = {col: formats.numeric_tokens(np.char.strip(c[col][keep])) for col in ("user", "item")}
  inter = from_raw_ids(name, ids["user"], ids["item"], ts[keep])
  inter = filter_counts(inter,
                        options.min_user_interactions,
                        options.min_item_interactions,
                        kcore=options.kcore)
  if inter.num_interactions == 0:
    raise formats.DataFormatError(
        path, None, "no interactions left after --min_user_interactions="
        f"{options.min_user_interactions} / --min_item_interactions="
        f"{options.min_item_interactions}")
  return inter


def _read_columns(path, rows, sep, nfields, wanted, first, names):
  """`formats.read_columns` of the data ``rows``; a ``date`` / ``datetime`` column of
  other values than times (``07/03/2016``) is dropped with a warning, as it was ignored
  before this reader took ISO dates: no time column then (a seeded random order)."""
  try:
    return formats.read_columns(path, rows, sep, nfields, wanted, first_line=first)
  except formats.DataFormatError as e:
    dated = names[wanted["timestamp"][0]] if "timestamp" in wanted else None
    if dated not in _DATE_NAMES:
      raise
    others = {col: where for col, where in wanted.items() if col != "timestamp"}
    columns = formats.read_columns(path, rows, sep, nfields, others, first_line=first)
    _log.warning(
        "%s: the %r column is not read as the time (%s): each user's held-out interaction is a "
        "seeded random one; numbers or ISO 8601 dates (2016-07-03, 2016-07-03T18:21:27) order "
        "them", path, dated, e)
    return columns


def _column_names(path, options: FileOptions, header, first_line: str,
                  sep: str | None) -> tuple[list[str], str]:
  """``(column names, where they come from)``: ``--data_columns``, else the
  header; a ValueError when neither names the columns of ``first_line``."""
  nfields = len(formats.split_fields(first_line, sep))
  if options.columns:
    names = [c.strip().lower() for c in options.columns.split(",")]
    if len(names) != nfields:
      raise ValueError(f"--data_columns={options.columns!r} names {len(names)} "
                       f"columns but {path} has {nfields} fields per line "
                       f"(separated by {formats.separator_name(sep)})")
    return names, "--data_columns"
  if header is not None:
    return header[0], "the header"
  raise ValueError(f"{path} has no header naming known columns (first line: "
                   f"{formats.quote_snippet(first_line)}): name the columns with "
                   "--data_columns, e.g. --data_columns=user,item,rating,timestamp, and add "
                   "--data_header if that line is a header")


def filter_counts(inter: Interactions,
                  min_user: int,
                  min_item: int,
                  *,
                  kcore: bool = False) -> Interactions:
  """Drops users with < `min_user` and items with < `min_item` interactions.

  One pass with both counts taken on `inter`, or (``kcore``) repeated until
  every user has >= `min_user` and every item >= `min_item`. Remaining ids
  are remapped to 0..n-1 in their old order (raw ids follow them).
  """
  users, items = inter.users, inter.items
  keep = np.ones(inter.num_interactions, dtype=bool)
  while True:
    uc = np.bincount(users[keep], minlength=inter.num_users)
    ic = np.bincount(items[keep], minlength=inter.num_items)
    new = keep & (uc[users] >= min_user) & (ic[items] >= min_item)
    done = (new == keep).all()
    keep = new
    if done or not kcore:
      break
  if keep.all():
    return inter
  kept_u, new_u = np.unique(users[keep], return_inverse=True)
  kept_i, new_i = np.unique(items[keep], return_inverse=True)
  raw = lambda ids, kept: None if ids is None else ids[kept]
  return Interactions(users=new_u.reshape(-1),
                      items=new_i.reshape(-1),
                      timestamps=inter.timestamps[keep],
                      num_users=len(kept_u),
                      num_items=len(kept_i),
                      name=inter.name,
                      raw_user_ids=raw(inter.raw_user_ids, kept_u),
                      raw_item_ids=raw(inter.raw_item_ids, kept_i))
