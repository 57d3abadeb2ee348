"""The file format of a saved ``Split`` (``.npz``, uncompressed, atomic writes).

A file holds the split's arrays, its sizes and name, the JSON metadata it was built
from (e.g. the sha256 of the source files and the options) and a sha256 of all of
that, which ``load_split`` checks: an altered or damaged file, or one built from other
data or options, raises ``StaleSplitError`` (the dataset cache then rebuilds it).
"""

import hashlib
import io
import json
import pathlib

import numpy as np

from fedras_jax import outputs
from fedras_jax.data.split import Split

# 2: the file carries a sha256 of its content and the metadata it was built from.
SPLIT_FORMAT_VERSION = 2


class StaleSplitError(ValueError):
  """A saved split whose content checksum or metadata does not match."""


_ARRAYS = ("train_indptr", "train_items", "valid_item", "test_item", "test_negatives",
           "seen_indptr", "seen_items")


def _content_sha256(num_users: int, num_items: int, name: str, metadata: str, arrays: dict) -> str:
  """sha256 of everything a saved split holds (sizes, name, metadata, arrays)."""
  h = hashlib.sha256(json.dumps([num_users, num_items, name, metadata]).encode())
  for k in _ARRAYS:
    a = np.ascontiguousarray(arrays[k])
    h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def split_sha256(split: Split) -> str:
  """sha256 of a split's sizes and arrays (its positives, held-out items and test
  negatives): what a run trains and is scored on, whatever file it came from."""
  return _content_sha256(split.num_users, split.num_items, "", "",
                         {k: getattr(split, k) for k in _ARRAYS})


def save_split(path, split: Split, metadata: dict | None = None) -> pathlib.Path:
  """Writes `split` to `path` (.npz, uncompressed) atomically.

  `metadata` (JSON-able: e.g. the sha256 of the source files and the
  options the split was built with) is stored with it, and a sha256 of
  the whole content, which `load_split` checks.
  """
  meta = json.dumps(metadata or {}, sort_keys=True)
  arrays = {k: getattr(split, k) for k in _ARRAYS}
  checksum = _content_sha256(split.num_users, split.num_items, split.name, meta, arrays)
  buffer = io.BytesIO()
  np.savez(buffer,
           format_version=np.int64(SPLIT_FORMAT_VERSION),
           num_users=np.int64(split.num_users),
           num_items=np.int64(split.num_items),
           name=np.str_(split.name),
           metadata=np.str_(meta),
           content_sha256=np.str_(checksum),
           **arrays)
  return outputs.write_atomic(path, buffer.getvalue())


def load_split(path, metadata: dict | None = None) -> Split:
  """Reads a split written by `save_split` (validated on construction).

  Raises:
      StaleSplitError: the content does not match its checksum, or
          `metadata` is given and differs from the stored one (the split
          was built from other files or options); the message says which
          metadata keys differ.
      ValueError: another format version, or an invalid split.
  """
  with np.load(path, allow_pickle=False) as z:
    version = int(z["format_version"]) if "format_version" in z else -1
    if version != SPLIT_FORMAT_VERSION:
      raise ValueError(f"{path}: split format version {version}, "
                       f"expected {SPLIT_FORMAT_VERSION}")
    arrays = {k: z[k] for k in _ARRAYS}
    num_users, num_items = int(z["num_users"]), int(z["num_items"])
    name, meta = str(z["name"]), str(z["metadata"])
    stored = str(z["content_sha256"])
  if _content_sha256(num_users, num_items, name, meta, arrays) != stored:
    raise StaleSplitError(f"{path}: content does not match its sha256 "
                          "(altered or damaged file)")
  if metadata is not None:
    old = json.loads(meta)
    new = json.loads(json.dumps(metadata, sort_keys=True))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
      raise StaleSplitError(f"{path}: built from other data or "
                            f"options (differs in {', '.join(diff)})")
  return Split(num_users=num_users, num_items=num_items, name=name, **arrays)
