"""Dense linear algebra (``eigh``, ``qr``, ``svd``) that never runs batched.

With jax/jaxlib 0.10.2 on XLA:CPU, a program holding two or more independent
batched LAPACK calls (a ``vmap`` of ``jnp.linalg.eigh``, ``qr``, ``cholesky``, ...)
can hang for ever: every thread of the process idle, the caller waiting for the
result (why was not found). Reproduced on a 2-core machine with four independent
``vmap(eigh)`` over ``[8..32, 64, 64]`` in one ``jit``: a hang within 30 calls in
16 of 18 runs; one batched call per program, or unbatched calls, never hung. A
round has one batched call per client bucket plus the downlink's, and a vmapped
sweep batches every call again, so the SVD baseline hung within its first round.

These wrappers are ``jax.custom_batching.sequential_vmap`` functions: a batch runs as a
``lax.map`` of unbatched calls (nested ``vmap`` nests the maps), so no batched
LAPACK call exists in any program built from them. The cost is one loop iteration
per matrix.
"""
import jax
import jax.numpy as jnp


@jax.custom_batching.sequential_vmap
def eigh(matrix):
  """``jnp.linalg.eigh`` of a symmetric ``[d, d]`` matrix: ``(w [d] ascending, v [d, d])``."""
  return tuple(jnp.linalg.eigh(matrix))


@jax.custom_batching.sequential_vmap
def qr(matrix):
  """Reduced ``jnp.linalg.qr`` of ``[m, n]``: ``(q [m, k], r [k, n])``, ``k = min(m, n)``."""
  return tuple(jnp.linalg.qr(matrix))


@jax.custom_batching.sequential_vmap
def svd(matrix):
  """``jnp.linalg.svd(full_matrices=False)`` of ``[m, n]``: ``(u, s, vt)``."""
  return tuple(jnp.linalg.svd(matrix, full_matrices=False))
