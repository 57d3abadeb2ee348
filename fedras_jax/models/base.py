"""The model contract shared by every recommender the federated round trains.

A model splits its parameters into three groups, so the round never special-cases
a model:

* private user parameters: one row per user, ``[num_users, user_dim]``; they never
  leave the client;
* the shared item table: one row per item, ``[num_items, item_dim]`` (several item
  embeddings are concatenated column-wise, so one item is one row and one index in
  a compressed payload);
* shared dense parameters (an MLP, a head): a small pytree averaged by FedAvg.

``score(user [user_dim], rows [B, item_dim], dense) -> logits [B]`` scores one
user against a batch of item rows.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Params(NamedTuple):
  """All parameters of a recommender.

  users: ``[num_users, user_dim]`` private user parameters.
  items: ``[num_items, item_dim]`` shared item table.
  dense: pytree of shared dense parameters (``{}`` for MF).
  """
  users: jax.Array
  items: jax.Array
  dense: Any


class RecModel(NamedTuple):
  """A recommender: its shapes, its initialiser and its scoring function."""
  name: str
  user_dim: int
  item_dim: int
  init: Callable[..., Params]  # (key, num_users, num_items) -> Params
  score: Callable[..., jax.Array]  # (user [du], rows [B, di], dense) -> [B]


def bce_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  """Weighted mean binary cross-entropy with logits; weights 0 drop an example.

  Shapes: all ``[B]``. Returns a scalar; 0 when every weight is 0.
  """
  losses = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
