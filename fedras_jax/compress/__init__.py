"""Compressors behind one contract: ``encode(rows, mask, budget_bits, key) -> payload``,
``decode(payload) -> rows``, exact ``payload.bits``."""
from fedras_jax.compress.base import Compressor, DensePayload, dense_bits, identity
from fedras_jax.compress.roundtrip import Roundtrip, roundtrip, roundtrip_clients
from fedras_jax.compress.fedras import FedRASPayload, fedras, sparse_dense_bits
