"""Data: file formats -> `Interactions` -> leave-one-out `Split` (host numpy).

Typical use::

    from fedras_jax import data
    split = data.load_dataset("ml-100k", seed=0)   # fetched + cached
    data.describe(split)

Modules: `interactions` (the container), `formats` (parsers), `fetch`
(obtaining files with sha256 checks), `negatives` (test-negative sampling),
`split` (leave-one-out, `Split`, save/load, stats), `userfile` (a user's
own CSV / TSV / ``.inter`` file), `datasets` (named datasets and files,
cache). Only numpy and the standard library are imported.
"""

from fedras_jax.data.datasets import (DATASETS, load_dataset, ncf_split)
from fedras_jax.data.fetch import (ChecksumError, FetchContext, FetchError, PipWheelSource,
                                   RemoteFile, ZipUrlSource, default_data_dir, ensure_file,
                                   sha256_file)
from fedras_jax.data.formats import (DataFormatError, TestNegatives, parse_lastfm_user_artists,
                                     parse_movielens_100k, parse_movielens_1m, parse_ncf_rating,
                                     parse_ncf_test_negatives)
from fedras_jax.data.interactions import Interactions
from fedras_jax.data.negatives import TooFewCandidatesError, sample_negatives
from fedras_jax.data.split import (EmptyClientError, Split, build_split, describe, leave_one_out)
from fedras_jax.data.split_file import (StaleSplitError, load_split, save_split, split_sha256)
from fedras_jax.data.userfile import (FileOptions, is_path, parse_interaction_file)

__all__ = [
    "DATASETS", "ChecksumError", "DataFormatError", "EmptyClientError", "FetchContext",
    "FetchError", "FileOptions", "Interactions", "PipWheelSource", "RemoteFile", "Split",
    "StaleSplitError", "TestNegatives", "TooFewCandidatesError", "ZipUrlSource", "build_split",
    "default_data_dir", "describe", "ensure_file", "is_path", "leave_one_out", "load_dataset",
    "load_split", "ncf_split", "parse_interaction_file", "parse_lastfm_user_artists",
    "parse_movielens_100k", "parse_movielens_1m", "parse_ncf_rating", "parse_ncf_test_negatives",
    "sample_negatives", "save_split", "sha256_file", "split_sha256",
]
