"""FedMF: matrix factorisation, logit ``<p_u, q_i>``."""
import jax
import jax.numpy as jnp

from fedras_jax.models.base import Params, RecModel


def mf(dim: int = 64, init_scale: float = 0.01) -> RecModel:
  """Matrix factorisation with private user vectors ``[U, dim]`` and items ``[I, dim]``."""

  def init(key, num_users: int, num_items: int) -> Params:
    ku, ki = jax.random.split(key)
    return Params(users=init_scale * jax.random.normal(ku, (num_users, dim), jnp.float32),
                  items=init_scale * jax.random.normal(ki, (num_items, dim), jnp.float32),
                  dense={})

  def score(user, rows, dense):
    del dense
    return rows @ user

  return RecModel(name="mf", user_dim=dim, item_dim=dim, init=init, score=score)
