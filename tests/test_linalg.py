"""compress.linalg: LAPACK wrappers whose vmap loops instead of batching."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from fedras_jax.compress import linalg

RNG = np.random.default_rng(0)
A = RNG.standard_normal((3, 2, 12, 5)).astype(np.float32)  # [batch, batch, m, n]


def test_nested_vmap_matches_numpy_float64():
  gram = np.einsum("abmi,abmj->abij", A, A)
  w, v = jax.jit(jax.vmap(jax.vmap(linalg.eigh)))(jnp.asarray(gram))
  np.testing.assert_allclose(np.asarray(w),
                             np.linalg.eigvalsh(gram.astype(np.float64)),
                             rtol=1e-4,
                             atol=1e-4)
  recon = np.einsum("abik,abk,abjk->abij", np.asarray(v), np.asarray(w), np.asarray(v))
  np.testing.assert_allclose(recon, gram, rtol=1e-4, atol=1e-3)

  q, r = jax.jit(jax.vmap(jax.vmap(linalg.qr)))(jnp.asarray(A))
  assert q.shape == (3, 2, 12, 5) and r.shape == (3, 2, 5, 5)
  np.testing.assert_allclose(np.einsum("abmi,abij->abmj", q, r), A, atol=1e-5)
  np.testing.assert_allclose(np.einsum("abmi,abmj->abij", q, q),
                             np.broadcast_to(np.eye(5), (3, 2, 5, 5)),
                             atol=1e-5)

  u, s, vt = jax.jit(jax.vmap(jax.vmap(linalg.svd)))(jnp.asarray(A))
  np.testing.assert_allclose(np.asarray(s),
                             np.linalg.svd(A.astype(np.float64), compute_uv=False),
                             rtol=1e-4)
  np.testing.assert_allclose(np.einsum("abmk,abk,abkn->abmn", u, s, vt), A, atol=1e-4)


def test_unbatched_argument_is_shared_across_the_batch():
  x = jnp.asarray(A[0, 0])
  (q, r), = [jax.vmap(lambda _, m: linalg.qr(m), in_axes=(0, None))(jnp.arange(3), x)]
  q0, r0 = linalg.qr(x)
  np.testing.assert_allclose(np.asarray(q), np.broadcast_to(np.asarray(q0), q.shape), atol=0)
  np.testing.assert_allclose(np.asarray(r), np.broadcast_to(np.asarray(r0), r.shape), atol=0)


def test_independent_batched_calls_in_one_program_do_not_hang():
  # Four independent vmap(eigh) in one jit: with jnp.linalg.eigh this hung
  # XLA:CPU within 30 calls in 2 of 3 tries on a loaded 2-core machine (16 of 18
  # runs with 4 calls of [8..32, 64, 64]).
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp
      from fedras_jax.compress import linalg
      f = jax.jit(lambda xs: [jax.vmap(linalg.eigh)(x @ jnp.swapaxes(x, -1, -2)) for x in xs])
      xs = [jax.random.normal(jax.random.key(i), (16, 64, 64)) for i in range(4)]
      for _ in range(30):
        jax.block_until_ready(f(xs))
      print("done")
  """)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  proc = subprocess.run([sys.executable, "-c", script],
                        capture_output=True,
                        text=True,
                        timeout=120,
                        env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "done"
