"""Shared fixtures: a small ragged synthetic dataset and the ML-100K path."""
import pathlib

import numpy as np
import pytest

from fedras_jax.federated import client_data_from_csr

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML100K = SHARED / "ml-100k" / "u.data"


class Synthetic:
  """10 users, 30 items, 2 to 18 training positives each (user 9 has more negatives
  to draw than unseen items, which exercises the wrap-around)."""
  num_users = 10
  num_items = 30

  def __init__(self, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [2, 3, 5, 8, 12, 4, 6, 9, 3, 18]
    self.train, self.seen = [], []
    for n in sizes:
      items = rng.choice(self.num_items, n + 1, replace=False)
      self.train.append(np.sort(items[:n]))
      self.seen.append(np.sort(items))  # the last one plays the test item
    self.train_indptr = np.r_[0, np.cumsum([len(t) for t in self.train])]
    self.seen_indptr = np.r_[0, np.cumsum([len(s) for s in self.seen])]
    self.data = client_data_from_csr(self.train_indptr, np.concatenate(self.train),
                                     self.seen_indptr, np.concatenate(self.seen),
                                     self.num_items)


@pytest.fixture(scope="session")
def synthetic():
  return Synthetic()


@pytest.fixture(scope="session")
def ml100k_path():
  if not ML100K.exists():
    pytest.skip(f"ML-100K not found at {ML100K}")
  return ML100K
