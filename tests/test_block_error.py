"""experiments.block_error: the per-block relative error against NumPy."""
import subprocess
import sys

import numpy as np
import pytest

from experiments.block_error import aggregate_relative_error, block_relative_errors, magnitude_shares


def test_block_relative_errors_match_numpy():
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(11, 7)).astype(np.float32)
  rows[:, :2] *= 1e-3  # a small block, as NeuMF's GMF columns
  decoded = rows + 0.1 * rng.normal(size=rows.shape).astype(np.float32)
  client = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3], np.int32)
  blocks = [(0, 2), (2, 7)]
  got = np.asarray(block_relative_errors(decoded, rows, client, blocks, 5))
  want = np.zeros((3, 5))
  for c in range(4):
    mine = client == c
    for i, cols in enumerate([slice(0, 2), slice(2, 7), slice(None)]):
      r, d = rows[mine][:, cols], decoded[mine][:, cols]
      want[i, c] = np.linalg.norm(d - r) / np.linalg.norm(r)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got.shape == (3, 5) and np.all(got[:, 4] == 0)  # a client with no rows: 0


@pytest.mark.parametrize("rule", ["inverse_frequency", "fedavg"])
def test_aggregate_relative_error_matches_numpy(rule):
  # Six slot rows of three clients over four items (item 3 untouched, one padding slot
  # holding garbage): the error of the per-item aggregate, not of the rows.
  rng = np.random.default_rng(1)
  rows = rng.normal(size=(7, 3)).astype(np.float32)
  decoded = rows + 0.3 * rng.normal(size=rows.shape).astype(np.float32)
  items = np.array([0, 1, 0, 2, 1, 0, 3], np.int32)
  touched = np.array([True] * 6 + [False])
  want_update = lambda x: np.stack([
      x[touched & (items == i)].sum(0) / (max(np.sum(touched & (items == i)), 1)
                                          if rule == "inverse_frequency" else 3) for i in range(4)
  ])
  want = (np.linalg.norm(want_update(decoded) - want_update(rows))
          / np.linalg.norm(want_update(rows)))
  got = float(aggregate_relative_error(decoded, rows, items, touched, 4, 3, rule))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert float(aggregate_relative_error(rows, rows, items, touched, 4, 3, rule)) == 0.0


def test_magnitude_share_splits_the_error_into_length_and_direction():
  # Client 0: a row decoded at twice its length (all length); client 1: a row decoded
  # at the same length, turned 90 degrees (all direction); client 2: both, by hand.
  rows = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], np.float32)
  decoded = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]], np.float32)
  got = np.asarray(magnitude_shares(decoded, rows, np.array([0, 1, 2], np.int32), 3))
  # client 2: (3 - 1)^2 = 4 of |(3, -1)|^2 = 10
  np.testing.assert_allclose(got, [1.0, 0.0, 0.4], atol=1e-6)


@pytest.mark.parametrize(
    "flags,message",
    [(["--variants=seperate"], "error: --variants: unknown ['seperate']"),
     ([], "error: --ckpt_dir is required"),
     (["--sub_blocks=0"], "error: --sub_blocks=0: must be at least 1"),
     (["--stages=0"], "error: --stages=0: must be at least 1"),
     (["--coordinator=127.0.0.1:1234"], "error: --coordinator: block_error runs in one process"),
     (["--ckpt_dir=/nonexistent/checkpoints"], "error: --ckpt_dir=/nonexistent/checkpoints: no"),])
def test_bad_flags_fail_before_the_data_is_loaded(flags, message):
  """They used to end in a TypeError traceback after building the simulation, or in
  silence with status 0 (no checkpoints, a misspelt variant)."""
  proc = subprocess.run([sys.executable, "-m", "experiments.block_error", *flags],
                        capture_output=True,
                        text=True,
                        timeout=120)
  assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(message)
