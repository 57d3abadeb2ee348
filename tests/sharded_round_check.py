"""Run in its own process (the device count is fixed at jax import):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_round_check.py

Runs FedRAS and uncompressed rounds on the synthetic data with local training
sharded over 8 CPU devices and on one device; exits non-zero if they differ.
"""
import os
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
from conftest import Synthetic  # noqa: E402
from test_round import HP, config  # noqa: E402

from fedras_jax.compress import fedras, identity  # noqa: E402
from fedras_jax.federated import init_states, make_round  # noqa: E402
from fedras_jax.models import get_model  # noqa: E402


def main():
  devices = jax.devices()
  assert len(devices) == 8, f"expected 8 simulated devices, got {len(devices)}"
  mesh = jax.sharding.Mesh(np.array(devices), ("clients",))
  synthetic = Synthetic()
  model = get_model("mf", dim=8)
  cfg = config(synthetic, lanes=8)
  for uplink in (identity(synthetic.num_items), fedras(synthetic.num_items, max_k=8)):
    results = []
    for m in (None, mesh):
      server, clients = init_states(model,
                                    synthetic.num_users,
                                    synthetic.num_items,
                                    optax.sgd(1.0),
                                    seed=0)
      round_fn = jax.jit(make_round(model, synthetic.data, cfg, uplink=uplink, mesh=m))
      for _ in range(3):
        server, clients, metrics = round_fn(server, clients, HP)
      results.append(jax.device_get((server.items, clients.users, metrics.loss, metrics.bits_up)))
    for a, b in zip(*results):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    print(f"{uplink.name}: sharded over 8 devices == single device")


if __name__ == "__main__":
  main()
