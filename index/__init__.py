"""index/: a durable FAISS index of interleaved documents with two-stage retrieval."""

from .index import DocumentIndex, DocumentVectors, Hit, IndexRefused, KernelSettings
from .store import StoreUnavailable
from .vectors import VectorSettings

__all__ = ["DocumentIndex", "DocumentVectors", "Hit", "IndexRefused", "KernelSettings", "StoreUnavailable",
           "VectorSettings"]
