"""Recommender models: FedMF and FedNCF behind one contract (see ``base``)."""
from fedras_jax.models.base import Params, RecModel, bce_loss
from fedras_jax.models.mf import mf
from fedras_jax.models.ncf import ncf

MODELS = {"mf": mf, "ncf": ncf}


def get_model(name: str, **kwargs) -> RecModel:
  """Builds a model by name ("mf" or "ncf")."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
  return MODELS[name](**kwargs)
