"""index/: a durable FAISS index of interleaved documents with two-stage retrieval."""

from .index import DocumentIndex, Embedded, Hit, IndexError_, KernelSettings
from .vectors import VectorSettings

__all__ = ["DocumentIndex", "Embedded", "Hit", "IndexError_", "KernelSettings", "VectorSettings"]
