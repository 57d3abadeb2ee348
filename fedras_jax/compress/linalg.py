"""Dense linear algebra (``eigh``, ``qr``, ``svd``) that never runs batched.

With jax/jaxlib 0.10.2 on XLA:CPU, a program holding two or more independent
batched LAPACK calls (a ``vmap`` of ``jnp.linalg.eigh``, ``qr``, ``cholesky``, ...)
can hang for ever: every thread of the process idle, the caller waiting for the
result (why was not found). Reproduced on a 2-core machine with four independent
``vmap(eigh)`` over ``[8..32, 64, 64]`` in one ``jit``: a hang within 30 calls in
16 of 18 runs; one batched call per program, or unbatched calls, never hung. A
round has one batched call per client bucket plus the downlink's, and a vmapped
sweep batches every call again, so the SVD baseline hung within its first round.

These wrappers carry a ``custom_vmap`` rule that runs the batch as a
``lax.map`` of unbatched calls (nested ``vmap`` nests the maps), so no batched
LAPACK call exists in any program built from them. The cost is one loop iteration
per matrix.
"""
import jax
import jax.numpy as jnp


def _unbatched(fn):
  """``fn(*arrays)`` whose ``vmap`` is a ``lax.map`` over the batched arguments."""
  wrapped = jax.custom_batching.custom_vmap(fn)

  @wrapped.def_vmap
  def _rule(axis_size, in_batched, *args):
    del axis_size
    mapped = [a for a, b in zip(args, in_batched) if b]

    def one(mapped_slice):
      it = iter(mapped_slice)
      return wrapped(*(next(it) if b else a for a, b in zip(args, in_batched)))

    out = jax.lax.map(one, mapped)
    return out, jax.tree.map(lambda _: True, out)

  return wrapped


@_unbatched
def eigh(matrix):
  """``jnp.linalg.eigh`` of a symmetric ``[d, d]`` matrix: ``(w [d] ascending, v [d, d])``."""
  return tuple(jnp.linalg.eigh(matrix))


@_unbatched
def qr(matrix):
  """Reduced ``jnp.linalg.qr`` of ``[m, n]``: ``(q [m, k], r [k, n])``, ``k = min(m, n)``."""
  return tuple(jnp.linalg.qr(matrix))


@_unbatched
def svd(matrix):
  """``jnp.linalg.svd(full_matrices=False)`` of ``[m, n]``: ``(u, s, vt)``."""
  return tuple(jnp.linalg.svd(matrix, full_matrices=False))
