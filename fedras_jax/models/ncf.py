"""FedNCF: a GMF branch and an MLP branch joined by a linear head (NeuMF).

The user row is ``[gmf_dim + mlp_dim]`` (the GMF then the MLP user embedding), the
item row likewise, so each item is a single row of the shared item table. The MLP
tower and the head are shared dense parameters, averaged by FedAvg.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedras_jax.models.base import Params, RecModel


class NeuMFHead(nn.Module):
  """MLP tower over ``[user_mlp, item_mlp]`` and a linear head over ``[gmf, mlp_out]``."""
  layers: Sequence[int] = (128, 64, 32, 16)

  @nn.compact
  def __call__(self, gmf: jax.Array, mlp_in: jax.Array) -> jax.Array:
    """gmf ``[B, gmf_dim]``, mlp_in ``[B, 2 * mlp_dim]`` -> logits ``[B]``."""
    h = mlp_in
    for width in self.layers[1:]:
      h = nn.relu(nn.Dense(width)(h))
    return nn.Dense(1)(jnp.concatenate([gmf, h], axis=-1))[..., 0]


def ncf(gmf_dim: int = 16,
        mlp_dim: int = 64,
        layers: Sequence[int] = (128, 64, 32, 16),
        init_scale: float = 0.01) -> RecModel:
  """NeuMF with GMF dim ``gmf_dim`` and MLP dim ``mlp_dim``; ``layers[0] == 2 * mlp_dim``."""
  if layers[0] != 2 * mlp_dim:
    raise ValueError(f"ncf: layers[0]={layers[0]} must equal 2 * mlp_dim={2 * mlp_dim}")
  head = NeuMFHead(layers=tuple(layers))
  dim = gmf_dim + mlp_dim

  def init(key, num_users: int, num_items: int) -> Params:
    ku, ki, kd = jax.random.split(key, 3)
    dense = head.init(kd, jnp.zeros((1, gmf_dim)), jnp.zeros((1, 2 * mlp_dim)))["params"]
    return Params(users=init_scale * jax.random.normal(ku, (num_users, dim), jnp.float32),
                  items=init_scale * jax.random.normal(ki, (num_items, dim), jnp.float32),
                  dense=dense)

  def score(user, rows, dense):
    gmf = user[:gmf_dim] * rows[:, :gmf_dim]
    user_mlp = jnp.broadcast_to(user[gmf_dim:], (rows.shape[0], mlp_dim))
    mlp_in = jnp.concatenate([user_mlp, rows[:, gmf_dim:]], axis=-1)
    return head.apply({"params": dense}, gmf, mlp_in)

  return RecModel(name="ncf", user_dim=dim, item_dim=dim, init=init, score=score)


def ncf_for_run(dim: int, init_scale: float) -> RecModel:
  """NeuMF of a run's ``--dim``: GMF branch of ``dim / 4``, MLP branch of ``dim``, tower
  ``2 dim, dim, dim / 2, dim / 4`` (``--dim=64``: GMF 16, MLP 64, 128-64-32-16)."""
  return ncf(gmf_dim=max(1, dim // 4),
             mlp_dim=dim,
             layers=(2 * dim, dim, dim // 2, dim // 4),
             init_scale=init_scale)
