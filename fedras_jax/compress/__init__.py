"""Compressors behind one protocol (``base.Compressor``: ``init``, ``encode``,
``decode``), the wrappers that make the round's special cases compressors, and the
registry of named ones (``register`` adds one)."""
from fedras_jax.compress.base import (Compressor, Context, DensePayload, Encoded, dense_bits,
                                      identity, stateless)
from fedras_jax.compress.wrappers import (EmbeddingPayload, FeedbackState, GainPayload, cold_start,
                                          error_feedback, on_embeddings, row_gains, shared_basis)
from fedras_jax.compress.roundtrip import Roundtrip, roundtrip, roundtrip_clients
from fedras_jax.compress.fedras import FedRASPayload, dense_fits, fedras, sparse_dense_bits
from fedras_jax.compress.topk import TopKPayload, entries_for_budget, topk, topk_bits
from fedras_jax.compress.colr import CoLRPayload, colr, colr_basis, colr_bits
from fedras_jax.compress.svd import SVDPayload, rank_for_budget, svd, svd_bits
from fedras_jax.compress.embedding_kmeans import EmbeddingKMeansPayload, embedding_kmeans
from fedras_jax.compress.registry import (COMPRESSORS, Bounds, make_compressor, register)
