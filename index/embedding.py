"""Glue between a SugarModel and an index: embed samples in batches, with progress."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from model.sample import Sample
from model.sugar import SliceEmbeddings, SugarModel

from .index import DocumentIndex, Embedded, KernelSettings


def embedded(e: SliceEmbeddings, b: int) -> Embedded:
    """Sample b of a batch of embeddings as the index stores it (float32 numpy)."""
    vecs, summary, _ = e.item(b)
    return Embedded(vecs.detach().float().cpu().numpy(), summary.detach().float().cpu().numpy())


def embed_samples(model: SugarModel, samples: Sequence[Sample], batch_size: int = 32) -> list[Embedded]:
    e = model.embed(list(samples), batch_size=batch_size)
    return [embedded(e, b) for b in range(len(samples))]


def kernel_settings(model: SugarModel) -> KernelSettings:
    c = model.config
    return KernelSettings(c.kernel_sigma, c.kernel_gamma, c.length_normalization)


def open_for_model(path, model: SugarModel, **kw) -> DocumentIndex:
    """Open (or create) an index for this checkpoint: dimension and version must match."""
    return DocumentIndex(path, dim=model.embed_dim, embedding_version=model.embedding_version,
                         kernel=kernel_settings(model), **kw)


def add_samples(index: DocumentIndex, model: SugarModel, samples: Sequence[Sample], batch_size: int = 32,
                upsert: bool = False, progress: Callable[[int], None] | None = None) -> list[str]:
    """Embed and store in batches; each batch is one durable transaction."""
    ids: list[str] = []
    for a in range(0, len(samples), batch_size):
        chunk = list(samples[a : a + batch_size])
        embs = embed_samples(model, chunk, batch_size)
        ids += index.add(list(zip(chunk, embs, strict=True)), version=model.embedding_version, upsert=upsert)
        if progress:
            progress(len(chunk))
    return ids
