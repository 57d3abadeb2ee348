"""The model registry: a new model is one module plus one ``MODELS`` entry."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedras_jax import models
from fedras_jax.config import TrainConfig
from fedras_jax.experiment import build_model
from fedras_jax.models.base import Params, RecModel


def _cosine_mf(dim: int = 8, init_scale: float = 0.01) -> RecModel:
  """A model written outside the package: MF scored by scaled cosine similarity."""

  def init(key, num_users, num_items):
    ku, ki = jax.random.split(key)
    return Params(users=init_scale * jax.random.normal(ku, (num_users, dim)),
                  items=init_scale * jax.random.normal(ki, (num_items, dim)),
                  dense={})

  def score(user, rows, dense):
    del dense
    norms = jnp.linalg.norm(rows, axis=1) * jnp.linalg.norm(user)
    return 5.0 * (rows @ user) / jnp.maximum(norms, 1e-12)

  return RecModel(name="cosine_mf", user_dim=dim, item_dim=dim, init=init, score=score)


@pytest.fixture
def registered():
  models.register_model("cosine_mf", _cosine_mf)
  yield
  del models.MODELS["cosine_mf"]


def test_a_registered_model_is_what_a_run_with_its_name_trains(registered):
  config = TrainConfig(model="cosine_mf", dim=6, init_scale=0.5).validate()
  model = build_model(config)
  assert (model.name, model.user_dim, model.item_dim) == ("cosine_mf", 6, 6)
  params = model.init(jax.random.PRNGKey(0), 3, 5)
  user, rows = np.asarray(params.users[1], np.float64), np.asarray(params.items, np.float64)
  expected = 5.0 * rows @ user / (np.linalg.norm(rows, axis=1) * np.linalg.norm(user))
  np.testing.assert_allclose(model.score(params.users[1], params.items, {}), expected, rtol=1e-5)


def test_unregistered_and_duplicate_names_are_refused():
  with pytest.raises(ValueError, match="--model='cosine_mf' is invalid"):
    TrainConfig(model="cosine_mf").validate()
  with pytest.raises(ValueError, match="registered already"):
    models.register_model("mf", _cosine_mf)


def test_run_models_follow_the_dim_convention():
  mf = build_model(TrainConfig(model="mf", dim=64))
  ncf = build_model(TrainConfig(model="ncf", dim=64))
  assert (mf.user_dim, mf.item_dim) == (64, 64)
  assert (ncf.user_dim, ncf.item_dim) == (16 + 64, 16 + 64)  # GMF dim/4 + MLP dim
  dense = ncf.init(jax.random.PRNGKey(0), 2, 3).dense
  kernels = [leaf.shape for leaf in jax.tree.leaves(dense) if leaf.ndim == 2]
  assert [k[1] for k in kernels] == [64, 32, 16, 1]  # tower 128-64-32-16, then the output


def test_neumf_scores_like_a_numpy_forward_pass():
  """NeuMF's logits against a float64 NumPy forward pass written from the model's
  definition: GMF (elementwise user x item), MLP tower over [user_mlp, item_mlp] with
  ReLU, a linear head over [gmf, tower output]."""
  gmf_dim, mlp_dim, layers = 4, 8, (16, 8, 4)
  model = models.ncf(gmf_dim=gmf_dim, mlp_dim=mlp_dim, layers=layers, init_scale=0.5)
  params = model.init(jax.random.key(0), 3, 20)
  user, rows = np.asarray(params.users[1]), np.asarray(params.items[:7])
  got = np.asarray(model.score(jnp.asarray(user), jnp.asarray(rows), params.dense))

  dense = jax.tree.map(lambda x: np.asarray(x, np.float64), params.dense)
  u, r = user.astype(np.float64), rows.astype(np.float64)
  gmf = u[:gmf_dim] * r[:, :gmf_dim]
  h = np.concatenate([np.broadcast_to(u[gmf_dim:], (len(r), mlp_dim)), r[:, gmf_dim:]], axis=1)
  for i in range(len(layers) - 1):
    h = np.maximum(h @ dense[f"Dense_{i}"]["kernel"] + dense[f"Dense_{i}"]["bias"], 0.0)
  head = dense[f"Dense_{len(layers) - 1}"]
  want = (np.concatenate([gmf, h], axis=1) @ head["kernel"] + head["bias"])[:, 0]
  assert np.std(want) > 1e-3  # the tower is not dead at this scale: the check has teeth
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
