"""Client bandwidth heterogeneity: each user's bandwidth, drawn once per run.

Bandwidth is in bits per simulated second. With ``RoundHParams.round_seconds = 1``
a client's uplink budget in a round is its bandwidth that round, so bandwidths are
drawn relative to the dense float32 item-table payload ``dense_bits``.
"""
import numpy as np

BANDWIDTHS = ("uniform", "tiers", "lognormal")


def draw_bandwidth(mode: str,
                   num_users: int,
                   dense_bits: int,
                   *,
                   seed: int,
                   payload_ratio: float = 1.0,
                   tiers=(4, 16, 32, 64),
                   sigma: float = 1.0) -> np.ndarray:
  """``[num_users]`` float32 bandwidths (bits per simulated second).

  uniform: everyone gets ``payload_ratio * dense_bits``.
  tiers: users spread evenly (random assignment) over tiers ``dense_bits / t``.
  lognormal: ``payload_ratio * dense_bits * exp(N(0, sigma^2) - sigma^2 / 2)``
    (median below, mean equal to the uniform value).
  """
  rng = np.random.default_rng(np.random.SeedSequence([seed, 0xBA4D]))
  if mode == "uniform":
    bw = np.full(num_users, payload_ratio * dense_bits)
  elif mode == "tiers":
    tiers = np.asarray(tiers, np.float64)
    if tiers.size == 0 or np.any(tiers <= 0):
      raise ValueError(f"bandwidth tiers must be positive divisors, got {tiers.tolist()}")
    bw = dense_bits / tiers[rng.permutation(num_users) % tiers.size]
  elif mode == "lognormal":
    bw = payload_ratio * dense_bits * np.exp(rng.normal(0.0, sigma, num_users) - sigma**2 / 2)
  else:
    raise ValueError(f"unknown bandwidth mode {mode!r}; choose one of {BANDWIDTHS}")
  bw = bw.astype(np.float32)
  bad = np.flatnonzero(~(np.isfinite(bw) & (bw > 0)))
  if bad.size:  # a zero bandwidth made the round's simulated time 0 / 0
    raise ValueError(f"--bandwidth={mode} drew {float(bw[bad[0]])} bits per second for "
                     f"{bad.size} of {num_users} users: bandwidths must be positive in float32 "
                     "(a smaller --bandwidth_sigma or --bandwidth_tiers)")
  return bw
