"""How a per-problem solver batches under ``jax.vmap`` (the ``vmap_strategy`` of
``kmeans`` and ``encode``).

Iterative solvers (Lloyd's loop, the encoder's split tests) run a ``while_loop``
per problem. Batched in lock step, every problem runs until the slowest converges;
run one after another, each stops at its own convergence but the batch is a loop.
On XLA:CPU the loop over problems measured faster (docs/design/quantizer_speed.md),
so ``"auto"`` picks it there and lock step elsewhere.
"""

import functools

import jax

VMAP_STRATEGIES = ("auto", "sequential", "parallel")


def check_vmap_strategy(vmap_strategy: str):
  """Raises ``ValueError`` unless ``vmap_strategy`` is one of :data:`VMAP_STRATEGIES`."""
  if vmap_strategy not in VMAP_STRATEGIES:
    raise ValueError(f"vmap_strategy must be one of {VMAP_STRATEGIES}, got {vmap_strategy!r}")


def batched_as(impl, vmap_strategy: str, **static):
  """``impl`` with ``static`` bound, batching under ``jax.vmap`` by ``vmap_strategy``.

  ``"parallel"``: ordinary (lock-step) batching; ``"sequential"``: a
  ``jax.custom_batching`` rule that loops (``lax.map``) over the batch, so every
  problem leaves its loops at its own convergence; ``"auto"``: sequential on CPU,
  parallel elsewhere. The sequential wrapper is built once per ``(impl, static)``.
  """
  check_vmap_strategy(vmap_strategy)
  if vmap_strategy == "auto":
    vmap_strategy = "sequential" if jax.default_backend() == "cpu" else "parallel"
  if vmap_strategy == "parallel":
    return functools.partial(impl, **static)
  return _sequential(impl, tuple(sorted(static.items())))


@functools.lru_cache(maxsize=None)
def _sequential(impl, static):
  return jax.custom_batching.sequential_vmap(functools.partial(impl, **dict(static)))
