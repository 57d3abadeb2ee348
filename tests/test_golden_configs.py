"""Configs still compute what they computed: the first rounds of the main ML-100K config
against the rows recorded in ``tests/golden/configs.json`` (``experiments/golden.py``
records and checks every config; a change that alters a config's results must
re-record them and say why)."""
import json

import pytest

from experiments import golden

# FedRAS on FedMF (adaptive K, warm-started downlink with error feedback): every stage
# of the round. One config only: each costs ~20 s of compile in the suite; the others
# are checked with `python -m experiments.golden`.
SUITE = ("ml100k_mf",)


def test_every_config_has_a_recorded_row():
  recorded = json.loads(golden.GOLDEN.read_text())
  assert sorted(recorded) == sorted(p.stem for p in golden.CONFIGS.glob("*.flags"))


@pytest.mark.parametrize("name", SUITE)
def test_config_reproduces_its_recorded_row(name, ml100k_path):
  recorded = json.loads(golden.GOLDEN.read_text())[name]
  path = golden.CONFIGS / f"{name}.flags"
  row = golden.final_row(path, data_dir=str(ml100k_path.parents[1]))
  assert row["round"] == golden.ROUNDS
  assert golden.differences(recorded, row, golden.tolerance(path)) == []

  if name == "ml100k_mf":
    # The uplink's bits by hand (ML-100K: 1,682 items, d = 64, 64 clients a round): every
    # client sent 2 actions, i.e. 2 float32 centroids and a 2-bit index per item (3
    # symbols: the 2 actions or no update).
    assert row["actions_min"] == row["actions_max"] == 2
    per_client = 2 * 64 * 32 + 1682 * 2
    assert row["bits_up_max"] == per_client
    assert row["bits_up_total"] == per_client * 64 * golden.ROUNDS
    assert row["compression_up"] == pytest.approx(1 - per_client / (1682 * 64 * 32), rel=1e-12)


def test_differences_names_each_changed_field():
  recorded = {"hr@10": 0.5, "round": 3, "loss": 0.25}
  assert golden.differences(recorded, dict(recorded)) == []
  assert golden.differences(recorded, {**recorded, "hr@10": 0.5 * (1 + 1e-7)}) == []
  assert golden.differences(recorded, {**recorded, "hr@10": 0.501, "round": 4}) == [
      "hr@10: 0.5 -> 0.501", "round: 3 -> 4"
  ]
  assert golden.differences(recorded, {"hr@10": 0.5, "round": 3}) == ["loss: 0.25 -> None"]
  assert golden.differences(recorded, {**recorded, "hr@10": 0.5001}, rtol=1e-3) == []
  assert golden.tolerance(golden.CONFIGS / "ml100k_ncf_fedras.flags") == golden.RTOL_16_BIT
  assert golden.tolerance(golden.CONFIGS / "ml100k_mf.flags") == golden.RTOL
