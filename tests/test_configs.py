"""Every flagfile in configs/ parses into a valid ``TrainConfig`` with the settings its
comment line promises (a renamed or removed flag would make a config unusable)."""
import dataclasses
import pathlib

from absl import flags
import pytest

from fedras_jax import flags as flag_lib
from fedras_jax.config import GROUPS, TrainConfig, settings_of

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.flags"))


def _config(path: pathlib.Path, monkeypatch) -> TrainConfig:
  monkeypatch.chdir(REPO)  # flagfiles include one another by repo-relative paths
  values = flags.FlagValues()
  flag_lib.define_train_flags(values)
  values(["prog", f"--flagfile={path.relative_to(REPO)}"])
  return flag_lib.config_from_flags(TrainConfig, values).validate()


def test_there_are_configs():
  assert len(CONFIGS) >= 7, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_validates(path, monkeypatch):
  config = _config(path, monkeypatch)
  dataset, model = path.stem.split("_")[:2]
  assert config.dataset == {"ml100k": "ml-100k", "ml1m": "ml-1m"}[dataset]
  assert config.model == model
  assert config.payload_ratio == 1 / 32 and config.seed == 0


def test_derived_configs_override_their_base(monkeypatch):
  base = _config(REPO / "configs/ml100k_ncf.flags", monkeypatch)
  ncf = _config(REPO / "configs/ml100k_ncf_fedras.flags", monkeypatch)
  assert (base.method, base.value_bits, base.tau_mode, base.item_lr) == ("fedras", 32, "auto", 8.0)
  assert (ncf.method, ncf.value_bits, ncf.tau_mode, ncf.tau, ncf.item_lr) == ("fedras", 16, "fixed",
                                                                              0.95, 16.0)
  assert ncf.dim == base.dim and ncf.rounds == base.rounds
  ml1m, stages = (_config(REPO / f"configs/{name}.flags", monkeypatch)
                  for name in ("ml1m_ncf", "ml1m_ncf_stages"))
  assert (ml1m.action_stages, ml1m.value_bits, ml1m.item_lr) == (1, 32, 8.0)
  assert (stages.action_stages, stages.value_bits, stages.tau_mode, stages.tau,
          stages.item_lr) == (8, 16, "fixed", 0.95, 32.0)
  assert stages.rounds == ml1m.rounds and stages.clients_per_round == ml1m.clients_per_round
  cosine = _config(REPO / "configs/ml1m_ncf_stages_cosine.flags", monkeypatch)
  assert (ml1m.server_lr_schedule, cosine.server_lr_schedule) == ("constant", "cosine")
  assert dataclasses.replace(cosine, server_lr_schedule="constant") == stages
  tiers = _config(REPO / "configs/ml100k_mf_tiers.flags", monkeypatch)
  assert (tiers.bandwidth, tiers.bandwidth_tiers, tiers.fluctuation) == ("tiers", "4,16,32,64", 0.3)


def test_every_setting_is_in_exactly_one_group():
  names = [n for g in GROUPS for n in settings_of(g)]
  assert sorted(names) == sorted(f.name for f in dataclasses.fields(TrainConfig))
  assert {"dataset", "data_dir"} <= set(settings_of("data"))
  assert {"method", "payload_ratio", "tau"} <= set(settings_of("compression"))
  with pytest.raises(ValueError, match="group must be one of"):
    settings_of("nosuch")
