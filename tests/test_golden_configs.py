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
