"""Compressors behind one contract: ``encode(rows, mask, budget_bits, key) -> payload``,
``decode(payload) -> rows``, exact ``payload.bits``."""
from fedras_jax.compress.base import Compressor, DensePayload, dense_bits, identity
from fedras_jax.compress.roundtrip import Roundtrip, roundtrip, roundtrip_clients
from fedras_jax.compress.fedras import FedRASPayload, fedras, sparse_dense_bits
from fedras_jax.compress.topk import TopKPayload, entries_for_budget, topk, topk_bits
from fedras_jax.compress.colr import CoLRPayload, colr, colr_basis, colr_bits
from fedras_jax.compress.svd import SVDPayload, rank_for_budget, svd, svd_bits
from fedras_jax.compress.embedding_kmeans import EmbeddingKMeansPayload, embedding_kmeans
from fedras_jax.compress.registry import COMPRESSORS, make_compressor
