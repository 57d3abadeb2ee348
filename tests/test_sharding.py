"""Local training sharded over 8 simulated CPU devices equals the single-device round."""
import os
import pathlib
import subprocess
import sys

from fedras_jax.launch import xla_flags_with_devices


def test_sharded_round_equals_single_device():
  script = pathlib.Path(__file__).with_name("sharded_round_check.py")
  root = str(script.parents[1])  # importable without an installed package too
  path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
  env = dict(os.environ, XLA_FLAGS=xla_flags_with_devices(8), JAX_PLATFORMS="cpu", PYTHONPATH=path)
  proc = subprocess.run([sys.executable, str(script)],
                        capture_output=True,
                        text=True,
                        timeout=600,
                        env=env)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert "identity: sharded over 8 devices == single device" in proc.stdout
  assert "fedras: sharded over 8 devices == single device" in proc.stdout
