"""Adding a compressor takes one module and one registry entry.

The module part is written here as a user would write it in their own module:
``sign``, 1-bit quantization of a client's update (every live entry becomes its
sign times one scale, the mean magnitude of the client's live entries), priced at
one bit per catalog entry plus a float32 scale. ``registry.register`` adds it; the
round runs it with no other change, checked against NumPy.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedras_jax.compress import Bounds, Compressor, make_compressor, register, registry, stateless
from fedras_jax.federated import init_states, make_round
from fedras_jax.models import get_model

from test_round import HP, M, config

DIM = 8


class SignPayload(NamedTuple):
  """positive ``[n, d]`` bool: the entry's sign; scale: float32; live ``[n]`` bool:
  rows sent; bits: int32 payload size."""
  positive: jax.Array
  scale: jax.Array
  live: jax.Array
  bits: jax.Array


def sign_bits(num_index_rows: int, dim: int) -> int:
  """One bit per catalog entry plus the float32 scale."""
  return num_index_rows * dim + 32


def sign_encode(num_index_rows: int, rows, mask, budget_bits, key) -> SignPayload:
  """``rows [n, d]``, ``mask [n]`` -> signs and one scale (fixed rate: no budget)."""
  del budget_bits, key
  live_entries = jnp.maximum(jnp.sum(mask) * rows.shape[1], 1)
  scale = jnp.sum(jnp.where(mask[:, None], jnp.abs(rows), 0.0)) / live_entries
  return SignPayload(positive=rows >= 0,
                     scale=scale,
                     live=mask,
                     bits=jnp.int32(sign_bits(num_index_rows, rows.shape[1])))


def sign_decode(payload: SignPayload) -> jax.Array:
  """``[n, d]``: +-scale on the live rows, 0 elsewhere."""
  signed = jnp.where(payload.positive, payload.scale, -payload.scale)
  return jnp.where(payload.live[:, None], signed, 0.0)


def sign(num_items: int, item_dim: int, bounds: Bounds) -> Compressor:
  """The registry factory."""
  del item_dim, bounds
  return stateless("sign", functools.partial(sign_encode, num_items), sign_decode)


@pytest.fixture(scope="module")
def registered():
  register("sign", sign)
  yield
  del registry.COMPRESSORS["sign"]


def numpy_sign(rows: np.ndarray) -> np.ndarray:
  """The reference: ``[n, d]`` all live -> sign times the mean magnitude (float64)."""
  rows = rows.astype(np.float64)
  return np.where(rows >= 0, 1.0, -1.0) * np.abs(rows).mean()


def test_a_registered_compressor_runs_in_the_round(synthetic, registered):
  del registered
  comp = make_compressor("sign", synthetic.num_items, DIM, payload_ratio=1 / 32)
  model = get_model("mf", dim=DIM)
  server, clients = init_states(model,
                                synthetic.num_users,
                                synthetic.num_items,
                                optax.sgd(1.0),
                                seed=0)
  round_fn = make_round(model, synthetic.data, config(synthetic), uplink=comp)
  stages = round_fn.stages
  local = jax.jit(stages.local)(server, clients, HP)
  up = jax.jit(stages.uplink)(server, HP, local)

  deltas, decoded = np.asarray(local.deltas), np.asarray(up.decoded)
  offset, num_slots = np.asarray(local.layout.offset), np.asarray(local.plans.num_slots)
  want = np.zeros_like(decoded)
  for o, n in zip(offset, num_slots):
    want[o:o + n] = numpy_sign(deltas[o:o + n])
  np.testing.assert_allclose(decoded, want, rtol=1e-6, atol=0)
  assert np.abs(decoded).max() > 0, "clients sent something"
  np.testing.assert_array_equal(up.bits, [sign_bits(synthetic.num_items, DIM)] * M)

  _, _, metrics = jax.jit(round_fn)(server, clients, HP)
  np.testing.assert_array_equal(metrics.bits_up, sign_bits(synthetic.num_items, DIM))
  error = [
      np.linalg.norm(want[o:o + n] - deltas[o:o + n]) / np.linalg.norm(deltas[o:o + n])
      for o, n in zip(offset, num_slots)
  ]
  np.testing.assert_allclose(metrics.error_up, error, rtol=1e-5)


def test_a_taken_name_is_refused():
  with pytest.raises(ValueError, match="already registered"):
    register("fedras", sign)
