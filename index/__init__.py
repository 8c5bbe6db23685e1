"""index/: a durable FAISS index of interleaved documents with two-stage retrieval."""

from .index import DocumentIndex, DocumentVectors, Hit, IndexRefused, KernelSettings
from .vectors import VectorSettings

__all__ = ["DocumentIndex", "DocumentVectors", "Hit", "IndexRefused", "KernelSettings", "VectorSettings"]
