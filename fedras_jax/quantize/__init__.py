"""Gradient quantization as actions (FedRAS): K-Means, adaptive-K encode/decode.

Standalone: depends only on jax/optax, nothing else in ``fedras_jax``.

Modules (one concept each):

* :mod:`~fedras_jax.quantize.lloyd` -- jitted weighted Lloyd K-Means with a
  static ``[max_k, d]`` slot buffer, a traced number of live clusters and
  k-means++ seeding.
* :mod:`~fedras_jax.quantize.bits` -- exact payload bit accounting and the
  budget -> number-of-actions rule.
* :mod:`~fedras_jax.quantize.actions` -- ``encode`` (cosine split test,
  adaptive K under a bit budget) and ``decode``.
* :mod:`~fedras_jax.quantize.optax_adapter` -- ``actions_quantizer``, an
  ``optax.GradientTransformation`` quantizing chosen 2-D leaves.

Example (runs as is)::

    import jax, jax.numpy as jnp
    from fedras_jax import quantize as q

    g = jax.random.normal(jax.random.PRNGKey(0), (300, 16))      # [n, d]
    p = q.encode(g, jax.random.PRNGKey(1), budget_bits=8_000, max_k=16, tau=0.7)
    assert int(p.bits) <= 8_000 and int(p.num_actions) <= 16
    g_hat = q.decode(p)                                          # [n, d]
    print(int(p.num_actions), int(p.bits), float(q.compression_rate(p.bits, 300, 16)))

    # Many clients at once, each with its own traced budget (one compile):
    gs = jax.random.normal(jax.random.PRNGKey(2), (4, 300, 16))
    budgets = jnp.array([2_000, 4_000, 8_000, 16_000])
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    enc = jax.jit(jax.vmap(lambda g, k, b: q.encode(g, k, budget_bits=b, max_k=16, tau=0.7)))
    ps = enc(gs, keys, budgets)
    assert bool((ps.bits <= budgets).all())
"""

from fedras_jax.quantize.actions import (NO_UPDATE, ActionPayload, auto_tau, compact_clusters,
                                         decode, encode, round_values)
from fedras_jax.quantize.bits import (compression_rate, index_bits, max_actions_for_budget,
                                      payload_bits, payload_bits_int32_indices,
                                     )
from fedras_jax.quantize.encode_loop import cluster_coherence
from fedras_jax.quantize.lloyd import (KMeansResult, kmeans, kmeans_plusplus, lloyd_step,
                                       nearest_centroid,
                                      )
from fedras_jax.quantize.optax_adapter import (ActionsQuantizerState, actions_quantizer,
                                               default_leaf_filter,
                                              )

__all__ = [
    "NO_UPDATE", "ActionPayload", "ActionsQuantizerState", "KMeansResult", "actions_quantizer",
    "auto_tau", "cluster_coherence", "compact_clusters", "compression_rate", "decode",
    "default_leaf_filter", "encode", "index_bits", "kmeans", "kmeans_plusplus", "lloyd_step",
    "max_actions_for_budget", "nearest_centroid", "payload_bits", "payload_bits_int32_indices",
    "round_values",
]
