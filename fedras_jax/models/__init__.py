"""Recommender models: FedMF and FedNCF behind one contract (see ``base``).

A model is one module and one entry of ``MODELS`` (``register_model``): how to build
it from its own settings, and which instance a run with ``--dim`` and
``--init_scale`` trains. Nothing else in the framework names a model.
"""
from typing import Callable, NamedTuple, Optional

from fedras_jax.models.base import Params, RecModel, bce_loss
from fedras_jax.models.mf import mf
from fedras_jax.models.ncf import ncf, ncf_for_run

__all__ = [
    "MODELS", "ModelEntry", "Params", "RecModel", "bce_loss", "get_model", "model_for_run",
    "register_model"
]


class ModelEntry(NamedTuple):
  """A registered model: ``build(**settings) -> RecModel``, and ``for_run(dim,
  init_scale) -> RecModel``, the instance a training run's flags select."""
  build: Callable[..., RecModel]
  for_run: Callable[[int, float], RecModel]


MODELS = {"mf": ModelEntry(build=mf, for_run=mf), "ncf": ModelEntry(build=ncf, for_run=ncf_for_run)}


def register_model(name: str,
                   build: Callable[..., RecModel],
                   for_run: Optional[Callable[[int, float], RecModel]] = None):
  """Adds a model under ``name`` (``for_run`` defaults to ``build(dim, init_scale)``);
  ``--model=name`` then trains it."""
  if name in MODELS:
    raise ValueError(f"a model named {name!r} is registered already")
  MODELS[name] = ModelEntry(build=build, for_run=for_run or build)


def _entry(name: str) -> ModelEntry:
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
  return MODELS[name]


def get_model(name: str, **settings) -> RecModel:
  """Builds the model ``name`` from its own settings (e.g. ``mf``: ``dim``)."""
  return _entry(name).build(**settings)


def model_for_run(name: str, dim: int, init_scale: float) -> RecModel:
  """The model a run with ``--model=name --dim --init_scale`` trains."""
  return _entry(name).for_run(dim, init_scale)
