"""compress.row_gains: gain-shape coding around any compressor, against NumPy."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedras_jax.compress import (Context, GainPayload, embedding_kmeans, fedras, identity,
                                 roundtrip, row_gains, stateless)
from fedras_jax.compress.wrappers import gain_codes, gain_values
from fedras_jax.config import TrainConfig
from fedras_jax.experiment import build_compressors


class UnitPayload(NamedTuple):
  """The masked rows scaled to unit norm (a direction-only coder), the budget it
  was given, and a fixed size."""
  units: jax.Array
  budget: jax.Array
  bits: jax.Array


def unit_encode(rows, mask, budget_bits, key) -> UnitPayload:
  del key
  norms = jnp.linalg.norm(rows, axis=1, keepdims=True)
  units = jnp.where(mask[:, None] & (norms > 0), rows / jnp.where(norms > 0, norms, 1.0), 0.0)
  return UnitPayload(units=units, budget=jnp.asarray(budget_bits), bits=jnp.int32(100))


UNITS = stateless("units", unit_encode, lambda p: p.units)


def numpy_gain_roundtrip(gains: np.ndarray, bits: int) -> np.ndarray:
  """The reference: sign kept; |gain| to the nearest of 2^(b-1)-1 levels even in
  log2 between the smallest and largest nonzero |gain| (float64); zero stays zero."""
  levels = 2**(bits - 1) - 1
  mag = np.abs(gains.astype(np.float64))
  logs = np.log2(mag[mag > 0])
  lo, hi = logs.min(), logs.max()
  step = (hi - lo) / (levels - 1) if hi > lo else 1.0
  out = np.zeros_like(mag)
  nz = mag > 0
  out[nz] = 2**(lo + np.clip(np.round((np.log2(mag[nz]) - lo) / step), 0, levels - 1) * step)
  return np.sign(gains) * out


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_gain_codes_round_to_the_nearest_log_level(bits):
  gains = np.array([0.5, -2.0, 8.0, 0.0, 1.3, -0.75, 3.1], np.float32)
  codes, lo, hi = gain_codes(jnp.asarray(gains), jnp.ones(7, bool), bits)
  assert (float(lo), float(hi)) == (-1.0, 3.0)
  assert int(jnp.max(codes)) < 2**bits  # each code fits its bits
  got = np.asarray(gain_values(codes, lo, hi, bits))
  np.testing.assert_allclose(got, numpy_gain_roundtrip(gains, bits), rtol=1e-5)
  # The extremes are exact, zero is zero, signs are kept.
  assert got[0] == 0.5 and got[2] == 8.0 and got[3] == 0.0 and got[1] < 0 and got[5] < 0


def test_a_single_gain_and_rows_not_sent():
  codes, lo, hi = gain_codes(jnp.array([3.0, 7.0, 0.0]), jnp.array([True, False, False]), 8)
  np.testing.assert_allclose(np.asarray(gain_values(codes, lo, hi, 8)), [3.0, 0.0, 0.0], rtol=1e-6)


def test_gains_restore_magnitudes_a_direction_coder_loses():
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(40, 6)) * rng.lognormal(0, 2, size=(40, 1))
  rows[5] = 0.0
  mask = np.ones(40, bool)
  mask[7] = False
  comp = row_gains(UNITS, 8)
  coded = comp.encode(jnp.asarray(rows, jnp.float32), jnp.asarray(mask), jnp.int32(5000),
                      jax.random.key(0), (), Context())
  assert isinstance(coded.payload, GainPayload) and bool(coded.payload.on)
  # 38 rows masked and nonzero: their gains' bits are set aside before the inner encode.
  assert int(coded.payload.inner.budget) == 5000 - 38 * 8 - 64
  assert int(coded.payload.bits) == 100 + 38 * 8 + 64
  decoded = np.asarray(comp.decode(coded.payload), np.float64)
  # Reference: unit rows times the quantized norms (the least-squares gain of a unit
  # row onto its own row is the row's norm).
  norms = np.where(mask, np.linalg.norm(rows, axis=1), 0.0)
  units = np.where(norms[:, None] > 0, rows / np.maximum(norms, 1e-300)[:, None], 0.0)
  sent = norms > 0
  expected = np.zeros_like(norms)
  expected[sent] = numpy_gain_roundtrip(norms[sent], 8)
  np.testing.assert_allclose(decoded, units * expected[:, None], rtol=2e-5, atol=1e-6)
  masked = np.where(mask[:, None], rows, 0.0)
  error = np.linalg.norm(decoded - masked) / np.linalg.norm(masked)
  assert error < 0.03  # 8 bits over a range of 2^16: half a level is ~4.5% of a gain
  assert np.all(decoded[~mask] == 0) and np.all(decoded[5] == 0)


def test_fedras_with_gains_fits_the_budget_and_is_exact_when_sent_dense():
  rng = np.random.default_rng(1)
  u = rng.normal(size=16)
  rows = rng.lognormal(0, 1.5, size=(60, 1)) * u + 0.05 * rng.normal(size=(60, 16))
  rows = jnp.asarray(rows, jnp.float32)
  mask = jnp.ones(60, bool)
  plain = fedras(500, max_k=16)
  gained = row_gains(plain, 8)
  key = jax.random.key(0)

  def run(comp, budget):
    coded = comp.encode(rows, mask, jnp.int32(budget), key, comp.init(60, 16), Context())
    return coded.payload, np.asarray(comp.decode(coded.payload))

  errors = []
  for budget in (900, 3000, 8000):
    payload, decoded = run(gained, budget)
    assert int(payload.bits) <= budget
    errors.append(np.linalg.norm(decoded - rows) / np.linalg.norm(rows))
  # A budget too small for anything: nothing sent, nothing counted (the gains' range
  # was counted with no gain to send).
  payload, decoded = run(gained, 40)
  assert int(payload.bits) == 0 and not bool(payload.on) and not np.any(decoded)
  _, plain_decoded = run(plain, 8000)
  # Collinear rows of spread magnitudes: coherent for the split test, so FedRAS keeps
  # few actions; the gains remove most of what that loses.
  assert errors[-1] < 0.2 * np.linalg.norm(plain_decoded - rows) / np.linalg.norm(rows)
  # A budget for the rows themselves: sent dense, exact, no gains sent or counted.
  payload, decoded = run(gained, 60 * 16 * 32 + 500 + 60 * 8 + 64)
  assert bool(payload.inner.is_dense) and not bool(payload.on)
  assert int(payload.bits) == int(payload.inner.bits)
  np.testing.assert_array_equal(decoded, np.asarray(rows))


def test_gains_around_a_coder_of_new_rows_stay_within_the_budget():
  # embedding_kmeans codes base + update, so the 45 masked rows without an update decode
  # nonzero too: beyond the gains' set-aside (15 rows), which sent 8 bits for all 60.
  rng = np.random.default_rng(2)
  base = jnp.asarray(rng.normal(size=(60, 8)), jnp.float32)
  update = np.zeros((60, 8), np.float32)
  update[:15] = 0.05 * rng.normal(size=(15, 8))
  comp = row_gains(embedding_kmeans(60, max_k=16), 8)
  for budget in (1200, 3000, 6000):
    out = roundtrip(comp,
                    jnp.asarray(update),
                    jnp.ones(60, bool),
                    jnp.int32(budget),
                    jax.random.key(3),
                    context=Context(base_rows=base))
    inner_bits, sent = int(out.payload.inner.bits), int(out.payload.inner.inner.sent.sum())
    assert int(out.bits) <= budget and sent == 60 and int(out.payload.inner.num_actions) > 0
    if inner_bits + 60 * 8 + 64 <= budget:  # the gains fit: sent, and counted
      assert bool(out.payload.on) and int(out.bits) == inner_bits + 60 * 8 + 64
      # A row without an update gets gain 0: it decodes to no update at all.
      assert not np.any(np.asarray(out.decoded)[15:])
    else:
      assert not bool(out.payload.on) and int(out.bits) == inner_bits
  assert bool(out.payload.on), "the largest budget must fit the gains"


def test_an_exact_compressor_is_left_alone_and_bad_bits_are_refused():
  exact = identity(10)
  assert row_gains(exact, 8) is exact  # nothing to correct: not wrapped
  assert row_gains(UNITS, 8) is not UNITS
  with pytest.raises(ValueError, match="gain_bits"):
    row_gains(UNITS, 2)
  with pytest.raises(ValueError, match="gain_bits"):
    TrainConfig(gain_bits=2).validate()


def test_the_flag_wraps_uplink_and_downlink():
  rows = jnp.zeros((100, 8), jnp.float32)

  def payload_of(comp):  # traced only (eval_shape): the payload's structure
    return jax.eval_shape(lambda: comp.encode(rows, jnp.ones(100, bool), jnp.int32(
        4000), jax.random.key(1), comp.init(100, 8), Context()).payload)

  up, down = build_compressors(TrainConfig(method="fedras", gain_bits=6), 100, 8)
  assert isinstance(payload_of(up), GainPayload) and isinstance(payload_of(down), GainPayload)
  plain = build_compressors(TrainConfig(method="fedras"), 100, 8)[0]
  assert not isinstance(payload_of(plain), GainPayload)  # 0: no gains
