"""Glue between a SugarModel and an index: embed samples in batches, with progress."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from model.sample import Sample
from model.sugar import SliceEmbeddings, SugarModel

from .index import DocumentIndex, DocumentVectors


def document_vectors(e: SliceEmbeddings, b: int) -> DocumentVectors:
    """Sample b of a batch of embeddings as the index stores it (float32 numpy)."""
    vecs, summary, _ = e.item(b)
    return DocumentVectors(vecs.detach().float().cpu().numpy(), summary.detach().float().cpu().numpy())


def embed_samples(model: SugarModel, samples: Sequence[Sample], batch_size: int = 32) -> list[DocumentVectors]:
    e = model.embed(list(samples), batch_size=batch_size)
    return [document_vectors(e, b) for b in range(len(samples))]


def open_for_model(path, model: SugarModel, collection: str | None = None, **kw) -> DocumentIndex:
    """Open (or create) an index for this checkpoint: dimension and version must match.
    `collection`: a named collection of `path` (index/collections.py), created when missing."""
    if collection is not None:
        from .collections import open_collection

        return open_collection(path, collection, dim=model.embed_dim, embedding_version=model.embedding_version,
                               kernel=model.config.kernel, create=True, **kw)
    return DocumentIndex(path, dim=model.embed_dim, embedding_version=model.embedding_version,
                         kernel=model.config.kernel, **kw)


def add_samples(index: DocumentIndex, model: SugarModel, samples: Sequence[Sample], batch_size: int = 32,
                upsert: bool = False, progress: Callable[[int], None] | None = None) -> list[str]:
    """Embed (in batches, with progress) and store in one durable transaction (`ingest.write`)."""
    from .ingest import SourcePlan, write

    return write(index, [SourcePlan(list(samples))], lambda s: embed_samples(model, s, batch_size),
                 model.embedding_version, upsert=upsert, batch_size=batch_size, progress=progress)
