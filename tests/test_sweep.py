"""A vmapped sweep run equals the same run trained alone."""
import dataclasses

import numpy as np
import pytest

from fedras_jax.sweep import grid_points, summarize, sweep
from fedras_jax.training import TrainConfig, train


def test_sweep_run_equals_single_run(ml100k_path):
  base = TrainConfig(data_dir=str(ml100k_path.parents[1]), method="uncompressed", rounds=6,
                     eval_every=6, clients_per_round=8, dim=8, quiet=True, checkpoint_every=0)
  results = sweep(base, seeds=[0, 1], grid={"item_lr": [4.0, 8.0]})
  assert [(r["seed"], r["item_lr"]) for r in results] == [(0, 4.0), (1, 4.0), (0, 8.0), (1, 8.0)]
  alone = train(dataclasses.replace(base, item_lr=8.0))["final"]
  np.testing.assert_allclose(results[2]["hr@10"], alone["hr@10"], atol=1e-6)
  np.testing.assert_allclose(results[2]["ndcg@10"], alone["ndcg@10"], atol=1e-6)
  rows = summarize(results)
  assert [(r["item_lr"], r["seeds"]) for r in rows] == [(4.0, 2), (8.0, 2)]
  np.testing.assert_allclose(rows[1]["hr@10_mean"], (results[2]["hr@10"] + results[3]["hr@10"]) / 2)


def test_grid_rejects_shape_changing_settings():
  assert grid_points({"item_lr": [1, 2], "user_lr": [3]}) == [
      {"item_lr": 1, "user_lr": 3}, {"item_lr": 2, "user_lr": 3}]
  with pytest.raises(ValueError, match="cannot vmap over 'dim'"):
    grid_points({"dim": [8, 16]})
